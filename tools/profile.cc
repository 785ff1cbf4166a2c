// `rocket profile`: SkyRocket's offline sweep. Every situation (size x how
// recently the source and the destination were touched x concurrent copies)
// runs every configuration (engine x cache) on this machine, and each timed
// copy becomes a trace row holding the features the runtime itself observed
// for it, so that a model trained on the trace sees what the runtime will see.
#include "profile.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "mapped_buffer.h"
#include "rocket/policy/skyrocket.h"
#include "rocket/rocket.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
namespace sky = rocket::skyrocket;

struct ProfileOptions {
  std::string out;
  std::string sizes = "256K,1M,4M,16M,64M";
  std::string concurrency;  // default: 1 and every core (at most 4)
  std::string busy;         // default: 0 and half the cores (at least 1, at most 8)
  double budget_ms = 40;
  int rows_per_point = 48;
  bool quick = false;
};

// The configurations to try: every usable engine that copies within a
// process, with each cache behaviour it honours.
std::vector<sky::Config> configurations() {
  std::vector<sky::Config> out;
  for (const MoverInfo& info : probe_movers()) {
    if (!info.usable || info.kind == MoverKind::kKernel) continue;
    auto m = shared_mover(info.kind);
    if (!m.ok()) continue;
    if ((*m)->capabilities().cache_control) {
      out.push_back({info.kind, Cache::kInject});
      out.push_back({info.kind, Cache::kBypass});
    } else {
      out.push_back({info.kind, Cache::kAuto});
    }
  }
  return out;
}

// How recently a copy's source or destination was touched: each copy takes
// the next part of a span of memory, cycled through. A span of the copy's
// own size is the same buffer every time (hot); 32 MiB is about a last-level
// cache (warm); 256 MiB is more than any (cold). A fresh destination has its
// pages dropped before each copy, so the copy faults them in (new memory).
constexpr size_t kWarmSpan = size_t{32} << 20;
constexpr size_t kColdSpan = size_t{256} << 20;
enum class Reuse { kHot, kWarm, kCold, kFresh };

const char* reuse_name(Reuse r) {
  switch (r) {
    case Reuse::kHot:
      return "hot";
    case Reuse::kWarm:
      return "warm";
    case Reuse::kCold:
      return "cold";
    case Reuse::kFresh:
      return "fresh";
  }
  return "?";
}

size_t span_of(Reuse r, size_t size) {
  return r == Reuse::kCold ? std::max(kColdSpan, size) : r == Reuse::kWarm ? std::max(kWarmSpan, size) : size;
}

struct Situation {
  size_t size;
  Reuse src, dst;
  unsigned copiers;
  unsigned busy;  // threads spinning beside the copiers: other work on the machine
  std::string name() const {
    return "size=" + human_size(size) + ";src=" + reuse_name(src) + ";dst=" + reuse_name(dst) +
           ";copiers=" + std::to_string(copiers) + ";busy=" + std::to_string(busy);
  }
};

// One copier's memory: a source span and a destination span, mapped once for
// the largest size and registered with every engine that needs it.
struct Arena {
  std::unique_ptr<MappedBuffer> src, dst;
};

// Runs `config` in `sit` on every copier for the budget; the first copier's
// rows (at most `keep`) are returned, with the copiers' median latency.
struct PointResult {
  std::vector<sky::TraceRow> rows;
  Summary lat;
  Status status = ok_status();
};

PointResult run_point(const Situation& sit, const sky::Config& cfg, std::vector<Arena>& arenas, double budget_ms,
                      int keep, int min_copies) {
  PointResult res;
  auto m = shared_mover(cfg.mover);
  if (!m.ok()) {
    res.status = m.status();
    return res;
  }
  const size_t src_slots = span_of(sit.src, sit.size) / sit.size, dst_slots = span_of(sit.dst, sit.size) / sit.size;
  std::vector<std::vector<double>> lat(sit.copiers);
  std::vector<std::vector<sky::TraceRow>> rows(sit.copiers);
  std::vector<Status> errors(sit.copiers, ok_status());
  std::atomic<bool> stop{false};
  std::atomic<unsigned> ready{0};
  auto copier = [&](unsigned id) {
    Arena& a = arenas[id];
    size_t slot = 0;
    ready.fetch_add(1);
    while (ready.load() < sit.copiers) std::this_thread::yield();
    const auto start = Clock::now();
    // The first 20 ms warm caches and let the samplers see this situation.
    const auto record_from = start + std::chrono::milliseconds(20);
    const auto end = record_from + std::chrono::microseconds(static_cast<int64_t>(budget_ms * 1000));
    int copies = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const auto now = Clock::now();
      // The first copier decides when the point ends (after at least a few
      // timed copies, however long each takes); the others copy until then.
      if (id == 0 && now >= end && copies >= min_copies) break;
      const std::byte* src = a.src->data() + (slot % src_slots) * sit.size;
      std::byte* dst = a.dst->data() + (slot % dst_slots) * sit.size;
      ++slot;
      if (sit.dst == Reuse::kFresh) ::madvise(dst, sit.size, MADV_DONTNEED);
      sky::Features f = sky::observe(src, dst, sit.size);
      sky::InFlight inflight(sit.size);
      CopyOp op{dst, src, sit.size};
      const auto t0 = Clock::now();
      Status st = (*m)->execute({&op, 1}, cfg.cache);
      const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      if (!st.ok()) {
        errors[id] = st;
        break;
      }
      if (t0 < record_from) continue;
      ++copies;
      lat[id].push_back(us);
      rows[id].push_back({sit.name(), f, cfg, us});
    }
    if (id == 0) stop.store(true);  // the others end with the first copier
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < sit.busy; ++i) {
    threads.emplace_back([&] {
      volatile uint64_t spin = 0;
      while (!stop.load(std::memory_order_relaxed)) spin = spin + 1;
    });
  }
  for (unsigned i = 1; i < sit.copiers; ++i) threads.emplace_back(copier, i);
  copier(0);
  for (auto& t : threads) t.join();
  for (const Status& e : errors) {
    if (!e.ok()) res.status = e;
  }
  std::vector<double> all;
  for (unsigned i = 0; i < sit.copiers; ++i) {
    all.insert(all.end(), lat[i].begin(), lat[i].end());
    // An even spread of each copier's rows, so long points do not swamp the trace.
    const size_t n = rows[i].size(), want = std::min<size_t>(n, static_cast<size_t>(keep));
    for (size_t k = 0; k < want; ++k) res.rows.push_back(std::move(rows[i][k * n / want]));
  }
  res.lat = summarize(all);
  return res;
}

int run_profile(const ProfileOptions& o) {
  std::vector<size_t> sizes;
  for (const auto& s : split(o.quick ? std::string("1M,16M") : o.sizes)) {
    auto v = parse_size(s);
    if (!v.ok() || *v == 0 || *v > kColdSpan) {
      std::cerr << "rocket profile: size '" << s << "' must be between 1 byte and 256M\n";
      return 2;
    }
    sizes.push_back(*v);
  }
  if (!(o.budget_ms > 0 && o.budget_ms <= 60000) || o.rows_per_point < 1 || o.rows_per_point > 100000) {
    std::cerr << "rocket profile: --budget-ms takes (0, 60000] and --rows 1 to 100000\n";
    return 2;
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // Default: 1 copier and the cores (at most 4); no busy thread and half the cores.
  const std::string copiers_arg =
      o.concurrency.empty() ? (cores > 1 ? "1," + std::to_string(std::min(cores, 4u)) : "1") : o.concurrency;
  const std::string busy_arg = o.busy.empty() ? "0," + std::to_string(std::clamp(cores / 2, 1u, 8u)) : o.busy;
  auto copiers_or = parse_counts(copiers_arg, 1, 64);
  auto busy_or = parse_counts(busy_arg, 0, 64);
  if (!copiers_or.ok() || !busy_or.ok()) {
    std::cerr << "rocket profile: --"
              << (copiers_or.ok() ? "busy: " + busy_or.status().message()
                                  : "concurrency: " + copiers_or.status().message())
              << "\n";
    return 2;
  }
  const std::vector<unsigned>& copiers = *copiers_or;
  const std::vector<unsigned>& busy = *busy_or;
  if (sizes.empty() || copiers.empty() || busy.empty()) {
    std::cerr << "rocket profile: nothing to sweep\n";
    return 2;
  }
  const std::string out = o.out.empty() ? sky::default_trace_path() : o.out;
  // The trace file must be writable before the arenas are mapped and the
  // sweep takes minutes, not after.
  if (Status st = sky::write_trace(out, {}); !st.ok()) {
    std::cerr << "rocket profile: " << st.to_string() << "\n";
    return 1;
  }
  const std::vector<sky::Config> configs = configurations();
  const size_t max_size = *std::max_element(sizes.begin(), sizes.end());
  const unsigned max_copiers = *std::max_element(copiers.begin(), copiers.end());
  // Registered with every engine that needs it (the GPU), so each runs at
  // its full speed from and to this memory.
  Mover* needs_registration = nullptr;
  for (const auto& c : configs) {
    auto m = shared_mover(c.mover);
    if (m.ok() && (*m)->capabilities().needs_registered_memory) needs_registration = *m;
  }
  std::vector<Arena> arenas(max_copiers);
  for (auto& a : arenas) {
    a.src = std::make_unique<MappedBuffer>(
        std::max(kColdSpan, max_size),
        MappedBufferOptions{.fill = 0x3c, .huge_pages = false, .register_with = needs_registration});
    a.dst = std::make_unique<MappedBuffer>(
        std::max(kColdSpan, max_size),
        MappedBufferOptions{.fill = 0, .huge_pages = false, .register_with = needs_registration});
    if (a.src->data() == nullptr || a.dst->data() == nullptr) {
      std::cerr << "rocket profile: cannot map " << human_size(2 * std::max(kColdSpan, max_size)) << " per copier\n";
      return 1;
    }
  }
  std::vector<Situation> situations;
  for (size_t size : sizes) {
    for (Reuse src : {Reuse::kHot, Reuse::kWarm, Reuse::kCold}) {
      // A warm span no larger than the copy is the hot one again.
      if (src == Reuse::kWarm && size * 2 > kWarmSpan) continue;
      for (Reuse dst : {Reuse::kHot, Reuse::kCold, Reuse::kFresh}) {
        for (unsigned n : copiers) {
          for (unsigned b : busy) situations.push_back({size, src, dst, n, b});
        }
      }
    }
  }
  std::fprintf(stderr, "rocket profile: %zu situations x %zu configurations (", situations.size(), configs.size());
  for (size_t i = 0; i < configs.size(); ++i)
    std::fprintf(stderr, "%s%s", i ? " " : "", sky::config_name(configs[i]).c_str());
  std::fprintf(stderr, ")\n");
  std::vector<sky::TraceRow> trace;
  size_t step = 0;
  std::printf("%-40s %-18s %10s %10s\n", "situation", "configuration", "p50 us", "p99 us");
  for (const Situation& sit : situations) {
    // Every configuration of one situation back to back: a machine that
    // drifts over the sweep weighs on the configurations alike.
    for (const sky::Config& cfg : configs) {
      ++step;
      PointResult r =
          run_point(sit, cfg, arenas, o.quick ? 8 : o.budget_ms, o.quick ? 16 : o.rows_per_point, o.quick ? 2 : 5);
      if (!r.status.ok()) {
        std::cerr << "rocket profile: " << sit.name() << " " << sky::config_name(cfg) << ": " << r.status.to_string()
                  << "\n";
        return 1;
      }
      std::printf("%-40s %-18s %10.1f %10.1f\n", sit.name().c_str(), sky::config_name(cfg).c_str(), r.lat.p50,
                  r.lat.p99);
      trace.insert(trace.end(), std::make_move_iterator(r.rows.begin()), std::make_move_iterator(r.rows.end()));
    }
  }
  Status st = sky::write_trace(out, trace);
  if (!st.ok()) {
    std::cerr << "rocket profile: " << st.to_string() << "\n";
    return 1;
  }
  std::fprintf(stderr, "rocket profile: %zu rows written to %s (train with `rocket train --traces %s`)\n", trace.size(),
               out.c_str(), out.c_str());
  return 0;
}

}  // namespace

void add_profile(CLI::App& app) {
  auto o = std::make_shared<ProfileOptions>();
  auto* cmd = app.add_subcommand("profile",
                                 "SkyRocket: time every engine and cache in situations swept on this machine, "
                                 "write traces for `rocket train`");
  cmd->add_option("--out", o->out, "trace file (default: traces.csv beside the model)");
  cmd->add_option("--sizes", o->sizes, "copy sizes to sweep")->capture_default_str();
  cmd->add_option("--concurrency", o->concurrency, "concurrent copiers to sweep (default: 1 and the cores, at most 4)");
  cmd->add_option("--busy", o->busy, "spinning threads beside them to sweep (default: 0 and half the cores)");
  cmd->add_option("--budget-ms", o->budget_ms, "timed copying per point")->capture_default_str();
  cmd->add_option("--rows", o->rows_per_point, "trace rows kept per copier and point")->capture_default_str();
  cmd->add_flag("--quick", o->quick, "two sizes and short points (seconds; for tests)");
  cmd->callback([o] { std::exit(run_profile(*o)); });
}

}  // namespace rocket::tools
