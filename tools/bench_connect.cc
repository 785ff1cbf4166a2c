#include "bench_connect.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "rocket/rocket.h"
#include "rocket/shm/segment.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct ConnectOptions {
  std::string clients = "1,4,8";
  // Each of the two pools' starting size, as the server's default: 32M is
  // today's; 192M was the default before pools grew on demand.
  std::string pools = "32M,192M";
  std::string first_call = "128M";  // a fresh session's first call, which may grow its pools ("0": none)
  std::string pages = "both";
  int rounds = 3;
  bool json_out = false;
};

struct Point {
  bool huge = false;  // the arm: pools asking for 2 MiB pages, or kept to 4 KiB
  size_t pool = 0;    // the pools' starting size
  unsigned clients = 0;
  std::vector<double> ms;  // every connect of every round
  double slowest_ms = 0;   // the worst burst: its last client
  uint64_t huge_bytes = 0;  // most shared memory in 2 MiB pages seen with a burst's sessions open
};

// Shared memory in 2 MiB pages, system-wide (/proc/meminfo ShmemHugePages):
// shows whether an arm got the pages it asked for.
uint64_t shmem_huge_bytes() {
  FILE* f = std::fopen("/proc/meminfo", "re");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "ShmemHugePages: %llu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib * 1024;
}

// One burst: `clients` threads connect at once; the sessions stay open until
// every one is in, then close, and the server is given time to drop them.
Status run_burst(const std::string& socket_path, bool huge, const Server& server, Point& p) {
  std::vector<double> ms(p.clients, 0);
  std::vector<Status> status(p.clients);
  std::vector<std::optional<Client>> sessions(p.clients);
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (unsigned i = 0; i < p.clients; ++i) {
    threads.emplace_back([&, i] {
      auto c = Client::connect(socket_path, {.tenant = "bench-connect", .huge_pages = huge});
      ms[i] = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (c.ok()) {
        sessions[i].emplace(std::move(*c));
      } else {
        status[i] = c.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& st : status) {
    if (!st.ok()) return st;
  }
  p.ms.insert(p.ms.end(), ms.begin(), ms.end());
  p.slowest_ms = std::max(p.slowest_ms, *std::max_element(ms.begin(), ms.end()));
  p.huge_bytes = std::max(p.huge_bytes, shmem_huge_bytes());
  sessions.clear();
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (server.stats().sessions_open != 0 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return ok_status();
}

// A fresh session's first calls: connect, then the same echo_copy of
// `bytes` twice (the first may grow both pools; the second finds them grown).
struct FirstCall {
  std::vector<double> connect_ms, first_ms, second_ms;
};

Status run_first_call(const std::string& socket_path, bool huge, size_t bytes, const std::vector<std::byte>& data,
                      FirstCall& f) {
  const auto t0 = Clock::now();
  ROCKET_ASSIGN_OR_RETURN(Client c, Client::connect(socket_path, {.tenant = "bench-connect", .huge_pages = huge}));
  const auto t1 = Clock::now();
  std::vector<double> call_ms;
  for (int i = 0; i < 2; ++i) {
    const auto t = Clock::now();
    ROCKET_ASSIGN_OR_RETURN(Reply r, c.call("echo_copy", std::span<const std::byte>(data.data(), bytes)));
    call_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    if (r.size() != bytes) return data_loss("echo_copy answered " + std::to_string(r.size()) + " bytes");
  }
  f.connect_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  f.first_ms.push_back(call_ms[0]);
  f.second_ms.push_back(call_ms[1]);
  return ok_status();
}

int run_bench_connect(const ConnectOptions& o) {
  auto counts = parse_counts(o.clients, 1, 256);
  std::vector<size_t> pools;
  bool pools_ok = !split(o.pools).empty();
  for (const std::string& p : split(o.pools)) {
    auto v = parse_size(p);
    pools_ok = pools_ok && v.ok() && *v >= 4096 && *v <= (size_t{2} << 30);
    if (v.ok()) pools.push_back(*v);
  }
  auto first = parse_size(o.first_call);
  if (!counts.ok() || !pools_ok || !first.ok() || *first > (size_t{2} << 30) || o.rounds < 1 ||
      (o.pages != "both" && o.pages != "4k" && o.pages != "2m")) {
    std::fprintf(stderr,
                 "rocket bench connect: --clients takes counts from 1 to 256, --pools sizes from 4K to 2G, "
                 "--first-call a size up to 2G (0: none), --rounds at least 1, --pages both, 4k or 2m\n");
    return 2;
  }
  const std::string setting = shm::shmem_huge_pages();
  const bool granted = shm::shmem_huge_pages_granted(setting);
  std::vector<bool> arms;
  if (o.pages != "2m") arms.push_back(false);
  if (o.pages != "4k") {
    if (granted) {
      arms.push_back(true);
    } else {
      std::fprintf(stderr,
                   "rocket bench connect: shared-memory huge pages are '%s' here, so the 2 MiB arm is not run; "
                   "`echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` (root) allows them\n",
                   setting.empty() ? "unavailable" : setting.c_str());
      if (o.pages == "2m") return 1;
    }
  }
  // A server per arm and starting pool size, all up for the whole run, so
  // that they take turns.
  struct Setup {
    bool huge;
    size_t pool;
    std::string path;
    std::unique_ptr<Server> server;
    FirstCall first;
  };
  std::vector<Setup> setups;
  for (bool huge : arms) {
    for (size_t pool : pools) {
      ServerOptions so;
      so.socket_path =
          "/tmp/rocket-bench-connect-" + std::to_string(::getpid()) + "-" + std::to_string(setups.size()) + ".sock";
      so.default_client_pool_bytes = so.default_server_pool_bytes = pool;
      so.max_sessions = 1024;
      so.huge_pages = huge;
      setups.push_back({huge, pool, so.socket_path, std::make_unique<Server>(so), {}});
      if (!register_builtin_ops(*setups.back().server).ok()) return 1;
      if (Status st = setups.back().server->start(); !st.ok()) {
        std::fprintf(stderr, "rocket bench connect: %s\n", st.to_string().c_str());
        return 1;
      }
    }
  }
  auto setup_of = [&](bool huge, size_t pool) -> Setup& {
    return *std::find_if(setups.begin(), setups.end(),
                         [&](const Setup& s) { return s.huge == huge && s.pool == pool; });
  };
  std::vector<Point> points;
  for (const Setup& s : setups) {
    for (unsigned n : *counts) points.push_back({s.huge, s.pool, n, {}, 0, 0});
  }
  std::vector<std::byte> data(*first);
  for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<std::byte>(i >> 12);
  Status failed = ok_status();
  for (int round = 1; round <= o.rounds && failed.ok(); ++round) {
    for (size_t k = 0; k < points.size() && failed.ok(); ++k) {
      Point& p = points[in_round_order(round, k, points.size())];
      Setup& s = setup_of(p.huge, p.pool);
      failed = run_burst(s.path, p.huge, *s.server, p);
      if (!failed.ok()) {
        std::fprintf(stderr, "rocket bench connect: %u clients at once, %s pools, %s pages: %s\n", p.clients,
                     human_size(p.pool).c_str(), p.huge ? "2 MiB" : "4 KiB", failed.to_string().c_str());
      }
    }
    for (size_t k = 0; k < setups.size() && failed.ok() && *first > 0; ++k) {
      Setup& s = setups[in_round_order(round, k, setups.size())];
      failed = run_first_call(s.path, s.huge, *first, data, s.first);
      if (!failed.ok()) {
        std::fprintf(stderr, "rocket bench connect: first call, %s pools, %s pages: %s\n", human_size(s.pool).c_str(),
                     s.huge ? "2 MiB" : "4 KiB", failed.to_string().c_str());
      }
    }
  }
  for (auto& s : setups) s.server->stop();
  if (!failed.ok()) return 1;
  if (o.json_out) {
    json out = json::array();
    for (const Point& p : points) {
      const Summary s = summarize(p.ms);
      out.push_back({{"clients", p.clients},
                     {"pool_bytes", p.pool},
                     {"pages", p.huge ? "2m" : "4k"},
                     {"shmem_enabled", setting},
                     {"shmem_huge_bytes", p.huge_bytes},
                     {"connect_p50_ms", s.p50},
                     {"connect_p99_ms", s.p99},
                     {"slowest_ms", p.slowest_ms},
                     {"connects", s.n}});
    }
    for (const Setup& s : setups) {
      if (s.first.first_ms.empty()) continue;
      out.push_back({{"first_call_bytes", *first},
                     {"pool_bytes", s.pool},
                     {"pages", s.huge ? "2m" : "4k"},
                     {"connect_p50_ms", summarize(s.first.connect_ms).p50},
                     {"first_call_p50_ms", summarize(s.first.first_ms).p50},
                     {"second_call_p50_ms", summarize(s.first.second_ms).p50},
                     {"sessions", s.first.first_ms.size()}});
    }
    std::cout << out.dump(1) << std::endl;
    return 0;
  }
  std::printf(
      "connect: a server in this process per page size and starting pool size, %d round%s (%u cores), "
      "shmem_enabled '%s'\n",
      o.rounds, o.rounds == 1 ? "" : "s", std::thread::hardware_concurrency(), setting.c_str());
  std::printf("%6s %6s %16s %12s %12s %12s %14s\n", "pages", "pools", "clients at once", "p50 ms", "p99 ms",
              "slowest ms", "2M pages MiB");
  for (const Point& p : points) {
    const Summary s = summarize(p.ms);
    std::printf("%6s %6s %16u %12.1f %12.1f %12.1f %14.0f\n", p.huge ? "2 MiB" : "4 KiB", human_size(p.pool).c_str(),
                p.clients, s.p50, s.p99, p.slowest_ms, static_cast<double>(p.huge_bytes) / (1 << 20));
  }
  if (*first > 0) {
    std::printf(
        "\na fresh session's first two echo_copy calls of %s (pools that start smaller grow in the first), "
        "p50 of %d:\n",
        human_size(*first).c_str(), o.rounds);
    std::printf("%6s %6s %12s %14s %15s %16s\n", "pages", "pools", "connect ms", "first call ms", "second call ms",
                "connect+first ms");
    for (const Setup& s : setups) {
      const double c = summarize(s.first.connect_ms).p50, f = summarize(s.first.first_ms).p50;
      std::printf("%6s %6s %12.1f %14.1f %15.1f %16.1f\n", s.huge ? "2 MiB" : "4 KiB", human_size(s.pool).c_str(), c, f,
                  summarize(s.first.second_ms).p50, c + f);
    }
  }
  return 0;
}

}  // namespace

void add_bench_connect(CLI::App& bench) {
  static ConnectOptions o;
  auto* cmd = bench.add_subcommand("connect", "What opening a session costs: bursts of clients connecting at once");
  cmd->add_option("--clients", o.clients, "clients connecting at once, per burst")->capture_default_str();
  cmd->add_option("--pools", o.pools, "each session's client and server pools' starting size, one server per size")
      ->capture_default_str();
  cmd->add_option("--first-call", o.first_call, "a fresh session's first call (0: none)")->capture_default_str();
  cmd->add_option("--pages", o.pages, "pool page size: 4k, 2m (needs shared-memory huge pages) or both, side by side")
      ->capture_default_str();
  cmd->add_option("--rounds", o.rounds, "rounds; bursts alternate order")->capture_default_str();
  cmd->add_flag("--json", o.json_out, "print JSON");
  cmd->callback([] { std::exit(run_bench_connect(o)); });
}

}  // namespace rocket::tools
