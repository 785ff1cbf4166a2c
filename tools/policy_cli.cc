// `rocket train` and `rocket bench policy` (SkyRocket; profile.h says more).
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "mapped_buffer.h"
#include "profile.h"
#include "rocket/rocket.h"
#include "stats.h"
#include "train.h"

namespace rocket::tools {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
namespace sky = rocket::skyrocket;

// --- rocket train ------------------------------------------------------------------------

struct TrainArgs {
  std::string traces;
  std::string out;
  TrainOptions opts;
  bool json_out = false;
  bool verbose = false;
};

int run_train(const TrainArgs& a) {
  std::vector<sky::TraceRow> rows;
  const std::string traces = a.traces.empty() ? sky::default_trace_path() : a.traces;
  for (const auto& path : split(traces)) {
    auto r = sky::read_trace(path);
    if (!r.ok()) {
      std::cerr << "rocket train: " << r.status().to_string() << "\n";
      return 1;
    }
    rows.insert(rows.end(), std::make_move_iterator(r->begin()), std::make_move_iterator(r->end()));
  }
  auto trained = train_model(rows, a.opts);
  if (!trained.ok()) {
    std::cerr << "rocket train: " << trained.status().to_string() << "\n";
    return 1;
  }
  sky::Model& model = trained->model;
  utsname u{};
  ::uname(&u);
  model.machine =
      std::string(u.nodename) + " " + u.machine + ", " + std::to_string(std::thread::hardware_concurrency()) + " cpus";
  const std::string out = a.out.empty() ? sky::default_model_path() : a.out;
  if (Status st = model.save(out); !st.ok()) {
    std::cerr << "rocket train: " << st.to_string() << "\n";
    return 1;
  }
  const auto& m = model.metrics;
  // The rules the model should beat, on the same situations: the runtime's
  // cost model, and each configuration fixed (the best of which is chosen
  // in hindsight).
  const double cost_regret = cost_model_regret(rows);
  if (a.json_out) {
    json fixed = json::object();
    for (const auto& c : model.configs()) fixed[sky::config_name(c)] = fixed_regret(c, rows);
    json hints = json::array();
    for (const auto& h : model.mode_hints) hints.push_back({{"min_bytes", h.min_bytes}, {"mode", h.mode}});
    json sits = json::array();
    for (const auto& c : trained->cross_validated.choices) {
      sits.push_back({{"situation", c.situation},
                      {"best", sky::config_name(c.best)},
                      {"chosen", sky::config_name(c.chosen)},
                      {"best_us", c.best_us},
                      {"chosen_us", c.chosen_us}});
    }
    std::cout << json{{"model", out},
                      {"trees", model.trees()},
                      {"rows", m.train_rows},
                      {"situations", m.situations},
                      {"folds", m.folds},
                      {"rmse_log", m.rmse_log},
                      {"r2", m.r2},
                      {"optimal_accuracy", m.optimal_accuracy},
                      {"near_optimal", m.near_optimal},
                      {"macro_f1", m.macro_f1},
                      {"mean_regret", m.mean_regret},
                      {"p90_regret", m.p90_regret},
                      {"cost_model_mean_regret", cost_regret},
                      {"fixed_config_mean_regret", fixed},
                      {"mode_hint", hints},
                      {"cross_validated", sits}}
                     .dump(1)
              << "\n";
    return 0;
  }
  if (a.verbose) {
    std::printf("%-42s %-18s %-18s %8s\n", "situation (cross-validated)", "best", "chosen", "regret");
    for (const auto& c : trained->cross_validated.choices) {
      std::printf("%-42s %-18s %-18s %7.1f%%\n", c.situation.c_str(), sky::config_name(c.best).c_str(),
                  sky::config_name(c.chosen).c_str(), 100 * c.regret());
    }
  }
  std::printf("model: %s (%zu trees, %zu configurations, %zu rows)\n", out.c_str(), model.trees(),
              model.configs().size(), m.train_rows);
  std::printf("%zu-fold cross-validation by situation (%zu situations):\n", m.folds, m.situations);
  std::printf("  fit:     RMSE %.3f on log(1+us), R^2 %.3f\n", m.rmse_log, m.r2);
  std::printf("  choices: optimal %.0f%%, within 5%% of optimal %.0f%%, macro-F1 %.2f\n", 100 * m.optimal_accuracy,
              100 * m.near_optimal, m.macro_f1);
  std::printf("  regret:  mean %.1f%%, p90 %.1f%%; the cost model's mean %.1f%%\n", 100 * m.mean_regret,
              100 * m.p90_regret, 100 * cost_regret);
  std::printf("  one configuration everywhere, mean regret:");
  for (const auto& c : model.configs())
    std::printf(" %s %.1f%%", sky::config_name(c).c_str(), 100 * fixed_regret(c, rows));
  std::printf("\nmode hint:");
  for (const auto& h : model.mode_hints) std::printf(" from %s %s;", human_size(h.min_bytes).c_str(), h.mode.c_str());
  std::printf("\n");
  return 0;
}

// --- rocket bench policy -----------------------------------------------------------------

struct PolicyArgs {
  std::string model;
  std::string sizes = "256K,1M,4M,16M,64M";
  std::string clients;  // default: 1 and the cores (at most 4)
  double seconds = 1.5;
  int rounds = 2;
  bool quick = false;
  bool json_out = false;
  std::string log;  // decision log written here (a trace for retraining)
  // Each reply is copied out into newly mapped memory (as a frontend that
  // receives into a fresh buffer does): a copy that faults its pages in.
  bool fresh_reply = false;
};

struct Arm {
  std::string name;
  bool learned;  // kAuto with the model installed; other kAuto arms run without it
  Policy policy;
};

// ns per call of `f`, median of batches.
template <typename F>
double ns_per_call(F&& f) {
  std::vector<double> batches;
  for (int b = 0; b < 21; ++b) {
    const auto t0 = Clock::now();
    for (int i = 0; i < 2000; ++i) f(i);
    batches.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / 2000);
  }
  return summarize(batches).p50;
}

int run_bench_policy(const PolicyArgs& a) {
  const std::string path = a.model.empty() ? sky::default_model_path() : a.model;
  auto loaded = sky::Model::load(path);
  if (!loaded.ok()) {
    std::cerr << "rocket bench policy: " << loaded.status().to_string() << "\n";
    return 1;
  }
  auto model = std::make_shared<const sky::Model>(std::move(*loaded));
  std::vector<size_t> sizes;
  for (const auto& s : split(a.quick ? std::string("1M,16M") : a.sizes)) {
    auto v = parse_size(s);
    if (!v.ok() || *v == 0 || *v > (size_t{1} << 30)) {
      std::cerr << "rocket bench policy: size '" << s << "' must be between 1 byte and 1G\n";
      return 2;
    }
    sizes.push_back(*v);
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  auto clients_or = parse_counts(
      a.clients.empty() ? (cores > 1 ? "1," + std::to_string(std::min(cores, 4u)) : "1") : a.clients, 1, 16);
  if (!clients_or.ok()) {
    std::cerr << "rocket bench policy: --clients: " << clients_or.status().message() << "\n";
    return 2;
  }
  const std::vector<unsigned>& clients = *clients_or;
  if (sizes.empty() || clients.empty() || !(a.seconds > 0 && a.seconds <= 600) || a.rounds < 1 || a.rounds > 100) {
    std::cerr << "rocket bench policy: needs sizes, clients, --seconds in (0, 600] and --rounds 1..100\n";
    return 2;
  }
  const double seconds = a.quick ? 0.3 : a.seconds;
  const int rounds = a.quick ? 1 : a.rounds;

  // 1. What a decision costs.
  sky::install_model(model);
  std::vector<std::byte> probe(64);
  const double observe_ns =
      ns_per_call([&](int i) { (void)sky::observe(probe.data() + (i & 7), probe.data() + 32, size_t{1} << 20); });
  sky::Features f = sky::observe(probe.data(), probe.data() + 32, size_t{16} << 20);
  const double cached_ns = ns_per_call([&](int) { (void)sky::decide(f, false); });
  const double trees_ns = ns_per_call([&](int i) {
    f.v[sky::kSizeLog2] = static_cast<float>(16 + (i % 13));
    for (size_t c = 0; c < model->configs().size(); ++c) (void)model->predict_log(f, c);
  });

  // 2. Calls through a server, learned choice against the cost model and
  // against every configuration fixed.
  const size_t max_size = *std::max_element(sizes.begin(), sizes.end());
  const std::string socket = "/tmp/rocket-bench-policy-" + std::to_string(::getpid()) + ".sock";
  ServerOptions so;
  so.socket_path = socket;
  so.max_sessions = 64;
  Server server(so);
  // "sink" answers nothing; "echo" answers with the request's own bytes,
  // in place, for the caller to copy out.
  Status st = server.handle("sink", [](const Request&, Response&) { return ok_status(); });
  if (st.ok()) {
    st = server.handle("echo",
                       [](const Request& req, Response& resp) { return resp.reply_in_place(0, req.data().size()); });
  }
  if (!st.ok() || !(st = server.start()).ok()) {
    std::cerr << "rocket bench policy: " << st.to_string() << "\n";
    return 1;
  }
  std::vector<Arm> arms{{"auto (learned)", true, {}}, {"auto (cost model)", false, {}}};
  for (const auto& c : model->configs()) {
    if (shared_mover(c.mover).ok()) arms.push_back({sky::config_name(c), false, {.mover = c.mover, .cache = c.cache}});
  }
  // Sources: one hot buffer per size, and a cold span cycled through.
  constexpr size_t kColdSpan = size_t{256} << 20;
  const unsigned max_clients = *std::max_element(clients.begin(), clients.end());
  std::vector<std::unique_ptr<MappedBuffer>> spans;
  for (unsigned i = 0; i < max_clients; ++i) {
    spans.push_back(
        std::make_unique<MappedBuffer>(std::max(kColdSpan, 2 * max_size), MappedBufferOptions{.fill = 0x21}));
    if (spans.back()->data() == nullptr) {
      std::cerr << "rocket bench policy: cannot map the sources\n";
      return 1;
    }
  }
  const size_t pool = std::max<size_t>(size_t{64} << 20, 2 * max_size + (size_t{1} << 20));
  json results = json::array();
  std::printf("decision: observe %.0f ns, cached decide %.0f ns, uncached (trees, %zu configurations) %.0f ns\n",
              observe_ns, cached_ns, model->configs().size(), trees_ns);
  std::printf("%-8s %-22s %10s %9s %10s %10s %8s\n", "clients", "policy", "calls/s", "GB/s", "p50 us", "p99 us",
              "vs cost");
  for (unsigned n : clients) {
    // Sessions are opened once, outside the timed windows (a connect maps
    // and faults in the pools).
    std::vector<Client> sessions;
    for (unsigned id = 0; id < n; ++id) {
      auto c =
          Client::connect(socket, {.tenant = "bench-policy", .client_pool_bytes = pool, .server_pool_bytes = 1 << 20});
      if (!c.ok()) {
        std::cerr << "rocket bench policy: " << c.status().to_string() << "\n";
        return 1;
      }
      sessions.push_back(std::move(*c));
    }
    std::vector<std::vector<double>> lat(arms.size());
    std::vector<double> busy(arms.size(), 0), bytes(arms.size(), 0);
    for (int round = 1; round <= rounds; ++round) {
      for (size_t k = 0; k < arms.size(); ++k) {
        const size_t ai = in_round_order(round, k, arms.size());
        const Arm& arm = arms[ai];
        sky::install_model(arm.learned ? model : nullptr);
        std::vector<std::vector<double>> per(n);
        std::vector<double> moved(n, 0);
        std::atomic<bool> failed{false};
        const auto t_end = Clock::now() + std::chrono::duration<double>(seconds);
        auto caller = [&](unsigned id) {
          Client* c = &sessions[id];
          const std::byte* base = spans[id]->data();
          size_t i = 0, cold_at = 0;
          while (Clock::now() < t_end && !failed) {
            const size_t size = sizes[i % sizes.size()];
            // Hot and cold sources alternate by pass over the sizes.
            const bool cold = (i / sizes.size()) % 2 == 1;
            const std::byte* src = base;
            if (cold) {
              if (cold_at + size > kColdSpan) cold_at = 0;
              src = base + cold_at;
              cold_at += size;
            }
            ++i;
            const auto t0 = Clock::now();
            auto r =
                c->call(a.fresh_reply ? "echo" : "sink", std::span<const std::byte>(src, size), {.policy = arm.policy});
            Status copied = r.ok() ? ok_status() : r.status();
            if (copied.ok() && a.fresh_reply) {
              void* out = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
              if (out == MAP_FAILED) {
                copied = resource_exhausted("cannot map a reply buffer");
              } else {
                copied = r->copy_to({static_cast<std::byte*>(out), size},
                                    {.mover = arm.policy.mover, .cache = arm.policy.cache});
                ::munmap(out, size);
              }
            }
            if (!copied.ok()) {
              std::cerr << "rocket bench policy: " << copied.to_string() << "\n";
              failed = true;
              return;
            }
            per[id].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
            moved[id] += static_cast<double>(size);
          }
        };
        const auto t0 = Clock::now();
        std::vector<std::thread> threads;
        for (unsigned id = 0; id < n; ++id) threads.emplace_back(caller, id);
        for (auto& t : threads) t.join();
        if (failed) return 1;
        busy[ai] += std::chrono::duration<double>(Clock::now() - t0).count();
        for (unsigned id = 0; id < n; ++id) {
          lat[ai].insert(lat[ai].end(), per[id].begin(), per[id].end());
          bytes[ai] += moved[id];
        }
      }
    }
    const double cost_rate = bytes[1] / busy[1];
    for (size_t ai = 0; ai < arms.size(); ++ai) {
      const Summary s = summarize(lat[ai]);
      const double rate = bytes[ai] / busy[ai];
      std::printf("%-8u %-22s %10.0f %9.2f %10.1f %10.1f %7.2fx\n", n, arms[ai].name.c_str(),
                  static_cast<double>(s.n) / busy[ai], rate / 1e9, s.p50, s.p99, rate / cost_rate);
      results.push_back({{"clients", n},
                         {"policy", arms[ai].name},
                         {"calls_per_s", static_cast<double>(s.n) / busy[ai]},
                         {"gbps", rate / 1e9},
                         {"p50_us", s.p50},
                         {"p99_us", s.p99},
                         {"vs_cost_model", rate / cost_rate}});
    }
  }
  server.stop();
  server.wait();
  sky::install_model(nullptr);
  const auto logged = sky::drain_decision_log();
  if (!a.log.empty()) {
    if (Status written = sky::write_trace(a.log, logged); !written.ok()) {
      std::cerr << "rocket bench policy: " << written.to_string() << "\n";
      return 1;
    }
    std::fprintf(stderr, "rocket bench policy: %zu logged decisions written to %s\n", logged.size(), a.log.c_str());
  }
  if (a.json_out) {
    std::cout << json{{"model", path},
                      {"observe_ns", observe_ns},
                      {"cached_decide_ns", cached_ns},
                      {"uncached_decide_ns", trees_ns},
                      {"decisions_logged", logged.size()},
                      {"results", results}}
                     .dump(1)
              << "\n";
  }
  return 0;
}

}  // namespace

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train",
                                 "SkyRocket: fit the mover/cache model to traces (XGBoost), report its accuracy "
                                 "on held-out situations, export it for the runtime");
  cmd->add_option("--traces", a->traces, "trace files, comma-separated (default: traces.csv beside the model)");
  cmd->add_option("--out", a->out, "model file (default: $ROCKET_MODEL, else ~/.cache/rocket/model.json)");
  cmd->add_option("--trees", a->opts.trees, "boosting rounds")->capture_default_str();
  cmd->add_option("--depth", a->opts.depth, "tree depth")->capture_default_str();
  cmd->add_option("--eta", a->opts.eta, "learning rate")->capture_default_str();
  cmd->add_option("--colsample", a->opts.colsample, "share of inputs each split may use")->capture_default_str();
  cmd->add_option("--folds", a->opts.folds, "cross-validation folds (by situation)")->capture_default_str();
  cmd->add_flag("--verbose", a->verbose, "print every situation's cross-validated choice");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->callback([a] { std::exit(run_train(*a)); });
}

void add_bench_policy(CLI::App& bench) {
  auto a = std::make_shared<PolicyArgs>();
  auto* cmd = bench.add_subcommand("policy",
                                   "SkyRocket's learned choice against the cost model and every fixed "
                                   "configuration, through calls; and what a decision costs");
  cmd->add_option("--model", a->model, "model file (default: $ROCKET_MODEL, else ~/.cache/rocket/model.json)");
  cmd->add_option("--sizes", a->sizes, "request sizes, called in turn")->capture_default_str();
  cmd->add_option("--clients", a->clients, "concurrent callers to try (default: 1 and the cores, at most 4)");
  cmd->add_option("--seconds", a->seconds, "per arm and round")->capture_default_str();
  cmd->add_option("--rounds", a->rounds, "rounds; arms alternate order")->capture_default_str();
  cmd->add_option("--log", a->log, "write the learned arm's decisions, with measured times, as a trace");
  cmd->add_flag("--fresh-reply", a->fresh_reply, "echo each request and copy the reply out into new memory");
  cmd->add_flag("--quick", a->quick, "two sizes, one short round");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->callback([a] { std::exit(run_bench_policy(*a)); });
}

}  // namespace rocket::tools
