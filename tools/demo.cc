#include "demo.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "demo_config.h"
#include "process.h"
#include "stats.h"

namespace rocket::tools {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct DemoOptions {
  bool quick = false;
  std::string workloads;  // empty: every usable one
  std::string configs;    // empty: the default set
  std::string frontends;  // empty: the default per config
  int requests = 0;       // 0: default
  int rounds = 0;         // 0: default
  double scale = 0;       // 0: per-workload defaults
  std::string out = "rocket-demo-report";
  bool plots = true;
};


std::string workloads_exe() {
  if (const char* env = std::getenv("ROCKET_WORKLOADS")) return env;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "rocket-workloads";
  return (self.parent_path() / "rocket-workloads").string();
}

// Default sizes: the reference sizes where a request computes in well under a
// second here, smaller where the computation alone would take seconds
// (MobileNetV2 on 200 images: 2.4 s per request on this 2-core VM, and a run
// makes ~200 requests per workload).
double default_scale(const std::string& workload, bool quick) {
  if (quick) return workload == "mobilenetv2" ? 0.02 : 0.05;
  if (workload == "mobilenetv2") return 0.05;
  return 1.0;
}

// One measured point: n frontends of one workload under one configuration.
struct Point {
  std::string workload, config;
  int frontends = 0;
  double throughput = 0;  // requests per second, all frontends together
  double mean_us = 0, p99_us = 0, e2e_mean_us = 0;
  double cpu_us_per_req = 0;
  // Share of the request's time spent in the call outside the handler: the
  // copies and signalling, plus queueing when frontends outnumber the
  // backend's dispatchers. -1: not separable (overlapped modes, call_into).
  double copy_share = -1;
  double improvement = 0;  // throughput / baseline's at the same frontend count
  std::string summary;
  json raw;
};

// A frontend's result line has every field the summary reads, of the right
// type (it comes from another process).
bool well_formed_result(const json& r) {
  if (!r.is_object()) return false;
  for (const char* k : {"wall_us", "call_cpu_us", "request_bytes", "response_bytes"}) {
    if (!r.contains(k) || !r[k].is_number()) return false;
  }
  if (!r.contains("requests") || !r["requests"].is_number_unsigned()) return false;
  // One sample of each kind per request.
  const uint64_t requests = r["requests"].get<uint64_t>();
  for (const char* k : {"call_us", "service_us", "e2e_us"}) {
    if (!r.contains(k) || !r[k].is_array() || r[k].size() != requests) return false;
    for (const auto& v : r[k]) {
      if (!v.is_number()) return false;
    }
  }
  return !r.contains("summary") || r["summary"].is_string();
}

// One round of one point: n frontends run `requests` requests each at once.
// Returns their result lines, each tagged with `round`.
Result<json> run_round(const std::string& exe, const std::string& sock, const std::string& workload,
                       const std::string& config, int n, int requests, double scale, int round) {
  std::vector<Child> fes;
  for (int i = 0; i < n; ++i) {
    auto c = Child::spawn_program(exe, {"frontend", "--socket", sock, "--workload", workload, "--config", config,
                                        "--scale", std::to_string(scale), "--requests", std::to_string(requests),
                                        "--id", std::to_string(i)});
    if (!c.ok()) return c.status();
    fes.push_back(std::move(*c));
  }
  for (auto& c : fes) {
    auto line = c.read_line(180000);
    if (!line.ok()) return unavailable("a frontend did not start (see its message above)");
    if (*line != "ready") return internal_error("frontend said: " + *line);
  }
  for (auto& c : fes) ROCKET_RETURN_IF_ERROR(c.write_line("go"));
  json results = json::array();
  for (auto& c : fes) {
    auto line = c.read_line(900000);
    if (!line.ok()) return unavailable("a frontend failed (see its message above)");
    json r = json::parse(*line, nullptr, false);
    if (!well_formed_result(r)) return internal_error("malformed frontend result: " + *line);
    r["round"] = round;
    results.push_back(std::move(r));
  }
  for (auto& c : fes) c.stop();
  return results;
}

// A point from the result lines of all its rounds. Throughput: all requests
// over the rounds' wall times (a round lasts as long as its slowest frontend).
Point summarise_point(const std::string& workload, const std::string& config, int n, json raw) {
  Point p;
  p.workload = workload;
  p.config = config;
  p.frontends = n;
  std::vector<double> call_us, e2e;
  std::map<int, double> round_wall;
  double cpu = 0, moving = 0, total_e2e = 0;
  // In async and pipelined modes a call's time includes the frontend's own
  // overlapped work, so call - service is not time spent moving data.
  auto parsed = workloads::parse_demo_config(config);
  bool share_known = parsed.ok() && (parsed->mode == workloads::DemoMode::kSync || parsed->mode == workloads::DemoMode::kZeroCopy);
  int total = 0;
  for (auto& r : raw) {
    double& wall = round_wall[r["round"].get<int>()];
    wall = std::max(wall, r["wall_us"].get<double>());
    cpu += r["call_cpu_us"].get<double>();
    total += r["requests"].get<int>();  // checked: as many as the samples
    auto calls = r["call_us"].get<std::vector<double>>();
    auto services = r["service_us"].get<std::vector<double>>();
    auto ends = r["e2e_us"].get<std::vector<double>>();
    for (size_t k = 0; k < calls.size(); ++k) {  // the three have one entry per request
      call_us.push_back(calls[k]);
      e2e.push_back(ends[k]);
      total_e2e += ends[k];
      if (services[k] < 0) share_known = false;
      moving += std::max(0.0, calls[k] - services[k]);
    }
    if (r.contains("summary")) {
      p.summary = r["summary"].get<std::string>();
      r.erase("summary");
    }
  }
  double wall = 0;
  for (const auto& [round, w] : round_wall) wall += w;
  auto s = summarize(call_us);
  p.throughput = wall > 0 ? total / (wall / 1e6) : 0;
  p.mean_us = s.mean;
  p.p99_us = s.p99;
  p.e2e_mean_us = summarize(e2e).mean;
  p.cpu_us_per_req = total > 0 ? cpu / total : 0;
  if (share_known && total_e2e > 0) p.copy_share = moving / total_e2e;
  p.raw = std::move(raw);
  return p;
}

json to_json(const Point& p) {
  return {{"workload", p.workload},        {"config", p.config},         {"frontends", p.frontends},
          {"throughput_rps", p.throughput}, {"call_mean_us", p.mean_us},  {"call_p99_us", p.p99_us},
          {"e2e_mean_us", p.e2e_mean_us},   {"cpu_us_per_request", p.cpu_us_per_req},
          {"ipc_share", p.copy_share < 0 ? json(nullptr) : json(p.copy_share)},
          {"improvement", p.improvement},   {"frontend_results", p.raw}};
}

void print_point(const Point& p) {
  char share[16];
  if (p.copy_share < 0) {
    std::snprintf(share, sizeof(share), "%6s", "-");
  } else {
    std::snprintf(share, sizeof(share), "%5.1f%%", 100 * p.copy_share);
  }
  std::printf("  %-22s %2d  %9.2f req/s  mean %10.1f us  p99 %10.1f us  cpu %9.1f us  ipc %s  x%.2f\n",
              p.config.c_str(), p.frontends, p.throughput, p.mean_us, p.p99_us, p.cpu_us_per_req, share,
              p.improvement);
  std::fflush(stdout);
}

// gnuplot: one PNG per workload, throughput per configuration and frontend count.
void write_plots(const std::string& dir, const std::vector<Point>& points, const std::vector<std::string>& workloads) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::printf("(gnuplot not found: no PNG plots; apt-get install gnuplot-nox)\n");
    return;
  }
  for (const auto& w : workloads) {
    std::vector<std::string> configs;
    std::map<std::pair<std::string, int>, double> tput, lat;
    int max_n = 0;
    for (const auto& p : points) {
      if (p.workload != w) continue;
      if (std::find(configs.begin(), configs.end(), p.config) == configs.end()) configs.push_back(p.config);
      tput[{p.config, p.frontends}] = p.throughput;
      lat[{p.config, p.frontends}] = p.mean_us / 1000.0;
      max_n = std::max(max_n, p.frontends);
    }
    if (configs.empty()) continue;
    const std::string dat = dir + "/" + w + ".dat";
    {
      std::ofstream f(dat);
      f << "config";
      for (int n = 1; n <= max_n; ++n) f << " tput" << n;
      for (int n = 1; n <= max_n; ++n) f << " lat" << n;
      f << "\n";
      for (const auto& c : configs) {
        f << c;
        for (int n = 1; n <= max_n; ++n) {
          auto it = tput.find({c, n});
          f << " " << (it == tput.end() ? std::string("NaN") : std::to_string(it->second));
        }
        for (int n = 1; n <= max_n; ++n) {
          auto it = lat.find({c, n});
          f << " " << (it == lat.end() ? std::string("NaN") : std::to_string(it->second));
        }
        f << "\n";
      }
    }
    const std::string gp = dir + "/" + w + ".gp";
    {
      std::ofstream f(gp);
      f << "set terminal pngcairo size 1100,500 noenhanced\n"
        << "set output '" << dir << "/" << w << ".png'\n"
        << "set multiplot layout 1,2 title 'rocket demo: " << w << "'\n"
        << "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
        << "set xtics rotate by -40 scale 0\nset key top left\nset grid ytics\nset yrange [0:*]\n"
        << "set ylabel 'requests / s'\nset title 'throughput'\n"
        << "plot ";
      for (int n = 1; n <= max_n; ++n) {
        f << (n > 1 ? ", " : "") << "'" << dat << "' using " << (1 + n) << (n == 1 ? ":xtic(1)" : "") << " title '"
          << n << " frontend" << (n > 1 ? "s" : "") << "'";
      }
      f << "\nset ylabel 'ms'\nset title 'mean call latency'\nplot ";
      for (int n = 1; n <= max_n; ++n) {
        f << (n > 1 ? ", " : "") << "'" << dat << "' using " << (1 + max_n + n) << (n == 1 ? ":xtic(1)" : "")
          << " title '" << n << " frontend" << (n > 1 ? "s" : "") << "'";
      }
      f << "\nunset multiplot\n";
    }
    std::string cmd = "gnuplot '" + gp + "' 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      // pngcairo is missing in some gnuplot builds; the plain png terminal is everywhere.
      cmd = "sed -i 's/pngcairo/png/' '" + gp + "' && gnuplot '" + gp + "'";
      if (std::system(cmd.c_str()) != 0) std::printf("(gnuplot failed for %s)\n", w.c_str());
    }
  }
}

int run_demo(const DemoOptions& o) {
  const auto t_start = Clock::now();
  const std::string exe = workloads_exe();
  if (::access(exe.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "rocket demo: %s not found (build the workloads: they need the libtorch, xgboost and faiss packages)\n",
                 exe.c_str());
    return 1;
  }
  // Which workloads this build has.
  auto lister = Child::spawn_program(exe, {"list", "--json"});
  if (!lister.ok()) return 1;
  auto listed = lister->read_line(60000);
  if (!listed.ok()) return 1;
  json all = json::parse(*listed, nullptr, false);
  const bool list_ok = all.is_array() && std::all_of(all.begin(), all.end(), [](const json& w) {
                         return w.is_object() && w.contains("name") && w["name"].is_string() && w.contains("usable") &&
                                w["usable"].is_boolean() && w.contains("reason") && w["reason"].is_string();
                       });
  if (!list_ok) {
    std::fprintf(stderr, "rocket demo: %s list --json printed a malformed list: %s\n", exe.c_str(), listed->c_str());
    return 1;
  }
  std::vector<std::string> names;
  const std::vector<std::string> wanted = split(o.workloads);
  for (const auto& w : all) {
    const std::string name = w["name"];
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), name) == wanted.end()) continue;
    if (!w["usable"].get<bool>()) {
      std::printf("%s: skipped, %s\n", name.c_str(), w["reason"].get<std::string>().c_str());
      continue;
    }
    names.push_back(name);
  }
  for (const auto& w : wanted) {
    if (std::none_of(all.begin(), all.end(), [&](const json& j) { return j["name"] == w; })) {
      std::fprintf(stderr, "rocket demo: unknown workload '%s'\n", w.c_str());
      return 2;
    }
  }
  std::vector<std::string> configs = split(o.configs);
  if (configs.empty()) {
    configs = o.quick ? std::vector<std::string>{"baseline", "offload", "async-threads", "zerocopy", "auto"}
                      : std::vector<std::string>{"baseline",       "offload",        "sync-cpu_stream-bypass",
                                                 "sync-threads-inject", "sync-kernel", "async-threads",
                                                 "pipelined-cpu",  "zerocopy",       "auto"};
  }
  for (const auto& c : configs) {
    if (auto p = workloads::parse_demo_config(c); !p.ok()) {
      std::fprintf(stderr, "rocket demo: %s\n", p.status().to_string().c_str());
      return 2;
    }
  }
  if (std::find(configs.begin(), configs.end(), "baseline") == configs.end()) configs.insert(configs.begin(), "baseline");
  // Frontend counts: every configuration with one frontend; the baseline and
  // the two headline configurations with 2 and 3 as well.
  std::vector<int> scale_out;
  if (!o.frontends.empty()) {
    for (const auto& n : split(o.frontends)) scale_out.push_back(std::stoi(n));
  } else if (!o.quick) {
    scale_out = {1, 2, 3};
  } else {
    scale_out = {1};
  }
  auto counts_for = [&](const std::string& config) {
    if (!o.frontends.empty() || config == "baseline" || config == "zerocopy" || config == "auto") return scale_out;
    return std::vector<int>{1};
  };
  const int requests = o.requests > 0 ? o.requests : (o.quick ? 3 : 4);
  const int rounds = o.rounds > 0 ? o.rounds : (o.quick ? 1 : 2);

  std::filesystem::create_directories(o.out);
  const std::string sock = "/tmp/rocket-demo-" + std::to_string(::getpid()) + ".sock";
  std::vector<Point> points;
  json characterisation = json::array();
  for (const auto& w : names) {
    const double scale = o.scale > 0 ? o.scale : default_scale(w, o.quick);
    auto backend = Child::spawn_program(exe, {"backend", "--socket", sock, "--workloads", w, "--scale",
                                              std::to_string(scale)});
    if (!backend.ok()) return 1;
    auto ready = backend->read_line(600000);
    if (!ready.ok()) {
      std::fprintf(stderr, "rocket demo: the %s backend did not start\n", w.c_str());
      return 1;
    }
    json startup = json::parse(*ready, nullptr, false);
    double startup_ms = 0;
    if (startup.is_object() && startup.contains("startup_ms") && startup["startup_ms"].is_object() &&
        startup["startup_ms"].contains(w) && startup["startup_ms"][w].is_number()) {
      startup_ms = startup["startup_ms"][w].get<double>();
    }
    std::printf("\n== %s (scale %.3g; backend ready in %.0f ms)\n", w.c_str(), scale, startup_ms);
    // An unrecorded point first: the first requests after a backend starts
    // are slower (lazy library set-up, first-touch page faults), which would
    // otherwise count against whichever configuration runs first.
    if (auto warm = run_round(exe, sock, w, "baseline", 1, 1, scale, 0); !warm.ok()) {
      std::printf("  warm-up failed: %s\n", warm.status().to_string().c_str());
    }
    // Every point runs once per round, the order reversed in every other
    // round, so a machine that drifts faster or slower over the minutes of a
    // workload slows every configuration alike rather than the later ones.
    std::vector<std::pair<std::string, int>> order;
    for (const auto& c : configs) {
      for (int n : counts_for(c)) order.emplace_back(c, n);
    }
    std::map<std::pair<std::string, int>, json> raw;
    std::map<std::pair<std::string, int>, Status> failed;
    for (int round = 1; round <= rounds; ++round) {
      if (rounds > 1) {
        std::printf("  round %d of %d ...\n", round, rounds);
        std::fflush(stdout);
      }
      for (size_t i = 0; i < order.size(); ++i) {
        const auto& key = order[in_round_order(round, i, order.size())];
        if (failed.count(key) != 0) continue;
        auto r = run_round(exe, sock, w, key.first, key.second, requests, scale, round);
        if (!r.ok()) {
          failed[key] = r.status();
          continue;
        }
        json& pooled = raw[key];
        if (pooled.is_null()) pooled = json::array();
        for (auto& line : *r) pooled.push_back(std::move(line));
      }
    }
    std::map<int, double> baseline;  // throughput by frontend count
    for (const auto& key : order) {
      const auto& [c, n] = key;
      if (auto f = failed.find(key); f != failed.end()) {
        std::printf("  %-22s %2d  failed: %s\n", c.c_str(), n, f->second.to_string().c_str());
        continue;
      }
      Point p = summarise_point(w, c, n, std::move(raw[key]));
      if (c == "baseline") baseline[n] = p.throughput;
      auto base = baseline.find(n);
      p.improvement = base != baseline.end() && base->second > 0 ? p.throughput / base->second : 0;
      print_point(p);
      if (c == "baseline" && n == 1) {
        const json& r = p.raw[0];
        characterisation.push_back({{"workload", w},
                                    {"request_bytes", r["request_bytes"]},
                                    {"response_bytes", r["response_bytes"]},
                                    {"ipc_share_baseline", p.copy_share}});
        std::printf("  request %.1f MB, response %.2f MB; %s\n", r["request_bytes"].get<double>() / 1e6,
                    r["response_bytes"].get<double>() / 1e6, p.summary.c_str());
      }
      points.push_back(std::move(p));
    }
    backend->stop();
  }
  // The best configuration per workload, against the baseline.
  std::printf("\nBest configuration per workload (one frontend), against the baseline (sync + cpu):\n");
  json best = json::array();
  for (const auto& w : names) {
    const Point* b = nullptr;
    const Point* base = nullptr;
    const Point* offload = nullptr;
    for (const auto& p : points) {
      if (p.workload != w || p.frontends != 1) continue;
      if (p.config == "baseline") base = &p;
      if (p.config == "offload") offload = &p;
      if (p.config != "baseline" && (b == nullptr || p.throughput > b->throughput)) b = &p;
    }
    if (b == nullptr || base == nullptr) continue;
    std::printf("  %-14s %-22s x%.2f throughput (%.2f vs %.2f req/s)", w.c_str(), b->config.c_str(), b->improvement,
                b->throughput, base->throughput);
    if (offload != nullptr) std::printf("; always offload x%.2f", offload->improvement);
    std::printf("\n");
    best.push_back({{"workload", w}, {"best_config", b->config}, {"improvement", b->improvement},
                    {"offload_improvement", offload != nullptr ? offload->improvement : 0.0}});
  }
  json report{{"machine_cores", std::thread::hardware_concurrency()},
              {"quick", o.quick},
              {"requests_per_frontend", requests * rounds},
              {"rounds", rounds},
              {"characterisation", characterisation},
              {"best", best},
              {"results", json::array()}};
  for (const auto& p : points) report["results"].push_back(to_json(p));
  std::ofstream(o.out + "/results.json") << report.dump(2) << "\n";
  if (o.plots) write_plots(o.out, points, names);
  const double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::printf("\nreport: %s/results.json%s (%.0f s)\n", o.out.c_str(), o.plots ? " and one PNG per workload" : "",
              secs);
  return points.empty() ? 1 : 0;
}

}  // namespace

void add_demo(CLI::App& app) {
  auto opt = std::make_shared<DemoOptions>();
  auto* cmd = app.add_subcommand("demo", "Real workloads (mobilenetv2, xgboost, pagerank, vector_search) split into "
                                         "frontends and a shared backend, under every mode and engine");
  cmd->add_flag("--quick", opt->quick, "small sizes, five configurations, one frontend (about a minute)");
  cmd->add_option("--workloads", opt->workloads, "comma-separated subset (default: every usable one)");
  cmd->add_option("--configs", opt->configs,
                  "baseline, offload, auto, zerocopy or MODE-MOVER[-CACHE], comma-separated");
  cmd->add_option("--frontends", opt->frontends, "frontend counts, e.g. 1,2,3");
  cmd->add_option("--requests", opt->requests, "requests per frontend per point and round (default 4; --quick 3)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--rounds", opt->rounds,
                  "times every point runs, in alternating order, pooled (default 2; --quick 1)")
      ->check(CLI::Range(1, 100));
  cmd->add_option("--scale", opt->scale, "size factor for every workload (1: the reference sizes)");
  cmd->add_option("--out", opt->out, "report folder")->capture_default_str();
  cmd->add_flag("!--no-plots", opt->plots, "skip the gnuplot PNGs");
  cmd->callback([opt] { std::exit(run_demo(*opt)); });
}

}  // namespace rocket::tools
