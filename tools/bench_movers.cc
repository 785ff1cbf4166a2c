#include "bench_movers.h"

#include <sys/mman.h>
#include <time.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "mover/cuda_mover.h"
#include "mapped_buffer.h"
#include "process.h"
#include "rocket/rocket.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }

// CPU time of the calling thread only (the engine's workers are not the
// caller). The scheduler's exact clock: getrusage() is tick-sampled.
double thread_cpu_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}




// Reads the whole buffer (what a consumer does right after the copy).
uint64_t consume(const MappedBuffer& v) {
  uint64_t sum = 0;
  const auto* p = reinterpret_cast<const uint64_t*>(v.data());
  for (size_t i = 0; i < v.size() / 8; ++i) sum += p[i];
  return sum;
}

int iterations(size_t size, double budget_ms) {
  double est_us = 2.0 + static_cast<double>(size) / 8000.0;
  return static_cast<int>(std::clamp(budget_ms * 1000.0 / est_us, 15.0, 5000.0));
}

// How a measured copy is run: submit then wait (hybrid) or spin on poll,
// or execute(), the synchronous call a sync request pays (the threads engine
// copies with the caller's core there too), or a detached submission whose
// callback wakes the caller blocked on a futex: what call_async pays, whose
// copy completes on the engine's thread.
enum class WaitHow { kWait, kBusyPoll, kExecute, kCallback };

struct Point {
  Summary lat, read;
  double cpu_us = 0;  // caller CPU per op
};

// One (engine, cache, size) point: copy latency, caller CPU and the time a
// consumer then needs to read the destination.
Result<Point> measure(Mover& m, Cache cache, size_t size, double budget_ms, WaitHow how) {
  MappedBuffer src(size, {.fill = 0x5a, .register_with = &m}), dst(size, {.register_with = &m});
  if (src.data() == nullptr || dst.data() == nullptr) return resource_exhausted("cannot map benchmark buffers");
  int iters = iterations(size, budget_ms);
  std::vector<double> lat, read;
  volatile uint64_t sink = 0;
  CopyOp op{dst.data(), src.data(), size};
  for (int i = 0; i < 3; ++i) ROCKET_RETURN_IF_ERROR(m.execute({&op, 1}, cache));
  double cpu = 0;
  for (int i = 0; i < iters; ++i) {
    // Evict the destination from this core's cache between rounds so each
    // copy and read starts from the same state: touch another buffer.
    if (size <= (size_t{64} << 20)) sink = sink + consume(src);
    double c0 = thread_cpu_us();
    auto t0 = Clock::now();
    if (how == WaitHow::kExecute) {
      ROCKET_RETURN_IF_ERROR(m.execute({&op, 1}, cache));
    } else if (how == WaitHow::kCallback) {
      std::atomic<int> done{0};
      Status copied = ok_status();
      auto on_done = [&](Status st) {
        copied = std::move(st);
        done.store(1, std::memory_order_release);
        done.notify_one();
      };
      ROCKET_RETURN_IF_ERROR(m.submit({&op, 1}, SubmitOptions{.cache = cache, .owner = 0, .on_done = on_done}).status());
      done.wait(0, std::memory_order_acquire);
      ROCKET_RETURN_IF_ERROR(copied);
    } else {
      ROCKET_ASSIGN_OR_RETURN(Ticket t, m.submit({&op, 1}, cache));
      if (!t.done && how == WaitHow::kWait) {
        ROCKET_RETURN_IF_ERROR(m.wait(t));
      } else if (!t.done) {
        for (;;) {
          ROCKET_ASSIGN_OR_RETURN(bool done, m.poll(t));
          if (done) break;
        }
      }
    }
    lat.push_back(us_since(t0));
    cpu += thread_cpu_us() - c0;
    auto r0 = Clock::now();
    sink = sink + consume(dst);
    read.push_back(us_since(r0));
  }
  if (std::memcmp(dst.data(), src.data(), size) != 0) return internal_error("copy produced wrong bytes");
  return Point{summarize(lat), summarize(read), cpu / iters};
}

// Host <-> device on the GPU's copy engines, from and to registered host
// memory (a session pool): the copy a GPU backend makes to receive a request
// and to send its response. Verified by a round trip after the timing.
Result<std::pair<Point, Point>> measure_device(Mover& m, size_t size, double budget_ms) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) return api.status();
  MappedBuffer host(size, {.fill = 0x4d, .register_with = &m}), back(size, {.register_with = &m});
  if (host.data() == nullptr || back.data() == nullptr) return resource_exhausted("cannot map benchmark buffers");
  void* dev = nullptr;
  if ((*api)->device_alloc(&dev, size) != 0) return resource_exhausted(std::string("device memory: ") + (*api)->last_error());
  std::unique_ptr<void, void (*)(void*)> free_dev(dev, [](void* d) { (*detail::load_cuda_module(0))->device_free(d); });
  CopyOp h2d{static_cast<std::byte*>(dev), host.data(), size};
  CopyOp d2h{back.data(), static_cast<std::byte*>(dev), size};
  const int iters = iterations(size, budget_ms);
  auto run = [&](CopyOp op) -> Result<Point> {
    for (int i = 0; i < 3; ++i) ROCKET_RETURN_IF_ERROR(m.execute({&op, 1}, Cache::kAuto));
    std::vector<double> lat;
    double cpu = 0;
    for (int i = 0; i < iters; ++i) {
      double c0 = thread_cpu_us();
      auto t0 = Clock::now();
      ROCKET_ASSIGN_OR_RETURN(Ticket t, m.submit({&op, 1}, Cache::kAuto));
      ROCKET_RETURN_IF_ERROR(m.wait(t));
      lat.push_back(us_since(t0));
      cpu += thread_cpu_us() - c0;
    }
    return Point{summarize(lat), Summary{}, cpu / iters};
  };
  ROCKET_ASSIGN_OR_RETURN(Point up, run(h2d));
  ROCKET_ASSIGN_OR_RETURN(Point down, run(d2h));
  if (std::memcmp(host.data(), back.data(), size) != 0) return internal_error("host->device->host produced wrong bytes");
  return std::make_pair(up, down);
}

struct MoverBenchOptions {
  std::string sizes = "4K,64K,1M,16M,128M";
  std::string movers = "cpu,cpu_stream,threads,kernel,cuda";
  std::string caches = "inject,bypass";
  double budget_ms = 200;
  bool json_out = false;
};

json row(const std::string& mover, const std::string& mode, const std::string& cache, size_t size, const Point& p) {
  return json{{"transport", "mover"}, {"mode", mode}, {"mover", mover}, {"cache", cache}, {"path", "copy"},
              {"size", size}, {"clients", 1}, {"p50_us", p.lat.p50}, {"p99_us", p.lat.p99}, {"mad_us", p.lat.mad},
              {"gbps", p.lat.p50 > 0 ? static_cast<double>(size) / (p.lat.p50 * 1e3) : 0}, {"cpu_us", p.cpu_us},
              {"read_us", p.read.p50}};
}

int run_bench_movers(const MoverBenchOptions& o) {
  json rows = json::array();
  std::vector<size_t> sizes;
  for (auto& s : split(o.sizes)) {
    auto v = parse_size(s);
    if (!v.ok()) {
      std::cerr << "rocket bench movers: " << v.status().message() << "\n";
      return 2;
    }
    sizes.push_back(*v);
  }
  auto print = [&](const json& r) {
    if (o.json_out) return;
    std::fprintf(stderr, "  %-10s %-14s %-7s %6s  p50 %10.2f us  p99 %10.2f us  %6.2f GB/s  caller CPU %9.2f us  read %9.2f us\n",
                 r["mover"].get<std::string>().c_str(), r["mode"].get<std::string>().c_str(),
                 r["cache"].get<std::string>().c_str(), human_size(r["size"].get<size_t>()).c_str(),
                 r["p50_us"].get<double>(), r["p99_us"].get<double>(), r["gbps"].get<double>(),
                 r["cpu_us"].get<double>(), r["read_us"].get<double>());
  };
  // Waits sleep on the predicted costs the runtime would use here: this
  // machine's profile when `rocket calibrate` wrote one.
  if (Status st = load_cost_profile(default_profile_path()); !st.ok() && st.code() != StatusCode::kNotFound) {
    std::cerr << "rocket bench movers: ignoring cost profile: " << st.to_string() << "\n";
  } else if (!o.json_out) {
    std::fprintf(stderr, "cost profile: %s\n", st.ok() ? default_profile_path().c_str() : "none (built-in estimates)");
  }
  // The memcpy baseline, always.
  auto cpu = make_mover(MoverKind::kCpu);
  for (size_t size : sizes) {
    auto p = measure(**cpu, Cache::kInject, size, o.budget_ms, WaitHow::kWait);
    if (!p.ok()) continue;
    json r = row("memcpy", "sync", "inject", size, *p);
    r["transport"] = "memcpy";
    rows.push_back(r);
    print(r);
  }
  for (auto& name : split(o.movers)) {
    auto kind = parse_mover_kind(name);
    if (!kind.ok()) {
      std::cerr << "rocket bench movers: " << kind.status().message() << "\n";
      return 2;
    }
    // The GPU engine runs twice: host-to-host by copy kernel and by the copy engines.
    std::vector<std::pair<std::string, MoverConfig>> variants{{name, MoverConfig{}}};
    if (*kind == MoverKind::kCuda) {
      MoverConfig k, st;
      k.cuda_h2h = "kernel";
      st.cuda_h2h = "staged";
      variants = {{"cuda_kernel", k}, {"cuda_staged", st}};
    }
    if (*kind == MoverKind::kCuda) {
      if (auto m = make_mover(*kind); m.ok()) {
        for (size_t size : sizes) {
          auto p = measure_device(**m, size, o.budget_ms);
          if (!p.ok()) {
            std::cerr << "rocket bench movers: host<->device: " << p.status().to_string() << "\n";
            break;
          }
          for (auto [label, pt] : {std::pair{"cuda_h2d", p->first}, std::pair{"cuda_d2h", p->second}}) {
            json r = row(label, "async-wait", "inject", size, pt);
            rows.push_back(r);
            print(r);
          }
        }
      }
    }
    for (auto& [label, cfg] : variants) {
    auto m = make_mover(*kind, cfg);
    if (!m.ok()) {
      std::fprintf(stderr, "  %-10s skipped: %s\n", name.c_str(), m.status().message().c_str());
      continue;
    }
    for (auto& cname : split(o.caches)) {
      auto cache = parse_cache(cname);
      if (!cache.ok()) return 2;
      // An engine without cache control runs once, under "inject".
      if (!(*m)->capabilities().cache_control && *cache != Cache::kInject) continue;
      for (size_t size : sizes) {
        bool async = (*m)->capabilities().async;
        for (WaitHow how : {WaitHow::kExecute, WaitHow::kWait, WaitHow::kBusyPoll, WaitHow::kCallback}) {
          if (!async && how != WaitHow::kWait) continue;
          auto p = measure(**m, *cache, size, o.budget_ms, how);
          if (!p.ok()) {
            std::cerr << "rocket bench movers: " << name << ": " << p.status().to_string() << "\n";
            continue;
          }
          const char* mode = !async || how == WaitHow::kExecute ? "sync"
                             : how == WaitHow::kWait           ? "async-wait"
                             : how == WaitHow::kBusyPoll       ? "async-poll"
                                                               : "async-callback";
          json r = row(label, mode, cname, size, *p);
          rows.push_back(r);
          print(r);
        }
      }
    }
    }
  }
  if (o.json_out) {
    std::cout << json{{"results", rows}}.dump(1) << std::endl;
    return 0;
  }
  std::printf("\n%-10s %-14s %-7s %6s %11s %11s %8s %12s %10s\n", "mover", "mode", "cache", "size", "p50_us",
              "p99_us", "GB/s", "caller_cpu", "read_us");
  for (const auto& r : rows) {
    std::printf("%-10s %-14s %-7s %6s %11.2f %11.2f %8.2f %12.2f %10.2f\n", r["mover"].get<std::string>().c_str(),
                r["mode"].get<std::string>().c_str(), r["cache"].get<std::string>().c_str(),
                human_size(r["size"].get<size_t>()).c_str(), r["p50_us"].get<double>(), r["p99_us"].get<double>(),
                r["gbps"].get<double>(), r["cpu_us"].get<double>(), r["read_us"].get<double>());
  }
  return 0;
}

// --- overlap: how much caller work hides behind call_async ------------------------

void busy_work(double us) {
  auto end = Clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(us * 1000));
  volatile uint64_t x = 0;
  while (Clock::now() < end) {
    for (int i = 0; i < 64; ++i) x = x + static_cast<uint64_t>(i);
  }
}

struct OverlapOptions {
  std::string size = "16M";
  std::string mover = "threads";
  int iters = 40;
  bool json_out = false;
};

int run_bench_overlap(const OverlapOptions& o) {
  auto parsed = parse_size(o.size);
  auto kind = parse_mover_kind(o.mover);
  if (!parsed.ok() || !kind.ok()) {
    std::cerr << "rocket bench overlap: " << (parsed.ok() ? kind.status() : parsed.status()).message() << "\n";
    return 2;
  }
  const size_t size = *parsed;
  const std::string sock = "/tmp/rocket-overlap-" + std::to_string(::getpid()) + ".sock";
  auto server = Child::spawn({"serve", "--socket", sock, "--dispatchers", "1"});
  if (!server.ok() || !server->read_line(30000).ok()) {
    std::cerr << "rocket bench overlap: cannot start the server\n";
    return 1;
  }
  ClientOptions co;
  co.client_pool_bytes = (size * 2 + (1 << 20) + 4095) / 4096 * 4096;
  co.server_pool_bytes = 4 << 20;
  auto c = Client::connect(sock, co);
  if (!c.ok()) {
    std::cerr << "rocket bench overlap: " << c.status().to_string() << "\n";
    return 1;
  }
  // The caller's buffers are registered with the engine, as a user of an
  // engine that needs it (cuda) registers a buffer reused across calls:
  // otherwise the GPU cannot reach it and the engine copies on the CPU.
  auto m = shared_mover(*kind);
  if (!m.ok()) {
    std::cerr << "rocket bench overlap: " << m.status().to_string() << "\n";
    return 1;
  }
  MappedBuffer src_region(size, {.fill = 0x33, .register_with = *m});
  std::span<const std::byte> src(src_region.data(), size);
  CallOptions opts{.policy = {.mover = *kind, .cache = Cache::kAuto}};
  auto one = [&](double work_us) -> double {
    auto t0 = Clock::now();
    auto f = c->call_async("echo", src, opts);
    busy_work(work_us);
    auto r = f.get();
    if (!r.ok()) return -1;
    return us_since(t0);
  };
  // The copy alone, on the same engine, made synchronously (execute(): what
  // the caller would pay without the async call, where threads and cuda copy
  // with the caller too). The fractions below are of this time.
  MappedBuffer dst(size, {.register_with = *m});
  std::vector<double> copies;
  for (int i = 0; i < o.iters; ++i) {
    CopyOp op{dst.data(), src_region.data(), size};
    auto t0 = Clock::now();
    if (!(*m)->execute({&op, 1}, Cache::kAuto).ok()) return 1;
    copies.push_back(us_since(t0));
  }
  const double copy_us = summarize(copies).p50;
  for (int i = 0; i < 5; ++i) one(0);  // warm up
  // Rounds visit every work fraction in turn, so drift in the machine's speed
  // affects all points alike.
  const std::vector<double> fractions = {0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 1.0, 1.2};
  std::vector<std::vector<double>> samples(fractions.size());
  for (int round = 0; round < o.iters; ++round) {
    for (size_t k = 0; k < fractions.size(); ++k) {
      double t = one(fractions[k] * copy_us);
      if (t < 0) {
        std::cerr << "rocket bench overlap: call failed\n";
        return 1;
      }
      samples[k].push_back(t);
    }
  }
  const double base = summarize(samples[0]).p50;
  json points = json::array();
  double hidden = 0;
  bool contiguous = true;  // a fraction counts only if every smaller one did too
  for (size_t k = 1; k < fractions.size(); ++k) {
    double f = fractions[k];
    Summary sm = summarize(samples[k]);
    bool same = sm.p50 <= base * 1.05;  // within 5%: the call did not get longer
    contiguous = contiguous && same;
    if (contiguous) hidden = f;
    points.push_back({{"work_fraction", f}, {"work_us", f * copy_us}, {"call_p50_us", sm.p50},
                      {"call_p99_us", sm.p99}, {"not_lengthened", same}});
    if (!o.json_out) {
      std::fprintf(stderr, "  work %4.0f%% of the copy (%8.1f us): call p50 %8.1f us p99 %8.1f (alone %8.1f)%s\n",
                   f * 100, f * copy_us, sm.p50, sm.p99, base, same ? "" : "  <- lengthened");
    }
  }
  server->stop();
  json out{{"size", size}, {"mover", o.mover}, {"copy_us", copy_us}, {"call_alone_us", base}, {"points", points},
           {"hidden_fraction", hidden}};
  if (o.json_out) {
    std::cout << out.dump(1) << std::endl;
  } else {
    std::printf("call_async of %s with %s: copy %.1f us, call alone %.1f us; the caller can do %.0f%% of the copy "
                "time's worth of work without lengthening the call (target >= 70%%)\n",
                human_size(size).c_str(), o.mover.c_str(), copy_us, base, hidden * 100);
  }
  return 0;
}

// --- calibrate ---------------------------------------------------------------------

struct CalibrateOptions {
  std::string out = default_profile_path();
  std::string sizes = "4K,64K,256K,1M,4M,16M,64M";
  double budget_ms = 150;
  bool json_out = false;
};

int run_calibrate(const CalibrateOptions& o) {
  std::vector<size_t> sizes;
  for (auto& s : split(o.sizes)) {
    auto v = parse_size(s);
    if (!v.ok()) {
      std::cerr << "rocket calibrate: " << v.status().message() << "\n";
      return 2;
    }
    sizes.push_back(*v);
  }
  set_cost_profile({});  // measure engines, not a previous profile's predictions
  CostProfile profile;
  utsname u{};
  ::uname(&u);
  profile.machine = std::string(u.nodename) + " " + u.machine + ", " +
                    std::to_string(std::thread::hardware_concurrency()) + " cpus";
  json report = json::array();
  auto movers = probe_movers();
  size_t total_steps = 0, step = 0;
  // What to measure: each usable engine as configured by default, and the
  // GPU engine's two host-to-host methods as variants (its "auto" picks
  // between them per size from these).
  struct Target {
    MoverKind kind;
    std::string variant;
    MoverConfig config;
  };
  std::vector<Target> targets;
  for (const auto& info : movers) {
    if (!info.usable) continue;
    targets.push_back({info.kind, "", MoverConfig{}});
    if (info.kind == MoverKind::kCuda) {
      for (const char* v : {"kernel", "staged"}) {
        MoverConfig c;
        c.cuda_h2h = v;
        targets.push_back({info.kind, v, c});
      }
    }
  }
  for (const auto& t : targets) {
    auto m = make_mover(t.kind, t.config);
    if (m.ok()) total_steps += sizes.size() * ((*m)->capabilities().cache_control ? 3 : 1);
  }
  for (const auto& t : targets) {
    auto m = make_mover(t.kind, t.config);
    if (!m.ok()) continue;
    const std::string label = std::string(mover_kind_name(t.kind)) + (t.variant.empty() ? "" : ":" + t.variant);
    for (Cache cache : {Cache::kAuto, Cache::kInject, Cache::kBypass}) {
      if (!(*m)->capabilities().cache_control && cache != Cache::kAuto) continue;  // same copy either way
      std::vector<std::pair<double, double>> pts;
      for (size_t size : sizes) {
        ++step;
        if (!o.json_out) {
          std::fprintf(stderr, "\r  [%3zu/%3zu] %-13s %-6s %6s", step, total_steps, label.c_str(),
                       std::string(cache_name(cache)).c_str(), human_size(size).c_str());
        }
        // The model is of the copy itself, what a waiter should sleep
        // through. A poller shares no resource with a GPU or DSA engine, so
        // those are timed by polling; for engines that copy on CPU cores a
        // poller would steal one from them, and waiting is timed instead.
        const bool device_engine = t.kind == MoverKind::kCuda || t.kind == MoverKind::kDsa;
        auto p = measure(**m, cache, size, o.budget_ms, device_engine ? WaitHow::kBusyPoll : WaitHow::kWait);
        if (!p.ok()) continue;
        pts.emplace_back(static_cast<double>(size) / (1024.0 * 1024.0), p->lat.p50);
      }
      if (pts.size() < 2) continue;
      CostModel cm = fit_cost_model(pts);
      profile.entries.push_back({t.kind, cache, cm, t.variant});
      report.push_back({{"mover", label}, {"cache", std::string(cache_name(cache))},
                        {"fixed_us", cm.fixed_us}, {"us_per_mib", cm.us_per_mib},
                        {"gbps", cm.us_per_mib > 0 ? 1048.576 / cm.us_per_mib : 0}});  // MiB per us -> GB/s
    }
  }
  if (!o.json_out) std::fprintf(stderr, "\n");
  if (auto s = save_cost_profile(profile, o.out); !s.ok()) {
    std::cerr << "rocket calibrate: " << s.to_string() << "\n";
    return 1;
  }
  if (o.json_out) {
    std::cout << json{{"profile", o.out}, {"machine", profile.machine}, {"movers", report}}.dump(1) << std::endl;
    return 0;
  }
  std::printf("%-13s %-7s %10s %11s %8s\n", "mover", "cache", "fixed_us", "us_per_MiB", "GB/s");
  for (const auto& r : report) {
    std::printf("%-13s %-7s %10.2f %11.2f %8.2f\n", r["mover"].get<std::string>().c_str(),
                r["cache"].get<std::string>().c_str(), r["fixed_us"].get<double>(), r["us_per_mib"].get<double>(),
                r["gbps"].get<double>());
  }
  std::printf("profile written to %s (the runtime loads it at start; override with ROCKET_PROFILE)\n", o.out.c_str());
  return 0;
}

}  // namespace

void add_bench_movers(CLI::App& bench) {
  auto mo = std::make_shared<MoverBenchOptions>();
  auto* movers = bench.add_subcommand("movers", "Every data mover: latency, GB/s, caller CPU, consumer read time");
  movers->add_option("--sizes", mo->sizes, "copy sizes")->capture_default_str();
  movers->add_option("--movers", mo->movers, "engines")->capture_default_str();
  movers->add_option("--caches", mo->caches, "inject,bypass")->capture_default_str();
  movers->add_option("--budget-ms", mo->budget_ms, "measuring time per point")->capture_default_str();
  movers->add_flag("--json", mo->json_out, "print {\"results\": [...]}");
  movers->callback([mo] { std::exit(run_bench_movers(*mo)); });

  auto oo = std::make_shared<OverlapOptions>();
  auto* overlap = bench.add_subcommand("overlap", "How much caller work hides behind call_async's copy");
  overlap->add_option("--size", oo->size, "request size")->capture_default_str();
  overlap->add_option("--mover", oo->mover, "async engine")->capture_default_str();
  overlap->add_option("--iters", oo->iters, "calls per point")->capture_default_str();
  overlap->add_flag("--json", oo->json_out, "print JSON");
  overlap->callback([oo] { std::exit(run_bench_overlap(*oo)); });
}

void add_calibrate(CLI::App& app) {
  auto co = std::make_shared<CalibrateOptions>();
  auto* cal = app.add_subcommand("calibrate", "Fit each mover's cost L = fixed + a*MiB here and save the profile");
  cal->add_option("--out", co->out, "profile path")->capture_default_str();
  cal->add_option("--sizes", co->sizes, "sizes to sweep")->capture_default_str();
  cal->add_option("--budget-ms", co->budget_ms, "measuring time per point")->capture_default_str();
  cal->add_flag("--json", co->json_out, "print JSON");
  cal->callback([co] { std::exit(run_calibrate(*co)); });
}

}  // namespace rocket::tools
