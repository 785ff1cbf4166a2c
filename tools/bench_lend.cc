#include "bench_lend.h"

#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "args.h"
#include "pocket/cgroup.h"
#include "process.h"
#include "rocket/rocket.h"
#include "serve_until_signal.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// Burns `us` microseconds of this thread's CPU time: the same work whatever
// the cgroup lets it have per period, so a cap shows as wall time.
void burn_cpu_us(uint32_t us) {
  auto now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  };
  const int64_t end = now() + static_cast<int64_t>(us) * 1000;
  volatile uint64_t x = 1;
  while (now() < end) {
    for (int i = 0; i < 256; ++i) x = x * 6364136223846793005ull + 1442695040888963407ull;
  }
}

// Joins cpu cgroup `dir`, and memory cgroup `memory_dir` where one is named.
Status join(const std::string& dir, const std::string& memory_dir) {
  ROCKET_ASSIGN_OR_RETURN(detail::CpuCgroup cg, detail::cpu_cgroup_at(dir));
  ROCKET_RETURN_IF_ERROR(detail::join_cgroup(cg));
  if (memory_dir.empty()) return ok_status();
  ROCKET_ASSIGN_OR_RETURN(detail::MemoryCgroup mem, detail::memory_cgroup_at(memory_dir));
  return detail::join_cgroup(mem);
}

// --- the children ------------------------------------------------------------------

struct ChildArgs {
  std::string role, socket, cgroup, memory_cgroup;
  uint32_t pre_us = 0, work_us = 0, lend = 0;
  uint64_t lend_memory = 0;  // the frontend: a third arm lends this much memory
  double seconds = 1;
  int rounds = 1;
};

// The backend: "work" burns the request's u32 microseconds of CPU.
int serve_child(const ChildArgs& a) {
  if (Status st = join(a.cgroup, a.memory_cgroup); !st.ok()) {
    std::cerr << "bench-lend-worker: " << st.to_string() << "\n";
    return 1;
  }
  ServerOptions o;
  o.socket_path = a.socket;
  o.default_client_pool_bytes = o.default_server_pool_bytes = 1 << 20;
  o.lending.enabled = true;
  o.lending.backend_cgroup = a.cgroup;
  o.lending.memory = {.enabled = !a.memory_cgroup.empty(), .backend_cgroup = a.memory_cgroup};
  Server server(o);
  Status st = server.handle("work", [](const Request& req, Response&) -> Status {
    uint32_t us = 0;
    if (req.data().size() != sizeof(us)) return invalid_argument("work takes a u32 of microseconds");
    std::memcpy(&us, req.data().data(), sizeof(us));
    burn_cpu_us(us);
    return ok_status();
  });
  if (!st.ok()) return 1;
  return serve_until_signal(server, "bench-lend-worker", [] { std::cout << "ready" << std::endl; });
}

// The frontend: a closed loop of pre-processing then a call, in rounds that
// alternate between lending nothing and lending `lend` (and, with
// `lend_memory`, lending that much memory).
int call_child(const ChildArgs& a) {
  if (Status st = join(a.cgroup, a.memory_cgroup); !st.ok()) {
    std::cerr << "bench-lend-worker: " << st.to_string() << "\n";
    return 1;
  }
  auto c =
      Client::connect(a.socket, {.tenant = "bench-lend", .client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  if (!c.ok()) {
    std::cerr << "bench-lend-worker: " << c.status().to_string() << "\n";
    return 1;
  }
  std::vector<Policy> arms = {Policy{}, Policy{.lend_millicpus = a.lend}};
  if (a.lend_memory != 0) arms.push_back(Policy{.lend_memory_bytes = a.lend_memory});
  const size_t n = arms.size();
  std::vector<std::vector<double>> samples(n);
  std::vector<double> busy_s(n, 0);
  std::vector<uint64_t> requests(n, 0), lent(n, 0), lent_memory(n, 0);
  const auto req = std::as_bytes(std::span<const uint32_t>(&a.work_us, 1));
  for (int round = 1; round <= a.rounds; ++round) {
    for (size_t k = 0; k < n; ++k) {
      const size_t arm = in_round_order(round, k, n);
      const CallOptions opt{.policy = arms[arm]};
      const auto t_end = Clock::now() + std::chrono::duration<double>(a.seconds);
      const auto t0 = Clock::now();
      while (Clock::now() < t_end) {
        burn_cpu_us(a.pre_us);
        const auto c0 = Clock::now();
        auto r = c->call("work", req, opt);
        if (!r.ok()) {
          std::cerr << "bench-lend-worker: " << r.status().to_string() << "\n";
          return 1;
        }
        samples[arm].push_back(std::chrono::duration<double, std::micro>(Clock::now() - c0).count());
        ++requests[arm];
        lent[arm] += r->lent_millicpus();
        lent_memory[arm] += r->lent_memory_bytes();
      }
      busy_s[arm] += std::chrono::duration<double>(Clock::now() - t0).count();
    }
  }
  json out = json::array();
  for (size_t arm = 0; arm < n; ++arm) {
    out.push_back({{"lend", arms[arm].lend_millicpus},
                   {"lend_memory", arms[arm].lend_memory_bytes},
                   {"requests", requests[arm]},
                   {"seconds", busy_s[arm]},
                   {"lent_total", lent[arm]},
                   {"lent_memory_total", lent_memory[arm]},
                   {"call_us", samples[arm]}});
  }
  std::cout << out.dump() << std::endl;
  return 0;
}

// --- the parent ---------------------------------------------------------------------

struct LendOptions {
  double backend_cpu = 0.25;
  double frontend_cpu = 1.0;
  double work_ms = 20;
  double pre_ms = 5;
  uint32_t lend = 0;  // 0: all but 0.1 CPU of the frontend's limit
  std::string lend_memory = "64M";  // what empty calls lend in the memory arm
  double seconds = 3;
  int rounds = 2;
  bool quick = false;
  bool json_out = false;
};

struct Arm {
  uint32_t lend = 0;
  uint64_t lend_memory = 0;
  uint64_t requests = 0;
  double seconds = 0;
  uint64_t lent_total = 0;
  uint64_t lent_memory_total = 0;
  Summary call;
};

// A scratch tree: rocket-bench-lend-PID/{backend,frontend}, removed on exit;
// in the memory hierarchy too where one can be made (`memory_why_not` says
// why not).
class Sandbox {
 public:
  ~Sandbox() {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      Status st = detail::remove_cgroup(*it);
      if (!st.ok()) std::fprintf(stderr, "rocket bench lend: %s\n", st.to_string().c_str());
    }
  }
  Status make() {
    if (::geteuid() != 0) return permission_denied("it makes cgroups, which needs root");
    ROCKET_ASSIGN_OR_RETURN(detail::CpuCgroup self, detail::cpu_cgroup_of(0));
    ROCKET_ASSIGN_OR_RETURN(
        detail::CpuCgroup root,
        detail::make_cpu_cgroup(detail::scratch_parent(self), "rocket-bench-lend-" + std::to_string(::getpid())));
    made_.push_back(root);
    ROCKET_ASSIGN_OR_RETURN(backend, detail::make_cpu_cgroup(root, "backend"));
    made_.push_back(backend);
    ROCKET_ASSIGN_OR_RETURN(frontend, detail::make_cpu_cgroup(root, "frontend"));
    made_.push_back(frontend);
    if (Status st = make_memory(); !st.ok()) memory_why_not = st.to_string();
    return ok_status();
  }
  detail::CpuCgroup backend, frontend;
  detail::MemoryCgroup memory_backend, memory_frontend;  // empty dirs: no memory tree
  std::string memory_why_not;

 private:
  Status make_memory() {
    ROCKET_ASSIGN_OR_RETURN(detail::MemoryCgroup self, detail::memory_cgroup_of(0));
    ROCKET_ASSIGN_OR_RETURN(
        detail::MemoryCgroup root,
        detail::make_memory_cgroup(detail::scratch_parent(self), "rocket-bench-lend-" + std::to_string(::getpid())));
    made_.push_back(root);
    ROCKET_ASSIGN_OR_RETURN(detail::MemoryCgroup b, detail::make_memory_cgroup(root, "backend"));
    made_.push_back(b);
    ROCKET_ASSIGN_OR_RETURN(detail::MemoryCgroup f, detail::make_memory_cgroup(root, "frontend"));
    made_.push_back(f);
    // Room for both processes, with headroom to lend.
    ROCKET_RETURN_IF_ERROR(detail::write_memory_limit(b, int64_t{1} << 30));
    ROCKET_RETURN_IF_ERROR(detail::write_memory_limit(f, int64_t{2} << 30));
    memory_backend = b;
    memory_frontend = f;
    return ok_status();
  }
  std::vector<detail::Cgroup> made_;
};

// One backend and one frontend: the frontend's result line, parsed.
// With `lend_memory`, a third arm lends that much memory (the sandbox must
// have its memory tree).
Result<std::vector<Arm>> run_pair(const Sandbox& box, uint32_t pre_us, uint32_t work_us, uint32_t lend,
                                  uint64_t lend_memory, double seconds, int rounds) {
  const std::string sock = "/tmp/rocket-bench-lend-" + std::to_string(::getpid()) + ".sock";
  std::vector<std::string> serve_args = {"bench-lend-worker", "serve", "--socket", sock, "--cgroup", box.backend.dir};
  if (!box.memory_backend.dir.empty()) {
    serve_args.insert(serve_args.end(), {"--memory-cgroup", box.memory_backend.dir});
  }
  ROCKET_ASSIGN_OR_RETURN(Child server, Child::spawn(serve_args));
  ROCKET_ASSIGN_OR_RETURN(std::string ready, server.read_line(10000));
  if (ready != "ready") return internal_error("backend said '" + ready + "'");
  std::vector<std::string> call_args = {"bench-lend-worker",
                                        "call",
                                        "--socket",
                                        sock,
                                        "--cgroup",
                                        box.frontend.dir,
                                        "--pre-us",
                                        std::to_string(pre_us),
                                        "--work-us",
                                        std::to_string(work_us),
                                        "--lend",
                                        std::to_string(lend),
                                        "--seconds",
                                        std::to_string(seconds),
                                        "--rounds",
                                        std::to_string(rounds),
                                        "--lend-memory",
                                        std::to_string(lend_memory)};
  if (!box.memory_frontend.dir.empty()) {
    call_args.insert(call_args.end(), {"--memory-cgroup", box.memory_frontend.dir});
  }
  ROCKET_ASSIGN_OR_RETURN(Child client, Child::spawn(call_args));
  const size_t n = lend_memory != 0 ? 3 : 2;
  const int limit_ms = static_cast<int>(seconds * static_cast<double>(n) * rounds * 1000) + 30000;
  ROCKET_ASSIGN_OR_RETURN(std::string line, client.read_line(limit_ms));
  server.stop();
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array() || j.size() != n) return internal_error("malformed frontend result: " + line.substr(0, 200));
  std::vector<Arm> arms;
  for (const auto& e : j) {
    const bool ok = e.is_object() && e.contains("lend") && e["lend"].is_number_unsigned() &&
                    e.contains("lend_memory") && e["lend_memory"].is_number_unsigned() &&
                    e.contains("lent_memory_total") && e["lent_memory_total"].is_number_unsigned() &&
                    e.contains("requests") && e["requests"].is_number_unsigned() && e.contains("seconds") &&
                    e["seconds"].is_number() && e.contains("lent_total") && e["lent_total"].is_number_unsigned() &&
                    e.contains("call_us") && e["call_us"].is_array() &&
                    e["call_us"].size() == e["requests"].get<uint64_t>() && !e["call_us"].empty();
    if (!ok) return internal_error("malformed frontend result: " + line.substr(0, 200));
    std::vector<double> us;
    for (const auto& x : e["call_us"]) {
      if (!x.is_number()) return internal_error("malformed frontend result: " + line.substr(0, 200));
      us.push_back(x.get<double>());
    }
    arms.push_back({e["lend"].get<uint32_t>(), e["lend_memory"].get<uint64_t>(), e["requests"].get<uint64_t>(),
                    e["seconds"].get<double>(), e["lent_total"].get<uint64_t>(), e["lent_memory_total"].get<uint64_t>(),
                    summarize(us)});
  }
  return arms;
}

int run_bench_lend(const LendOptions& o) {
  if (!(o.backend_cpu > 0) || !(o.frontend_cpu > 0.1) || o.work_ms < 0 || o.pre_ms < 0) {
    std::fprintf(stderr, "rocket bench lend: CPU limits must be > 0 (the frontend's > 0.1), times >= 0\n");
    return 2;
  }
  const double seconds = o.quick ? 1 : o.seconds;
  const int rounds = o.quick ? 1 : o.rounds;
  const uint32_t lend = o.lend != 0 ? o.lend : static_cast<uint32_t>((o.frontend_cpu - 0.1) * 1000);
  Sandbox box;
  if (Status st = box.make(); !st.ok()) {
    // Where lending cannot work, the benchmark has nothing to measure.
    std::printf("rocket bench lend: skipped: %s\n", st.to_string().c_str());
    if (o.json_out) std::cout << json{{"skipped", st.to_string()}}.dump() << std::endl;
    return 0;
  }
  constexpr int64_t kPeriod = 100000;
  const auto quota = [](double cpus) { return static_cast<int64_t>(cpus * kPeriod); };
  if (Status st = detail::write_cpu_quota(box.backend, quota(o.backend_cpu), kPeriod); !st.ok()) {
    std::fprintf(stderr, "rocket bench lend: %s\n", st.to_string().c_str());
    return 1;
  }
  if (Status st = detail::write_cpu_quota(box.frontend, quota(o.frontend_cpu), kPeriod); !st.ok()) {
    std::fprintf(stderr, "rocket bench lend: %s\n", st.to_string().c_str());
    return 1;
  }
  const auto us = [](double ms) { return static_cast<uint32_t>(ms * 1000); };
  auto lend_memory = parse_size(o.lend_memory);
  if (!lend_memory.ok()) {
    std::fprintf(stderr, "rocket bench lend: --lend-memory: %s\n", lend_memory.status().message().c_str());
    return 2;
  }
  const uint64_t memory_arm = box.memory_why_not.empty() ? *lend_memory : 0;
  auto work = run_pair(box, us(o.pre_ms), us(o.work_ms), lend, 0, seconds, rounds);
  // What a loan costs: the same loop with no work at all on either side.
  auto cost = run_pair(box, 0, 0, lend, memory_arm, std::min(seconds, 1.0), rounds);
  if (!work.ok() || !cost.ok()) {
    std::fprintf(stderr, "rocket bench lend: %s\n", (work.ok() ? cost.status() : work.status()).to_string().c_str());
    return 1;
  }
  auto rate = [](const Arm& a) { return a.seconds > 0 ? static_cast<double>(a.requests) / a.seconds : 0; };
  const Arm &plain = (*work)[0], &lending = (*work)[1];
  const Arm &plain0 = (*cost)[0], &lending0 = (*cost)[1];
  const Arm* memory0 = cost->size() > 2 ? &(*cost)[2] : nullptr;
  if (o.json_out) {
    auto arm_json = [&](const Arm& a) {
      return json{{"lend_millicpus", a.lend},
                  {"lend_memory_bytes", a.lend_memory},
                  {"lent_memory_per_call", a.requests ? static_cast<double>(a.lent_memory_total) / a.requests : 0},
                  {"requests", a.requests},
                  {"req_per_s", rate(a)},
                  {"call_p50_us", a.call.p50},
                  {"call_p99_us", a.call.p99},
                  {"lent_per_call", a.requests ? static_cast<double>(a.lent_total) / a.requests : 0}};
    };
    std::cout << json{{"backend_cpu", o.backend_cpu},
                      {"frontend_cpu", o.frontend_cpu},
                      {"work_ms", o.work_ms},
                      {"pre_ms", o.pre_ms},
                      {"seconds", seconds},
                      {"rounds", rounds},
                      {"work", {arm_json(plain), arm_json(lending)}},
                      {"empty_calls", memory0 != nullptr
                                          ? json{arm_json(plain0), arm_json(lending0), arm_json(*memory0)}
                                          : json{arm_json(plain0), arm_json(lending0)}},
                      {"memory_arm", memory0 != nullptr ? std::string("ran") : "skipped: " + box.memory_why_not},
                      {"speedup", rate(plain) > 0 ? rate(lending) / rate(plain) : 0}}
                     .dump(1)
              << std::endl;
    return 0;
  }
  std::printf(
      "CPU lending: backend capped at %.2f CPU, frontend at %.2f CPU; each request %.1f ms of frontend work, "
      "then %.1f ms of backend work (%d round%s of %.0f s per arm)\n",
      o.backend_cpu, o.frontend_cpu, o.pre_ms, o.work_ms, rounds, rounds == 1 ? "" : "s", seconds);
  std::printf("%-22s %8s %12s %12s %10s\n", "arm", "req/s", "call p50 ms", "call p99 ms", "lent");
  for (const Arm* a : {&plain, &lending}) {
    std::printf("%-22s %8.1f %12.2f %12.2f %10.0f\n",
                a->lend == 0 ? "no loan" : ("lend " + std::to_string(a->lend) + " millicpus").c_str(), rate(*a),
                a->call.p50 / 1000, a->call.p99 / 1000,
                a->requests ? static_cast<double>(a->lent_total) / a->requests : 0.0);
  }
  std::printf("throughput with the loan: x%.2f\n", rate(plain) > 0 ? rate(lending) / rate(plain) : 0.0);
  std::printf("what a loan costs an empty call: p50 %.1f us against %.1f us (+%.1f), p99 %.1f us against %.1f us\n",
              lending0.call.p50, plain0.call.p50, lending0.call.p50 - plain0.call.p50, lending0.call.p99,
              plain0.call.p99);
  if (memory0 != nullptr) {
    std::printf("what a memory loan costs an empty call (%s, %.0f%% of calls lent): p50 %.1f us (+%.1f), p99 %.1f us\n",
                human_size(memory0->lend_memory).c_str(),
                memory0->requests
                    ? 100.0 * static_cast<double>(memory0->lent_memory_total) /
                          (static_cast<double>(memory0->requests) * static_cast<double>(memory0->lend_memory))
                    : 0.0,
                memory0->call.p50, memory0->call.p50 - plain0.call.p50, memory0->call.p99);
  } else {
    std::printf("memory loans: not measured (%s)\n", box.memory_why_not.c_str());
  }
  return 0;
}

}  // namespace

void add_bench_lend(CLI::App& bench) {
  static LendOptions o;
  auto* cmd = bench.add_subcommand("lend", "Pocket's CPU lending: a capped backend with and without the caller's loan");
  cmd->add_option("--backend-cpu", o.backend_cpu, "the backend's CPU limit, in CPUs")->capture_default_str();
  cmd->add_option("--frontend-cpu", o.frontend_cpu, "the frontend's CPU limit, in CPUs")->capture_default_str();
  cmd->add_option("--work-ms", o.work_ms, "backend CPU time per request")->capture_default_str();
  cmd->add_option("--pre-ms", o.pre_ms, "frontend CPU time per request, before its call")->capture_default_str();
  cmd->add_option("--lend", o.lend, "millicpus each call lends (0: the frontend's limit less 0.1 CPU)")
      ->capture_default_str();
  cmd->add_option("--lend-memory", o.lend_memory, "memory the empty calls' memory arm lends")->capture_default_str();
  cmd->add_option("--seconds", o.seconds, "length of each arm per round")->capture_default_str();
  cmd->add_option("--rounds", o.rounds, "rounds; arms alternate, reversed in even rounds")->capture_default_str();
  cmd->add_flag("--quick", o.quick, "1 s per arm, one round");
  cmd->add_flag("--json", o.json_out, "print JSON");
  cmd->callback([] { std::exit(run_bench_lend(o)); });
}

void add_bench_lend_children(CLI::App& app) {
  static ChildArgs a;
  auto* cmd = app.add_subcommand("bench-lend-worker", "")->group("");  // hidden
  cmd->add_option("role", a.role)->required()->check(CLI::IsMember({"serve", "call"}));
  cmd->add_option("--socket", a.socket)->required();
  cmd->add_option("--cgroup", a.cgroup)->required();
  cmd->add_option("--pre-us", a.pre_us);
  cmd->add_option("--work-us", a.work_us);
  cmd->add_option("--lend", a.lend);
  cmd->add_option("--seconds", a.seconds);
  cmd->add_option("--rounds", a.rounds);
  cmd->add_option("--memory-cgroup", a.memory_cgroup);
  cmd->add_option("--lend-memory", a.lend_memory);
  cmd->callback([] { std::exit(a.role == "serve" ? serve_child(a) : call_child(a)); });
}

}  // namespace rocket::tools
