// `rocket`: the command-line tool.
//
//   rocket demo [--quick]                   real workloads under every mode and engine
//   rocket serve [--socket PATH]            a backend with the built-in ops
//   rocket call --op echo --data hello      one request, printed
//   rocket doctor [--json]                  which data movers work here, and why not
//   rocket calibrate                        fit each mover's cost model, save the profile
//   rocket profile [--quick]                SkyRocket: time every engine x cache in swept situations
//   rocket train [--traces F]               SkyRocket: fit, judge and export the learned policy
//   rocket bench echo [--quick] [--json]    round trips vs a Unix socket
//   rocket bench movers [--json]            every data mover, memcpy baseline
//   rocket bench peers [--quick] [--json]   vs uds, zmq, grpc, a naive shm file per call
//   rocket bench overlap                    caller work hidden behind call_async
//   rocket bench lend [--quick] [--json]    a capped backend with and without CPU and memory loans
//   rocket bench connect [--clients 1,4,8]  what opening a session costs, alone and in bursts
//   rocket bench policy [--quick] [--json]  the learned choice vs the cost model vs fixed engines
//   rocket run [--socket P] -- CMD ...      a frontend in namespaces that show only the socket
//   rocket top [--socket P] [--count N]     a running server's counters, sampled
#include "rocket/rocket.h"

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
#include "bench_connect.h"
#include "bench_echo.h"
#include "bench_lend.h"
#include "bench_movers.h"
#include "bench_peers.h"
#include "demo.h"
#include "exit_with_parent.h"
#include "mover/cuda_mover.h"
#include "pocket/cgroup.h"
#include "profile.h"
#include "rocket/shm/segment.h"
#include "run.h"
#include "serve_until_signal.h"
#include "top.h"

namespace {

using json = nlohmann::json;
using rocket::tools::default_socket;

struct ServeArgs {
  std::string socket = default_socket();
  unsigned dispatchers = 1;
  long spin_us = 50;
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  size_t client_pool_mib = 32, server_pool_mib = 32, max_pool_mib = 2048;
  unsigned max_sessions = 256;
  uint64_t max_mapped_mib = 0;
  unsigned max_sessions_per_uid = 0;
  bool small_pages = false;
  bool lend = false;
  std::string lend_cgroup, lend_journal;
  std::vector<std::string> lend_factors;  // CGROUP=FACTOR
  double lend_default_factor = 1.0;
  bool lend_memory = false;
  std::string lend_memory_cgroup;
  std::string lend_memory_reserve = "64M";
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
  o.huge_pages = !a.small_pages;
  if (a.max_mapped_mib > (uint64_t{1} << 40)) {
    std::fprintf(stderr, "rocket serve: --max-mapped-mib takes at most %llu\n",
                 static_cast<unsigned long long>(uint64_t{1} << 40));
    return 2;
  }
  o.max_mapped_bytes = a.max_mapped_mib << 20;
  o.max_sessions_per_uid = a.max_sessions_per_uid;
  o.max_pool_bytes = a.max_pool_mib << 20;
  o.max_sessions = a.max_sessions;
  o.lending.enabled = a.lend;
  o.lending.backend_cgroup = a.lend_cgroup;
  o.lending.journal_path = a.lend_journal;
  o.lending.default_factor = a.lend_default_factor;
  o.lending.memory.enabled = a.lend_memory;
  o.lending.memory.backend_cgroup = a.lend_memory_cgroup;
  if (auto reserve = rocket::tools::parse_size(a.lend_memory_reserve); reserve.ok()) {
    o.lending.memory.reserve_bytes = *reserve;
  } else {
    std::cerr << "rocket serve: --lend-memory-reserve: " << reserve.status().message() << "\n";
    return 2;
  }
  if (a.lend_memory && !a.lend) {
    std::cerr << "rocket serve: --lend-memory goes with --lend\n";
    return 2;
  }
  for (const auto& f : a.lend_factors) {
    const size_t eq = f.rfind('=');
    char* end = nullptr;
    const double v = eq == std::string::npos ? -1 : std::strtod(f.c_str() + eq + 1, &end);
    if (eq == std::string::npos || eq == 0 || end == f.c_str() + eq + 1 || *end != '\0') {
      std::cerr << "rocket serve: --lend-factor takes CGROUP=FACTOR (\"/frontends/a=2\"), not '" << f << "'\n";
      return 2;
    }
    o.lending.factors[f.substr(0, eq)] = v;
  }
  rocket::Server server(o);
  if (auto s = rocket::register_builtin_ops(server); !s.ok()) {
    std::cerr << "rocket serve: " << s.to_string() << "\n";
    return 1;
  }
  const int rc = rocket::tools::serve_until_signal(server, "rocket serve", [&] {
    // The first line on stdout says the server accepts (scripts wait for it).
    std::cout << "rocket: serving on " << a.socket << " (ops: echo, echo_copy, checksum, gpu_echo; " << a.dispatchers
              << " dispatcher" << (a.dispatchers == 1 ? "" : "s")
              << (a.lend ? (a.lend_memory ? "; takes CPU and memory loans" : "; takes CPU loans") : "") << ")"
              << std::endl;
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
  uint32_t lend = 0;
  std::string lend_memory;  // a size: "256M"
};

int call(const CallArgs& a) {
  uint64_t lend_memory = 0;
  if (!a.lend_memory.empty()) {
    auto v = rocket::tools::parse_size(a.lend_memory);
    if (!v.ok()) {
      std::cerr << "rocket call: --lend-memory: " << v.status().message() << "\n";
      return 2;
    }
    lend_memory = *v;
  }
  std::vector<std::byte> payload;
  if (!a.file.empty()) {
    std::ifstream f(a.file, std::ios::binary);
    if (!f) {
      std::cerr << "rocket call: cannot read " << a.file << "\n";
      return 2;
    }
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    payload.resize(s.size());
    if (!s.empty()) std::memcpy(payload.data(), s.data(), s.size());
  } else if (a.size > 0) {
    payload.resize(a.size);
    for (size_t i = 0; i < a.size; ++i) payload[i] = static_cast<std::byte>(i * 131 + 7);
  } else {
    payload.resize(a.data.size());
    if (!a.data.empty())
      std::memcpy(payload.data(), a.data.data(), a.data.size());  // an empty vector's data() may be null
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
  auto reply = client->call(a.op, std::span<const std::byte>(payload),
                            {.policy = {.lend_millicpus = a.lend, .lend_memory_bytes = lend_memory}});
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
  json j{{"op", a.op},
         {"request_bytes", payload.size()},
         {"reply_bytes", data.size()},
         {"reply_checksum", rocket::checksum64(data)},
         {"round_trip_us", us},
         {"service_us", static_cast<double>(reply->service_time().count()) / 1000.0},
         {"lent_millicpus", reply->lent_millicpus()},
         {"lent_memory_bytes", reply->lent_memory_bytes()}};
  if (a.json_out) {
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%s: %zu bytes in, %zu bytes out in %.1f us (handler %.1f us), checksum %016llx\n", a.op.c_str(),
              payload.size(), data.size(), us, j["service_us"].get<double>(),
              static_cast<unsigned long long>(rocket::checksum64(data)));
  if (a.lend != 0) std::printf("lent the backend %u of %u millicpus asked\n", reply->lent_millicpus(), a.lend);
  if (lend_memory != 0) {
    std::printf("lent the backend %llu of %llu bytes of memory asked\n",
                static_cast<unsigned long long>(reply->lent_memory_bytes()),
                static_cast<unsigned long long>(lend_memory));
  }
  bool printable = data.size() <= 256;
  for (auto b : data) printable = printable && std::isprint(static_cast<int>(b));
  if (printable && !data.empty()) std::printf("%.*s\n", static_cast<int>(data.size()), reinterpret_cast<const char*>(data.data()));
  return 0;
}

// Whether a backend started here could take CPU loans (ServerOptions::lending).
std::string lending_here() {
  auto cg = rocket::detail::cpu_cgroup_of(0);
  if (!cg.ok()) return "no: " + cg.status().message();
  const std::string where = cg->path + " (cgroup " + (cg->v2 ? "v2" : "v1 cpu") + " at " + cg->dir + ")";
  auto lim = rocket::detail::read_cpu_limit(*cg);
  if (!lim.ok()) return "no: " + lim.status().message();
  if (lim->quota_us < 0) {
    return "not from here: this process's cgroup " + where +
           " has no CPU limit to grow; run a lending backend in a cgroup with one (rocket serve --lend-cgroup)";
  }
  const std::string file = cg->dir + (cg->v2 ? "/cpu.max" : "/cpu.cfs_quota_us");
  char limit[64];
  std::snprintf(limit, sizeof(limit), "%.2f CPU",
                static_cast<double>(lim->quota_us) / static_cast<double>(lim->period_us));
  if (::access(file.c_str(), W_OK) != 0) return std::string("no: cannot write ") + file + " (limit " + limit + ")";
  return "yes: " + where + ", limit " + limit;
}

// Whether session pools get 2 MiB pages here, and how to allow them if not.
std::string huge_pages_here() {
  const std::string setting = rocket::shm::shmem_huge_pages();
  if (setting.empty()) return "no: this kernel has no shared-memory huge pages (4 KiB pages)";
  if (rocket::shm::shmem_huge_pages_granted(setting)) {
    return "yes: shmem_enabled is '" + setting + "', session pools use 2 MiB pages";
  }
  return "no: shmem_enabled is '" + setting +
         "', session pools use 4 KiB pages; `echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled` "
         "(root) opens sessions faster (`rocket bench connect`)";
}

// Whether a backend started here could take memory loans (LendingOptions::memory).
std::string memory_lending_here() {
  auto cg = rocket::detail::memory_cgroup_of(0);
  if (!cg.ok()) return "no: " + cg.status().message();
  const std::string where = cg->path + " (cgroup " + (cg->v2 ? "v2" : "v1 memory") + " at " + cg->dir + ")";
  auto lim = rocket::detail::read_memory_limit(*cg);
  if (!lim.ok()) return "no: " + lim.status().message();
  if (*lim == rocket::detail::kNoMemoryLimit) {
    return "not from here: this process's cgroup " + where +
           " has no memory limit to grow; run a lending backend in a cgroup with one (rocket serve "
           "--lend-memory-cgroup)";
  }
  const std::string file = cg->dir + (cg->v2 ? "/memory.max" : "/memory.limit_in_bytes");
  const std::string limit = rocket::tools::human_size(static_cast<size_t>(*lim));
  if (::access(file.c_str(), W_OK) != 0) return "no: cannot write " + file + " (limit " + limit + ")";
  return "yes: " + where + ", limit " + limit;
}

// Whether `rocket run` can isolate a frontend here: the namespaces it needs.
std::string isolation_here() {
  if (::geteuid() == 0) return "yes: as root (mount, IPC and network namespaces; --user to drop privileges)";
  std::ifstream f("/proc/sys/user/max_user_namespaces");
  long n = 0;
  f >> n;
  if (n <= 0) return "no: user namespaces are off (/proc/sys/user/max_user_namespaces is 0); run it as root";
  std::ifstream clone("/proc/sys/kernel/unprivileged_userns_clone");  // Debian's switch, where present
  int allowed = 1;
  if (clone) clone >> allowed;
  if (allowed == 0) return "no: kernel.unprivileged_userns_clone is 0; run it as root";
  return "yes: through a user namespace of its own";
}

// The SkyRocket model `auto` would use here, and how it did in training.
std::string learned_policy_here() {
  const std::string path = rocket::skyrocket::default_model_path();
  auto m = rocket::skyrocket::Model::load(path);
  if (!m.ok()) {
    return m.status().code() == rocket::StatusCode::kNotFound
               ? "none: auto uses the cost model (run `rocket profile` then `rocket train`)"
               : "ignored: " + m.status().to_string();
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, " (%zu trees over %zu configurations, from %s; cross-validated regret %.1f%%)",
                m->trees(), m->configs().size(), m->machine.empty() ? "an unnamed machine" : m->machine.c_str(),
                100 * m->metrics.mean_regret);
  return path + buf;
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
    std::cout << json{{"movers", arr},
                      {"cost_profile", profile},
                      {"cuda_host_to_host", methods},
                      {"learned_policy", learned_policy_here()},
                      {"cpu_lending", lending_here()},
                      {"memory_lending", memory_lending_here()},
                      {"huge_pages", huge_pages_here()},
                      {"frontend_isolation", isolation_here()}}
                     .dump(1)
              << std::endl;
    return 0;
  }
  std::printf("%-11s %-7s %s\n", "mover", "usable", "why");
  for (const auto& i : infos) {
    std::printf("%-11s %-7s %s\n", std::string(rocket::mover_kind_name(i.kind)).c_str(), i.usable ? "yes" : "no",
                i.reason.c_str());
  }
  std::printf("\ncost profile: %s\n", profile.c_str());
  std::printf("learned policy (SkyRocket): %s\n", learned_policy_here().c_str());
  std::printf("cpu lending (Pocket): %s\n", lending_here().c_str());
  std::printf("memory lending (Pocket): %s\n", memory_lending_here().c_str());
  std::printf("huge pages for session pools: %s\n", huge_pages_here().c_str());
  std::printf("frontend isolation (rocket run): %s\n", isolation_here().c_str());
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
  serve_cmd->add_option("--client-pool-mib", sa.client_pool_mib, "client pools' starting size, unless a client asks")
      ->capture_default_str();
  serve_cmd->add_option("--server-pool-mib", sa.server_pool_mib, "server pools' starting size, unless a client asks")
      ->capture_default_str();
  serve_cmd->add_option("--max-pool-mib", sa.max_pool_mib, "the most a pool may start at or grow to")
      ->capture_default_str();
  serve_cmd->add_option("--max-sessions", sa.max_sessions, "session limit")->capture_default_str();
  serve_cmd
      ->add_option("--max-mapped-mib", sa.max_mapped_mib,
                   "memory all sessions' pools may take together (0: half of what the server may use)")
      ->capture_default_str();
  serve_cmd->add_option("--max-sessions-per-uid", sa.max_sessions_per_uid, "sessions one uid may hold (0: no limit)")
      ->capture_default_str();
  serve_cmd->add_flag("--small-pages", sa.small_pages,
                      "keep session pools to 4 KiB pages (they ask for 2 MiB pages where the system allows)");
  serve_cmd->add_flag("--lend", sa.lend, "take CPU loans from callers into this backend's cgroup (Pocket)");
  serve_cmd->add_option("--lend-cgroup", sa.lend_cgroup, "the backend's cpu cgroup directory (default: its own)");
  serve_cmd->add_option("--lend-journal", sa.lend_journal, "file recording loans, put back after a crash");
  serve_cmd->add_option("--lend-factor", sa.lend_factors, "CGROUP=FACTOR: backend gain per CPU lent (repeatable)");
  serve_cmd->add_option("--lend-default-factor", sa.lend_default_factor, "for cgroups not named")
      ->capture_default_str();
  serve_cmd->add_flag("--lend-memory", sa.lend_memory, "with --lend: take memory loans too");
  serve_cmd->add_option("--lend-memory-cgroup", sa.lend_memory_cgroup,
                        "the backend's memory cgroup directory (default: its own)");
  serve_cmd->add_option("--lend-memory-reserve", sa.lend_memory_reserve, "what a lender keeps above its usage")
      ->capture_default_str();
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
  call_cmd->add_option("--lend", ca.lend, "millicpus of this process's CPU quota to lend the backend for the call");
  call_cmd->add_option("--lend-memory", ca.lend_memory,
                       "memory this process's cgroup lends the backend for the call (a size: 256M)");
  call_cmd->add_flag("--json", ca.json_out, "print JSON");
  call_cmd->callback([&] { std::exit(call(ca)); });

  bool doctor_json = false;
  auto* doctor_cmd = app.add_subcommand("doctor", "Which data movers are usable on this machine, and why not");
  doctor_cmd->add_flag("--json", doctor_json, "print JSON");
  doctor_cmd->callback([&] { std::exit(doctor(doctor_json)); });

  rocket::tools::add_demo(app);
  rocket::tools::add_run(app);
  rocket::tools::add_top(app);

  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  rocket::tools::add_bench_echo(*bench);
  rocket::tools::add_bench_movers(*bench);
  rocket::tools::add_bench_peers(*bench);
  rocket::tools::add_bench_lend(*bench);
  rocket::tools::add_bench_connect(*bench);
  rocket::tools::add_bench_policy(*bench);
  rocket::tools::add_calibrate(app);
  rocket::tools::add_profile(app);
  rocket::tools::add_train(app);
  rocket::tools::add_bench_children(app);
  rocket::tools::add_bench_lend_children(app);

  CLI11_PARSE(app, argc, argv);
  return 0;
}
