#include "top.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "args.h"
#include "rocket/rocket.h"

namespace rocket::tools {
namespace {

using json = nlohmann::json;

struct TopArgs {
  std::string socket;
  int interval_ms = 1000;
  int count = 0;  // 0: until interrupted
  bool json_out = false;
};

// The server's counters, checked: every field a non-negative integer.
Result<json> sample(Client& c) {
  ROCKET_ASSIGN_OR_RETURN(Reply r, c.call("stats", std::span<const std::byte>{}));
  json j = json::parse(std::string(reinterpret_cast<const char*>(r.data().data()), r.size()), nullptr, false);
  if (!j.is_object()) return data_loss("the server's stats are not a JSON object");
  for (const char* k : {"sessions_open", "requests", "request_errors", "protocol_errors", "bytes_mapped", "lends",
                        "lends_refused", "requests_helped"}) {
    if (!j.contains(k) || !j[k].is_number_unsigned()) return data_loss(std::string("the server's stats lack ") + k);
  }
  return j;
}

int top(const TopArgs& a) {
  if (a.interval_ms < 10) {
    std::fprintf(stderr, "rocket top: --interval-ms of at least 10\n");
    return 2;
  }
  // The smallest pools a session can have: top sends nothing and reads JSON.
  auto c =
      Client::connect(a.socket, {.tenant = "rocket-top", .client_pool_bytes = 1 << 16, .server_pool_bytes = 1 << 16});
  if (!c.ok()) {
    std::fprintf(stderr, "rocket top: %s\n", c.status().to_string().c_str());
    return 1;
  }
  auto prev = sample(*c);
  if (!prev.ok()) {
    std::fprintf(stderr, "rocket top: %s\n", prev.status().to_string().c_str());
    return 1;
  }
  auto t_prev = std::chrono::steady_clock::now();
  if (!a.json_out) {
    std::printf("%-9s %8s %10s %9s %9s %11s %8s %8s %9s %9s\n", "time", "sessions", "requests/s", "errors/s",
                "protocol", "mapped MiB", "lends/s", "refused", "held MiB", "helped/s");
  }
  for (int i = 0; a.count == 0 || i < a.count; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(a.interval_ms));
    auto cur = sample(*c);
    if (!cur.ok()) {
      std::fprintf(stderr, "rocket top: %s\n", cur.status().to_string().c_str());
      return 1;
    }
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t_prev).count();
    // The rates leave out top's own call to "stats" (one per sample).
    auto rate = [&](const char* k, uint64_t own) {
      const uint64_t a0 = (*prev)[k].get<uint64_t>(), a1 = (*cur)[k].get<uint64_t>();
      return a1 >= a0 + own ? static_cast<double>(a1 - a0 - own) / dt : 0.0;
    };
    if (a.json_out) {
      json line = *cur;
      line["requests_per_s"] = rate("requests", 1);
      line["interval_s"] = dt;
      std::cout << line.dump() << std::endl;
    } else {
      const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      char hms[16];
      std::strftime(hms, sizeof(hms), "%H:%M:%S", std::localtime(&t));
      // Memory a backend keeps after its loans ended (lending.h); servers
      // from before memory lending do not report it.
      const json& held = (*cur).value("memory_held_over_bytes", json(0));
      const double held_mib = held.is_number_unsigned() ? static_cast<double>(held.get<uint64_t>()) / (1 << 20) : 0;
      std::printf("%-9s %8llu %10.1f %9.1f %9llu %11.1f %8.1f %8llu %9.1f %9.1f\n", hms,
                  static_cast<unsigned long long>((*cur)["sessions_open"].get<uint64_t>()), rate("requests", 1),
                  rate("request_errors", 0), static_cast<unsigned long long>((*cur)["protocol_errors"].get<uint64_t>()),
                  static_cast<double>((*cur)["bytes_mapped"].get<uint64_t>()) / (1 << 20), rate("lends", 0),
                  static_cast<unsigned long long>((*cur)["lends_refused"].get<uint64_t>()), held_mib,
                  rate("requests_helped", 0));
      std::fflush(stdout);
    }
    prev = std::move(cur);
    t_prev = now;
  }
  return 0;
}

}  // namespace

void add_top(CLI::App& app) {
  static TopArgs a;
  a.socket = default_socket();
  auto* cmd = app.add_subcommand("top", "A running server's counters, sampled (the server's own account only)");
  cmd->add_option("--socket", a.socket, "the server's socket (env ROCKET_SOCKET)")->capture_default_str();
  cmd->add_option("--interval-ms", a.interval_ms, "time between samples")->capture_default_str();
  cmd->add_option("--count", a.count, "samples to print (0: until interrupted)")->capture_default_str();
  cmd->add_flag("--json", a.json_out, "one JSON object per sample");
  cmd->callback([] { std::exit(top(a)); });
}

}  // namespace rocket::tools
