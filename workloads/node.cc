// `rocket-workloads`: the processes of `rocket demo`. A separate executable
// so that the `rocket` tool itself does not load libtorch, faiss and
// xgboost (about 0.5 s per start).
//
//   rocket-workloads list [--json]
//   rocket-workloads backend --socket S --workloads a,b [--scale F] [--serial-ops] [--lend [--lend-memory]]
//   rocket-workloads frontend --socket S --workload W --config C [--requests N] [--lend MILLICPUS]
//                             [--lend-memory-mib N]
//
// backend prints one JSON line once it serves ({"ready": ..., "startup_ms":
// {...}}); a frontend prints "ready" once connected and warmed up, waits for
// a line on stdin, runs its requests closed-loop and prints one JSON line of
// measurements.
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "args.h"
#include "demo_config.h"
#include "exit_with_parent.h"
#include "rocket/rocket.h"
#include "serve_until_signal.h"
#include "workload.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace rocket;
using namespace rocket::workloads;
using rocket::tools::split;


double us_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

int list(bool as_json) {
  json out = json::array();
  for (const Workload* w : all_workloads()) {
    std::string why = w->unavailable_reason();
    out.push_back({{"name", w->name()}, {"description", w->description()}, {"usable", why.empty()}, {"reason", why}});
  }
  if (as_json) {
    std::cout << out.dump() << std::endl;
  } else {
    for (const auto& w : out) {
      std::cout << w["name"].get<std::string>() << ": "
                << (w["usable"].get<bool>() ? w["description"].get<std::string>() : "unavailable: " + w["reason"].get<std::string>())
                << "\n";
    }
  }
  return 0;
}

// This process's minor page faults so far.
long minor_faults() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

struct BackendArgs {
  std::string socket;
  std::string workloads;
  double scale = 1.0;
  uint64_t seed = 42;
  unsigned dispatchers = 2;
  size_t max_pool_mib = 4096;
  bool serial_ops = false;
  bool lend = false;  // take CPU loans from callers into this process's cgroup
  bool lend_memory = false;  // and memory loans into its memory cgroup
};

int backend(const BackendArgs& a) {
  ServerOptions o;
  o.socket_path = a.socket;
  o.dispatchers = a.dispatchers;
  o.max_pool_bytes = a.max_pool_mib << 20;
  o.lending.enabled = a.lend;
  o.lending.memory.enabled = a.lend_memory;
  Server server(o);
  json startup = json::object();
  std::vector<std::unique_ptr<Model>> models;
  for (const std::string& name : split(a.workloads)) {
    auto w = find_workload(name);
    if (!w.ok()) {
      std::cerr << "rocket-workloads backend: " << w.status().to_string() << "\n";
      return 2;
    }
    auto t0 = Clock::now();
    auto m = (*w)->start_backend(Scale{.factor = a.scale, .seed = a.seed});
    if (!m.ok()) {
      std::cerr << "rocket-workloads backend: " << name << ": " << m.status().to_string() << "\n";
      return 1;
    }
    // One request end to end in-process before serving: checks the model
    // against its own frontend and pays the library's lazy initialisation
    // (libtorch's first forward is several times slower) outside the measurements.
    std::unique_ptr<Frontend> fe = (*w)->frontend(Scale{.factor = a.scale, .seed = a.seed});
    std::vector<std::byte> probe(fe->request_bytes()), answer;
    fe->make_request(0, probe);
    auto len = (*m)->process(probe, [&answer](size_t bytes) -> Result<std::span<std::byte>> {
      answer.resize(bytes);
      return std::span<std::byte>(answer);
    });
    Status checked = len.ok() ? fe->consume({answer.data(), *len}) : len.status();
    if (!checked.ok()) {
      std::cerr << "rocket-workloads backend: " << name << " failed its self-check: " << checked.to_string() << "\n";
      return 1;
    }
    startup[name] = us_between(t0, Clock::now()) / 1000.0;
    const Model* model = m->get();
    models.push_back(std::move(*m));
    // Each request stands alone (Model::process is const and thread-safe), so
    // one frontend's pipelined requests may run on several dispatchers.
    Handler handler = [model](const Request& req, Response& resp) -> Status {
      auto n = model->process(req.data(), [&resp](size_t bytes) { return resp.alloc(bytes); });
      return n.status();
    };
    OpOptions options;
    options.concurrent = !a.serial_ops;
    Status st = server.handle(name, std::move(handler), options);
    if (!st.ok()) {
      std::cerr << "rocket-workloads backend: " << st.to_string() << "\n";
      return 1;
    }
  }
  const long faults0 = minor_faults();
  int rc = tools::serve_until_signal(server, "rocket-workloads backend", [&] {
    std::cout << json{{"ready", true}, {"startup_ms", startup}}.dump() << std::endl;
  });
  const ServerStats st = server.stats();
  std::cerr << "rocket-workloads backend: served " << st.requests << " requests (" << st.requests_helped
            << " by a helping dispatcher, " << st.request_errors << " failed) in " << st.sessions_total << " sessions; "
            << minor_faults() - faults0
            << " minor page faults while serving (pre-faulting the sessions' pools included)\n";
  return rc;
}

struct FrontendArgs {
  std::string socket;
  std::string workload;
  std::string config = "baseline";
  double scale = 1.0;
  uint64_t seed = 42;
  int requests = 4;
  int warmup = 1;
  int id = 0;
  uint32_t lend = 0;  // millicpus each call lends the backend
  uint64_t lend_memory_mib = 0;  // and MiB of memory
};

// One frontend's measurements.
struct Samples {
  std::vector<double> call_us, service_us, e2e_us;
  double call_cpu_us = 0;
};

Status run_frontend(const FrontendArgs& a) {
  ROCKET_ASSIGN_OR_RETURN(const Workload* w, find_workload(a.workload));
  ROCKET_ASSIGN_OR_RETURN(DemoConfig cfg, parse_demo_config(a.config));
  const Scale scale{.factor = a.scale, .seed = a.seed + static_cast<uint64_t>(a.id) * 101};
  std::unique_ptr<Frontend> fe = w->frontend(scale);
  if (fe == nullptr) return failed_precondition(w->unavailable_reason());
  const size_t req_bytes = fe->request_bytes(), resp_bytes = fe->max_response_bytes();
  auto round_up = [](size_t n) { return (n + (size_t{1} << 20) - 1) & ~((size_t{1} << 20) - 1); };
  ClientOptions co;
  co.tenant = "demo-" + a.workload;
  co.client_pool_bytes = round_up(2 * req_bytes + (size_t{4} << 20));
  co.server_pool_bytes = round_up(2 * resp_bytes + (size_t{4} << 20));
  co.allow_kernel_copy = cfg.mover == MoverKind::kKernel;
  co.connect_timeout = std::chrono::milliseconds(30000);
  ROCKET_ASSIGN_OR_RETURN(Client c, Client::connect(a.socket, co));
  if (cfg.mover == MoverKind::kKernel && !c.kernel_copy()) {
    return failed_precondition("the server refused the kernel copy path (ptrace not permitted here)");
  }
  const CallOptions call{.policy = {.mover = cfg.mover,
                                    .cache = cfg.cache,
                                    .lend_millicpus = a.lend,
                                    .lend_memory_bytes = a.lend_memory_mib << 20},
                         .timeout = std::chrono::milliseconds(0)};
  const CopyOptions copy{.mover = cfg.mover, .cache = cfg.cache};
  const std::string op = a.workload;

  // Private request buffers (two, for the modes that overlap) and a response buffer.
  std::vector<std::byte> req_a(req_bytes), req_b(req_bytes), resp(resp_bytes);
  Buffer pool_req;
  if (cfg.mode == DemoMode::kZeroCopy) {
    ROCKET_ASSIGN_OR_RETURN(pool_req, c.alloc(req_bytes));
  }
  uint64_t next_index = 0;
  Samples s;

  // One request, start to finish, in the config's mode. `record` is false
  // during warm-up.
  auto sync_one = [&](bool record) -> Status {
    auto t0 = Clock::now();
    const uint64_t i = next_index++;
    std::span<std::byte> req = cfg.mode == DemoMode::kZeroCopy ? pool_req.span() : std::span<std::byte>(req_a);
    fe->make_request(i, req);  // pre-processing
    double cpu0 = thread_cpu_us();
    auto t1 = Clock::now();
    double service = 0;
    std::span<const std::byte> out;
    Reply reply;
    if (cfg.mode == DemoMode::kZeroCopy) {
      ROCKET_ASSIGN_OR_RETURN(reply, c.call(op, pool_req, call));
      out = reply.data();
      service = static_cast<double>(reply.service_time().count()) / 1000.0;
    } else if (cfg.mover == MoverKind::kKernel) {
      ROCKET_ASSIGN_OR_RETURN(size_t n, c.call_into(op, req, resp, call));
      out = {resp.data(), n};
      service = -1;  // not reported by call_into
    } else {
      ROCKET_ASSIGN_OR_RETURN(reply, c.call(op, std::span<const std::byte>(req), call));
      if (reply.size() > resp.size()) return data_loss("response larger than the workload's maximum");
      ROCKET_RETURN_IF_ERROR(reply.copy_to({resp.data(), reply.size()}, copy));
      out = {resp.data(), reply.size()};
      service = static_cast<double>(reply.service_time().count()) / 1000.0;
    }
    auto t2 = Clock::now();
    double cpu1 = thread_cpu_us();
    ROCKET_RETURN_IF_ERROR(fe->consume(out));  // post-processing
    auto t3 = Clock::now();
    if (record) {
      s.call_us.push_back(us_between(t1, t2));
      s.service_us.push_back(service);
      s.e2e_us.push_back(us_between(t0, t3));
      s.call_cpu_us += cpu1 - cpu0;
    }
    return ok_status();
  };

  // async / pipelined: request i+1 is pre-processed while request i is
  // copied and served, and response i post-processed while i+1 is served.
  struct InFlight {
    Future fut;
    JobId id = 0;
    Clock::time_point start;
    double cpu = 0;
  };
  auto post = [&](std::span<const std::byte> req) -> Result<InFlight> {
    InFlight f;
    double cpu0 = thread_cpu_us();
    f.start = Clock::now();
    if (cfg.mode == DemoMode::kAsync) {
      f.fut = c.call_async(op, req, call);
    } else {
      ROCKET_ASSIGN_OR_RETURN(f.id, c.submit(op, req, call));
    }
    f.cpu = thread_cpu_us() - cpu0;
    return f;
  };
  auto collect = [&](InFlight& f, bool record) -> Status {
    double cpu0 = thread_cpu_us();
    Reply reply;
    if (cfg.mode == DemoMode::kAsync) {
      ROCKET_ASSIGN_OR_RETURN(reply, f.fut.get());
    } else {
      ROCKET_ASSIGN_OR_RETURN(reply, c.query(f.id));
    }
    if (reply.size() > resp.size()) return data_loss("response larger than the workload's maximum");
    ROCKET_RETURN_IF_ERROR(reply.copy_to({resp.data(), reply.size()}, copy));
    auto t2 = Clock::now();
    double cpu = f.cpu + thread_cpu_us() - cpu0;
    ROCKET_RETURN_IF_ERROR(fe->consume({resp.data(), reply.size()}));
    if (record) {
      s.call_us.push_back(us_between(f.start, t2));
      s.service_us.push_back(static_cast<double>(reply.service_time().count()) / 1000.0);
      s.e2e_us.push_back(us_between(f.start, Clock::now()));
      s.call_cpu_us += cpu;
    }
    return ok_status();
  };
  auto overlapped = [&](int count, bool record) -> Status {
    std::vector<std::byte>* cur = &req_a;
    std::vector<std::byte>* nxt = &req_b;
    fe->make_request(next_index++, *cur);
    ROCKET_ASSIGN_OR_RETURN(InFlight f, post(*cur));
    for (int k = 0; k < count; ++k) {
      std::optional<InFlight> g;
      if (k + 1 < count) {
        fe->make_request(next_index++, *nxt);  // overlaps request k's copy and service
        if (cfg.mode == DemoMode::kPipelined) {
          ROCKET_ASSIGN_OR_RETURN(InFlight posted, post(*nxt));
          g = std::move(posted);
        }
      }
      ROCKET_RETURN_IF_ERROR(collect(f, record));  // *cur is free again
      if (k + 1 < count && cfg.mode == DemoMode::kAsync) {
        ROCKET_ASSIGN_OR_RETURN(InFlight posted, post(*nxt));
        g = std::move(posted);
      }
      if (g) f = std::move(*g);
      std::swap(cur, nxt);
    }
    return ok_status();
  };
  const bool overlapping = cfg.mode == DemoMode::kAsync || cfg.mode == DemoMode::kPipelined;

  for (int k = 0; k < a.warmup; ++k) ROCKET_RETURN_IF_ERROR(sync_one(false));
  std::cout << "ready" << std::endl;
  std::string go;
  if (!std::getline(std::cin, go)) return unavailable("driver went away");
  timespec p0{}, p1{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &p0);
  auto w0 = Clock::now();
  if (overlapping) {
    ROCKET_RETURN_IF_ERROR(overlapped(a.requests, true));
  } else {
    for (int k = 0; k < a.requests; ++k) ROCKET_RETURN_IF_ERROR(sync_one(true));
  }
  const double wall = us_between(w0, Clock::now());
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &p1);
  const double proc_cpu = static_cast<double>(p1.tv_sec - p0.tv_sec) * 1e6 + static_cast<double>(p1.tv_nsec - p0.tv_nsec) / 1e3;
  json out{{"workload", a.workload},
           {"config", a.config},
           {"frontend", a.id},
           {"requests", a.requests},
           {"wall_us", wall},
           {"process_cpu_us", proc_cpu},
           {"call_cpu_us", s.call_cpu_us},
           {"call_us", s.call_us},
           {"service_us", s.service_us},
           {"e2e_us", s.e2e_us},
           {"request_bytes", req_bytes},
           {"response_bytes", resp_bytes},
           {"summary", fe->summary()}};
  std::cout << out.dump() << std::endl;
  return ok_status();
}

}  // namespace

int main(int argc, char** argv) {
  rocket::tools::exit_with_parent();
  CLI::App app{"Rocket's demo workloads: backend and frontend processes (started by `rocket demo`)"};
  app.require_subcommand(1);
  bool as_json = false;
  auto* l = app.add_subcommand("list", "the workloads of this build, usable or not");
  l->add_flag("--json", as_json);
  BackendArgs b;
  auto* be = app.add_subcommand("backend", "serve the workloads' ops");
  be->add_option("--socket", b.socket)->required();
  be->add_option("--workloads", b.workloads)->required();
  be->add_option("--scale", b.scale, "size factor (1: the reference sizes)");
  be->add_option("--seed", b.seed);
  be->add_option("--dispatchers", b.dispatchers);
  be->add_option("--max-pool-mib", b.max_pool_mib);
  be->add_flag("--serial-ops", b.serial_ops,
               "one session's requests run one at a time (no OpOptions::concurrent), for comparisons");
  be->add_flag("--lend", b.lend, "take CPU loans from callers into this process's cgroup (Pocket)");
  be->add_flag("--lend-memory", b.lend_memory, "with --lend: take memory loans into its memory cgroup too");
  FrontendArgs f;
  auto* fe = app.add_subcommand("frontend", "one closed-loop frontend");
  fe->add_option("--socket", f.socket)->required();
  fe->add_option("--workload", f.workload)->required();
  fe->add_option("--config", f.config, "baseline, offload, auto, zerocopy or MODE-MOVER[-CACHE]");
  fe->add_option("--scale", f.scale);
  fe->add_option("--seed", f.seed);
  fe->add_option("--requests", f.requests)->check(CLI::Range(1, 1000000));
  fe->add_option("--warmup", f.warmup)->check(CLI::Range(0, 1000));
  fe->add_option("--id", f.id);
  fe->add_option("--lend", f.lend, "millicpus each call lends the backend (its --lend takes them)");
  fe->add_option("--lend-memory-mib", f.lend_memory_mib, "MiB of memory each call lends (its --lend-memory takes them)")
      ->check(CLI::Range(0, 1 << 20));
  bool default_malloc = false;
  for (auto* cmd : {be, fe}) {
    cmd->add_flag("--default-malloc", default_malloc,
                  "keep glibc's default heap (large blocks unmapped when freed, so every request faults them in "
                  "again), for comparisons");
  }
  CLI11_PARSE(app, argc, argv);
  if (l->parsed()) return list(as_json);
  if (!default_malloc && !retain_freed_memory()) {
    std::cerr << "rocket-workloads: this allocator ignores mallopt; freed memory goes back to the kernel\n";
  }
  if (be->parsed()) return backend(b);
  Status st = run_frontend(f);
  if (!st.ok()) {
    std::cerr << "rocket-workloads frontend (" << f.workload << ", " << f.config << "): " << st.to_string() << "\n";
    return 1;
  }
  return 0;
}
