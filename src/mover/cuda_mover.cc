#include "mover/cuda_mover.h"

#include <dlfcn.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "mover/copy_kernels.h"
#include "mover/cpu_mover.h"
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
  for (auto& path : learned_) {
    for (auto& ratio : path) ratio.store(1.0, std::memory_order_relaxed);
  }
  caps_ = MoverCapabilities{.async = true,
                            .batch = true,
                            .cache_control = false,  // fixed: the GPU writes to memory
                            .needs_registered_memory = true,
                            .cross_process = false,
                            .max_op_bytes = SIZE_MAX,
                            .alignment = 1};
  submitter_ = std::thread([this] { submitter_loop(); });
  completer_ = std::thread([this] { completer_loop(); });
}

CudaMover::~CudaMover() {
  // Queued submissions still reach the GPU, and the GPU finishes them all.
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_submit_ = true;
  }
  submit_cv_.notify_all();
  submitter_.join();
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
  if (n == 0) return ok_status();
  const bool already = api_->pointer_kind(p) != ROCKET_CUDA_HOST_PAGEABLE;
  if (api_->host_register(p, n, read_only ? 1 : 0) != 0) return api_error("register memory with the GPU");
  if (!already) {
    std::unique_lock<std::shared_mutex> lock(ranges_mu_);
    ranges_[reinterpret_cast<uintptr_t>(p)] = n;
  }
  return ok_status();
}

void CudaMover::unregister_memory(void* p) noexcept {
  {
    std::unique_lock<std::shared_mutex> lock(ranges_mu_);
    ranges_.erase(reinterpret_cast<uintptr_t>(p));
  }
  api_->host_unregister(p);
}

int CudaMover::pointer_kind(const void* p, size_t n) const {
  const auto at = reinterpret_cast<uintptr_t>(p);
  {
    std::shared_lock<std::shared_mutex> lock(ranges_mu_);
    auto it = ranges_.upper_bound(at);
    if (it != ranges_.begin()) {
      --it;
      // A range that runs past ours is copied by the CPU: the GPU would
      // fault on the part it cannot reach.
      if (at - it->first < it->second) {
        return n <= it->second - (at - it->first) ? ROCKET_CUDA_HOST_REGISTERED : ROCKET_CUDA_HOST_PAGEABLE;
      }
    }
  }
  return api_->pointer_kind(p);
}

Status CudaMover::classify(std::span<const CopyOp> ops, std::vector<Classified>& out) {
  ROCKET_RETURN_IF_ERROR(validate(ops));
  out.clear();
  out.reserve(ops.size());
  for (const CopyOp& op : ops) {
    if (op.remote != RemoteSide::kNone) return invalid_argument("the cuda mover copies within this process only");
    if (op.size == 0) continue;
    Classified c{op, pointer_kind(op.dst, op.size), pointer_kind(op.src, op.size)};
    // The GPU does not bounds-check a copy: one past a device allocation
    // would silently overwrite a neighbour. Check against the real size.
    for (auto [ptr, kind, side] : {std::tuple<const void*, int, const char*>{op.dst, c.dk, "destination"},
                                   std::tuple<const void*, int, const char*>{op.src, c.sk, "source"}}) {
      if (kind != ROCKET_CUDA_DEVICE) continue;
      void* base = nullptr;
      size_t bytes = 0;
      const auto at = reinterpret_cast<uintptr_t>(ptr);
      if (api_->mem_range(ptr, &base, &bytes) != 0) {
        return invalid_argument(std::string("GPU copy: cannot find the ") + side + "'s device allocation: " +
                                api_->last_error());
      }
      if (op.size > bytes - (at - reinterpret_cast<uintptr_t>(base))) {
        return invalid_argument(std::string("GPU copy: the ") + side + " range of " + std::to_string(op.size) +
                                " bytes runs past its device allocation");
      }
    }
    out.push_back(c);
  }
  return ok_status();
}

Status CudaMover::enqueue(std::span<const Classified> ops, Cache cache, Pending& p) {
  size_t total = 0, largest = 0;
  for (const Classified& c : ops) {
    const CopyOp& op = c.op;
    if (c.dk != ROCKET_CUDA_DEVICE && c.sk != ROCKET_CUDA_DEVICE &&
        (c.dk == ROCKET_CUDA_HOST_PAGEABLE || c.sk == ROCKET_CUDA_HOST_PAGEABLE)) {
      // The GPU reaches only registered host memory; the driver would move a
      // pageable side with the CPU through its bounce buffers, slower than a
      // plain copy (H100 machine, `bench echo` at 16 MiB: 4.4 GB/s with the
      // cuda engine against 6.9 with cpu). Copy it here.
      copy_with_policy(op.dst, op.src, op.size, cache);
      continue;
    }
    void* handle = nullptr;
    const int h2h = h2h_for(op.size);
    if (api_->copy(op.dst, op.src, op.size, c.dk, c.sk, h2h, &handle) != 0) {
      // The copies already queued finish before we return.
      Status st = api_error("GPU copy");
      for (void* h : p.ops) {
        api_->op_wait(h);
        api_->op_release(h);
      }
      p.ops.clear();
      return st;
    }
    p.ops.push_back(handle);
    total += op.size;
    if (op.size > largest) {
      largest = op.size;
      p.path = c.dk == ROCKET_CUDA_DEVICE || c.sk == ROCKET_CUDA_DEVICE ? kPathDevice
               : h2h == ROCKET_CUDA_H2H_KERNEL                          ? kPathKernel
                                                                        : kPathStaged;
    }
  }
  p.bytes = total;
  // Host <-> device runs on the copy engines as staging does (one leg).
  const CostModel model = variant_cost(p.path == kPathKernel ? ROCKET_CUDA_H2H_KERNEL : ROCKET_CUDA_H2H_STAGED);
  p.predicted = std::chrono::nanoseconds(static_cast<int64_t>(model.predict_us(total) * 1000.0));
  p.started = Clock::now();
  return ok_status();
}

Result<Ticket> CudaMover::submit(std::span<const CopyOp> ops, const SubmitOptions& options) {
  std::vector<Classified> classified;
  ROCKET_RETURN_IF_ERROR(classify(ops, classified));
  if (options.on_done) {
    // Detached (how call_async uses an engine): the caller wants its CPU
    // back, so it only queues the copies. Queueing them on the GPU costs the
    // driver 17-29 us of calls at 16 MiB on the H100 machine when the caller
    // has just touched the data (its cache then holds the payload, not the
    // driver's structures); the submitter thread makes them instead.
    if (classified.empty()) {
      options.on_done(ok_status());
      return Ticket{.id = 0, .done = true};
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      deferred_.push_back({std::move(classified), options.cache, options.on_done});
    }
    submit_cv_.notify_one();
    return Ticket{.id = 0, .done = false};
  }
  Pending p;
  ROCKET_RETURN_IF_ERROR(enqueue(classified, options.cache, p));
  if (p.ops.empty()) {
    if (options.on_done) options.on_done(ok_status());
    return Ticket{.id = 0, .done = true};
  }
  std::lock_guard<std::mutex> lock(mu_);
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
// 47 us with a 28 us sleep, 16 us with polling).
constexpr auto kMinSleep = std::chrono::microseconds(100);
// execute() splits a host-to-host copy only from this size, and gives the
// GPU at least this much of it: below, one core alone is as fast.
constexpr size_t kMinSplit = size_t{256} << 10;
constexpr size_t kMinGpuShare = size_t{64} << 10;
}  // namespace

std::atomic<double>& CudaMover::learned(int path, size_t bytes) noexcept { return learned_[path][size_class(bytes)]; }
const std::atomic<double>& CudaMover::learned(int path, size_t bytes) const noexcept {
  return learned_[path][size_class(bytes)];
}

double CudaMover::wait_scale(size_t bytes, bool device) const noexcept {
  const int path = device ? kPathDevice : h2h_for(bytes) == ROCKET_CUDA_H2H_KERNEL ? kPathKernel : kPathStaged;
  return learned(path, bytes).load(std::memory_order_relaxed);
}

void CudaMover::learn(const Pending& p, double ratio, bool slept, bool done_at_first_look,
                      std::chrono::nanoseconds elapsed) noexcept {
  auto& slot = learned(p.path, p.bytes);
  double next;
  if (slept && done_at_first_look) {
    // Done before we looked: we slept too long, by how much is unknown.
    // Back off multiplicatively until a wait finds the copy still running.
    next = ratio * 0.9;
  } else if (!done_at_first_look) {
    // Seen (or, after the blocking wait, nearly seen) to finish: move toward
    // the real ratio. Small copies learn too: a 1 MiB copy kernel predicted
    // at 41 us took ~75 us when the caller had just touched its data, so an
    // unlearned wait stopped polling at 63 us and paid the blocking wait's
    // ~50 us wake-up on half the copies.
    next = 0.8 * ratio + 0.2 * (static_cast<double>(elapsed.count()) / static_cast<double>(p.predicted.count()));
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
  // MiB or so fast: the driver's blocking wait wakes ~50 us after the copy
  // ends on the H100 machine. The sleep runs with a 1 us timer slack
  // (restored after), so it can end 3% short of the expected time instead of
  // the default slack's 50 us. The expected time is the cost model's
  // prediction times what this engine has learned of its error for this
  // path and size (learn()).
  //
  // What the caller pays, measured there for a 16 MiB copy kernel whose data
  // it had just touched: queueing the copy 17-29 us (the driver's structures
  // are out of the cache), the sleep 9-20 us, polling the rest 25-30 us. A
  // wake-up aimed at the learned mean less one mean deviation of the copy
  // time instead polled no less, and more for 128-512 MiB copies.
  using std::chrono::microseconds;
  using std::chrono::nanoseconds;
  const double ratio = learned(p.path, p.bytes).load(std::memory_order_relaxed);
  const auto expected = nanoseconds(static_cast<int64_t>(static_cast<double>(p.predicted.count()) * ratio));
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
  if (st.ok()) learn(p, ratio, slept, done_at_first_look, Clock::now() - p.started);
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

double CudaMover::gpu_h2h_us(size_t gpu_bytes) const noexcept {
  const int h2h = h2h_for(gpu_bytes);
  const int path = h2h == ROCKET_CUDA_H2H_KERNEL ? kPathKernel : kPathStaged;
  return variant_cost(h2h).predict_us(gpu_bytes) * learned(path, gpu_bytes).load(std::memory_order_relaxed);
}

namespace {
constexpr double kMiB = 1024.0 * 1024.0;
// The caller copies its share in pieces of this size, asking between pieces
// (once the GPU could be done) whether it is: a piece is 7-30 us of copying,
// a question 1-3 us.
constexpr size_t kCallerPiece = size_t{256} << 10;
}  // namespace

double CudaMover::cpu_us_per_mib(size_t bytes) const noexcept {
  const double seen = split_[size_class(bytes)].cpu_us_per_mib.load(std::memory_order_relaxed);
  if (seen > 0) return seen;
  return std::max(profiled_cost(MoverKind::kCpu, Cache::kAuto, "").value_or(kCoreCopyCost).us_per_mib, 1.0);
}

double CudaMover::gpu_us_per_mib(size_t bytes) const noexcept {
  const double seen = split_[size_class(bytes)].gpu_us_per_mib.load(std::memory_order_relaxed);
  if (seen > 0) return seen;
  const double mib = std::max(static_cast<double>(bytes) / kMiB, 1.0 / 16);
  return std::max(gpu_h2h_us(bytes) - variant_cost(h2h_for(bytes)).fixed_us, 0.0) / mib;
}

double CudaMover::caller_share(size_t bytes) const noexcept {
  const double known = split_[size_class(bytes)].share.load(std::memory_order_relaxed);
  if (known >= 0) return known;
  // Both finish together when the caller's c bytes take as long as the
  // GPU's n - c: c * r_c = F + (n - c) * r_g.
  const double mib = static_cast<double>(bytes) / kMiB;
  const double r_c = cpu_us_per_mib(bytes), r_g = gpu_us_per_mib(bytes);
  return std::clamp((variant_cost(h2h_for(bytes)).fixed_us / mib + r_g) / (r_c + r_g), 0.0, 1.0);
}

Status CudaMover::execute(std::span<const CopyOp> ops, Cache cache) {
  std::vector<Classified> all;
  ROCKET_RETURN_IF_ERROR(classify(ops, all));
  size_t h2h_bytes = 0, total = 0;
  for (const Classified& c : all) {
    if (c.dk == ROCKET_CUDA_HOST_REGISTERED && c.sk == ROCKET_CUDA_HOST_REGISTERED) h2h_bytes += c.op.size;
    total += c.op.size;
  }
  if (h2h_bytes < kMinSplit) {
    Pending p;
    ROCKET_RETURN_IF_ERROR(enqueue(all, cache, p));
    return p.ops.empty() ? ok_status() : wait_pending(p);
  }
  // The caller's share is the tail of the host-to-host bytes, in whole
  // pages. It copies them all itself where queueing the GPU's share costs
  // more than the GPU would save.
  const double n_mib = static_cast<double>(h2h_bytes) / kMiB;
  const double r_c = cpu_us_per_mib(h2h_bytes);
  const double fixed = variant_cost(h2h_for(h2h_bytes)).fixed_us;
  const double share = caller_share(h2h_bytes);
  size_t mine = std::min(h2h_bytes, static_cast<size_t>(share * static_cast<double>(h2h_bytes)) & ~size_t{4095});
  if (h2h_bytes - mine < kMinGpuShare ||
      enqueue_us_.load(std::memory_order_relaxed) + share * n_mib * r_c >= 0.95 * n_mib * r_c) {
    mine = h2h_bytes;
  }
  std::vector<Classified> gpu;
  std::vector<CopyOp> cpu;
  gpu.reserve(all.size());
  size_t left = mine;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    Classified c = *it;
    if (left > 0 && c.dk == ROCKET_CUDA_HOST_REGISTERED && c.sk == ROCKET_CUDA_HOST_REGISTERED) {
      const size_t take = std::min(left, c.op.size);
      left -= take;
      c.op.size -= take;
      cpu.push_back({c.op.dst + c.op.size, c.op.src + c.op.size, take});
    }
    if (c.op.size > 0) gpu.push_back(c);
  }
  Pending p;
  const auto queued = Clock::now();
  ROCKET_RETURN_IF_ERROR(enqueue(gpu, cache, p));
  const auto started = Clock::now();
  if (total == h2h_bytes && mine < h2h_bytes) {
    const double us = std::chrono::duration<double, std::micro>(started - queued).count();
    enqueue_us_.store(0.8 * enqueue_us_.load(std::memory_order_relaxed) + 0.2 * us, std::memory_order_relaxed);
  }

  // Copy our share in pieces; once the GPU could be done, ask between
  // pieces, so its finishing time is known to within a piece.
  const size_t gpu_bytes = h2h_bytes - mine;
  const auto gpu_soon =
      started + std::chrono::nanoseconds(static_cast<int64_t>(
                    700.0 * (fixed + gpu_us_per_mib(h2h_bytes) * static_cast<double>(gpu_bytes) / kMiB)));
  size_t gpu_left = 0;  // p.ops before this index are done
  std::optional<Clock::time_point> gpu_end;
  Status st = ok_status();
  auto ask_gpu = [&] {
    while (gpu_left < p.ops.size()) {
      const int r = api_->op_query(p.ops[gpu_left]);
      if (r == 0) return;
      if (r < 0 && st.ok()) st = api_error("GPU copy");
      ++gpu_left;
    }
    gpu_end = Clock::now();
  };
  if (p.ops.empty()) gpu_end = started;
  for (const CopyOp& op : cpu) {
    for (size_t off = 0; off < op.size; off += kCallerPiece) {
      copy_with_policy(op.dst + off, op.src + off, std::min(kCallerPiece, op.size - off), cache);
      if (!gpu_end && Clock::now() >= gpu_soon) ask_gpu();
    }
  }
  const auto mine_done = Clock::now();
  // The GPU's share is usually nearly done: poll it (a sleep's wake-up would
  // cost more than it saves), then block.
  const auto poll_until = mine_done + std::chrono::microseconds(200) + (mine_done - started);
  while (!gpu_end && Clock::now() < poll_until) {
    ask_gpu();
    if (!gpu_end) cpu_relax();
  }
  for (; gpu_left < p.ops.size(); ++gpu_left) {
    if (api_->op_wait(p.ops[gpu_left]) != 0 && st.ok()) st = api_error("GPU copy");
  }
  if (!gpu_end) gpu_end = Clock::now();
  if (Status released = release_pending(p); st.ok()) st = released;
  if (!st.ok() || total != h2h_bytes) return st;  // learn from host-to-host alone

  // Learn the speeds, and from them the share at which both finish together.
  Split& learned_split = split_[size_class(h2h_bytes)];
  auto ewma = [](std::atomic<double>& v, double sample) {
    const double old = v.load(std::memory_order_relaxed);
    v.store(old < 0 ? sample : 0.7 * old + 0.3 * sample, std::memory_order_relaxed);
  };
  const double t_c = std::chrono::duration<double, std::micro>(mine_done - started).count();
  if (mine > 0) ewma(learned_split.cpu_us_per_mib, std::max(t_c, 0.01) / (static_cast<double>(mine) / kMiB));
  if (gpu_bytes > 0) {
    const double t_g = std::chrono::duration<double, std::micro>(*gpu_end - started).count();
    ewma(learned_split.gpu_us_per_mib, std::max(t_g - fixed, 0.01) / (static_cast<double>(gpu_bytes) / kMiB));
  }
  const double c = cpu_us_per_mib(h2h_bytes), g = gpu_us_per_mib(h2h_bytes);
  learned_split.share.store(std::clamp((fixed / n_mib + g) / (c + g), 0.0, 1.0), std::memory_order_relaxed);
  return ok_status();
}

void CudaMover::submitter_loop() {
  for (;;) {
    std::deque<Deferred> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      submit_cv_.wait(lock, [this] { return stopping_submit_ || !deferred_.empty(); });
      if (deferred_.empty()) return;
      batch.swap(deferred_);
    }
    for (Deferred& d : batch) {
      Pending p;
      Status st = enqueue(d.ops, d.cache, p);
      if (!st.ok() || p.ops.empty()) {  // failed, or copied here (pageable)
        d.on_done(st);
        continue;
      }
      p.on_done = std::move(d.on_done);
      {
        std::lock_guard<std::mutex> lock(mu_);
        detached_.push_back(std::move(p));
      }
      cv_.notify_one();
    }
  }
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
