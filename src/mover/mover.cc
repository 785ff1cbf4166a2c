#include "rocket/mover/mover.h"

#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "mover/copy_kernels.h"
#include "mover/cpu_mover.h"
#include "mover/cuda_mover.h"
#include "mover/hybrid_wait.h"
#include "mover/kernel_copy.h"
#include "mover/threads_mover.h"
#include "sys/files.h"
#include "sys/fork.h"

namespace rocket {

std::string_view mover_kind_name(MoverKind kind) noexcept {
  switch (kind) {
    case MoverKind::kAuto: return "auto";
    case MoverKind::kCpu: return "cpu";
    case MoverKind::kCpuStream: return "cpu_stream";
    case MoverKind::kThreads: return "threads";
    case MoverKind::kKernel: return "kernel";
    case MoverKind::kDsa: return "dsa";
    case MoverKind::kCuda: return "cuda";
  }
  return "unknown";
}

Result<MoverKind> parse_mover_kind(std::string_view name) {
  for (auto k : {MoverKind::kAuto, MoverKind::kCpu, MoverKind::kCpuStream, MoverKind::kThreads,
                 MoverKind::kKernel, MoverKind::kDsa, MoverKind::kCuda}) {
    if (mover_kind_name(k) == name) return k;
  }
  return invalid_argument("unknown mover '" + std::string(name) +
                          "' (auto, cpu, cpu_stream, threads, kernel, dsa, cuda)");
}

std::string_view cache_name(Cache cache) noexcept {
  switch (cache) {
    case Cache::kAuto: return "auto";
    case Cache::kInject: return "inject";
    case Cache::kBypass: return "bypass";
  }
  return "unknown";
}

Result<Cache> parse_cache(std::string_view name) {
  for (auto c : {Cache::kAuto, Cache::kInject, Cache::kBypass}) {
    if (cache_name(c) == name) return c;
  }
  return invalid_argument("unknown cache policy '" + std::string(name) + "' (auto, inject, bypass)");
}

Status Mover::execute(std::span<const CopyOp> ops, Cache cache) {
  ROCKET_ASSIGN_OR_RETURN(Ticket t, submit(ops, cache));
  if (t.done) return ok_status();
  return wait(t);
}

Status Mover::validate(std::span<const CopyOp> ops) noexcept {
  for (const CopyOp& op : ops) {
    if (op.size == 0) continue;
    if (op.dst == nullptr || op.src == nullptr) return invalid_argument("copy with a null buffer");
    auto d = reinterpret_cast<uintptr_t>(op.dst);
    auto s = reinterpret_cast<uintptr_t>(op.src);
    if (d + op.size < d || s + op.size < s) return invalid_argument("copy range wraps the address space");
    // Ranges in two address spaces cannot overlap.
    if (op.remote == RemoteSide::kNone && d < s + op.size && s < d + op.size) {
      return invalid_argument("source and destination overlap");
    }
  }
  return ok_status();
}

// --- cost profiles --------------------------------------------------------------

namespace {
std::atomic<std::shared_ptr<const CostProfile>> g_profile;
}  // namespace

CostModel Mover::cost(Cache cache) const noexcept {
  // acquire: pairs with the release store in set_cost_profile().
  auto profile = g_profile.load(std::memory_order_acquire);
  if (profile) {
    for (const auto& e : profile->entries) {
      if (e.kind == kind() && e.cache == cache && e.variant == cost_variant()) return e.model;
    }
  }
  return default_cost(cache);
}

std::optional<CostModel> profiled_cost(MoverKind kind, Cache cache, std::string_view variant) {
  auto profile = g_profile.load(std::memory_order_acquire);  // pairs with set_cost_profile()
  if (profile) {
    for (const auto& e : profile->entries) {
      if (e.kind == kind && e.cache == cache && e.variant == variant) return e.model;
    }
  }
  return std::nullopt;
}

CostModel fit_cost_model(std::span<const std::pair<double, double>> pts) {
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (auto [x, y] : pts) {
    if (x < 1.0) continue;
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  double den = n * sxx - sx * sx;
  double b = n >= 2 && den != 0 ? (n * sxy - sx * sy) / den : (n > 0 && sx > 0 ? sy / sx : 0);
  b = std::max(0.0, b);
  std::vector<double> rest;
  for (auto [x, y] : pts) {
    if (x < 1.0) rest.push_back(y - b * x);
  }
  double a = 0;
  if (!rest.empty()) {
    std::sort(rest.begin(), rest.end());
    size_t m = rest.size() / 2;
    a = rest.size() % 2 != 0 ? rest[m] : (rest[m - 1] + rest[m]) / 2;
  }
  return {std::max(0.0, a), b};
}

void set_cost_profile(CostProfile profile) {
  g_profile.store(std::make_shared<const CostProfile>(std::move(profile)), std::memory_order_release);
}

std::string default_profile_path() {
  if (const char* p = std::getenv("ROCKET_PROFILE")) return p;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + "/.cache/rocket/profile.json";
}

Status save_cost_profile(const CostProfile& profile, const std::string& path) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& e : profile.entries) {
    arr.push_back({{"mover", std::string(mover_kind_name(e.kind))},
                   {"cache", std::string(cache_name(e.cache))},
                   {"fixed_us", e.model.fixed_us},
                   {"us_per_mib", e.model.us_per_mib}});
    if (!e.variant.empty()) arr.back()["variant"] = e.variant;
  }
  nlohmann::json j{{"version", 1}, {"machine", profile.machine}, {"movers", arr}};
  return detail::replace_file(path, j.dump(1) + "\n");
}

Status load_cost_profile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return not_found("no cost profile at " + path + " (run `rocket calibrate`)");
  nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("movers") || !j["movers"].is_array()) {
    return data_loss("cost profile " + path + " is not valid JSON of the expected shape");
  }
  CostProfile p;
  if (j.contains("machine") && j["machine"].is_string()) p.machine = j["machine"].get<std::string>();
  for (const auto& e : j["movers"]) {
    if (!e.is_object() || !e.contains("mover") || !e.contains("cache") || !e["mover"].is_string() ||
        !e["cache"].is_string() || !e.contains("fixed_us") || !e["fixed_us"].is_number() ||
        !e.contains("us_per_mib") || !e["us_per_mib"].is_number()) {
      return data_loss("cost profile " + path + " has a malformed entry");
    }
    auto kind = parse_mover_kind(e["mover"].get<std::string>());
    auto cache = parse_cache(e["cache"].get<std::string>());
    if (!kind.ok()) return kind.status();
    if (!cache.ok()) return cache.status();
    double fixed = e["fixed_us"].get<double>(), per = e["us_per_mib"].get<double>();
    if (!(fixed >= 0 && fixed < 1e7 && per >= 0 && per < 1e7)) {
      return data_loss("cost profile " + path + " has an out-of-range model");
    }
    std::string variant;
    if (e.contains("variant")) {
      if (!e["variant"].is_string() || e["variant"].get<std::string>().size() > 32) {
        return data_loss("cost profile " + path + " has a malformed variant");
      }
      variant = e["variant"].get<std::string>();
    }
    p.entries.push_back({*kind, *cache, {fixed, per}, std::move(variant)});
  }
  set_cost_profile(std::move(p));
  return ok_status();
}

// --- registry ---------------------------------------------------------------------

namespace {

std::string read_first_line(const char* path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

MoverInfo probe_kernel() {
  // process_vm_readv/writev need ptrace access to the peer; Yama narrows it.
  char probe = 42, got = 0;
  Status self = detail::kernel_read(::getpid(), &got, &probe, 1);
  if (!self.ok()) return {MoverKind::kKernel, false, "process_vm_readv is unavailable: " + self.message()};
  std::string scope = read_first_line("/proc/sys/kernel/yama/ptrace_scope");
  std::string why = "process_vm_readv/writev";
  if (scope.empty() || scope == "0") {
    why += "; peers of the same uid may read each other (no Yama restriction)";
  } else if (scope == "1") {
    why += "; yama ptrace_scope=1: a client grants its server access (ClientOptions::allow_kernel_copy)";
  } else {
    return {MoverKind::kKernel, false, "yama ptrace_scope=" + scope + " forbids process_vm_readv between peers"};
  }
  return {MoverKind::kKernel, true, why};
}

MoverInfo probe_dsa() {
  std::error_code ec;
  if (!std::filesystem::exists("/dev/dsa", ec)) {
    return {MoverKind::kDsa, false, "no DSA work queue: /dev/dsa does not exist (no device, or idxd not loaded)"};
  }
  int wqs = 0;
  for (auto& e : std::filesystem::directory_iterator("/dev/dsa", ec)) {
    if (e.path().filename().string().rfind("wq", 0) == 0) ++wqs;
  }
  if (wqs == 0) return {MoverKind::kDsa, false, "/dev/dsa has no enabled user work queue (configure one with accel-config)"};
  return {MoverKind::kDsa, false, std::to_string(wqs) + " DSA work queue(s) found, but the dsa engine is not part of this build"};
}

MoverInfo probe_cuda() {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) return {MoverKind::kCuda, false, api.status().message()};
  return {MoverKind::kCuda, true,
          std::string("GPU 0: ") + (*api)->device_name() + "; copy engines and copy kernels (librocket_cuda.so)"};
}

}  // namespace

Result<std::unique_ptr<Mover>> make_mover(MoverKind kind, const MoverConfig& config) {
  switch (kind) {
    case MoverKind::kAuto:
    case MoverKind::kCpu:
      return std::unique_ptr<Mover>(std::make_unique<detail::CpuMover>());
    case MoverKind::kCpuStream:
      if (detail::stream_isa() == detail::StreamIsa::kNone) {
        return unavailable("mover 'cpu_stream' is not usable: the CPU has no streaming stores");
      }
      return std::unique_ptr<Mover>(std::make_unique<detail::CpuStreamMover>());
    case MoverKind::kThreads:
      return std::unique_ptr<Mover>(std::make_unique<detail::ThreadsMover>(config, MoverKind::kThreads));
    case MoverKind::kCuda:
      return detail::CudaMover::open(config);
    case MoverKind::kKernel: {
      MoverInfo info = probe_kernel();
      if (!info.usable) return unavailable("mover 'kernel' is not usable: " + info.reason);
      return std::unique_ptr<Mover>(std::make_unique<detail::ThreadsMover>(config, MoverKind::kKernel));
    }
    default:
      break;
  }
  for (const MoverInfo& info : probe_movers()) {
    if (info.kind == kind) {
      return unavailable("mover '" + std::string(mover_kind_name(kind)) + "' is not usable: " + info.reason);
    }
  }
  return invalid_argument("unknown mover kind");
}

namespace {
// The shared engines and the lock over them. Held across fork() (the
// handlers below), so that a child never finds it locked by a thread it does
// not have.
std::mutex g_engines_mu;
void lock_engines() noexcept { g_engines_mu.lock(); }
void unlock_engines() noexcept { g_engines_mu.unlock(); }
}  // namespace

Result<Mover*> shared_mover(MoverKind kind) {
  if (kind == MoverKind::kAuto) kind = MoverKind::kCpu;
  static std::unique_ptr<Mover> engines[8];
  static bool profile_tried = false;
  static const int fork_handlers = ::pthread_atfork(&lock_engines, &unlock_engines, &unlock_engines);
  (void)fork_handlers;
  static uint64_t made_in = detail::fork_generation();
  std::lock_guard<std::mutex> lock(g_engines_mu);
  if (made_in != detail::fork_generation()) {
    // A forked child: the engines' worker threads stayed in the parent, so
    // they can neither run copies nor be joined. Let them go unrun (their
    // memory stays allocated) and make fresh ones here.
    for (auto& e : engines) (void)e.release();
    made_in = detail::fork_generation();
  }
  if (!profile_tried) {
    // The runtime uses this machine's calibrated costs when `rocket
    // calibrate` has written them; built-in estimates otherwise.
    profile_tried = true;
    Status s = load_cost_profile(default_profile_path());
    if (!s.ok() && s.code() != StatusCode::kNotFound) {
      std::fprintf(stderr, "rocket: ignoring cost profile: %s\n", s.to_string().c_str());
    }
  }
  auto& slot = engines[static_cast<size_t>(kind)];
  if (!slot) {
    ROCKET_ASSIGN_OR_RETURN(slot, make_mover(kind));
  }
  return slot.get();
}

std::vector<MoverInfo> probe_movers() {
  std::vector<MoverInfo> out;
  out.push_back({MoverKind::kCpu, true, "memcpy on the calling thread"});
  auto isa = detail::stream_isa();
  if (isa == detail::StreamIsa::kNone) {
    out.push_back({MoverKind::kCpuStream, false, "the CPU has no streaming-store instructions"});
  } else {
    out.push_back({MoverKind::kCpuStream, true,
                   "non-temporal stores with " + std::string(detail::stream_isa_name(isa))});
  }
  unsigned n = std::max(2u, std::thread::hardware_concurrency()) - 1;
  out.push_back({MoverKind::kThreads, true,
                 std::to_string(n) + " copy worker threads by default" +
                     (detail::cpu_has_waitpkg() ? "; waiters poll with UMWAIT" : "; waiters poll with pause (no WAITPKG)")});
  out.push_back(probe_kernel());
  out.push_back(probe_dsa());
  out.push_back(probe_cuda());
  return out;
}

}  // namespace rocket
