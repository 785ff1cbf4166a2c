#include "bench_connect.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "rocket/rocket.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct ConnectOptions {
  std::string clients = "1,4,8";
  std::string pool = "192M";  // each of the two pools, as the server's default
  int rounds = 3;
  bool json_out = false;
};

struct Point {
  unsigned clients = 0;
  std::vector<double> ms;  // every connect of every round
  double slowest_ms = 0;   // the worst burst: its last client
};

int run_bench_connect(const ConnectOptions& o) {
  auto counts = parse_counts(o.clients, 1, 256);
  auto pool = parse_size(o.pool);
  if (!counts.ok() || !pool.ok() || *pool < 4096 || o.rounds < 1) {
    std::fprintf(stderr,
                 "rocket bench connect: --clients takes counts from 1 to 256, --pool a size of 4K or more, "
                 "--rounds at least 1\n");
    return 2;
  }
  ServerOptions so;
  so.socket_path = "/tmp/rocket-bench-connect-" + std::to_string(::getpid()) + ".sock";
  so.default_client_pool_bytes = so.default_server_pool_bytes = *pool;
  so.max_sessions = 1024;
  Server server(so);
  if (Status st = server.start(); !st.ok()) {
    std::fprintf(stderr, "rocket bench connect: %s\n", st.to_string().c_str());
    return 1;
  }
  std::vector<Point> points;
  for (unsigned n : *counts) points.push_back({n, {}, 0});
  bool failed = false;
  for (int round = 1; round <= o.rounds && !failed; ++round) {
    for (size_t k = 0; k < points.size() && !failed; ++k) {
      Point& p = points[in_round_order(round, k, points.size())];
      std::vector<double> ms(p.clients, 0);
      std::vector<Status> status(p.clients);
      std::vector<std::optional<Client>> sessions(p.clients);
      std::vector<std::thread> threads;
      const auto t0 = Clock::now();
      for (unsigned i = 0; i < p.clients; ++i) {
        threads.emplace_back([&, i] {
          auto c = Client::connect(so.socket_path, {.tenant = "bench-connect"});
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
        if (!st.ok()) {
          std::fprintf(stderr, "rocket bench connect: %u clients at once: %s\n", p.clients, st.to_string().c_str());
          failed = true;
          break;
        }
      }
      p.ms.insert(p.ms.end(), ms.begin(), ms.end());
      p.slowest_ms = std::max(p.slowest_ms, *std::max_element(ms.begin(), ms.end()));
      sessions.clear();  // closed before the next burst
      const auto until = Clock::now() + std::chrono::seconds(10);
      while (server.stats().sessions_open != 0 && Clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
  }
  server.stop();
  if (failed) return 1;
  if (o.json_out) {
    json out = json::array();
    for (const Point& p : points) {
      const Summary s = summarize(p.ms);
      out.push_back({{"clients", p.clients},
                     {"pool_bytes", *pool},
                     {"connect_p50_ms", s.p50},
                     {"connect_p99_ms", s.p99},
                     {"slowest_ms", p.slowest_ms},
                     {"connects", s.n}});
    }
    std::cout << out.dump(1) << std::endl;
    return 0;
  }
  std::printf("connect: a server in this process, two %s pools a session, %d round%s (%u cores)\n",
              human_size(*pool).c_str(), o.rounds, o.rounds == 1 ? "" : "s", std::thread::hardware_concurrency());
  std::printf("%16s %12s %12s %12s\n", "clients at once", "p50 ms", "p99 ms", "slowest ms");
  for (const Point& p : points) {
    const Summary s = summarize(p.ms);
    std::printf("%16u %12.1f %12.1f %12.1f\n", p.clients, s.p50, s.p99, p.slowest_ms);
  }
  return 0;
}

}  // namespace

void add_bench_connect(CLI::App& bench) {
  static ConnectOptions o;
  auto* cmd = bench.add_subcommand("connect", "What opening a session costs: bursts of clients connecting at once");
  cmd->add_option("--clients", o.clients, "clients connecting at once, per burst")->capture_default_str();
  cmd->add_option("--pool", o.pool, "each session's client and server pool")->capture_default_str();
  cmd->add_option("--rounds", o.rounds, "rounds; bursts alternate order")->capture_default_str();
  cmd->add_flag("--json", o.json_out, "print JSON");
  cmd->callback([] { std::exit(run_bench_connect(o)); });
}

}  // namespace rocket::tools
