#include "bench_peers.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "args.h"
#include "process.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using json = nlohmann::json;

struct PeersOptions {
  std::string transports = "uds,zmq,grpc,shm_naive,rocket,rocket_zc";
  std::string sizes = "64,64K,1M,16M";
  std::string workload = "pagerank";
  double scale = 0.25;  // pagerank at 0.25: a 19 MiB edge list in, 80 KB of ranks out
  double budget_ms = 400;
  int rounds = 2;
  bool json_out = false;
  bool quick = false;
};



std::string peers_exe() {
  if (const char* env = std::getenv("ROCKET_PEERS")) return env;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("rocket-peers") : (self.parent_path() / "rocket-peers").string();
}

int run_bench_peers(const PeersOptions& o) {
  const std::string exe = peers_exe();
  if (::access(exe.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "rocket bench peers: %s not found (it needs libzmq3-dev, cppzmq-dev, libgrpc++-dev)\n", exe.c_str());
    return 1;
  }
  std::vector<size_t> sizes;
  for (const auto& s : split(o.quick ? "64,1M,16M" : o.sizes)) {
    auto v = parse_size(s);
    if (!v.ok()) {
      std::fprintf(stderr, "rocket bench peers: %s\n", v.status().to_string().c_str());
      return 2;
    }
    sizes.push_back(*v);
  }
  const double budget = o.quick ? 150 : o.budget_ms;
  const int rounds = std::max(1, o.rounds);
  const std::vector<std::string> transports = split(o.transports);
  const std::string base = "/tmp/rocket-peers-" + std::to_string(::getpid());
  // Every server runs for the whole bench (rocket and rocket_zc share one).
  std::map<std::string, Child> servers;
  auto endpoint_of = [&](const std::string& t) { return base + "-" + (t == "rocket_zc" ? "rocket" : t) + ".sock"; };
  for (const auto& t : transports) {
    const std::string server_transport = t == "rocket_zc" ? "rocket" : t;
    if (servers.count(server_transport) != 0) continue;
    auto server = Child::spawn_program(exe, {"server", "--transport", server_transport, "--endpoint", endpoint_of(t),
                                             "--workload", o.workload, "--scale", std::to_string(o.scale)});
    if (!server.ok() || !server->read_line(60000).ok()) {
      std::fprintf(stderr, "rocket bench peers: the %s server did not start\n", t.c_str());
      return 1;
    }
    servers.emplace(server_transport, std::move(*server));
  }
  // One client run: `budget / rounds` of round trips; its samples join the point's.
  std::map<std::tuple<std::string, std::string, size_t>, std::vector<double>> samples;
  std::map<std::tuple<std::string, std::string, size_t>, Status> failed;
  auto run = [&](const std::string& t, const std::string& op, size_t size) -> Status {
    auto c = Child::spawn_program(
        exe, {"client", "--transport", t, "--endpoint", endpoint_of(t), "--op", op, "--workload", o.workload, "--scale",
              std::to_string(o.scale), "--size", std::to_string(size), "--budget-ms", std::to_string(budget / rounds)});
    if (!c.ok()) return c.status();
    auto line = c->read_line(600000);
    if (!line.ok()) return unavailable("the client failed (see its message above)");
    json r = json::parse(*line, nullptr, false);
    if (!r.is_object() || !r.contains("samples") || !r["samples"].is_array() || r["samples"].empty() ||
        !std::all_of(r["samples"].begin(), r["samples"].end(), [](const json& v) { return v.is_number(); })) {
      return internal_error("malformed client output: " + *line);
    }
    auto& into = samples[{t, op, size}];
    for (const auto& v : r["samples"]) into.push_back(v.get<double>());
    return ok_status();
  };
  // The points, each transport's next to the others': a machine whose speed
  // drifts over the run then shifts every transport's samples alike, and the
  // rounds (the order reversed in every other one) spread what drift remains.
  std::vector<std::pair<std::string, size_t>> ops;
  for (size_t size : sizes) ops.emplace_back("echo", size);
  if (!o.workload.empty()) ops.emplace_back(o.workload, 0);
  for (int round = 1; round <= rounds; ++round) {
    if (!o.json_out && rounds > 1) std::printf("  round %d of %d ...\n", round, rounds);
    std::fflush(stdout);
    for (const auto& [op, size] : ops) {
      for (size_t i = 0; i < transports.size(); ++i) {
        const std::string& t = transports[in_round_order(round, i, transports.size())];
        if (failed.count({t, op, size}) != 0) continue;
        if (Status st = run(t, op, size); !st.ok()) failed[{t, op, size}] = st;
      }
    }
  }
  for (auto& [t, server] : servers) {
    server.stop();
    std::filesystem::remove(endpoint_of(t));
  }
  json rows = json::array();
  for (const auto& t : transports) {
    for (const auto& [op, size] : ops) {
      if (auto f = failed.find({t, op, size}); f != failed.end()) {
        std::fprintf(stderr, "  %s %s %zu: %s\n", t.c_str(), op.c_str(), size, f->second.to_string().c_str());
        continue;
      }
      const std::vector<double>& v = samples[{t, op, size}];
      auto st = summarize(v);
      const bool zc = t == "rocket_zc";
      if (!o.json_out) {
        std::printf("  %-9s %-8s %-9s %9s  p50 %11.2f us  p99 %11.2f us\n", t.c_str(), zc ? "zerocopy" : "copy",
                    op.c_str(), op == "echo" ? std::to_string(size).c_str() : "-", st.p50, st.p99);
      }
      rows.push_back({{"transport", zc ? "rocket" : t},
                      {"mode", "sync"},
                      {"path", zc ? "zerocopy" : "copy"},
                      {"op", op},
                      {"size", size},
                      {"clients", 1},
                      {"p50_us", st.p50},
                      {"p99_us", st.p99},
                      {"mean_us", st.mean},
                      {"gbps", op == "echo" && st.p50 > 0 ? 2.0 * static_cast<double>(size) / (st.p50 * 1e3) : 0.0},
                      {"ops", v.size()},
                      {"rounds", rounds}});
    }
  }
  auto find = [&](const std::string& transport, const std::string& path, const std::string& op, size_t size) -> const json* {
    for (const auto& r : rows) {
      if (r["transport"] == transport && r["path"] == path && r["op"] == op && (op != "echo" || r["size"] == size)) return &r;
    }
    return nullptr;
  };
  // A point that failed was reported above; the bench then exits 1.
  const int rc = failed.empty() ? 0 : 1;
  if (o.json_out) {
    std::cout << json{{"results", rows}}.dump(2) << std::endl;
    return rc;
  }
  std::printf("\nRatios (p50 of the other transport / p50 of Rocket's copy path, same run):\n");
  const size_t k16m = size_t{16} << 20;
  for (const std::string& op : {std::string("echo"), o.workload}) {
    if (op.empty()) continue;
    const json* rocket = find("rocket", "copy", op, k16m);
    if (rocket == nullptr) continue;
    for (const std::string t : {"uds", "zmq", "grpc", "shm_naive"}) {
      const json* other = find(t, "copy", op, k16m);
      if (other == nullptr) continue;
      const double ratio = (*other)["p50_us"].get<double>() / (*rocket)["p50_us"].get<double>();
      if (op == "echo") {
        std::printf("  echo 16 MiB  %-9s / rocket copy  %7.2fx%s\n", t.c_str(), ratio,
                    t == "shm_naive" ? "" : ratio >= 5 ? "  (>= 5: met)" : "  (>= 5: NOT MET)");
      } else {
        std::printf("  %-11s  %-9s / rocket copy  %7.2fx\n", op.c_str(), t.c_str(), ratio);
      }
    }
    if (const json* zc = find("rocket", "zerocopy", op, k16m)) {
      std::printf("  %-11s  rocket copy / rocket zero-copy  %7.2fx\n", op == "echo" ? "echo 16 MiB" : op.c_str(),
                  (*rocket)["p50_us"].get<double>() / (*zc)["p50_us"].get<double>());
    }
  }
  return rc;
}

}  // namespace

void add_bench_peers(CLI::App& bench) {
  auto opt = std::make_shared<PeersOptions>();
  auto* cmd = bench.add_subcommand("peers", "Echo and a workload through a Unix socket, ZeroMQ, gRPC, a naive "
                                            "shared-memory file per call, and Rocket (copy and zero-copy paths)");
  cmd->add_option("--transports", opt->transports, "uds,zmq,grpc,shm_naive,rocket,rocket_zc")->capture_default_str();
  cmd->add_option("--sizes", opt->sizes, "echo payload sizes")->capture_default_str();
  cmd->add_option("--workload", opt->workload, "workload sent through every transport ('' for none)")->capture_default_str();
  cmd->add_option("--scale", opt->scale, "the workload's size factor")->capture_default_str();
  cmd->add_option("--budget-ms", opt->budget_ms, "measuring time per point, split over the rounds")
      ->capture_default_str();
  cmd->add_option("--rounds", opt->rounds,
                  "client runs per point, each transport's next to the others', the order reversed every other round")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--json", opt->json_out, "print {\"results\": [...]} in the shared bench shape");
  cmd->add_flag("--quick", opt->quick, "64 B, 1 MiB, 16 MiB; short points");
  cmd->callback([opt] { std::exit(run_bench_peers(*opt)); });
}

}  // namespace rocket::tools
