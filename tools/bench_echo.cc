#include "bench_echo.h"

#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "mapped_buffer.h"
#include "process.h"
#include "stream_io.h"
#include "rocket/rocket.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

// CPU time of the whole client process (all its threads), from the
// scheduler's exact clock: getrusage() is tick-sampled.
double cpu_us_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}



// --- worker side ----------------------------------------------------------------

struct WorkerArgs {
  std::string transport, socket, mode, path;
  size_t size = 64;
  int iters = 100, warmup = 10, depth = 1;
  long spin_us = 50;
  long gap_us = 0;  // idle time between round trips (not measured) so the server falls asleep
  std::string mover = "cpu";  // engine for the copy path (kernel: process_vm_readv/writev)
  std::string op = "echo";    // or echo_copy, gpu_echo (a GPU backend's round trip)
};

void fill_random(std::byte* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(p + i, &x, 8);
  }
  for (size_t i = n & ~size_t{7}; i < n; ++i) p[i] = static_cast<std::byte>(rng());
}


// Why the last round trip failed, for the worker's error message.
thread_local Status g_why = ok_status();
bool note(Status st) {
  g_why = std::move(st);
  return false;
}
std::string why() { return g_why.ok() ? std::string() : ": " + g_why.to_string(); }

// Runs the measured loop; `op(i)` performs one round trip and returns false on error.
template <typename Op>
Status measure(const WorkerArgs& a, Op&& op, std::vector<double>* samples, double* wall_us, double* cpu_us) {
  for (int i = 0; i < a.warmup; ++i) {
    if (!op()) return internal_error("warm-up round trip failed" + why());
  }
  std::cout << "ready" << std::endl;
  std::string go;
  if (!std::getline(std::cin, go)) return unavailable("driver went away");
  samples->reserve(static_cast<size_t>(a.iters));
  double c0 = cpu_us_now();
  auto w0 = Clock::now();
  double idle_us = 0;
  for (int i = 0; i < a.iters; ++i) {
    if (a.gap_us > 0) {
      auto g0 = Clock::now();
      std::this_thread::sleep_for(std::chrono::microseconds(a.gap_us));
      idle_us += us_since(g0);
    }
    auto t0 = Clock::now();
    if (!op()) return internal_error("round trip failed" + why());
    samples->push_back(us_since(t0));
  }
  *wall_us = us_since(w0) - idle_us;
  *cpu_us = cpu_us_now() - c0;
  return ok_status();
}

Status run_worker(const WorkerArgs& a) {
  uint64_t server_wakeups = 0;
  std::vector<double> samples;
  double wall = 0, cpu = 0;
  // Private buffers as large-data applications allocate them: page-aligned and
  // huge-page advised (every path uses the same ones).
  MappedBuffer src(a.size, {.huge_pages = true}), dst(a.size, {.huge_pages = true});
  if (src.data() == nullptr || dst.data() == nullptr) return resource_exhausted("cannot map benchmark buffers");
  fill_random(src.data(), a.size, 42);
  const auto want = checksum64(src);
  auto verify = [&](std::span<const std::byte> got) {
    return got.size() == a.size && checksum64(got) == want;
  };
  const std::span<const std::byte> src_span = src;
  const std::span<std::byte> dst_span = dst;

  if (a.transport == "memcpy") {
    // The intermediate buffer sits 2 KiB off page alignment: with src, tmp
    // and dst all page-aligned, loads and stores alias in the cache (4 KiB
    // aliasing) and the baseline runs up to 2.5x slower than the same two
    // copies inside the copy path -- a baseline must not be handicapped.
    MappedBuffer tmp_region(a.size + 4096, {.huge_pages = true});
    std::byte* tmp = tmp_region.data() + 2048;
    ROCKET_RETURN_IF_ERROR(measure(a, [&] {
      std::memcpy(tmp, src.data(), a.size);
      std::memcpy(dst.data(), tmp, a.size);
      return true;
    }, &samples, &wall, &cpu));
  } else if (a.transport == "uds") {
    int fd = stream_connect(a.socket);
    if (fd < 0) return unavailable("cannot connect to the UDS echo server");
    bool checked = false;
    ROCKET_RETURN_IF_ERROR(measure(a, [&] {
      uint64_t n = a.size;
      if (!write_all(fd, &n, 8) || !write_all(fd, src.data(), a.size) || !read_all(fd, dst.data(), a.size)) {
        return false;
      }
      if (!checked) checked = verify(dst_span);
      return checked;
    }, &samples, &wall, &cpu));
    ::close(fd);
  } else {
    ClientOptions co;
    co.tenant = "bench";
    co.spin = std::chrono::microseconds(a.spin_us);
    co.client_pool_bytes = ((a.size * static_cast<size_t>(a.depth) + (1 << 20)) + 4095) / 4096 * 4096;
    // Echo answers in the client's pool or straight into the caller's
    // buffer; the GPU ops copy their answer down into the server pool.
    co.server_pool_bytes = a.op.rfind("gpu_", 0) == 0 ? co.client_pool_bytes : 4 << 20;
    ROCKET_ASSIGN_OR_RETURN(MoverKind mover, parse_mover_kind(a.mover));
    co.allow_kernel_copy = mover == MoverKind::kKernel;
    ROCKET_ASSIGN_OR_RETURN(Client c, Client::connect(a.socket, co));
    // gpu_share answers from the server's GPU memory: take it by reference
    // (the client reads it only to verify the first reply).
    const bool gpu_reply = a.op == "gpu_share";
    const CallOptions call_opts{.policy = {.mover = mover, .cache = Cache::kAuto}, .gpu_response = gpu_reply};
    bool checked = false;
    const bool zc = a.path == "zerocopy";
    if (a.mode == "sync" && zc) {
      ROCKET_ASSIGN_OR_RETURN(Buffer buf, c.alloc(std::max<size_t>(a.size, 1)));
      std::memcpy(buf.data(), src.data(), a.size);  // built in place once
      ROCKET_RETURN_IF_ERROR(measure(a, [&] {
        auto r = c.call(a.op, buf, call_opts);
        if (!r.ok()) return note(r.status());
        if (!checked) {
          if (!r->on_gpu()) {
            checked = verify(r->data());
          } else {
            auto v = r->to_vector();
            checked = v.ok() ? verify(*v) : note(v.status());
          }
        }
        return checked;
      }, &samples, &wall, &cpu));
    } else if (a.mode == "sync") {
      // Private request in, private response out: copy-in, call, copy-out
      // (or, with the kernel mover, the server reads and writes our memory).
      ROCKET_RETURN_IF_ERROR(measure(a, [&] {
        auto n = c.call_into(a.op, src_span, dst_span, call_opts);
        if (!n.ok()) return note(n.status());
        if (*n != a.size) return note(internal_error("reply of the wrong size"));
        if (!checked) checked = verify(dst_span);
        return checked;
      }, &samples, &wall, &cpu));
    } else if (a.mode == "async") {
      ROCKET_RETURN_IF_ERROR(measure(a, [&] {
        auto f = c.call_async(a.op, src_span, call_opts);
        auto r = f.get();
        if (!r.ok()) return note(r.status());
        if (auto st = r->copy_to(dst_span); !st.ok()) return note(st);
        if (!checked) checked = verify(dst_span);
        return checked;
      }, &samples, &wall, &cpu));
    } else if (a.mode == "pipelined") {
      // `depth` requests in flight; each sample is one request's submit-to-result time.
      std::vector<Buffer> bufs;
      if (zc) {
        for (int i = 0; i < a.depth; ++i) {
          ROCKET_ASSIGN_OR_RETURN(Buffer b, c.alloc(std::max<size_t>(a.size, 1)));
          std::memcpy(b.data(), src.data(), a.size);
          bufs.push_back(std::move(b));
        }
      }
      std::deque<std::pair<JobId, Clock::time_point>> inflight;
      size_t next = 0;
      auto submit_one = [&]() -> bool {
        auto t = Clock::now();
        auto id = zc ? c.submit(a.op, bufs[next++ % bufs.size()])
                     : c.submit(a.op, src_span, call_opts);
        if (!id.ok()) return false;
        inflight.emplace_back(*id, t);
        return true;
      };
      auto collect_one = [&](std::vector<double>* out) -> bool {
        auto [id, t] = inflight.front();
        inflight.pop_front();
        auto r = c.query(id);
        if (!r.ok()) return false;
        if (!zc && !r->copy_to(dst_span).ok()) return false;
        if (!checked) checked = verify(zc ? r->data() : std::span<const std::byte>(dst_span));
        if (out != nullptr) out->push_back(us_since(t));
        return checked;
      };
      for (int i = 0; i < a.warmup; ++i) {
        if (!submit_one() || !collect_one(nullptr)) return internal_error("warm-up failed");
      }
      std::cout << "ready" << std::endl;
      std::string go;
      if (!std::getline(std::cin, go)) return unavailable("driver went away");
      double c0 = cpu_us_now();
      auto w0 = Clock::now();
      int submitted = 0;
      while (submitted < a.depth && submitted < a.iters) {
        if (!submit_one()) return internal_error("submit failed");
        ++submitted;
      }
      while (!inflight.empty()) {
        if (!collect_one(&samples)) return internal_error("query failed");
        if (submitted < a.iters) {
          if (!submit_one()) return internal_error("submit failed");
          ++submitted;
        }
      }
      wall = us_since(w0);
      cpu = cpu_us_now() - c0;
    } else {
      return invalid_argument("unknown mode " + a.mode);
    }
    server_wakeups = c.stats().server_wakeups;
  }
  json out{{"samples", samples}, {"wall_us", wall}, {"cpu_us", cpu}, {"server_wakeups", server_wakeups}};
  std::cout << out.dump() << std::endl;
  return ok_status();
}

// --- UDS echo server ------------------------------------------------------------

int run_uds_server(const std::string& path) {
  int lfd = stream_listen(path);
  if (lfd < 0) {
    std::perror("uds server");
    return 1;
  }
  std::cout << "ready" << std::endl;
  // One thread per connection; the driver ends this process with SIGTERM, so
  // the threads are never joined (a benchmark child, not product code).
  std::vector<std::thread> conns;
  for (;;) {
    int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    conns.emplace_back([fd] {
      std::vector<char> buf;
      uint64_t n;
      while (read_all(fd, &n, 8)) {
        if (n > (uint64_t{1} << 32)) break;
        buf.resize(n);
        if (!read_all(fd, buf.data(), n) || !write_all(fd, buf.data(), n)) break;
      }
      ::close(fd);
    });
  }
}

// --- driver -----------------------------------------------------------------------

struct EchoConfig {
  std::string transport, mode, path, wake;
  size_t size;
  int clients;
  std::string mover = "cpu";
  std::string op = "echo";
};

// Round trips per point: about `budget_ms` of work, but at least enough
// samples for a meaningful p99 (200; 20 for points slower than 1 ms).
int auto_iters(const EchoConfig& cfg, double budget_ms) {
  const bool touches_payload = cfg.path == "copy" || cfg.transport != "rocket";
  double est_us = 8.0 + (touches_payload ? static_cast<double>(cfg.size) / 4000.0 : 0.0);  // ~4 GB/s
  double floor = est_us < 1000 ? 200 : 20;
  double ceil = cfg.wake == "sleep" ? 3000 : 20000;  // sleep points idle 200 us between round trips
  return static_cast<int>(std::clamp(budget_ms * 1000.0 / est_us, floor, ceil));
}

Result<json> run_config(const EchoConfig& cfg, const std::string& socket, int iters_override, double budget_ms,
                        long client_spin_us, long gap_us = 0) {
  const int iters = iters_override > 0 ? iters_override : auto_iters(cfg, budget_ms);
  const int depth = cfg.mode == "pipelined" ? static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / std::max<size_t>(cfg.size, 1), 1, 8)) : 1;
  std::vector<Child> workers;
  for (int i = 0; i < cfg.clients; ++i) {
    ROCKET_ASSIGN_OR_RETURN(Child w, Child::spawn({"bench-worker", "--transport", cfg.transport, "--socket", socket,
                                                    "--mode", cfg.mode, "--path", cfg.path, "--size",
                                                    std::to_string(cfg.size), "--iters", std::to_string(iters),
                                                    "--warmup", std::to_string(std::max(2, iters / 10)),
                                                    "--depth", std::to_string(depth), "--spin-us",
                                                    std::to_string(client_spin_us), "--gap-us",
                                                    std::to_string(gap_us), "--mover", cfg.mover, "--op", cfg.op}));
    workers.push_back(std::move(w));
  }
  for (auto& w : workers) {
    ROCKET_ASSIGN_OR_RETURN(std::string line, w.read_line(120000));
    if (line != "ready") return internal_error("worker said '" + line + "'");
  }
  for (auto& w : workers) ROCKET_RETURN_IF_ERROR(w.write_line("go"));
  std::vector<double> all;
  double wall = 0, cpu = 0;
  uint64_t wakeups = 0;
  for (auto& w : workers) {
    ROCKET_ASSIGN_OR_RETURN(std::string line, w.read_line(600000));
    json r = json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.contains("samples")) return internal_error("worker sent '" + line.substr(0, 80) + "'");
    for (double s : r["samples"]) all.push_back(s);
    wall = std::max(wall, r["wall_us"].get<double>());
    cpu += r["cpu_us"].get<double>();
    wakeups += r.value("server_wakeups", uint64_t{0});
  }
  Summary s = summarize(all);
  double ops = static_cast<double>(all.size());
  double gbps = wall > 0 ? static_cast<double>(cfg.size) * ops / (wall * 1e3) : 0;
  return json{{"transport", cfg.transport}, {"mode", cfg.mode}, {"mover", cfg.transport == "rocket" ? cfg.mover : "none"},
              {"path", cfg.path}, {"op", cfg.op}, {"size", cfg.size}, {"clients", cfg.clients}, {"wake", cfg.wake},
              {"p50_us", s.p50}, {"p99_us", s.p99}, {"mad_us", s.mad}, {"gbps", gbps},
              {"cpu_us", ops > 0 ? cpu / ops : 0}, {"ops", all.size()}, {"server_wakeups", wakeups}};
}


struct EchoOptions {
  std::string sizes = "64,4K,64K,1M,16M,128M,256M";
  std::string modes = "sync,async,pipelined";
  std::string paths = "copy,zerocopy";
  std::string transports = "rocket,uds,memcpy";
  std::string clients = "1,2";
  std::string wakes = "spin,sleep";
  std::string movers = "cpu,kernel";  // engines for the sync copy path
  std::string op = "echo";            // Rocket's op: echo, echo_copy or gpu_echo
  int iters = 0;
  double budget_ms = 250;
  bool json_out = false;
  bool quick = false;
};

const json* find_row(const json& rows, const std::string& transport, const std::string& mode,
                     const std::string& path, size_t size, const std::string& wake,
                     const std::string& mover = "cpu") {
  for (const auto& r : rows) {
    if (r["transport"] == transport && r["mode"] == mode && r["path"] == path && r["size"] == size &&
        r["clients"] == 1 && (wake.empty() || r["wake"] == wake) &&
        (transport != "rocket" || r["mover"] == mover)) {
      return &r;
    }
  }
  return nullptr;
}

// The targets as ratios of numbers from this run.
json evaluate_targets(const json& rows) {
  json checks = json::array();
  auto add = [&](const std::string& name, const json* a, const json* b, double limit, bool at_most,
                 bool absolute = false) {
    if (a == nullptr || (!absolute && b == nullptr)) return;
    double va = (*a)["p50_us"].get<double>();
    double value = absolute ? va : va / (*b)["p50_us"].get<double>();
    bool ok = at_most ? value <= limit : value >= limit;
    checks.push_back({{"check", name}, {"value", value}, {"limit", limit}, {"at_most", at_most}, {"met", ok}});
  };
  const size_t k64 = 64, k16m = size_t{16} << 20;
  add("64 B sync zero-copy p50 (us), server spinning", find_row(rows, "rocket", "sync", "zerocopy", k64, "spin"),
      nullptr, 2.0, true, true);
  add("64 B sync zero-copy p50 (us), server woken", find_row(rows, "rocket", "sync", "zerocopy", k64, "sleep"),
      nullptr, 15.0, true, true);
  add("UDS / Rocket copy path at 64 B, back-to-back", find_row(rows, "uds", "sync", "copy", k64, "spin"),
      find_row(rows, "rocket", "sync", "copy", k64, "spin"), 3.0, false);
  add("UDS / Rocket copy path at 64 B, idle gaps", find_row(rows, "uds", "sync", "copy", k64, "sleep"),
      find_row(rows, "rocket", "sync", "copy", k64, "sleep"), 3.0, false);
  add("UDS / Rocket copy path at 16 MiB", find_row(rows, "uds", "sync", "copy", k16m, "spin"),
      find_row(rows, "rocket", "sync", "copy", k16m, "spin"), 2.0, false);
  add("zero-copy 16 MiB / zero-copy 64 B", find_row(rows, "rocket", "sync", "zerocopy", k16m, "spin"),
      find_row(rows, "rocket", "sync", "zerocopy", k64, "spin"), 2.0, true);
  add("copy path 16 MiB / two memcpy of 16 MiB", find_row(rows, "rocket", "sync", "copy", k16m, "spin"),
      find_row(rows, "memcpy", "sync", "copy", k16m, ""), 1.2, true);
  add("kernel-mover echo 16 MiB / copy-in + copy-out (cpu)",
      find_row(rows, "rocket", "sync", "copy", k16m, "spin", "kernel"),
      find_row(rows, "rocket", "sync", "copy", k16m, "spin", "cpu"), 1.0, true);
  return checks;
}

int run_bench_echo(const EchoOptions& o) {
  EchoOptions opt = o;
  if (opt.quick) {
    opt.sizes = "64,64K,16M";
    opt.clients = "1";
    opt.budget_ms = 60;
  }
  std::vector<size_t> sizes;
  for (auto& s : split(opt.sizes)) {
    auto v = parse_size(s);
    if (!v.ok()) {
      std::cerr << "rocket bench echo: " << v.status().message() << "\n";
      return 2;
    }
    sizes.push_back(*v);
  }
  std::vector<int> client_counts;
  for (auto& c : split(opt.clients)) client_counts.push_back(std::max(1, std::atoi(c.c_str())));
  size_t max_size = *std::max_element(sizes.begin(), sizes.end());
  const std::string base = "/tmp/rocket-bench-" + std::to_string(::getpid());
  json rows = json::array();
  auto transports = split(opt.transports);
  auto has = [](const std::vector<std::string>& v, const char* x) { return std::find(v.begin(), v.end(), x) != v.end(); };
  auto emit = [&](const Result<json>& r, const EchoConfig& cfg) {
    if (!r.ok()) {
      std::cerr << "rocket bench echo: " << cfg.transport << " " << cfg.mode << " " << cfg.path << " "
                << human_size(cfg.size) << ": " << r.status().to_string() << "\n";
      return;
    }
    rows.push_back(*r);
    if (!opt.json_out) {
      std::fprintf(stderr, "  %-7s %-9s %-8s %-5s %6s x%d  p50 %10.2f us  p99 %10.2f us  %7.2f GB/s\n",
                   cfg.transport.c_str(), cfg.mode.c_str(), cfg.path.c_str(), cfg.wake.c_str(),
                   human_size(cfg.size).c_str(), cfg.clients, (*r)["p50_us"].get<double>(),
                   (*r)["p99_us"].get<double>(), (*r)["gbps"].get<double>());
    }
  };
  if (has(transports, "rocket")) {
    for (const auto& wake : split(opt.wakes)) {
      const bool spin = wake == "spin";
      // spin: both sides poll and never sleep. sleep: the server sleeps in
      // epoll between requests, so every request pays an eventfd wake-up; the
      // client keeps the library's default 50 us spin for its response.
      const long server_spin_us = spin ? 10'000'000 : 0;
      const long spin_us = spin ? 10'000'000 : 50;
      const size_t pool_mib = (max_size * 8 >> 20) + 64;  // room for 8 pipelined requests
      const std::string sock = base + "-" + wake + ".sock";
      auto server = Child::spawn({"serve", "--socket", sock, "--dispatchers", "1", "--spin-us",
                                  std::to_string(server_spin_us), "--max-pool-mib", std::to_string(pool_mib)});
      if (!server.ok() || !server->read_line(30000).ok()) {
        std::cerr << "rocket bench echo: cannot start the server\n";
        return 1;
      }
      for (const auto& mode : split(opt.modes)) {
        if (!spin && mode != "sync") continue;  // wake-up cost matters for lone calls
        for (const auto& path : split(opt.paths)) {
          if (mode == "async" && path == "zerocopy") continue;  // call_async takes private bytes
          // The sync copy path runs once per engine; everything else with cpu.
          std::vector<std::string> movers{"cpu"};
          if (mode == "sync" && path == "copy" && spin) movers = split(opt.movers);
          for (const auto& mover : movers) {
            for (int clients : client_counts) {
              for (size_t size : sizes) {
                EchoConfig cfg{"rocket", mode, path, wake, size, clients, mover, opt.op};
                // With the kernel mover the server does both copies, on its
                // dispatcher and the engine's workers: a client spinning for
                // the whole call would take a core from them, so it keeps the
                // library's default (spin 50 us, then sleep).
                const long client_spin = mover == "kernel" ? 50 : spin_us;
                // Asleep means idle first: 200 us between round trips lets the
                // dispatcher give up polling, so each request must wake it.
                emit(run_config(cfg, sock, opt.iters, opt.budget_ms, client_spin, spin ? 0 : 200), cfg);
              }
            }
          }
        }
      }
      server->stop();
    }
  }
  if (has(transports, "uds")) {
    const std::string sock = base + "-uds.sock";
    auto server = Child::spawn({"bench-uds-server", "--socket", sock});
    if (!server.ok() || !server->read_line(30000).ok()) {
      std::cerr << "rocket bench echo: cannot start the UDS server\n";
      return 1;
    }
    // Same load shapes as Rocket's rows: back-to-back ("spin") and with idle
    // gaps ("sleep"). A UDS server always sleeps in read() either way.
    for (const auto& wake : split(opt.wakes)) {
      for (int clients : client_counts) {
        for (size_t size : sizes) {
          EchoConfig cfg{"uds", "sync", "copy", wake, size, clients};
          emit(run_config(cfg, sock, opt.iters, opt.budget_ms, 0, wake == "spin" ? 0 : 200), cfg);
        }
      }
    }
    server->stop();
    ::unlink(sock.c_str());
  }
  if (has(transports, "memcpy")) {
    for (size_t size : sizes) {
      EchoConfig cfg{"memcpy", "sync", "copy", "", size, 1};
      emit(run_config(cfg, "", opt.iters, opt.budget_ms, 0), cfg);
    }
  }
  json checks = evaluate_targets(rows);
  if (opt.json_out) {
    std::cout << json{{"results", rows}, {"targets", checks}}.dump(1) << std::endl;
  } else {
    std::printf("\n%-8s %-10s %-9s %-10s %-6s %8s %7s %11s %11s %9s %9s\n", "transport", "mode", "path", "mover",
                "wake", "size", "clients", "p50_us", "p99_us", "GB/s", "cpu_us");
    for (const auto& r : rows) {
      // Rocket's copy-path rows differ only by mover when --movers lists several.
      std::printf("%-9s %-10s %-9s %-10s %-6s %8s %7d %11.2f %11.2f %9.2f %9.2f\n",
                  r["transport"].get<std::string>().c_str(), r["mode"].get<std::string>().c_str(),
                  r["path"].get<std::string>().c_str(), r["mover"].get<std::string>().c_str(),
                  r["wake"].get<std::string>().c_str(), human_size(r["size"].get<size_t>()).c_str(),
                  r["clients"].get<int>(), r["p50_us"].get<double>(), r["p99_us"].get<double>(),
                  r["gbps"].get<double>(), r["cpu_us"].get<double>());
    }
    if (!checks.empty()) {
      std::printf("\nTargets (ratios of numbers measured above):\n");
      for (const auto& c : checks) {
        std::printf("  %-50s %8.2f  (%s %.1f)  %s\n", c["check"].get<std::string>().c_str(), c["value"].get<double>(),
                    c["at_most"].get<bool>() ? "<=" : ">=", c["limit"].get<double>(),
                    c["met"].get<bool>() ? "met" : "NOT MET");
      }
    }
  }
  return rows.empty() ? 1 : 0;
}

}  // namespace

void add_bench_echo(CLI::App& bench) {
  auto opt = std::make_shared<EchoOptions>();
  auto* cmd = bench.add_subcommand("echo", "Echo round trips: Rocket vs a Unix socket vs two memcpys");
  cmd->add_option("--sizes", opt->sizes, "payload sizes, e.g. 64,4K,16M")->capture_default_str();
  cmd->add_option("--modes", opt->modes, "sync,async,pipelined")->capture_default_str();
  cmd->add_option("--paths", opt->paths, "copy,zerocopy")->capture_default_str();
  cmd->add_option("--transports", opt->transports, "rocket,uds,memcpy")->capture_default_str();
  cmd->add_option("--clients", opt->clients, "client process counts, e.g. 1,2")->capture_default_str();
  cmd->add_option("--wake", opt->wakes, "spin (both sides poll) and/or sleep (every message wakes the peer)")
      ->capture_default_str();
  cmd->add_option("--movers", opt->movers, "engines for the sync copy path (cpu, kernel, threads, ...)")
      ->capture_default_str();
  cmd->add_option("--op", opt->op, "Rocket's server op: echo (in place), echo_copy, gpu_echo (through GPU memory)")
      ->capture_default_str();
  cmd->add_option("--iters", opt->iters, "round trips per point (0: about --budget-ms each)");
  cmd->add_option("--budget-ms", opt->budget_ms, "measuring time per point")->capture_default_str();
  cmd->add_flag("--json", opt->json_out, "print {\"results\": [...]} instead of a table");
  cmd->add_flag("--quick", opt->quick, "a small sweep (64 B, 64 KiB, 16 MiB; one client)");
  cmd->callback([opt] { std::exit(run_bench_echo(*opt)); });
}

void add_bench_children(CLI::App& app) {
  auto w = std::make_shared<WorkerArgs>();
  auto* worker = app.add_subcommand("bench-worker", "")->group("");  // hidden
  worker->add_option("--transport", w->transport)->required();
  worker->add_option("--socket", w->socket);
  worker->add_option("--mode", w->mode);
  worker->add_option("--path", w->path);
  worker->add_option("--size", w->size);
  worker->add_option("--iters", w->iters);
  worker->add_option("--warmup", w->warmup);
  worker->add_option("--depth", w->depth);
  worker->add_option("--spin-us", w->spin_us);
  worker->add_option("--gap-us", w->gap_us);
  worker->add_option("--mover", w->mover);
  worker->add_option("--op", w->op);
  worker->callback([w] {
    Status s = run_worker(*w);
    if (!s.ok()) {
      std::cerr << "bench-worker: " << s.to_string() << "\n";
      std::cout << "error " << s.to_string() << std::endl;
      std::exit(1);
    }
    std::exit(0);
  });
  auto path = std::make_shared<std::string>();
  auto* uds = app.add_subcommand("bench-uds-server", "")->group("");
  uds->add_option("--socket", *path)->required();
  uds->callback([path] { std::exit(run_uds_server(*path)); });
}

}  // namespace rocket::tools
