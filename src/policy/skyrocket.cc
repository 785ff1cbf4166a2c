// SkyRocket's online half: the features of a copy, the samplers behind them,
// decisions (cached by quantised features) and the decision log.
#include "rocket/policy/skyrocket.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace rocket::skyrocket {
namespace {

using Clock = std::chrono::steady_clock;

// --- features ------------------------------------------------------------------------

// Bytes this process has copied (through observe()), and where on that count
// each recently touched address (a copy's source or destination) was last
// touched: a direct-mapped table, so an address evicted by another that
// hashes alike reads as not recently touched.
std::atomic<uint64_t> g_bytes_seen{0};
constexpr size_t kReuseSlots = 4096;
struct ReuseSlot {
  std::atomic<uintptr_t> addr{0};  // the address last touched here
  std::atomic<uint64_t> at{0};     // the count of bytes copied when that copy began
  std::atomic<uint64_t> bytes{0};  // and its size
};
ReuseSlot g_reuse[kReuseSlots];

std::atomic<uint32_t> g_active{0};
std::atomic<uint64_t> g_inflight_bytes{0};

// Written by the sampler thread, read on the request path.
std::atomic<float> g_faults_log2{0};
std::atomic<float> g_runnable{0};

std::mutex g_sampler_mu;
std::atomic<bool> g_sampler_running{false};

float log2_1p(double x) { return static_cast<float>(std::log2(1.0 + std::max(0.0, x))); }

// log2(1 + how many bytes this process copied since the bytes at `p` were
// last touched, on average over the copy): each byte of a copy is taken to
// be touched at its place in the count of bytes copied. A range mostly not
// covered by the last touch at `p` (a smaller copy) was not touched lately:
// kNeverCopied. Then notes the copy of `bytes` starting at count `now`.
float touch(const void* p, uint64_t now, size_t bytes) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  ReuseSlot& slot = g_reuse[(addr >> 6) * 0x9E3779B97F4A7C15ull >> 52];  // 12 bits of a Fibonacci hash
  float reuse = kNeverCopied;
  if (slot.addr.load(std::memory_order_relaxed) == addr) {
    const uint64_t at = slot.at.load(std::memory_order_relaxed);
    const uint64_t covered = std::min<uint64_t>(slot.bytes.load(std::memory_order_relaxed), bytes);
    if (covered * 2 >= bytes && now >= at + covered / 2) {
      reuse = std::min(kNeverCopied, log2_1p(static_cast<double>(now - at - covered / 2)));
    }
  }
  slot.addr.store(addr, std::memory_order_relaxed);
  slot.at.store(now, std::memory_order_relaxed);
  slot.bytes.store(bytes, std::memory_order_relaxed);
  return reuse;
}

uint64_t page_faults() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt) + static_cast<uint64_t>(ru.ru_majflt);
}

// Runnable tasks on the machine: /proc/loadavg's "running/total" field.
int runnable_tasks(int fd) {
  char buf[128];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char* p = buf;
  for (int field = 0; field < 3 && p != nullptr; ++field) {
    p = std::strchr(p, ' ');
    if (p != nullptr) ++p;
  }
  return p != nullptr ? std::atoi(p) : 0;
}

void sample_forever() {
  int loadavg = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  uint64_t faults = page_faults();
  auto t = Clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    uint64_t f = page_faults();
    auto now = Clock::now();
    double secs = std::chrono::duration<double>(now - t).count();
    if (secs > 0) g_faults_log2.store(log2_1p(static_cast<double>(f - faults) / secs), std::memory_order_relaxed);
    faults = f;
    t = now;
    // The sampler itself is running while it reads.
    if (loadavg >= 0)
      g_runnable.store(static_cast<float>(std::max(0, runnable_tasks(loadavg) - 1)), std::memory_order_relaxed);
  }
}

// A fork's child has no sampler thread: the next observe() starts one.
void start_sampler() {
  std::lock_guard<std::mutex> lock(g_sampler_mu);
  if (g_sampler_running.load(std::memory_order_relaxed)) return;
  static std::once_flag atfork;
  std::call_once(atfork, [] { ::pthread_atfork(nullptr, nullptr, [] { g_sampler_running.store(false); }); });
  try {
    std::thread(sample_forever).detach();
    g_sampler_running.store(true, std::memory_order_release);
  } catch (const std::system_error&) {
    // No thread to spare: the sampled features stay at their last values.
  }
}

// --- decisions ---------------------------------------------------------------------------

struct Quantised {
  uint32_t size, reuse, dst_reuse, faults, inflight, active, runnable;
};

uint32_t clamp_round(float v, uint32_t hi) {
  if (!(v > 0)) return 0;  // also NaN
  return static_cast<uint32_t>(std::min(static_cast<float>(hi), std::nearbyint(v)));
}

Quantised quantise(const Features& f) {
  // Reuse distances in quarter octaves up to 1 GiB (the cache cliffs lie
  // there); beyond, in one bucket with kNeverCopied.
  auto reuse = [](float v) { return v >= 30 ? 127u : clamp_round(v * 4, 119); };
  return {clamp_round(f.v[kSizeLog2] * 4, 255),
          reuse(f.v[kReuseLog2]),
          reuse(f.v[kDstReuseLog2]),
          clamp_round(f.v[kFaultsLog2], 31),
          clamp_round(f.v[kInflightLog2], 63),
          clamp_round(f.v[kActive], 7),
          clamp_round(f.v[kRunnable], 15)};
}

Features dequantise(const Quantised& q) {
  Features f;
  f.v[kSizeLog2] = static_cast<float>(q.size) / 4;
  auto reuse = [](uint32_t r) { return r == 127 ? kNeverCopied : static_cast<float>(r) / 4; };
  f.v[kReuseLog2] = reuse(q.reuse);
  f.v[kDstReuseLog2] = reuse(q.dst_reuse);
  f.v[kFaultsLog2] = static_cast<float>(q.faults);
  f.v[kInflightLog2] = static_cast<float>(q.inflight);
  f.v[kActive] = static_cast<float>(q.active);
  f.v[kRunnable] = static_cast<float>(q.runnable);
  return f;
}

// The decision cache's key: every quantised feature, whether the copy is
// asynchronous and the cache it must use, each in a field of its own.
struct KeyField {
  int shift, bits;
};
constexpr KeyField kSizeKey{0, 8}, kReuseKey{8, 7}, kDstReuseKey{15, 7}, kFaultsKey{22, 5}, kInflightKey{27, 6},
    kActiveKey{33, 3}, kRunnableKey{36, 4}, kAsyncKey{40, 1}, kCacheKey{41, 2};
constexpr int kKeyBits = kCacheKey.shift + kCacheKey.bits;
static_assert(kReuseKey.shift == kSizeKey.shift + kSizeKey.bits &&
                  kDstReuseKey.shift == kReuseKey.shift + kReuseKey.bits &&
                  kFaultsKey.shift == kDstReuseKey.shift + kDstReuseKey.bits &&
                  kInflightKey.shift == kFaultsKey.shift + kFaultsKey.bits &&
                  kActiveKey.shift == kInflightKey.shift + kInflightKey.bits &&
                  kRunnableKey.shift == kActiveKey.shift + kActiveKey.bits &&
                  kAsyncKey.shift == kRunnableKey.shift + kRunnableKey.bits &&
                  kCacheKey.shift == kAsyncKey.shift + kAsyncKey.bits,
              "key fields follow one another without overlap");

uint64_t field(KeyField f, uint64_t v) { return (v & ((uint64_t{1} << f.bits) - 1)) << f.shift; }

uint64_t cache_key(const Quantised& q, bool async, Cache cache) {
  return field(kSizeKey, q.size) | field(kReuseKey, q.reuse) | field(kDstReuseKey, q.dst_reuse) |
         field(kFaultsKey, q.faults) | field(kInflightKey, q.inflight) | field(kActiveKey, q.active) |
         field(kRunnableKey, q.runnable) | field(kAsyncKey, async ? 1 : 0) |
         field(kCacheKey, static_cast<uint8_t>(cache));
}

// A cache entry: key (43 bits) | model generation (5) | config index (6) |
// log(1 + predicted us) * 64 (10). Zero is empty: generations start at 1.
constexpr size_t kCacheSlots = 4096;
std::atomic<uint64_t> g_decisions[kCacheSlots];
constexpr uint64_t kKeyMask = (uint64_t{1} << kKeyBits) - 1;
constexpr int kGenShift = kKeyBits, kIndexShift = kKeyBits + 5, kPredShift = kKeyBits + 11;
constexpr uint64_t kGenMask = 0x1f;
constexpr double kPredScale = 64;  // 10 bits: log(1 + us) to 16, in steps of 1/64
static_assert(kPredShift + 10 == 64);

struct Installed {
  std::shared_ptr<const Model> model;
  uint8_t generation = 0;
  // Per config: its engine is usable here, and asynchronous. Settled on the
  // first decision (creating engines is not for install_model's caller).
  mutable std::once_flag probed;
  mutable std::vector<uint8_t> usable, async;
};
// The model decisions read, without a lock or a reference count: an
// installed model is never freed (a decision may still be reading one that
// was replaced), so each install keeps its model until the process exits.
// Models are installed once or a few times per process.
std::atomic<const Installed*> g_installed{nullptr};
std::mutex g_installs_mu;
std::vector<std::unique_ptr<const Installed>> g_installs;  // every model ever installed
std::atomic<uint8_t> g_generation{0};

void probe(const Installed& in) {
  std::call_once(in.probed, [&] {
    for (const Config& c : in.model->configs()) {
      auto m = shared_mover(c.mover);
      in.usable.push_back(m.ok() ? 1 : 0);
      in.async.push_back(m.ok() && (*m)->capabilities().async ? 1 : 0);
    }
  });
}

// --- the decision log --------------------------------------------------------------------

struct LoggedRow {
  Features features;
  Config config;
  float us;
};
std::mutex g_log_mu;
std::vector<LoggedRow> g_log;  // a ring of kLogCapacity once full
size_t g_log_next = 0;

// --- trace files -------------------------------------------------------------------------

constexpr const char* kTraceHeader =
    "situation,size_log2,reuse_log2,dst_reuse_log2,faults_log2,inflight_log2,active,runnable,mover,cache,us";

}  // namespace

std::string_view feature_name(Feature f) noexcept {
  switch (f) {
    case kSizeLog2:
      return "size_log2";
    case kReuseLog2:
      return "reuse_log2";
    case kDstReuseLog2:
      return "dst_reuse_log2";
    case kFaultsLog2:
      return "faults_log2";
    case kInflightLog2:
      return "inflight_log2";
    case kActive:
      return "active";
    case kRunnable:
      return "runnable";
    case kNumFeatures:
      break;
  }
  return "?";
}

std::string config_name(const Config& c) {
  return std::string(mover_kind_name(c.mover)) + "/" + std::string(cache_name(c.cache));
}

Features observe(const void* src, const void* dst, size_t bytes) noexcept {
  if (!g_sampler_running.load(std::memory_order_acquire)) start_sampler();
  Features f;
  f.v[kSizeLog2] = bytes > 0 ? static_cast<float>(std::log2(static_cast<double>(bytes))) : 0;
  const uint64_t now = g_bytes_seen.fetch_add(bytes, std::memory_order_relaxed);
  f.v[kReuseLog2] = touch(src, now, bytes);
  f.v[kDstReuseLog2] = dst != nullptr ? touch(dst, now, bytes) : kNeverCopied;
  f.v[kFaultsLog2] = g_faults_log2.load(std::memory_order_relaxed);
  f.v[kInflightLog2] = log2_1p(static_cast<double>(g_inflight_bytes.load(std::memory_order_relaxed)));
  f.v[kActive] = static_cast<float>(g_active.load(std::memory_order_relaxed));
  f.v[kRunnable] = g_runnable.load(std::memory_order_relaxed);
  return f;
}

InFlight::InFlight(size_t bytes) noexcept : bytes_(bytes) {
  g_active.fetch_add(1, std::memory_order_relaxed);
  g_inflight_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

InFlight::~InFlight() {
  g_active.fetch_sub(1, std::memory_order_relaxed);
  g_inflight_bytes.fetch_sub(bytes_, std::memory_order_relaxed);
}

Features quantised(const Features& f) noexcept { return dequantise(quantise(f)); }

void install_model(std::shared_ptr<const Model> model) {
  const Installed* in = nullptr;
  std::lock_guard<std::mutex> lock(g_installs_mu);
  if (model) {
    auto next = std::make_unique<Installed>();
    next->model = std::move(model);
    // 1..31: 0 marks an empty cache slot. Installing also clears the cache,
    // so a generation that comes round again meets no entry of its own --
    // unless a decision that began before 31 installs ago writes its entry
    // after the clearing: then an earlier model's choice may be taken, still
    // a valid one (decide() checks the index against the configurations).
    next->generation = static_cast<uint8_t>(g_generation.fetch_add(1, std::memory_order_relaxed) % kGenMask + 1);
    in = next.get();
    g_installs.push_back(std::move(next));
  }
  g_installed.store(in, std::memory_order_release);
  for (auto& slot : g_decisions) slot.store(0, std::memory_order_relaxed);
}

std::shared_ptr<const Model> installed_model() {
  const Installed* in = g_installed.load(std::memory_order_acquire);
  return in != nullptr ? in->model : nullptr;
}

Status load_model(const std::string& path) {
  ROCKET_ASSIGN_OR_RETURN(Model m, Model::load(path));
  install_model(std::make_shared<const Model>(std::move(m)));
  return ok_status();
}

std::string default_model_path() {
  if (const char* p = std::getenv("ROCKET_MODEL")) return p;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + "/.cache/rocket/model.json";
}

std::string default_trace_path() {
  const std::filesystem::path dir = std::filesystem::path(default_model_path()).parent_path();
  return ((dir.empty() ? std::filesystem::path(".") : dir) / "traces.csv").string();
}

bool ensure_default_model() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (installed_model()) return;  // the application installed its own
    Status s = load_model(default_model_path());
    if (!s.ok() && s.code() != StatusCode::kNotFound) {
      std::fprintf(stderr, "rocket: ignoring SkyRocket model: %s\n", s.to_string().c_str());
    }
  });
  return g_installed.load(std::memory_order_relaxed) != nullptr;
}

std::optional<Decision> decide(const Features& f, bool async, Cache cache) {
  const Installed* in = g_installed.load(std::memory_order_acquire);
  if (in == nullptr) return std::nullopt;
  const Quantised q = quantise(f);
  const uint64_t key = cache_key(q, async, cache);
  std::atomic<uint64_t>& slot = g_decisions[(key * 0x9E3779B97F4A7C15ull) >> 52];
  const uint64_t e = slot.load(std::memory_order_relaxed);
  const auto& configs = in->model->configs();
  if ((e & kKeyMask) == key && (e >> kGenShift & kGenMask) == in->generation) {
    const size_t idx = e >> kIndexShift & 0x3f;
    if (idx < configs.size()) {
      return Decision{configs[idx], static_cast<float>(std::expm1(static_cast<double>(e >> kPredShift) / kPredScale)),
                      true};
    }
  }
  probe(*in);
  const Features at = dequantise(q);
  size_t best = SIZE_MAX;
  double best_log = 0;
  for (size_t i = 0; i < configs.size(); ++i) {
    if (!in->usable[i] || (async && !in->async[i])) continue;
    if (cache != Cache::kAuto && configs[i].cache != Cache::kAuto && configs[i].cache != cache) continue;
    double l = in->model->predict_log(at, i);
    if (best == SIZE_MAX || l < best_log) {
      best = i;
      best_log = l;
    }
  }
  if (best == SIZE_MAX) return std::nullopt;
  const uint64_t pred_q = static_cast<uint64_t>(std::clamp(best_log * kPredScale, 0.0, 1023.0));
  slot.store(key | uint64_t{in->generation} << kGenShift | uint64_t{best} << kIndexShift | pred_q << kPredShift,
             std::memory_order_relaxed);
  return Decision{configs[best], static_cast<float>(std::expm1(std::max(0.0, best_log))), false};
}

void log_decision(const Features& f, const Config& c, double measured_us) noexcept {
  std::unique_lock<std::mutex> lock(g_log_mu, std::try_to_lock);
  if (!lock.owns_lock()) return;  // another thread is logging: drop rather than wait
  LoggedRow row{f, c, static_cast<float>(measured_us)};
  if (g_log.size() < kLogCapacity) {
    try {
      g_log.push_back(row);
    } catch (const std::bad_alloc&) {
      return;
    }
  } else {
    g_log[g_log_next] = row;
  }
  g_log_next = (g_log_next + 1) % kLogCapacity;
}

std::vector<TraceRow> drain_decision_log() {
  std::vector<LoggedRow> rows;
  size_t next = 0;
  {
    std::lock_guard<std::mutex> lock(g_log_mu);
    rows.swap(g_log);
    next = g_log_next;
    g_log_next = 0;
  }
  std::vector<TraceRow> out;
  out.reserve(rows.size());
  const size_t start = rows.size() == kLogCapacity ? next : 0;  // oldest first
  for (size_t i = 0; i < rows.size(); ++i) {
    const LoggedRow& r = rows[(start + i) % rows.size()];
    out.push_back({"online", r.features, r.config, r.us});
  }
  return out;
}

Status write_trace(const std::string& path, std::span<const TraceRow> rows, bool append) {
  for (const TraceRow& r : rows) {
    if (r.situation.find_first_of(",\n") != std::string::npos) {
      return invalid_argument("trace situation \"" + r.situation + "\" holds a comma or newline");
    }
  }
  const bool header = !append || ::access(path.c_str(), F_OK) != 0;
  if (const auto dir = std::filesystem::path(path).parent_path(); !dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);  // a failure shows as the open's
  }
  std::ofstream f(path, append ? std::ios::app : std::ios::trunc);
  if (!f) return errno_status("open " + path, errno);
  if (header) f << kTraceHeader << "\n";
  char num[32];
  for (const TraceRow& r : rows) {
    f << r.situation;
    for (float v : r.features.v) {
      std::snprintf(num, sizeof num, ",%.6g", static_cast<double>(v));
      f << num;
    }
    std::snprintf(num, sizeof num, ",%.6g", r.us);
    f << "," << mover_kind_name(r.config.mover) << "," << cache_name(r.config.cache) << num << "\n";
  }
  f.flush();
  if (!f) return errno_status("write " + path, errno);
  return ok_status();
}

Result<std::vector<TraceRow>> read_trace(const std::string& path) {
  std::ifstream f(path);
  if (!f) return not_found("no trace at " + path);
  std::string line;
  if (!std::getline(f, line) || line != kTraceHeader) {
    return data_loss(path + ":1: not a Rocket trace (expected the header \"" + kTraceHeader + "\")");
  }
  std::vector<TraceRow> rows;
  for (size_t n = 2; std::getline(f, line); ++n) {
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) { return data_loss(path + ":" + std::to_string(n) + ": " + why); };
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) cells.push_back(cell);
    constexpr size_t kFields = 1 + kNumFeatures + 3;
    if (cells.size() != kFields) {
      return bad("expected " + std::to_string(kFields) + " fields, found " + std::to_string(cells.size()));
    }
    TraceRow r;
    r.situation = cells[0];
    for (size_t i = 0; i < kNumFeatures; ++i) {
      char* end = nullptr;
      float v = std::strtof(cells[1 + i].c_str(), &end);
      if (end == cells[1 + i].c_str() || *end != '\0' || !std::isfinite(v) || v < 0 || v > 1e6f) {
        return bad(std::string(feature_name(static_cast<Feature>(i))) + " \"" + cells[1 + i] +
                   "\" is not a number in range");
      }
      r.features.v[i] = v;
    }
    auto mover = parse_mover_kind(cells[kNumFeatures + 1]);
    if (!mover.ok()) return bad(mover.status().message());
    auto cache = parse_cache(cells[kNumFeatures + 2]);
    if (!cache.ok()) return bad(cache.status().message());
    r.config = {*mover, *cache};
    char* end = nullptr;
    const std::string& us = cells[kNumFeatures + 3];
    r.us = std::strtod(us.c_str(), &end);
    if (end == us.c_str() || *end != '\0' || !std::isfinite(r.us) || r.us < 0 || r.us > 1e9) {
      return bad("us \"" + us + "\" is not a time in range");
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace rocket::skyrocket
