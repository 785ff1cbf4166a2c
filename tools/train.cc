#include "train.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#ifdef ROCKET_HAVE_XGBOOST
#include <xgboost/c_api.h>
#endif

namespace rocket::tools {
namespace {

namespace sky = rocket::skyrocket;
using json = nlohmann::json;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 != 0 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// One situation's configurations: median time and median features of each.
struct Measured {
  std::map<size_t, double> us;  // by config index in the model
  std::map<size_t, sky::Features> features;
};

// Groups `rows` by situation, configurations indexed as in `configs`; rows of
// configurations the model does not know are left out, and so are rows of
// the decision log (situation "online"): they are many situations under one
// name, each with only the configuration chosen in it.
std::map<std::string, Measured> by_situation(std::span<const sky::TraceRow> rows,
                                             const std::vector<sky::Config>& configs) {
  std::map<std::string, std::map<size_t, std::vector<const sky::TraceRow*>>> groups;
  for (const auto& r : rows) {
    if (r.situation == "online") continue;
    auto it = std::find(configs.begin(), configs.end(), r.config);
    if (it != configs.end()) groups[r.situation][static_cast<size_t>(it - configs.begin())].push_back(&r);
  }
  std::map<std::string, Measured> out;
  for (auto& [sit, by_config] : groups) {
    Measured& m = out[sit];
    for (auto& [idx, rs] : by_config) {
      std::vector<double> us;
      for (const auto* r : rs) us.push_back(r->us);
      m.us[idx] = median(us);
      sky::Features f;
      for (size_t k = 0; k < sky::kNumFeatures; ++k) {
        std::vector<double> v;
        for (const auto* r : rs) v.push_back(r->features.v[k]);
        f.v[k] = static_cast<float>(median(v));
      }
      m.features[idx] = f;
    }
  }
  return out;
}

size_t measured_best(const Measured& m) {
  return std::min_element(m.us.begin(), m.us.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
}

// The configuration the model picks in a situation, among those measured
// there, from the features as decisions see them (quantised).
size_t predicted_best(const sky::Model& model, const Measured& m) {
  size_t best = m.us.begin()->first;
  double best_log = 0;
  bool first = true;
  for (const auto& [idx, us] : m.us) {
    double l = model.predict_log(sky::quantised(m.features.at(idx)), idx);
    if (first || l < best_log) {
      best = idx;
      best_log = l;
      first = false;
    }
  }
  return best;
}

// Nodes of one dumped tree, children after their parents (pre-order).
Status flatten(const json& node, std::vector<sky::Model::Node>& out, int depth) {
  if (depth > 64) return invalid_argument("tree deeper than 64");
  if (!node.is_object()) return invalid_argument("a tree node is not an object");
  if (node.contains("leaf")) {
    if (!node["leaf"].is_number()) return invalid_argument("a leaf value is not a number");
    out.push_back({sky::Model::kLeaf, node["leaf"].get<float>(), 0, 0});
    return ok_status();
  }
  if (!node.contains("split") || !node["split"].is_string() || !node.contains("split_condition") ||
      !node["split_condition"].is_number() || !node.contains("yes") || !node.contains("no") ||
      !node.contains("children") || !node["children"].is_array()) {
    return invalid_argument("a split node lacks split, split_condition, yes, no or children");
  }
  const std::string split = node["split"].get<std::string>();
  // At most three digits: the column is checked against the inputs later,
  // and std::stoul must not see a number it cannot hold.
  if (split.size() < 2 || split.size() > 4 || split[0] != 'f' ||
      split.find_first_not_of("0123456789", 1) != std::string::npos) {
    return invalid_argument("split \"" + split + "\" is not f<column>");
  }
  const json* yes = nullptr;
  const json* no = nullptr;
  for (const auto& c : node["children"]) {
    if (c.contains("nodeid") && c["nodeid"] == node["yes"]) yes = &c;
    if (c.contains("nodeid") && c["nodeid"] == node["no"]) no = &c;
  }
  if (yes == nullptr || no == nullptr) return invalid_argument("a split's children are not among its children");
  const size_t self = out.size();
  out.push_back({static_cast<uint32_t>(std::stoul(split.substr(1))), node["split_condition"].get<float>(), 0, 0});
  out[self].left = static_cast<uint32_t>(out.size());
  ROCKET_RETURN_IF_ERROR(flatten(*yes, out, depth + 1));
  out[self].right = static_cast<uint32_t>(out.size());
  return flatten(*no, out, depth + 1);
}

#ifdef ROCKET_HAVE_XGBOOST
Status xgb(int rc, const char* what) {
  if (rc == 0) return ok_status();
  return internal_error(std::string("xgboost ") + what + ": " + XGBGetLastError());
}

struct DMatrix {
  DMatrixHandle h = nullptr;
  ~DMatrix() {
    if (h != nullptr) XGDMatrixFree(h);
  }
};
struct Booster {
  BoosterHandle h = nullptr;
  ~Booster() {
    if (h != nullptr) XGBoosterFree(h);
  }
};
#endif

}  // namespace

Result<sky::Model> model_from_dump(std::span<const std::string> trees_json, std::vector<sky::Config> configs,
                                   double base_score) {
  std::vector<std::vector<sky::Model::Node>> trees;
  for (size_t t = 0; t < trees_json.size(); ++t) {
    json j = json::parse(trees_json[t], nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return invalid_argument("tree " + std::to_string(t) + " of the dump is not JSON");
    std::vector<sky::Model::Node> nodes;
    Status st = flatten(j, nodes, 0);
    if (!st.ok()) return invalid_argument("tree " + std::to_string(t) + ": " + st.message());
    trees.push_back(std::move(nodes));
  }
  return sky::Model::make(std::move(configs), base_score, std::move(trees));
}

std::vector<int> situation_folds(std::span<const sky::TraceRow> rows, int folds) {
  std::set<std::string> names;
  for (const auto& r : rows) names.insert(r.situation);
  std::map<std::string, int> fold;
  int i = 0;
  for (const auto& n : names) fold[n] = folds > 0 ? i++ % folds : 0;
  std::vector<int> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(fold[r.situation]);
  return out;
}

void evaluate(const sky::Model& model, std::span<const sky::TraceRow> rows, Evaluation& into) {
  const auto& configs = model.configs();
  for (const auto& r : rows) {
    auto it = std::find(configs.begin(), configs.end(), r.config);
    if (it == configs.end()) continue;
    const double y = std::log1p(r.us);
    const double e = model.predict_log(r.features, static_cast<size_t>(it - configs.begin())) - y;
    into.sse_log += e * e;
    into.y_log.push_back(y);
  }
  for (const auto& [name, ms] : by_situation(rows, configs)) {
    if (ms.us.size() < 2) continue;  // nothing to choose between
    const size_t best = measured_best(ms), pick = predicted_best(model, ms);
    into.choices.push_back({name, configs[best], configs[pick], ms.us.at(best), ms.us.at(pick)});
  }
}

sky::Model::Metrics metrics(const Evaluation& e) {
  sky::Model::Metrics m;
  if (!e.y_log.empty()) {
    const double n = static_cast<double>(e.y_log.size());
    m.rmse_log = std::sqrt(e.sse_log / n);
    double mean = 0, sst = 0;
    for (double y : e.y_log) mean += y / n;
    for (double y : e.y_log) sst += (y - mean) * (y - mean);
    m.r2 = sst > 0 ? 1 - e.sse_log / sst : 0;
  }
  m.situations = e.choices.size();
  if (e.choices.empty()) return m;
  std::vector<double> regrets;
  std::map<std::string, size_t> tp, fp, fn;
  size_t right = 0, near = 0;
  for (const auto& c : e.choices) {
    const std::string best = sky::config_name(c.best), pick = sky::config_name(c.chosen);
    if (c.best == c.chosen) {
      ++right;
      ++tp[best];
    } else {
      ++fp[pick];
      ++fn[best];
    }
    if (c.regret() <= 0.05) ++near;
    regrets.push_back(c.regret());
  }
  const double n = static_cast<double>(regrets.size());
  m.optimal_accuracy = static_cast<double>(right) / n;
  m.near_optimal = static_cast<double>(near) / n;
  for (double r : regrets) m.mean_regret += r / n;
  std::sort(regrets.begin(), regrets.end());
  m.p90_regret = regrets[std::min(regrets.size() - 1, regrets.size() * 9 / 10)];
  // Macro-F1 over the configurations that were best or chosen somewhere.
  std::set<std::string> classes;
  for (auto* mp : {&tp, &fp, &fn}) {
    for (auto& [k, v] : *mp) classes.insert(k);
  }
  double f1 = 0;
  for (const auto& c : classes) {
    const double t = static_cast<double>(tp[c]),
                 denom = 2 * t + static_cast<double>(fp[c]) + static_cast<double>(fn[c]);
    f1 += denom > 0 ? 2 * t / denom : 0;
  }
  m.macro_f1 = f1 / static_cast<double>(classes.size());
  return m;
}

namespace {

// Every configuration of the rows, in order of first appearance.
std::vector<sky::Config> configs_of(std::span<const sky::TraceRow> rows) {
  std::vector<sky::Config> configs;
  for (const auto& r : rows) {
    if (std::find(configs.begin(), configs.end(), r.config) == configs.end()) configs.push_back(r.config);
  }
  return configs;
}

// Mean regret of a rule that picks a configuration index per situation.
template <typename Pick>
double rule_regret(std::span<const sky::TraceRow> rows, Pick&& pick) {
  const auto configs = configs_of(rows);
  double total = 0;
  size_t n = 0;
  for (const auto& [name, ms] : by_situation(rows, configs)) {
    if (ms.us.size() < 2) continue;
    const std::optional<size_t> p = pick(configs, ms);
    if (!p || ms.us.count(*p) == 0) continue;
    total += ms.us.at(*p) / std::max(ms.us.at(measured_best(ms)), 1e-3) - 1;
    ++n;
  }
  return n > 0 ? total / static_cast<double>(n) : 0;
}

}  // namespace

double fixed_regret(const sky::Config& c, std::span<const sky::TraceRow> rows) {
  return rule_regret(rows, [&](const std::vector<sky::Config>& configs, const Measured&) -> std::optional<size_t> {
    auto it = std::find(configs.begin(), configs.end(), c);
    if (it == configs.end()) return std::nullopt;
    return static_cast<size_t>(it - configs.begin());
  });
}

double cost_model_regret(std::span<const sky::TraceRow> rows) {
  return rule_regret(rows, [](const std::vector<sky::Config>& configs, const Measured& ms) -> std::optional<size_t> {
    std::optional<size_t> best;
    double best_us = 0;
    for (const auto& [idx, us] : ms.us) {
      auto m = shared_mover(configs[idx].mover);
      if (!m.ok()) continue;
      const auto bytes =
          static_cast<size_t>(std::exp2(static_cast<double>(ms.features.at(idx).v[sky::kSizeLog2])) + 0.5);
      const double predicted = (*m)->execute_cost(configs[idx].cache).predict_us(bytes);
      if (!best || predicted < best_us) {
        best = idx;
        best_us = predicted;
      }
    }
    return best;
  });
}

std::vector<sky::Model::ModeHint> mode_hints(const sky::Model& model, size_t min_bytes, size_t max_bytes) {
  std::vector<sky::Model::ModeHint> out;
  const auto& configs = model.configs();
  // Per configuration: -1 where its engine cannot run here, else whether it
  // is asynchronous.
  std::vector<int> async_engine;
  for (const auto& c : configs) {
    auto m = shared_mover(c.mover);
    async_engine.push_back(m.ok() ? ((*m)->capabilities().async ? 1 : 0) : -1);
  }
  for (size_t size = std::max<size_t>(min_bytes, 1); size <= max_bytes; size *= 2) {
    sky::Features f;
    f.v[sky::kSizeLog2] = static_cast<float>(std::log2(static_cast<double>(size)));
    f.v[sky::kReuseLog2] = sky::kNeverCopied;
    f.v[sky::kDstReuseLog2] = sky::kNeverCopied;
    f = sky::quantised(f);
    double sync = -1, async = -1;
    for (size_t i = 0; i < configs.size(); ++i) {
      if (async_engine[i] < 0) continue;
      const double us = model.predict_us(f, i);
      if (sync < 0 || us < sync) sync = us;
      if (async_engine[i] == 1 && (async < 0 || us < async)) async = us;
    }
    if (sync < 0) continue;
    std::string mode = "sync";
    if (async >= 0 && sync >= 50 && async <= 1.25 * sync) mode = async >= 1000 ? "pipelined" : "async";
    if (out.empty() || out.back().mode != mode) out.push_back({size, mode});
    if (size > SIZE_MAX / 2) break;
  }
  return out;
}

namespace {

#ifdef ROCKET_HAVE_XGBOOST
// One fit on `rows`, exported and checked against XGBoost's predictions.
Result<sky::Model> fit(std::span<const sky::TraceRow> rows, const std::vector<sky::Config>& configs,
                       const TrainOptions& o) {
  std::vector<float> x, y;
  x.reserve(rows.size() * sky::Model::kInputs);
  double ysum = 0;
  for (const auto& r : rows) {
    std::array<float, sky::Model::kInputs> in{};
    std::copy(r.features.v.begin(), r.features.v.end(), in.begin());
    in[sky::kNumFeatures] = static_cast<float>(r.config.mover);
    in[sky::kNumFeatures + 1] = static_cast<float>(r.config.cache);
    x.insert(x.end(), in.begin(), in.end());
    y.push_back(static_cast<float>(std::log1p(r.us)));
    ysum += y.back();
  }
  const double base = ysum / static_cast<double>(y.size());
  DMatrix train;
  ROCKET_RETURN_IF_ERROR(xgb(XGDMatrixCreateFromMat(x.data(), y.size(), sky::Model::kInputs, NAN, &train.h), "matrix"));
  ROCKET_RETURN_IF_ERROR(xgb(XGDMatrixSetFloatInfo(train.h, "label", y.data(), y.size()), "labels"));
  Booster b;
  ROCKET_RETURN_IF_ERROR(xgb(XGBoosterCreate(&train.h, 1, &b.h), "booster"));
  const std::pair<const char*, std::string> params[] = {{"objective", "reg:squarederror"},
                                                        {"max_depth", std::to_string(o.depth)},
                                                        {"eta", std::to_string(o.eta)},
                                                        {"base_score", std::to_string(base)},
                                                        {"tree_method", "exact"},
                                                        {"seed", "7"},
                                                        {"verbosity", "0"},
                                                        {"colsample_bynode", std::to_string(o.colsample)}};
  for (const auto& [k, v] : params) ROCKET_RETURN_IF_ERROR(xgb(XGBoosterSetParam(b.h, k, v.c_str()), k));
  if (o.threads > 0)
    ROCKET_RETURN_IF_ERROR(xgb(XGBoosterSetParam(b.h, "nthread", std::to_string(o.threads).c_str()), "nthread"));
  for (int i = 0; i < o.trees; ++i) ROCKET_RETURN_IF_ERROR(xgb(XGBoosterUpdateOneIter(b.h, i, train.h), "training"));

  bst_ulong n = 0;
  const char** dump = nullptr;
  ROCKET_RETURN_IF_ERROR(xgb(XGBoosterDumpModelEx(b.h, "", 0, "json", &n, &dump), "dump"));
  std::vector<std::string> trees(dump, dump + n);
  // base_score is parsed back from its text, as XGBoost itself did.
  ROCKET_ASSIGN_OR_RETURN(sky::Model model, model_from_dump(trees, configs, std::stod(std::to_string(base))));

  // The export must predict what XGBoost predicts, on every row.
  bst_ulong np = 0;
  const float* pred = nullptr;
  ROCKET_RETURN_IF_ERROR(xgb(XGBoosterPredict(b.h, train.h, 1, 0, 0, &np, &pred), "predict"));
  if (np != rows.size())
    return internal_error("xgboost predicted " + std::to_string(np) + " of " + std::to_string(rows.size()) + " rows");
  double worst = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::span<const float, sky::Model::kInputs> row(x.data() + i * sky::Model::kInputs, sky::Model::kInputs);
    worst = std::max(worst, std::fabs(model.predict_row(row) - static_cast<double>(pred[i])));
  }
  if (worst > 1e-3) {
    return internal_error("the exported trees predict up to " + std::to_string(worst) + " away from XGBoost's own");
  }
  return model;
}
#endif

}  // namespace

Result<Trained> train_model(std::span<const sky::TraceRow> rows, const TrainOptions& o) {
#ifndef ROCKET_HAVE_XGBOOST
  (void)rows;
  (void)o;
  return unimplemented("this build has no libxgboost (install libxgboost-dev and rebuild)");
#else
  if (rows.empty()) return invalid_argument("no trace rows to train on");
  if (o.trees < 1 || o.trees > 4096 || o.depth < 1 || o.depth > 16 || !(o.eta > 0 && o.eta <= 1) || o.folds < 2 ||
      o.folds > 100) {
    return invalid_argument("trees must be 1..4096, depth 1..16, eta in (0, 1] and folds 2..100");
  }
  const std::vector<sky::Config> configs = configs_of(rows);
  const std::vector<int> fold = situation_folds(rows, o.folds);
  Trained out;
  for (int k = 0; k < o.folds; ++k) {
    std::vector<sky::TraceRow> train, test;
    for (size_t i = 0; i < rows.size(); ++i) (fold[i] == k ? test : train).push_back(rows[i]);
    if (test.empty() || train.empty()) continue;  // fewer situations than folds
    ROCKET_ASSIGN_OR_RETURN(sky::Model m, fit(train, configs, o));
    evaluate(m, test, out.cross_validated);
  }
  ROCKET_ASSIGN_OR_RETURN(out.model, fit(rows, configs, o));
  out.model.metrics = metrics(out.cross_validated);
  out.model.metrics.train_rows = rows.size();
  out.model.metrics.folds = static_cast<size_t>(o.folds);
  size_t lo = SIZE_MAX, hi = 0;
  for (const auto& r : rows) {
    const auto s = static_cast<size_t>(std::exp2(static_cast<double>(r.features.v[sky::kSizeLog2])) + 0.5);
    lo = std::min(lo, s);
    hi = std::max(hi, s);
  }
  out.model.mode_hints = mode_hints(out.model, lo, hi);
  return out;
#endif
}

}  // namespace rocket::tools
