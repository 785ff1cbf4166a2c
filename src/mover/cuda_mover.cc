#include "mover/cuda_mover.h"

#include <dlfcn.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string>
#include <tuple>

#include "mover/copy_kernels.h"
#include "mover/hybrid_wait.h"
#include "sys/futex.h"

namespace rocket::detail {

using Clock = std::chrono::steady_clock;

namespace {

std::string exe_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return {};
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

}  // namespace

Result<const RocketCudaApi*> load_cuda_module(int device) {
  static std::mutex mu;
  static const RocketCudaApi* api = nullptr;
  static Status failure = ok_status();
  std::lock_guard<std::mutex> lock(mu);
  if (api != nullptr) return api;
  if (!failure.ok()) return failure;
  // The driver first: its absence is the common, simple answer. A module
  // named explicitly ($ROCKET_CUDA_MODULE) answers for itself.
  const char* named = std::getenv("ROCKET_CUDA_MODULE");
  if (named == nullptr || *named == '\0') {
    if (void* drv = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL); drv == nullptr) {
      failure = unavailable("no GPU driver: libcuda.so.1 cannot be loaded");
      return failure;
    }
  }
  std::vector<std::string> candidates;
  if (named != nullptr && *named != '\0') candidates.emplace_back(named);
  candidates.push_back(exe_dir() + "/librocket_cuda.so");
  candidates.push_back(exe_dir() + "/../librocket_cuda.so");
#ifdef ROCKET_CUDA_MODULE_PATH
  candidates.emplace_back(ROCKET_CUDA_MODULE_PATH);
#endif
  candidates.emplace_back("librocket_cuda.so");
  void* lib = nullptr;
  for (const auto& c : candidates) {
    if ((lib = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (lib == nullptr) {
    failure = unavailable("the CUDA module librocket_cuda.so is not built or not found "
                          "(configure with ROCKET_ENABLE_CUDA=ON, or set ROCKET_CUDA_MODULE)");
    return failure;
  }
  using Entry = const RocketCudaApi* (*)();
  auto entry = reinterpret_cast<Entry>(::dlsym(lib, "rocket_cuda_api"));
  const RocketCudaApi* a = entry != nullptr ? entry() : nullptr;
  if (a == nullptr || a->abi != ROCKET_CUDA_ABI) {
    failure = unavailable("librocket_cuda.so has an incompatible interface");
    return failure;
  }
  int count = a->device_count();
  if (count <= 0) {
    failure = unavailable(count == 0 ? std::string("the CUDA driver reports no GPU")
                                     : std::string("no usable GPU: ") + a->last_error());
    return failure;
  }
  if (a->init(device) != 0) {
    failure = unavailable(std::string("cannot initialise GPU ") + std::to_string(device) + ": " + a->last_error());
    return failure;
  }
  api = a;
  return api;
}

Result<std::unique_ptr<Mover>> CudaMover::open(const MoverConfig& config) {
  ROCKET_ASSIGN_OR_RETURN(const RocketCudaApi* api, load_cuda_module(config.cuda_device));
  std::string how = config.cuda_h2h;
  if (const char* env = std::getenv("ROCKET_CUDA_H2H"); env != nullptr && how == "auto") how = env;
  int h2h;
  if (how == "kernel") {
    h2h = ROCKET_CUDA_H2H_KERNEL;
  } else if (how == "staged") {
    h2h = ROCKET_CUDA_H2H_STAGED;
  } else if (how == "auto") {
    h2h = kH2HAuto;
  } else {
    return invalid_argument("cuda_h2h must be auto, kernel or staged, not '" + how + "'");
  }
  return std::unique_ptr<Mover>(new CudaMover(api, h2h));
}

CudaMover::CudaMover(const RocketCudaApi* api, int h2h) : api_(api), h2h_(h2h) {
  for (auto& s : wait_scale_) s.store(1.0, std::memory_order_relaxed);
  caps_ = MoverCapabilities{.async = true,
                            .batch = true,
                            .cache_control = false,  // fixed: the GPU writes to memory
                            .needs_registered_memory = true,
                            .cross_process = false,
                            .max_op_bytes = SIZE_MAX,
                            .alignment = 1};
  completer_ = std::thread([this] { completer_loop(); });
}

CudaMover::~CudaMover() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  completer_.join();
  for (auto& [id, p] : tickets_) {
    for (void* op : p.ops) {
      api_->op_wait(op);
      api_->op_release(op);
    }
  }
}

namespace {
// Uncalibrated: `rocket calibrate` on the H100 machine (2026-11-22, host to
// host between registered buffers, completion polled; BENCHMARKS.md §3). The
// kernel starts sooner (16 us at 64 KiB against 25), staging streams faster
// (46 GB/s at 128 MiB against 41): auto crosses over near 4 MiB.
constexpr CostModel kStagedCost{.fixed_us = 26.2, .us_per_mib = 22.1};
constexpr CostModel kKernelCost{.fixed_us = 15.1, .us_per_mib = 25.1};

CostModel variant_cost(int h2h) {
  const bool kernel = h2h == ROCKET_CUDA_H2H_KERNEL;
  return profiled_cost(MoverKind::kCuda, Cache::kAuto, kernel ? "kernel" : "staged")
      .value_or(kernel ? kKernelCost : kStagedCost);
}
}  // namespace

int CudaMover::h2h_for(size_t bytes) const noexcept {
  if (h2h_ != kH2HAuto) return h2h_;
  return variant_cost(ROCKET_CUDA_H2H_KERNEL).predict_us(bytes) < variant_cost(ROCKET_CUDA_H2H_STAGED).predict_us(bytes)
             ? ROCKET_CUDA_H2H_KERNEL
             : ROCKET_CUDA_H2H_STAGED;
}

std::string_view CudaMover::cost_variant() const noexcept {
  if (h2h_ == kH2HAuto) return {};
  return h2h_ == ROCKET_CUDA_H2H_KERNEL ? "kernel" : "staged";
}

CostModel CudaMover::default_cost(Cache) const noexcept {
  if (h2h_ != kH2HAuto) return variant_cost(h2h_);
  // "auto" takes the cheaper method per copy; as one line, the one cheaper
  // for a 16 MiB copy.
  return variant_cost(h2h_for(size_t{16} << 20));
}

Status CudaMover::api_error(const char* what) const { return internal_error(std::string(what) + ": " + api_->last_error()); }

Status CudaMover::register_memory(void* p, size_t n, bool read_only) {
  if (api_->host_register(p, n, read_only ? 1 : 0) != 0) return api_error("register memory with the GPU");
  return ok_status();
}

void CudaMover::unregister_memory(void* p) noexcept { api_->host_unregister(p); }

Result<Ticket> CudaMover::submit(std::span<const CopyOp> ops, const SubmitOptions& options) {
  ROCKET_RETURN_IF_ERROR(validate(ops));
  Pending p;
  size_t total = 0;
  // On an error part-way, the copies already queued finish before we return.
  auto drain = [&] {
    for (void* h : p.ops) {
      api_->op_wait(h);
      api_->op_release(h);
    }
    p.ops.clear();
  };
  for (const CopyOp& op : ops) {
    if (op.remote != RemoteSide::kNone) return invalid_argument("the cuda mover copies within this process only");
    if (op.size == 0) continue;
    void* handle = nullptr;
    int dk = api_->pointer_kind(op.dst), sk = api_->pointer_kind(op.src);
    // The GPU does not bounds-check a copy: one past a device allocation
    // would silently overwrite a neighbour. Check against the real size.
    for (auto [ptr, kind, side] : {std::tuple<const void*, int, const char*>{op.dst, dk, "destination"},
                                   std::tuple<const void*, int, const char*>{op.src, sk, "source"}}) {
      if (kind != ROCKET_CUDA_DEVICE) continue;
      void* base = nullptr;
      size_t bytes = 0;
      const auto at = reinterpret_cast<uintptr_t>(ptr);
      if (api_->mem_range(ptr, &base, &bytes) != 0) {
        drain();
        return invalid_argument(std::string("GPU copy: cannot find the ") + side + "'s device allocation: " +
                                api_->last_error());
      }
      if (op.size > bytes - (at - reinterpret_cast<uintptr_t>(base))) {
        drain();
        return invalid_argument(std::string("GPU copy: the ") + side + " range of " + std::to_string(op.size) +
                                " bytes runs past its device allocation");
      }
    }
    if (dk != ROCKET_CUDA_DEVICE && sk != ROCKET_CUDA_DEVICE &&
        (dk == ROCKET_CUDA_HOST_PAGEABLE || sk == ROCKET_CUDA_HOST_PAGEABLE)) {
      // The GPU reaches only registered host memory; the driver would move a
      // pageable side with the CPU through its bounce buffers, slower than a
      // plain copy (H100 machine, `bench echo` at 16 MiB: 4.4 GB/s with the
      // cuda engine against 6.9 with cpu). Copy it here.
      copy_with_policy(op.dst, op.src, op.size, options.cache);
      continue;
    }
    if (api_->copy(op.dst, op.src, op.size, dk, sk, h2h_for(op.size), &handle) != 0) {
      Status st = api_error("GPU copy");
      drain();
      return st;
    }
    p.ops.push_back(handle);
    total += op.size;
    p.bytes = total;
  }
  if (p.ops.empty()) {
    if (options.on_done) options.on_done(ok_status());
    return Ticket{.id = 0, .done = true};
  }
  p.predicted = std::chrono::nanoseconds(static_cast<int64_t>(cost().predict_us(total) * 1000.0));
  p.started = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (options.on_done) {
    p.on_done = options.on_done;
    detached_.push_back(std::move(p));
    cv_.notify_one();
    return Ticket{.id = 0, .done = false};
  }
  uint64_t id = next_id_++;
  tickets_.emplace(id, std::move(p));
  return Ticket{.id = id, .done = false};
}

namespace {
size_t size_class(size_t bytes) noexcept {
  return std::min<size_t>(bytes == 0 ? 0 : static_cast<size_t>(std::bit_width(bytes) - 1), 47);
}
// A wait sleeps only when more than this remains: a sleep below ~100 us
// costs more in wake-up than it saves (measured: a 64 KiB copy kernel took
// 47 us with a 28 us sleep, 16 us with polling). Predictions under half of it
// teach the wait nothing.
constexpr auto kMinSleep = std::chrono::microseconds(100);
}  // namespace

double CudaMover::wait_scale(size_t bytes) const noexcept {
  return wait_scale_[size_class(bytes)].load(std::memory_order_relaxed);
}

void CudaMover::learn(const Pending& p, double scale, bool slept, bool done_at_first_look,
                      std::chrono::nanoseconds elapsed) noexcept {
  if (p.predicted < kMinSleep / 2) return;
  auto& slot = wait_scale_[size_class(p.bytes)];
  double next;
  if (slept && done_at_first_look) {
    // Done before we looked: we slept too long, by how much is unknown.
    // Back off multiplicatively until a wait finds the copy still running.
    next = scale * 0.9;
  } else if (!done_at_first_look) {
    // Seen (or, after the blocking wait, nearly seen) to finish: move toward
    // the real ratio.
    next = 0.8 * scale + 0.2 * (static_cast<double>(elapsed.count()) / static_cast<double>(p.predicted.count()));
  } else {
    return;
  }
  slot.store(std::clamp(next, 0.25, 4.0), std::memory_order_relaxed);
}

Status CudaMover::release_pending(Pending& p) {
  Status st = ok_status();
  for (void* op : p.ops) {
    if (api_->op_query(op) < 0 && st.ok()) st = api_error("GPU copy");
    api_->op_release(op);
  }
  p.ops.clear();
  return st;
}

Status CudaMover::wait_pending(Pending& p) {
  // Hybrid: sleep through most of the expected time, poll until a little
  // past the expected end, then let the driver block us (blocking-sync
  // events: no spinning). Polling that long is what makes a lone copy of a
  // MiB or so fast: a wake-up from the driver's blocking wait costs ~35 us on
  // the H100 machine, longer than the poll. The sleep runs with a 1 us timer
  // slack (restored after), so it can end 3% short of the expected time
  // instead of the default slack's 50 us. The expected time is the cost
  // model's prediction times what this engine has learned of its error for
  // this size (learn()): a model a fifth short made the waiter spin for that
  // fifth of the copy.
  using std::chrono::microseconds;
  using std::chrono::nanoseconds;
  const double scale = wait_scale(p.bytes);
  const auto expected = nanoseconds(static_cast<int64_t>(static_cast<double>(p.predicted.count()) * scale));
  const auto expected_end = p.started + expected;
  const auto first = expected * 97 / 100 - (Clock::now() - p.started);
  const bool slept = first > kMinSleep;
  if (slept) {
    const long slack = ::prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    const bool tightened = slack > 1000 && ::prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0) == 0;
    std::this_thread::sleep_for(first - (tightened ? microseconds(2) : timer_slack()));
    if (tightened) ::prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0);
  }
  const auto poll_until = std::max(Clock::now() + microseconds(30), expected_end + expected / 20 + microseconds(20));
  Status st = ok_status();
  bool done_at_first_look = true;
  for (void* op : p.ops) {
    int r = api_->op_query(op);
    if (r == 0) done_at_first_look = false;
    while (r == 0 && Clock::now() < poll_until) {
      cpu_relax();
      r = api_->op_query(op);
    }
    if (r == 0) r = api_->op_wait(op) == 0 ? 1 : -1;
    if (r < 0 && st.ok()) st = api_error("GPU copy");
    api_->op_release(op);
  }
  p.ops.clear();
  if (st.ok()) learn(p, scale, slept, done_at_first_look, Clock::now() - p.started);
  return st;
}

Result<bool> CudaMover::poll(Ticket t) {
  if (t.done) return true;
  std::unique_lock<std::mutex> lock(mu_);
  auto it = tickets_.find(t.id);
  if (it == tickets_.end()) return invalid_argument("unknown or already completed ticket");
  for (void* op : it->second.ops) {
    int r = api_->op_query(op);
    if (r == 0) return false;
    if (r < 0) break;
  }
  Pending p = std::move(it->second);
  tickets_.erase(it);
  lock.unlock();
  ROCKET_RETURN_IF_ERROR(release_pending(p));
  return true;
}

Status CudaMover::wait(Ticket t) {
  if (t.done) return ok_status();
  Pending p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tickets_.find(t.id);
    if (it == tickets_.end()) return invalid_argument("unknown or already completed ticket");
    p = std::move(it->second);
    tickets_.erase(it);
  }
  return wait_pending(p);
}

void CudaMover::completer_loop() {
  for (;;) {
    Pending p;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !detached_.empty(); });
      if (detached_.empty()) return;
      p = std::move(detached_.front());
      detached_.pop_front();
    }
    Status st = wait_pending(p);  // also on shutdown: the GPU finishes what was queued
    p.on_done(st);
  }
}

}  // namespace rocket::detail
