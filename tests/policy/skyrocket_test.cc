// SkyRocket's online half: model files and their checks, predictions,
// decisions and their cache, features, the decision log, trace files, and
// the runtime taking the learned choice for MoverKind::kAuto.
#include "rocket/policy/skyrocket.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

namespace rocket::testing {
namespace {

namespace sky = rocket::skyrocket;
using Node = sky::Model::Node;
constexpr uint32_t kLeaf = sky::Model::kLeaf;
constexpr uint32_t kMoverInput = sky::kNumFeatures;

// Leaves in log(1 + us): the time a model built by cheapest_is() predicts.
double log_us(double us) { return std::log1p(us); }

// A one-tree model over `configs` in which `cheap` (by mover) predicts 10 us
// and every other engine 1000 us; with `split_size_log2`, copies at least
// that large flip: `cheap` costs 1000 and the others 10.
sky::Model cheapest_is(std::vector<sky::Config> configs, MoverKind cheap, float split_size_log2 = 0) {
  const auto m = static_cast<float>(cheap);
  std::vector<Node> t;
  if (split_size_log2 <= 0) {
    // mover < m -> dear; mover < m + 1 -> cheap; else dear
    t = {{kMoverInput, m, 1, 2},
         {kLeaf, static_cast<float>(log_us(1000)), 0, 0},
         {kMoverInput, m + 1, 3, 4},
         {kLeaf, static_cast<float>(log_us(10)), 0, 0},
         {kLeaf, static_cast<float>(log_us(1000)), 0, 0}};
  } else {
    t = {{sky::kSizeLog2, split_size_log2, 1, 6},
         {kMoverInput, m, 2, 3},
         {kLeaf, static_cast<float>(log_us(1000)), 0, 0},
         {kMoverInput, m + 1, 4, 5},
         {kLeaf, static_cast<float>(log_us(10)), 0, 0},
         {kLeaf, static_cast<float>(log_us(1000)), 0, 0},
         {kMoverInput, m, 7, 8},
         {kLeaf, static_cast<float>(log_us(10)), 0, 0},
         {kMoverInput, m + 1, 9, 10},
         {kLeaf, static_cast<float>(log_us(1000)), 0, 0},
         {kLeaf, static_cast<float>(log_us(10)), 0, 0}};
  }
  auto model = sky::Model::make(std::move(configs), 0.0, {t});
  EXPECT_TRUE(model.ok()) << model.status().to_string();
  return std::move(*model);
}

const std::vector<sky::Config> kLocalConfigs = {{MoverKind::kCpu, Cache::kAuto},
                                                {MoverKind::kCpuStream, Cache::kAuto},
                                                {MoverKind::kThreads, Cache::kInject},
                                                {MoverKind::kThreads, Cache::kBypass}};

sky::Features features_of_size(size_t bytes) {
  sky::Features f;
  f.v[sky::kSizeLog2] = static_cast<float>(std::log2(static_cast<double>(bytes)));
  f.v[sky::kReuseLog2] = sky::kNeverCopied;
  f.v[sky::kDstReuseLog2] = sky::kNeverCopied;
  return f;
}

// Removes the installed model when a test ends, whatever it installed.
struct ModelGuard {
  ~ModelGuard() { sky::install_model(nullptr); }
};

TEST(SkyRocketModel, PredictsWhatItsTreesSay) {
  sky::Model m = cheapest_is(kLocalConfigs, MoverKind::kCpuStream, 20);
  const auto small = features_of_size(1 << 16), large = features_of_size(1 << 24);
  EXPECT_NEAR(m.predict_us(small, 1), 10, 1e-3);    // cpu_stream below 1 MiB
  EXPECT_NEAR(m.predict_us(small, 0), 1000, 1e-2);  // cpu
  EXPECT_NEAR(m.predict_us(large, 1), 1000, 1e-2);
  EXPECT_NEAR(m.predict_us(large, 2), 10, 1e-3);  // threads
  EXPECT_EQ(m.trees(), 1u);
}

TEST(SkyRocketModel, MakeRefusesTreesThatCouldLoopOrReadPastTheInputs) {
  const std::vector<sky::Config> cfg = {{MoverKind::kCpu, Cache::kAuto}};
  const Node leaf{kLeaf, 1.0f, 0, 0};
  struct Case {
    const char* what;
    std::vector<Node> tree;
  } cases[] = {
      {"child before its parent (a cycle)", {{0, 1.0f, 1, 2}, {0, 1.0f, 0, 2}, leaf}},
      {"child pointing at itself", {{0, 1.0f, 0, 1}, leaf}},
      {"child past the tree", {{0, 1.0f, 1, 7}, leaf}},
      {"input beyond the inputs", {{static_cast<uint32_t>(sky::Model::kInputs), 1.0f, 1, 2}, leaf, leaf}},
      {"NaN threshold", {{0, NAN, 1, 2}, leaf, leaf}},
      {"infinite leaf", {{kLeaf, INFINITY, 0, 0}}},
      {"no nodes", {}},
  };
  for (const auto& c : cases) {
    auto m = sky::Model::make(cfg, 0.0, {c.tree});
    EXPECT_FALSE(m.ok()) << c.what;
    if (!m.ok()) EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << c.what;
  }
  std::vector<Node> chain;  // 65 splits deep: a walk the model must not take
  for (uint32_t i = 0; i < 65; ++i) chain.push_back({0, 1.0f, i + 1, 66});
  chain.push_back(leaf);
  chain.push_back(leaf);
  EXPECT_FALSE(sky::Model::make(cfg, 0.0, {chain}).ok()) << "deeper than 64";
  chain.erase(chain.begin());
  for (auto& n : chain) {
    if (n.feature != kLeaf) {
      --n.left;
      --n.right;
    }
  }
  EXPECT_TRUE(sky::Model::make(cfg, 0.0, {chain}).ok()) << "64 deep";
  EXPECT_FALSE(sky::Model::make({}, 0.0, {{leaf}}).ok()) << "no configurations";
  EXPECT_FALSE(sky::Model::make({{MoverKind::kKernel, Cache::kAuto}}, 0.0, {{leaf}}).ok())
      << "kernel copies across processes";
  EXPECT_FALSE(sky::Model::make({{MoverKind::kAuto, Cache::kAuto}}, 0.0, {{leaf}}).ok()) << "auto is no engine";
  EXPECT_FALSE(sky::Model::make({cfg[0], cfg[0]}, 0.0, {{leaf}}).ok()) << "a configuration twice";
  EXPECT_FALSE(sky::Model::make(cfg, NAN, {{leaf}}).ok()) << "NaN base score";
  EXPECT_TRUE(sky::Model::make(cfg, 0.0, {{leaf}}).ok());
}

TEST(SkyRocketModel, FileRoundTripsAndKeepsPredictions) {
  sky::Model m = cheapest_is(kLocalConfigs, MoverKind::kThreads, 22);
  m.machine = "test machine";
  m.metrics.r2 = 0.5;
  m.metrics.situations = 7;
  m.mode_hints = {{1 << 16, "sync"}, {1 << 22, "pipelined"}};
  const std::string path = "/tmp/rocket-sky-model-" + std::to_string(::getpid()) + ".json";
  ASSERT_TRUE(m.save(path).ok());
  auto back = sky::Model::load(path);
  ::unlink(path.c_str());
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->configs(), m.configs());
  EXPECT_EQ(back->machine, "test machine");
  EXPECT_EQ(back->metrics.r2, 0.5);
  EXPECT_EQ(back->metrics.situations, 7u);
  ASSERT_EQ(back->mode_hints.size(), 2u);
  EXPECT_EQ(back->mode_hints[1].mode, "pipelined");
  for (size_t bytes : {size_t{1} << 16, size_t{1} << 21, size_t{1} << 22, size_t{1} << 26}) {
    for (size_t c = 0; c < m.configs().size(); ++c) {
      EXPECT_EQ(back->predict_log(features_of_size(bytes), c), m.predict_log(features_of_size(bytes), c));
    }
  }
}

TEST(SkyRocketModel, MalformedFilesAreDataLossWithTheReason) {
  sky::Model m = cheapest_is(kLocalConfigs, MoverKind::kCpu);
  const nlohmann::json good = nlohmann::json::parse(m.to_json());
  ASSERT_TRUE(sky::Model::parse(good.dump()).ok());
  auto edited = [&](auto&& edit) {
    nlohmann::json j = good;
    edit(j);
    return j.dump();
  };
  struct Case {
    const char* what;
    std::string text;
    const char* says;
  } cases[] = {
      {"not JSON", "{\"format\": ", "not JSON"},
      {"another format", edited([](auto& j) { j["format"] = "onnx"; }), "not a model file"},
      {"another version", edited([](auto& j) { j["version"] = 99; }), "version 99"},
      {"other inputs", edited([](auto& j) { j["inputs"][0] = "bytes"; }), "inputs"},
      {"unknown engine", edited([](auto& j) { j["configs"][0]["mover"] = "warp"; }), "warp"},
      {"node of the wrong shape", edited([](auto& j) {
         j["trees"][0][0] = {1, 2};
       }),
       "node"},
      {"negative child", edited([](auto& j) { j["trees"][0][0][2] = -1; }), "node"},
      {"backward child", edited([](auto& j) { j["trees"][0][2][2] = 0; }), "child"},
      {"bad mode hint", edited([](auto& j) {
         j["mode_hint"] = {{{"min_bytes", 1}, {"mode", "turbo"}}};
       }),
       "turbo"},
      {"no trees", edited([](auto& j) { j.erase("trees"); }), "trees"},
  };
  for (const auto& c : cases) {
    auto r = sky::Model::parse(c.text);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << c.what;
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << c.what << ": " << r.status().message();
  }
  auto missing = sky::Model::load("/nonexistent/model.json");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(SkyRocketDecide, TakesTheCheapestUsableConfigurationAndCachesIt) {
  ModelGuard guard;
  EXPECT_FALSE(sky::decide(features_of_size(1 << 20), false).has_value()) << "no model, no decision";
  sky::install_model(std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, MoverKind::kCpuStream, 22)));
  const auto small = features_of_size(1 << 20), large = features_of_size(1 << 24);
  auto d = sky::decide(small, false);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->config.mover, MoverKind::kCpuStream);
  EXPECT_FALSE(d->cached);
  EXPECT_NEAR(d->predicted_us, 10, 0.1);
  auto again = sky::decide(small, false);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->cached);
  EXPECT_EQ(again->config, d->config);
  EXPECT_NEAR(again->predicted_us, 10, 0.2);  // as cached: quantised to 1/64 of log(1 + us)
  // Large copies: every engine but cpu_stream predicts 10 us; the first in
  // the list wins the tie.
  auto big = sky::decide(large, false);
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ(big->config.mover, MoverKind::kCpu);
  // Asynchronous copies take only asynchronous engines.
  auto async = sky::decide(large, true);
  ASSERT_TRUE(async.has_value());
  EXPECT_EQ(async->config.mover, MoverKind::kThreads);
  // A caller that fixed the cache gets a configuration with that cache (or
  // an engine without cache control).
  auto bypass = sky::decide(large, true, Cache::kBypass);
  ASSERT_TRUE(bypass.has_value());
  EXPECT_EQ(bypass->config, (sky::Config{MoverKind::kThreads, Cache::kBypass}));
  // A new model empties the cache: the same situation is decided afresh.
  sky::install_model(std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, MoverKind::kThreads)));
  auto fresh = sky::decide(small, false);
  ASSERT_TRUE(fresh.has_value());
  EXPECT_FALSE(fresh->cached);
  EXPECT_EQ(fresh->config.mover, MoverKind::kThreads);
}

TEST(SkyRocketDecide, TheCacheKeepsSituationsApart) {
  // Synchronous and asynchronous decisions differ here (cpu_stream against
  // threads); each must come back from the cache as it was decided, whatever
  // the other features, up to the ends of their ranges.
  ModelGuard guard;
  sky::install_model(std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, MoverKind::kCpuStream)));
  for (int pass = 0; pass < 2; ++pass) {
    for (float runnable : {0.0f, 4.0f, 15.0f}) {
      for (float active : {0.0f, 7.0f}) {
        for (float faults : {0.0f, 31.0f}) {
          sky::Features f = features_of_size(size_t{1} << 22);
          f.v[sky::kRunnable] = runnable;
          f.v[sky::kActive] = active;
          f.v[sky::kFaultsLog2] = faults;
          f.v[sky::kInflightLog2] = 63;
          auto sync = sky::decide(f, false);
          auto async = sky::decide(f, true);
          ASSERT_TRUE(sync.has_value() && async.has_value());
          EXPECT_EQ(sync->config.mover, MoverKind::kCpuStream) << runnable << " " << active << " " << faults;
          EXPECT_EQ(async->config.mover, MoverKind::kThreads) << runnable << " " << active << " " << faults;
          EXPECT_EQ(sync->cached, pass == 1);
          EXPECT_EQ(async->cached, pass == 1);
        }
      }
    }
  }
}

TEST(SkyRocketDecide, NeverChoosesAnEngineThatCannotRunHere) {
  ModelGuard guard;
  // DSA predicted cheapest; on a machine without a DSA work queue the next
  // best must win (or no decision where nothing else is listed).
  const bool dsa_here = shared_mover(MoverKind::kDsa).ok();
  sky::install_model(std::make_shared<const sky::Model>(
      cheapest_is({{MoverKind::kDsa, Cache::kInject}, {MoverKind::kCpuStream, Cache::kAuto}}, MoverKind::kDsa)));
  auto d = sky::decide(features_of_size(1 << 22), false);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->config.mover, dsa_here ? MoverKind::kDsa : MoverKind::kCpuStream);
  sky::install_model(
      std::make_shared<const sky::Model>(cheapest_is({{MoverKind::kDsa, Cache::kInject}}, MoverKind::kDsa)));
  EXPECT_EQ(sky::decide(features_of_size(1 << 22), false).has_value(), dsa_here);
}

TEST(SkyRocketDecide, DecisionsStayValidWhileModelsAreReplaced) {
  ModelGuard guard;
  auto a = std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, MoverKind::kCpuStream));
  auto b = std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, MoverKind::kThreads));
  sky::install_model(a);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, decided{0};
  std::vector<std::thread> deciders;
  for (int t = 0; t < 3; ++t) {
    deciders.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        auto d = sky::decide(features_of_size(size_t{1} << (16 + (i + t) % 10)), false);
        // Either model's choice, never a torn one; no model at all is not
        // possible here (one is always installed).
        if (!d || (d->config.mover != MoverKind::kCpuStream && d->config.mover != MoverKind::kThreads)) ++bad;
        ++decided;
      }
    });
  }
  for (int i = 0; i < 200; ++i) sky::install_model(i % 2 ? a : b);
  while (decided.load() < 1000) std::this_thread::yield();
  stop = true;
  for (auto& t : deciders) t.join();
  EXPECT_EQ(bad.load(), 0);
  sky::install_model(b);
  auto d = sky::decide(features_of_size(1 << 20), false);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->config.mover, MoverKind::kThreads) << "the model installed last decides";
}

TEST(SkyRocketFeatures, ReuseCountsTheBytesCopiedSinceTheSourceWasLastTouched) {
  // Other threads of this test binary copy nothing now, so the counts are
  // exact. A byte's age is the bytes copied since its place in the last copy
  // that touched it: a repeated 1 MiB copy finds its bytes 0.5 MiB old on
  // average.
  constexpr double kMiB = 1 << 20;
  auto log2_1p = [](double x) { return std::log2(1.0 + x); };
  alignas(64) static std::byte a[256], b[256];
  sky::Features first = sky::observe(a, nullptr, 1 << 20);
  EXPECT_GE(first.v[sky::kReuseLog2], sky::kNeverCopied - 1);  // unless a hash collision kept an old entry of `a`
  sky::observe(b, nullptr, 3 << 20);                           // 3 MiB from elsewhere meanwhile
  sky::Features again = sky::observe(a, nullptr, 1 << 20);
  EXPECT_NEAR(again.v[sky::kReuseLog2], log2_1p(3.5 * kMiB), 1e-3);
  EXPECT_NEAR(again.v[sky::kSizeLog2], 20, 1e-6);
  sky::Features hot = sky::observe(a, nullptr, 1 << 20);
  EXPECT_NEAR(hot.v[sky::kReuseLog2], log2_1p(0.5 * kMiB), 1e-3) << "copied again at once";
  // Destinations count as touched too, and have a reuse of their own: `a`
  // was a source just now; `b`'s first MiB was copied 5 MiB ago.
  sky::Features into_a = sky::observe(b, a, 1 << 20);
  EXPECT_NEAR(into_a.v[sky::kDstReuseLog2], log2_1p(0.5 * kMiB), 1e-3);
  EXPECT_NEAR(into_a.v[sky::kReuseLog2], log2_1p(4.5 * kMiB), 1e-3);
  EXPECT_NEAR(sky::observe(a, nullptr, 1 << 20).v[sky::kReuseLog2], log2_1p(0.5 * kMiB), 1e-3) << "written last";
  // A copy mostly beyond what was last touched there is not recently touched.
  EXPECT_EQ(sky::observe(a, nullptr, 4 << 20).v[sky::kReuseLog2], sky::kNeverCopied);
  // One half covered is enough to count.
  EXPECT_NEAR(sky::observe(a, nullptr, 8 << 20).v[sky::kReuseLog2], log2_1p(2 * kMiB), 1e-3);
}

TEST(SkyRocketFeatures, CopiesInFlightAreSeenByOthers) {
  std::byte src[64];
  const sky::Features before = sky::observe(src, nullptr, 64);
  {
    sky::InFlight one(size_t{1} << 20), two(size_t{3} << 20);
    const sky::Features during = sky::observe(src, nullptr, 64);
    EXPECT_EQ(during.v[sky::kActive], before.v[sky::kActive] + 2);
    EXPECT_GE(during.v[sky::kInflightLog2], std::log2(1.0 + (4 << 20)) - 1e-3);
  }
  const sky::Features after = sky::observe(src, nullptr, 64);
  EXPECT_EQ(after.v[sky::kActive], before.v[sky::kActive]);
}

TEST(SkyRocketFeatures, TheSamplerSeesPageFaults) {
  // Faulting in fresh pages must raise the sampled fault rate. The sampler
  // wakes every 10 ms, but a loaded machine (sanitizers, parallel tests) may
  // not run it for a while: fault until it reports, for up to 20 s.
  std::byte src[64];
  (void)sky::observe(src, nullptr, 64);  // starts the sampler
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  float seen = 0;
  while (seen <= 10.0f && std::chrono::steady_clock::now() < until) {
    void* p = ::mmap(nullptr, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    std::memset(p, 1, 4 << 20);
    ::munmap(p, 4 << 20);
    seen = std::max(seen, sky::observe(src, nullptr, 64).v[sky::kFaultsLog2]);
  }
  EXPECT_GT(seen, 10.0f) << "over a thousand faults a second";
}

TEST(SkyRocketLog, KeepsTheNewestRowsOldestFirst) {
  (void)sky::drain_decision_log();
  const sky::Config c{MoverKind::kThreads, Cache::kBypass};
  for (size_t i = 0; i < sky::kLogCapacity + 10; ++i)
    sky::log_decision(features_of_size(1 << 20), c, static_cast<double>(i));
  auto rows = sky::drain_decision_log();
  ASSERT_EQ(rows.size(), sky::kLogCapacity);
  EXPECT_EQ(rows.front().us, 10);
  EXPECT_EQ(rows.back().us, static_cast<double>(sky::kLogCapacity + 9));
  EXPECT_EQ(rows.front().config, c);
  EXPECT_EQ(rows.front().situation, "online");
  EXPECT_TRUE(sky::drain_decision_log().empty());
}

TEST(SkyRocketTrace, RoundTripsAndNamesTheBadLine) {
  const std::string path = "/tmp/rocket-sky-trace-" + std::to_string(::getpid()) + ".csv";
  std::vector<sky::TraceRow> rows = {
      {"size=1M;copiers=1", features_of_size(1 << 20), {MoverKind::kCpu, Cache::kAuto}, 12.5},
      {"size=1M;copiers=1", features_of_size(1 << 20), {MoverKind::kThreads, Cache::kBypass}, 7.25}};
  ASSERT_TRUE(sky::write_trace(path, rows).ok());
  ASSERT_TRUE(sky::write_trace(path, {rows.data(), 1}, /*append=*/true).ok());
  auto back = sky::read_trace(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ((*back)[1].config, rows[1].config);
  EXPECT_EQ((*back)[1].us, 7.25);
  EXPECT_EQ((*back)[2].situation, rows[0].situation);
  EXPECT_NEAR((*back)[0].features.v[sky::kSizeLog2], 20, 1e-5);
  EXPECT_FALSE(sky::write_trace(path, std::vector<sky::TraceRow>{{"a,b", {}, {}, 1}}).ok()) << "a comma in a situation";

  for (const auto& [line, says] :
       std::vector<std::pair<std::string, std::string>>{{"s,20,48,48,0,0,0,1,cpu,auto", "11 fields"},
                                                        {"s,20,48,48,0,0,0,1,warp,auto,5", "warp"},
                                                        {"s,20,48,48,0,0,0,1,cpu,sideways,5", "sideways"},
                                                        {"s,nan,48,48,0,0,0,1,cpu,auto,5", "size_log2"},
                                                        {"s,20,48,48,0,0,-3,1,cpu,auto,5", "active"},
                                                        {"s,20,48,48,0,0,0,1,cpu,auto,-5", "us"},
                                                        {"s,20,48,48,0,0,0,1,cpu,auto,5x", "us"}}) {
    {
      std::ofstream f(path, std::ios::app);
      f << line << "\n";
    }
    auto r = sky::read_trace(path);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(path + ":5:"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().message();
    ASSERT_TRUE(sky::write_trace(path, rows).ok());  // back to the good file
    ASSERT_TRUE(sky::write_trace(path, {rows.data(), 1}, true).ok());
  }
  {
    std::ofstream f(path, std::ios::trunc);
    f << "a,b,c\n";
  }
  EXPECT_EQ(sky::read_trace(path).status().code(), StatusCode::kDataLoss) << "not a trace header";
  ::unlink(path.c_str());
}

// The runtime's kAuto takes the installed model's choice for copies in and
// out of the pools, and logs each with its measured time.
TEST(SkyRocketRuntime, AutoCopiesTakeTheLearnedChoice) {
  ModelGuard guard;
  TestServer srv;
  Client c = srv.connect();
  const auto data = pattern(size_t{2} << 20, 7);
  for (MoverKind want : {MoverKind::kCpuStream, MoverKind::kThreads}) {
    sky::install_model(std::make_shared<const sky::Model>(cheapest_is(kLocalConfigs, want)));
    (void)sky::drain_decision_log();
    auto r = c.call("echo", std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    std::vector<std::byte> out(data.size());
    ASSERT_TRUE(r->copy_to(out).ok());
    EXPECT_EQ(out, data);
    auto async = c.call_async("echo", std::span<const std::byte>(data));
    auto ar = async.get();
    ASSERT_TRUE(ar.ok()) << ar.status().to_string();
    EXPECT_EQ(std::memcmp(ar->data().data(), data.data(), data.size()), 0);
    auto rows = sky::drain_decision_log();
    // The copy in, the copy out, and the asynchronous copy in.
    ASSERT_EQ(rows.size(), 3u) << mover_kind_name(want);
    for (const auto& row : rows) {
      EXPECT_EQ(row.config.mover, want == MoverKind::kCpuStream && &row == &rows.back() ? MoverKind::kThreads : want)
          << "an asynchronous copy takes an asynchronous engine";
      EXPECT_GT(row.us, 0);
      EXPECT_NEAR(row.features.v[sky::kSizeLog2], 21, 1e-5);
    }
  }
  // A policy that names an engine is obeyed, model or not, and not logged.
  auto r = c.call("echo", std::span<const std::byte>(data), {.policy = {.mover = MoverKind::kCpu}});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(sky::drain_decision_log().empty());
  // Small copies stay inline: no decision.
  ASSERT_TRUE(c.call("echo", std::span<const std::byte>(data.data(), 4096)).ok());
  EXPECT_TRUE(sky::drain_decision_log().empty());
}

}  // namespace
}  // namespace rocket::testing
