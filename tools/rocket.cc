// `rocket`: the command-line tool.
//
//   rocket demo [--quick]                   real workloads under every mode and engine
//   rocket serve [--socket PATH]            a backend with the built-in ops
//   rocket call --op echo --data hello      one request, printed
//   rocket doctor [--json]                  which data movers work here, and why not
//   rocket calibrate                        fit each mover's cost model, save the profile
//   rocket bench echo [--quick] [--json]    round trips vs a Unix socket
//   rocket bench movers [--json]            every data mover, memcpy baseline
//   rocket bench peers [--quick] [--json]   vs uds, zmq, grpc, a naive shm file per call
//   rocket bench overlap                    caller work hidden behind call_async
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "args.h"
#include "exit_with_parent.h"
#include "bench_echo.h"
#include "bench_movers.h"
#include "bench_peers.h"
#include "demo.h"
#include "serve_until_signal.h"
#include "mover/cuda_mover.h"
#include "rocket/rocket.h"

namespace {

using json = nlohmann::json;

std::string default_socket() {
  if (const char* env = std::getenv("ROCKET_SOCKET")) return env;
  return "/tmp/rocket.sock";
}

struct ServeArgs {
  std::string socket = default_socket();
  unsigned dispatchers = 1;
  long spin_us = 50;
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  size_t client_pool_mib = 192, server_pool_mib = 192, max_pool_mib = 2048;
  unsigned max_sessions = 256;
};

int serve(const ServeArgs& a) {
  rocket::ServerOptions o;
  o.socket_path = a.socket;
  o.dispatchers = a.dispatchers;
  o.spin = std::chrono::microseconds(a.spin_us);
  o.allowed_uids = a.uids;
  o.allowed_gids = a.gids;
  o.default_client_pool_bytes = a.client_pool_mib << 20;
  o.default_server_pool_bytes = a.server_pool_mib << 20;
  o.max_pool_bytes = a.max_pool_mib << 20;
  o.max_sessions = a.max_sessions;
  rocket::Server server(o);
  if (auto s = rocket::register_builtin_ops(server); !s.ok()) {
    std::cerr << "rocket serve: " << s.to_string() << "\n";
    return 1;
  }
  const int rc = rocket::tools::serve_until_signal(server, "rocket serve", [&] {
    // The first line on stdout says the server accepts (scripts wait for it).
    std::cout << "rocket: serving on " << a.socket << " (ops: echo, echo_copy, checksum, gpu_echo; " << a.dispatchers
              << " dispatcher" << (a.dispatchers == 1 ? "" : "s") << ")" << std::endl;
  });
  if (rc != 0) return rc;
  auto st = server.stats();
  std::cerr << "rocket: stopped after " << st.sessions_total << " sessions, " << st.requests << " requests\n";
  return 0;
}

struct CallArgs {
  std::string socket = default_socket();
  std::string op = "echo";
  std::string data;
  std::string file;
  size_t size = 0;
  std::string out;
  bool json_out = false;
  std::string tenant = "cli";
};

int call(const CallArgs& a) {
  std::vector<std::byte> payload;
  if (!a.file.empty()) {
    std::ifstream f(a.file, std::ios::binary);
    if (!f) {
      std::cerr << "rocket call: cannot read " << a.file << "\n";
      return 2;
    }
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    payload.resize(s.size());
    std::memcpy(payload.data(), s.data(), s.size());
  } else if (a.size > 0) {
    payload.resize(a.size);
    for (size_t i = 0; i < a.size; ++i) payload[i] = static_cast<std::byte>(i * 131 + 7);
  } else {
    payload.resize(a.data.size());
    std::memcpy(payload.data(), a.data.data(), a.data.size());
  }
  rocket::ClientOptions co;
  co.tenant = a.tenant;
  co.client_pool_bytes = std::max<size_t>(payload.size() + (1 << 20), size_t{8} << 20);
  co.server_pool_bytes = std::max<size_t>(payload.size() + (1 << 20), size_t{8} << 20);
  co.client_pool_bytes = (co.client_pool_bytes + 4095) / 4096 * 4096;
  co.server_pool_bytes = (co.server_pool_bytes + 4095) / 4096 * 4096;
  auto client = rocket::Client::connect(a.socket, co);
  if (!client.ok()) {
    std::cerr << "rocket call: " << client.status().to_string() << "\n";
    return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto reply = client->call(a.op, std::span<const std::byte>(payload));
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  if (!reply.ok()) {
    std::cerr << "rocket call: " << reply.status().to_string() << "\n";
    return 1;
  }
  auto data = reply->data();
  if (!a.out.empty()) {
    std::ofstream f(a.out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  json j{{"op", a.op}, {"request_bytes", payload.size()}, {"reply_bytes", data.size()},
         {"reply_checksum", rocket::checksum64(data)}, {"round_trip_us", us},
         {"service_us", static_cast<double>(reply->service_time().count()) / 1000.0}};
  if (a.json_out) {
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%s: %zu bytes in, %zu bytes out in %.1f us (handler %.1f us), checksum %016llx\n", a.op.c_str(),
              payload.size(), data.size(), us, j["service_us"].get<double>(),
              static_cast<unsigned long long>(rocket::checksum64(data)));
  bool printable = data.size() <= 256;
  for (auto b : data) printable = printable && std::isprint(static_cast<int>(b));
  if (printable && !data.empty()) std::printf("%.*s\n", static_cast<int>(data.size()), reinterpret_cast<const char*>(data.data()));
  return 0;
}

int doctor(bool json_out) {
  auto infos = rocket::probe_movers();
  // The cost profile the runtime would load, and so what `auto` chooses from.
  const std::string path = rocket::default_profile_path();
  const rocket::Status loaded = rocket::load_cost_profile(path);
  const std::string profile = loaded.ok() ? path + " (calibrated here)"
                              : loaded.code() == rocket::StatusCode::kNotFound
                                  ? "none: built-in estimates (run `rocket calibrate`)"
                                  : "ignored: " + loaded.to_string();
  // Where there is a GPU: how its engine crosses host-to-host copies by size.
  std::vector<std::pair<std::string, std::string>> h2h;  // size, method
  if (auto m = rocket::make_mover(rocket::MoverKind::kCuda); m.ok()) {
    if (auto* cuda = dynamic_cast<rocket::detail::CudaMover*>(m->get())) {
      for (size_t size : {size_t{64} << 10, size_t{1} << 20, size_t{16} << 20, size_t{128} << 20, size_t{512} << 20}) {
        h2h.emplace_back(rocket::tools::human_size(size),
                         cuda->h2h_for(size) == ROCKET_CUDA_H2H_KERNEL ? "kernel" : "staged");
      }
    }
  }
  if (json_out) {
    json arr = json::array();
    for (const auto& i : infos) {
      arr.push_back({{"mover", std::string(rocket::mover_kind_name(i.kind))}, {"usable", i.usable}, {"reason", i.reason}});
    }
    json methods = json::array();
    for (const auto& [size, how] : h2h) methods.push_back({{"size", size}, {"method", how}});
    std::cout << json{{"movers", arr}, {"cost_profile", profile}, {"cuda_host_to_host", methods}}.dump(1) << std::endl;
    return 0;
  }
  std::printf("%-11s %-7s %s\n", "mover", "usable", "why");
  for (const auto& i : infos) {
    std::printf("%-11s %-7s %s\n", std::string(rocket::mover_kind_name(i.kind)).c_str(), i.usable ? "yes" : "no",
                i.reason.c_str());
  }
  std::printf("\ncost profile: %s\n", profile.c_str());
  if (!h2h.empty()) {
    std::printf("cuda host-to-host under auto:");
    for (const auto& [size, how] : h2h) std::printf(" %s %s;", size.c_str(), how.c_str());
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  rocket::tools::exit_with_parent();
  CLI::App app{"rocket: shared-memory IPC with managed data movement"};
  app.require_subcommand(1);

  ServeArgs sa;
  auto* serve_cmd = app.add_subcommand("serve", "Run a backend with the built-in ops (echo, echo_copy, checksum, gpu_echo)");
  serve_cmd->add_option("--socket", sa.socket, "Unix socket path (env ROCKET_SOCKET)")->capture_default_str();
  serve_cmd->add_option("--dispatchers", sa.dispatchers, "dispatcher threads")->capture_default_str();
  serve_cmd->add_option("--spin-us", sa.spin_us, "idle polling before a dispatcher sleeps")->capture_default_str();
  serve_cmd->add_option("--allow-uid", sa.uids, "also admit this uid (repeatable)");
  serve_cmd->add_option("--allow-gid", sa.gids, "also admit this gid (repeatable)");
  serve_cmd->add_option("--client-pool-mib", sa.client_pool_mib, "default client pool")->capture_default_str();
  serve_cmd->add_option("--server-pool-mib", sa.server_pool_mib, "default server pool")->capture_default_str();
  serve_cmd->add_option("--max-pool-mib", sa.max_pool_mib, "largest pool a client may ask for")->capture_default_str();
  serve_cmd->add_option("--max-sessions", sa.max_sessions, "session limit")->capture_default_str();
  serve_cmd->callback([&] { std::exit(serve(sa)); });

  CallArgs ca;
  auto* call_cmd = app.add_subcommand("call", "Send one request and print the reply");
  call_cmd->add_option("--socket", ca.socket, "Unix socket path")->capture_default_str();
  call_cmd->add_option("--op", ca.op, "op name")->capture_default_str();
  auto* data_opt = call_cmd->add_option("--data", ca.data, "request bytes, as text");
  call_cmd->add_option("--file", ca.file, "request bytes from a file")->excludes(data_opt);
  call_cmd->add_option("--size", ca.size, "a generated request of this many bytes")->excludes(data_opt);
  call_cmd->add_option("--out", ca.out, "write the reply to this file");
  call_cmd->add_option("--tenant", ca.tenant, "tenant name")->capture_default_str();
  call_cmd->add_flag("--json", ca.json_out, "print JSON");
  call_cmd->callback([&] { std::exit(call(ca)); });

  bool doctor_json = false;
  auto* doctor_cmd = app.add_subcommand("doctor", "Which data movers are usable on this machine, and why not");
  doctor_cmd->add_flag("--json", doctor_json, "print JSON");
  doctor_cmd->callback([&] { std::exit(doctor(doctor_json)); });

  rocket::tools::add_demo(app);

  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  rocket::tools::add_bench_echo(*bench);
  rocket::tools::add_bench_movers(*bench);
  rocket::tools::add_bench_peers(*bench);
  rocket::tools::add_calibrate(app);
  rocket::tools::add_bench_children(app);

  CLI11_PARSE(app, argc, argv);
  return 0;
}
