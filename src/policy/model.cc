// SkyRocket's model: flattened regression trees, their file format and the
// checks a model file must pass before any walk of its trees.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "rocket/policy/skyrocket.h"
#include "sys/files.h"

namespace rocket::skyrocket {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "rocket-skyrocket-model";
constexpr int kVersion = 1;
// Bounds a model file must respect: what `rocket train` writes is far below.
constexpr size_t kMaxConfigs = 64;
constexpr size_t kMaxTrees = 4096;
constexpr size_t kMaxNodes = size_t{1} << 22;
constexpr uint32_t kMaxDepth = 64;

bool candidate_mover(MoverKind k) {
  // The engines that copy between two buffers of this process; `kernel`
  // copies from another process and kAuto is no engine.
  return k == MoverKind::kCpu || k == MoverKind::kCpuStream || k == MoverKind::kThreads || k == MoverKind::kDsa ||
         k == MoverKind::kCuda;
}

// The model's inputs, in order: its file names them so that a model of
// other features is refused rather than read from the wrong columns.
json input_names() {
  json inputs = json::array();
  for (size_t i = 0; i < kNumFeatures; ++i) inputs.push_back(feature_name(static_cast<Feature>(i)));
  inputs.push_back("mover");
  inputs.push_back("cache");
  return inputs;
}

}  // namespace

Result<Model> Model::make(std::vector<Config> configs, double base_score, std::vector<std::vector<Node>> trees) {
  if (configs.empty() || configs.size() > kMaxConfigs) {
    return invalid_argument("a model needs 1 to " + std::to_string(kMaxConfigs) + " configurations, not " +
                            std::to_string(configs.size()));
  }
  for (size_t i = 0; i < configs.size(); ++i) {
    if (!candidate_mover(configs[i].mover)) {
      return invalid_argument("configuration " + config_name(configs[i]) +
                              " names no engine that copies within a process");
    }
    for (size_t j = 0; j < i; ++j) {
      if (configs[i] == configs[j])
        return invalid_argument("configuration " + config_name(configs[i]) + " is listed twice");
    }
  }
  if (!std::isfinite(base_score)) return invalid_argument("the base score is not finite");
  if (trees.empty() || trees.size() > kMaxTrees) return invalid_argument("a model needs 1 to 4096 trees");
  Model m;
  m.configs_ = std::move(configs);
  m.base_score_ = base_score;
  for (size_t t = 0; t < trees.size(); ++t) {
    const auto& nodes = trees[t];
    auto bad = [&](size_t i, const std::string& why) {
      return invalid_argument("tree " + std::to_string(t) + " node " + std::to_string(i) + ": " + why);
    };
    if (nodes.empty()) return invalid_argument("tree " + std::to_string(t) + " has no nodes");
    if (m.nodes_.size() + nodes.size() > kMaxNodes) return invalid_argument("the model has too many nodes");
    const auto start = static_cast<uint32_t>(m.nodes_.size());
    m.tree_start_.push_back(start);
    std::vector<uint32_t> depth(nodes.size(), 0);
    for (size_t i = 0; i < nodes.size(); ++i) {
      Node n = nodes[i];
      if (!std::isfinite(n.value)) return bad(i, "value is not finite");
      if (n.feature != kLeaf) {
        if (n.feature >= kInputs) return bad(i, "splits on input " + std::to_string(n.feature) + ", beyond the inputs");
        // Children after their parent: every walk moves forward and ends.
        if (n.left <= i || n.right <= i || n.left >= nodes.size() || n.right >= nodes.size()) {
          return bad(i, "a child index is not after the node and inside the tree");
        }
        // Bounds what one prediction may walk.
        if (depth[i] >= kMaxDepth) return bad(i, "deeper than " + std::to_string(kMaxDepth));
        depth[n.left] = std::max(depth[n.left], depth[i] + 1);
        depth[n.right] = std::max(depth[n.right], depth[i] + 1);
        n.left += start;
        n.right += start;
      }
      m.nodes_.push_back(n);
    }
  }
  return m;
}

double Model::predict_row(std::span<const float, kInputs> row) const noexcept {
  double sum = base_score_;
  const Node* nodes = nodes_.data();
  for (uint32_t root : tree_start_) {
    const Node* n = nodes + root;
    while (n->feature != kLeaf) n = nodes + (row[n->feature] < n->value ? n->left : n->right);
    sum += n->value;
  }
  return sum;
}

double Model::predict_log(const Features& f, size_t config_index) const noexcept {
  std::array<float, kInputs> row{};
  std::copy(f.v.begin(), f.v.end(), row.begin());
  const Config& c = configs_[config_index];
  row[kNumFeatures] = static_cast<float>(c.mover);
  row[kNumFeatures + 1] = static_cast<float>(c.cache);
  return predict_row(row);
}

double Model::predict_us(const Features& f, size_t config_index) const noexcept {
  return std::expm1(std::max(0.0, predict_log(f, config_index)));
}

std::string Model::to_json() const {
  json cfgs = json::array();
  for (const Config& c : configs_)
    cfgs.push_back({{"mover", mover_kind_name(c.mover)}, {"cache", cache_name(c.cache)}});
  json trees = json::array();
  for (size_t t = 0; t < tree_start_.size(); ++t) {
    const uint32_t start = tree_start_[t];
    const uint32_t end = t + 1 < tree_start_.size() ? tree_start_[t + 1] : static_cast<uint32_t>(nodes_.size());
    json nodes = json::array();
    for (uint32_t i = start; i < end; ++i) {
      const Node& n = nodes_[i];
      if (n.feature == kLeaf) {
        nodes.push_back(json::array({n.value}));
      } else {
        nodes.push_back(json::array({n.feature, n.value, n.left - start, n.right - start}));
      }
    }
    trees.push_back(std::move(nodes));
  }
  const json inputs = input_names();
  json hints = json::array();
  for (const ModeHint& h : mode_hints) hints.push_back({{"min_bytes", h.min_bytes}, {"mode", h.mode}});
  json j{{"format", kFormat},
         {"version", kVersion},
         {"machine", machine},
         {"target", "log(1 + microseconds)"},
         {"inputs", inputs},
         {"configs", cfgs},
         {"base_score", base_score_},
         {"mode_hint", hints},
         {"metrics",
          {{"rmse_log", metrics.rmse_log},
           {"r2", metrics.r2},
           {"optimal_accuracy", metrics.optimal_accuracy},
           {"near_optimal", metrics.near_optimal},
           {"macro_f1", metrics.macro_f1},
           {"mean_regret", metrics.mean_regret},
           {"p90_regret", metrics.p90_regret},
           {"train_rows", metrics.train_rows},
           {"situations", metrics.situations},
           {"folds", metrics.folds}}},
         {"trees", trees}};
  return j.dump();
}

Result<Model> Model::parse(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [](const std::string& why) { return data_loss("SkyRocket model: " + why); };
  if (j.is_discarded() || !j.is_object()) return bad("not JSON");
  if (!j.contains("format") || j["format"] != kFormat)
    return bad("not a model file (no \"format\": \"" + std::string(kFormat) + "\")");
  if (!j.contains("version") || j["version"] != kVersion) {
    return bad("version " + (j.contains("version") ? j["version"].dump() : std::string("missing")) +
               ", this build reads " + std::to_string(kVersion) + " (retrain with `rocket train`)");
  }
  // The inputs must be ours, in our order: a model of other features would
  // predict from the wrong columns.
  const json inputs = input_names();
  if (!j.contains("inputs") || j["inputs"] != inputs) return bad("its inputs are not " + inputs.dump());
  if (!j.contains("configs") || !j["configs"].is_array()) return bad("no \"configs\" array");
  std::vector<Config> configs;
  for (const auto& c : j["configs"]) {
    if (!c.is_object() || !c.contains("mover") || !c["mover"].is_string() || !c.contains("cache") ||
        !c["cache"].is_string()) {
      return bad("a configuration is not {\"mover\": ..., \"cache\": ...}");
    }
    auto mover = parse_mover_kind(c["mover"].get<std::string>());
    auto cache = parse_cache(c["cache"].get<std::string>());
    if (!mover.ok()) return bad(mover.status().message());
    if (!cache.ok()) return bad(cache.status().message());
    configs.push_back({*mover, *cache});
  }
  if (!j.contains("base_score") || !j["base_score"].is_number()) return bad("no numeric \"base_score\"");
  if (!j.contains("trees") || !j["trees"].is_array()) return bad("no \"trees\" array");
  std::vector<std::vector<Node>> trees;
  for (const auto& t : j["trees"]) {
    if (!t.is_array()) return bad("a tree is not an array of nodes");
    std::vector<Node> nodes;
    for (const auto& n : t) {
      if (n.is_array() && n.size() == 1 && n[0].is_number()) {
        nodes.push_back({kLeaf, n[0].get<float>(), 0, 0});
      } else if (n.is_array() && n.size() == 4 && n[0].is_number_unsigned() && n[1].is_number() &&
                 n[2].is_number_unsigned() && n[3].is_number_unsigned() && n[0].get<uint64_t>() < kInputs &&
                 n[2].get<uint64_t>() < kMaxNodes && n[3].get<uint64_t>() < kMaxNodes) {
        nodes.push_back({n[0].get<uint32_t>(), n[1].get<float>(), n[2].get<uint32_t>(), n[3].get<uint32_t>()});
      } else {
        return bad("a node is neither [leaf value] nor [input, threshold, left, right] in range: " +
                   n.dump().substr(0, 80));
      }
    }
    trees.push_back(std::move(nodes));
  }
  auto m = make(std::move(configs), j["base_score"].get<double>(), std::move(trees));
  if (!m.ok()) return bad(m.status().message());
  if (j.contains("machine") && j["machine"].is_string()) m->machine = j["machine"].get<std::string>();
  if (j.contains("mode_hint") && j["mode_hint"].is_array()) {
    for (const auto& h : j["mode_hint"]) {
      if (!h.is_object() || !h.contains("min_bytes") || !h["min_bytes"].is_number_unsigned() || !h.contains("mode") ||
          !h["mode"].is_string()) {
        return bad("a mode hint is not {\"min_bytes\": N, \"mode\": ...}");
      }
      std::string mode = h["mode"].get<std::string>();
      if (mode != "sync" && mode != "async" && mode != "pipelined") return bad("mode hint \"" + mode + "\" is no mode");
      m->mode_hints.push_back({h["min_bytes"].get<uint64_t>(), mode});
    }
  }
  if (j.contains("metrics") && j["metrics"].is_object()) {
    const auto& mj = j["metrics"];
    auto num = [&](const char* k) { return mj.contains(k) && mj[k].is_number() ? mj[k].get<double>() : 0.0; };
    auto count = [&](const char* k) { return mj.contains(k) && mj[k].is_number_unsigned() ? mj[k].get<size_t>() : 0; };
    m->metrics = {num("rmse_log"),    num("r2"),         num("optimal_accuracy"), num("near_optimal"), num("macro_f1"),
                  num("mean_regret"), num("p90_regret"), count("train_rows"),     count("situations"), count("folds")};
  }
  return m;
}

Result<Model> Model::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) return not_found("no SkyRocket model at " + path + " (run `rocket profile` and `rocket train`)");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto m = parse(text);
  if (!m.ok()) return data_loss(path + ": " + m.status().message());
  return m;
}

Status Model::save(const std::string& path) const { return detail::replace_file(path, to_json() + "\n"); }

}  // namespace rocket::skyrocket
