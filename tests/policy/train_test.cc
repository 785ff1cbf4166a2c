// SkyRocket's trainer: XGBoost dumps to the runtime's model, cross-validated
// metrics against hand-computed ones, and training on traces whose best
// configuration is known by construction.
#include "train.h"

#include <gtest/gtest.h>

#include <cmath>

namespace rocket::tools {
namespace {

namespace sky = rocket::skyrocket;

sky::Features features(double size_log2, float active = 0) {
  sky::Features f;
  f.v[sky::kSizeLog2] = static_cast<float>(size_log2);
  f.v[sky::kReuseLog2] = sky::kNeverCopied;
  f.v[sky::kDstReuseLog2] = sky::kNeverCopied;
  f.v[sky::kActive] = active;
  return f;
}

const sky::Config kCpu{MoverKind::kCpu, Cache::kAuto};
const sky::Config kStream{MoverKind::kCpuStream, Cache::kAuto};
const sky::Config kThreads{MoverKind::kThreads, Cache::kBypass};

TEST(SkyRocketTrain, ConvertsAnXgboostDumpChildrenAfterParents) {
  // The shape XGBoost 1.7 dumps: children listed with node ids, "yes" the
  // branch taken when input < split_condition. Here "no" comes first in
  // the children and its id is lower than "yes"'s.
  const std::string tree = R"({"nodeid":0,"depth":0,"split":"f0","split_condition":20,"yes":2,"no":1,"missing":2,
    "children":[{"nodeid":1,"leaf":3.5},
                {"nodeid":2,"depth":1,"split":"f7","split_condition":2,"yes":3,"no":4,"missing":3,
                 "children":[{"nodeid":3,"leaf":1.25},{"nodeid":4,"leaf":-0.5}]}]})";
  auto m =
      model_from_dump(std::vector<std::string>{tree, R"({"nodeid":0,"leaf":0.25})"}, {kCpu, kStream, kThreads}, 1.0);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  // Input 7 is the configuration's mover: cpu (1) < 2 <= cpu_stream (2).
  static_assert(sky::kNumFeatures == 7, "the dumps below name the mover input f7");
  EXPECT_DOUBLE_EQ(m->predict_log(features(16), 0), 1.0 + 1.25 + 0.25);
  EXPECT_DOUBLE_EQ(m->predict_log(features(16), 1), 1.0 - 0.5 + 0.25);
  EXPECT_DOUBLE_EQ(m->predict_log(features(24), 0), 1.0 + 3.5 + 0.25);
}

TEST(SkyRocketTrain, RefusesMalformedDumps) {
  for (const std::string& bad :
       {std::string("not json"), std::string(R"({"nodeid":0})"),
        std::string(R"({"nodeid":0,"split":"x0","split_condition":1,"yes":1,"no":2,"children":[]})"),
        std::string(R"({"nodeid":0,"split":"f0","split_condition":1,"yes":1,"no":2,
                                   "children":[{"nodeid":1,"leaf":1}]})"),
        std::string(R"({"nodeid":0,"split":"f99","split_condition":1,"yes":1,"no":2,
                                   "children":[{"nodeid":1,"leaf":1},{"nodeid":2,"leaf":2}]})"),
        std::string(R"({"nodeid":0,"split":"f99999999999999999999999","split_condition":1,"yes":1,"no":2,
                                   "children":[{"nodeid":1,"leaf":1},{"nodeid":2,"leaf":2}]})")}) {
    EXPECT_FALSE(model_from_dump(std::vector<std::string>{bad}, {kCpu}, 0).ok()) << bad;
  }
}

// Two situations, three configurations, medians known.
std::vector<sky::TraceRow> two_situations() {
  std::vector<sky::TraceRow> rows;
  auto add = [&](const char* sit, double size_log2, const sky::Config& c, std::initializer_list<double> us) {
    for (double u : us) rows.push_back({sit, features(size_log2), c, u});
  };
  add("small", 18, kCpu, {10, 11, 12});
  add("small", 18, kStream, {20, 21, 22});
  add("small", 18, kThreads, {30, 31, 32});
  add("large", 24, kCpu, {400, 400, 400});
  add("large", 24, kStream, {300, 310, 320});
  add("large", 24, kThreads, {100, 100, 100});
  return rows;
}

TEST(SkyRocketTrain, MetricsFollowTheChoicesMade) {
  const auto rows = two_situations();
  // A model that always predicts cpu_stream cheapest (mover input 7 < 2.5 and
  // >= 1.5): right nowhere; regret 21/11 - 1 in "small", 310/100 - 1 in "large".
  const std::string tree = R"({"nodeid":0,"split":"f7","split_condition":1.5,"yes":1,"no":2,
    "children":[{"nodeid":1,"leaf":9},{"nodeid":2,"split":"f7","split_condition":2.5,"yes":3,"no":4,
    "children":[{"nodeid":3,"leaf":1},{"nodeid":4,"leaf":9}]}]})";
  auto m = model_from_dump(std::vector<std::string>{tree}, {kCpu, kStream, kThreads}, 0);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  Evaluation e;
  evaluate(*m, rows, e);
  ASSERT_EQ(e.choices.size(), 2u);
  const auto mt = metrics(e);
  EXPECT_EQ(mt.situations, 2u);
  EXPECT_EQ(mt.optimal_accuracy, 0);
  EXPECT_EQ(mt.near_optimal, 0);
  EXPECT_NEAR(mt.mean_regret, ((21.0 / 11 - 1) + (310.0 / 100 - 1)) / 2, 1e-9);
  EXPECT_EQ(mt.macro_f1, 0);
  // Fixed rules on the same rows.
  EXPECT_NEAR(fixed_regret(kThreads, rows), ((31.0 / 11 - 1) + 0) / 2, 1e-9);
  EXPECT_NEAR(fixed_regret(kCpu, rows), (0 + (400.0 / 100 - 1)) / 2, 1e-9);
  // Decision-log rows train but are no situation to choose in.
  auto with_log = rows;
  with_log.push_back({"online", features(18), kThreads, 5});
  with_log.push_back({"online", features(24), kCpu, 5000});
  Evaluation e2;
  evaluate(*m, with_log, e2);
  EXPECT_EQ(e2.choices.size(), 2u);
  EXPECT_EQ(e2.y_log.size(), with_log.size());
  EXPECT_EQ(fixed_regret(kThreads, with_log), fixed_regret(kThreads, rows));
  // Folds deal sorted situation names in turn: "large" then "small".
  const auto folds = situation_folds(rows, 2);
  EXPECT_EQ(folds.front(), 1);  // "small"
  EXPECT_EQ(folds.back(), 0);   // "large"
}

#ifdef ROCKET_HAVE_XGBOOST
// Traces from a known law: cpu costs 1 us per 4 KiB alone, threads half
// that plus 30 us of hand-off, and with another copy in flight (active 1)
// threads lose their advantage (the cores are taken). The trainer must find
// the crossover in situations it did not see.
std::vector<sky::TraceRow> law_traces() {
  std::vector<sky::TraceRow> rows;
  uint64_t noise = 12345;
  for (int size_log2 = 14; size_log2 <= 26; ++size_log2) {
    for (float active : {0.0f, 1.0f}) {
      const double kib = std::exp2(size_log2 - 10);
      const double cpu = kib / 4 + 1;
      const double threads = active == 0 ? kib / 8 + 30 : kib / 3 + 30;
      const std::string sit =
          "size=" + std::to_string(size_log2) + ";active=" + std::to_string(static_cast<int>(active));
      for (int rep = 0; rep < 12; ++rep) {
        noise = noise * 6364136223846793005ull + 1442695040888963407ull;
        const double jitter = 1 + 0.02 * (static_cast<double>(noise >> 40) / 16777216.0 - 0.5);
        rows.push_back({sit, features(size_log2, active), kCpu, cpu * jitter});
        rows.push_back({sit, features(size_log2, active), kThreads, threads * jitter});
      }
    }
  }
  return rows;
}

TEST(SkyRocketTrain, LearnsAKnownCrossoverAndExportsWhatXgboostPredicts) {
  const auto rows = law_traces();
  TrainOptions o;
  o.threads = 1;
  auto t = train_model(rows, o);
  ASSERT_TRUE(t.ok()) << t.status().to_string();  // includes the export check on every row
  const auto& m = t->model.metrics;
  EXPECT_EQ(m.situations, 26u);
  EXPECT_EQ(m.folds, 5u);
  EXPECT_GT(m.r2, 0.9);
  // Situations held out are between sizes it saw: only near the crossover
  // may it err, and then by little.
  EXPECT_GE(m.near_optimal, 0.85);
  EXPECT_LT(m.mean_regret, 0.1);
  // The exported model, decided on, takes threads for large lone copies
  // and cpu for small ones and for large ones under contention.
  const auto& cfg = t->model.configs();
  auto pick = [&](double size_log2, float active) {
    const auto f = sky::quantised(features(size_log2, active));
    return t->model.predict_log(f, 0) < t->model.predict_log(f, 1) ? cfg[0] : cfg[1];
  };
  EXPECT_EQ(pick(24, 0), kThreads);
  EXPECT_EQ(pick(15, 0), kCpu);
  EXPECT_EQ(pick(24, 1), kCpu);
  // The model file written and read back predicts the same.
  auto back = sky::Model::parse(t->model.to_json());
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->predict_log(features(22), 1), t->model.predict_log(features(22), 1));
}

TEST(SkyRocketTrain, RefusesWhatCannotBeTrained) {
  EXPECT_EQ(train_model({}, {}).status().code(), StatusCode::kInvalidArgument);
  TrainOptions bad;
  bad.folds = 1;
  EXPECT_EQ(train_model(law_traces(), bad).status().code(), StatusCode::kInvalidArgument);
}
#endif

}  // namespace
}  // namespace rocket::tools
