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
  std::string pool = "32M";  // each of the two pools' starting size, as the server's default
  std::string pages = "both";
  int rounds = 3;
  bool json_out = false;
};

struct Point {
  bool huge = false;  // the arm: pools asking for 2 MiB pages, or kept to 4 KiB
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

int run_bench_connect(const ConnectOptions& o) {
  auto counts = parse_counts(o.clients, 1, 256);
  auto pool = parse_size(o.pool);
  if (!counts.ok() || !pool.ok() || *pool < 4096 || o.rounds < 1 ||
      (o.pages != "both" && o.pages != "4k" && o.pages != "2m")) {
    std::fprintf(stderr,
                 "rocket bench connect: --clients takes counts from 1 to 256, --pool a size of 4K or more, "
                 "--rounds at least 1, --pages both, 4k or 2m\n");
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
  // A server per arm, both up for the whole run, so that the arms take turns.
  std::vector<std::unique_ptr<Server>> servers;
  std::vector<std::string> paths;
  for (bool huge : arms) {
    ServerOptions so;
    so.socket_path = "/tmp/rocket-bench-connect-" + std::to_string(::getpid()) + (huge ? "-2m" : "-4k") + ".sock";
    so.default_client_pool_bytes = so.default_server_pool_bytes = *pool;
    so.max_sessions = 1024;
    so.huge_pages = huge;
    servers.push_back(std::make_unique<Server>(so));
    paths.push_back(so.socket_path);
    if (Status st = servers.back()->start(); !st.ok()) {
      std::fprintf(stderr, "rocket bench connect: %s\n", st.to_string().c_str());
      return 1;
    }
  }
  std::vector<Point> points;
  for (bool huge : arms) {
    for (unsigned n : *counts) points.push_back({huge, n, {}, 0, 0});
  }
  Status failed = ok_status();
  for (int round = 1; round <= o.rounds && failed.ok(); ++round) {
    for (size_t k = 0; k < points.size() && failed.ok(); ++k) {
      Point& p = points[in_round_order(round, k, points.size())];
      const size_t arm = static_cast<size_t>(std::find(arms.begin(), arms.end(), p.huge) - arms.begin());
      failed = run_burst(paths[arm], p.huge, *servers[arm], p);
      if (!failed.ok()) {
        std::fprintf(stderr, "rocket bench connect: %u clients at once, %s pages: %s\n", p.clients,
                     p.huge ? "2 MiB" : "4 KiB", failed.to_string().c_str());
      }
    }
  }
  for (auto& s : servers) s->stop();
  if (!failed.ok()) return 1;
  if (o.json_out) {
    json out = json::array();
    for (const Point& p : points) {
      const Summary s = summarize(p.ms);
      out.push_back({{"clients", p.clients},
                     {"pool_bytes", *pool},
                     {"pages", p.huge ? "2m" : "4k"},
                     {"shmem_enabled", setting},
                     {"shmem_huge_bytes", p.huge_bytes},
                     {"connect_p50_ms", s.p50},
                     {"connect_p99_ms", s.p99},
                     {"slowest_ms", p.slowest_ms},
                     {"connects", s.n}});
    }
    std::cout << out.dump(1) << std::endl;
    return 0;
  }
  std::printf("connect: a server in this process, two %s pools a session, %d round%s (%u cores), shmem_enabled '%s'\n",
              human_size(*pool).c_str(), o.rounds, o.rounds == 1 ? "" : "s", std::thread::hardware_concurrency(),
              setting.c_str());
  std::printf("%6s %16s %12s %12s %12s %14s\n", "pages", "clients at once", "p50 ms", "p99 ms", "slowest ms",
              "2M pages MiB");
  for (const Point& p : points) {
    const Summary s = summarize(p.ms);
    std::printf("%6s %16u %12.1f %12.1f %12.1f %14.0f\n", p.huge ? "2 MiB" : "4 KiB", p.clients, s.p50, s.p99,
                p.slowest_ms, static_cast<double>(p.huge_bytes) / (1 << 20));
  }
  if (arms.size() == 2) {
    std::printf("%6s %16s %12s\n", "", "clients at once", "4K/2M p50");
    for (size_t k = 0; k < counts->size(); ++k) {
      const double small = summarize(points[k].ms).p50, huge = summarize(points[k + counts->size()].ms).p50;
      std::printf("%6s %16u %11.2fx\n", "", points[k].clients, huge > 0 ? small / huge : 0);
    }
  }
  return 0;
}

}  // namespace

void add_bench_connect(CLI::App& bench) {
  static ConnectOptions o;
  auto* cmd = bench.add_subcommand("connect", "What opening a session costs: bursts of clients connecting at once");
  cmd->add_option("--clients", o.clients, "clients connecting at once, per burst")->capture_default_str();
  cmd->add_option("--pool", o.pool, "each session's client and server pool")->capture_default_str();
  cmd->add_option("--pages", o.pages, "pool page size: 4k, 2m (needs shared-memory huge pages) or both, side by side")
      ->capture_default_str();
  cmd->add_option("--rounds", o.rounds, "rounds; bursts alternate order")->capture_default_str();
  cmd->add_flag("--json", o.json_out, "print JSON");
  cmd->callback([] { std::exit(run_bench_connect(o)); });
}

}  // namespace rocket::tools
