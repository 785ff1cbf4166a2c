// SkyRocket: the learned policy that picks a data mover and cache behaviour
// per copy.
//
// Offline, `rocket profile` sweeps workload factors (size, reuse, page
// faults, concurrent copies) times configurations (mover x cache) on this
// machine and writes traces; `rocket train` fits gradient-boosted trees to
// log(1 + microseconds) with XGBoost and exports a compact model file. Online,
// the runtime loads that file ($ROCKET_MODEL, else ~/.cache/rocket/model.json)
// and, for a policy of MoverKind::kAuto, predicts each usable configuration's
// service time from the copy's features and takes the least:
//
//   rocket::skyrocket::Features f = rocket::skyrocket::observe(src, dst, n);
//   if (auto d = rocket::skyrocket::decide(f, /*async=*/false)) use(d->config);
//
// Decisions are cached by quantised features, so a repeated situation costs a
// table lookup; the trees run only for a situation not seen since the model
// was installed. Without a model, kAuto uses the calibrated cost model of
// rocket/mover/mover.h. Decisions and their measured times are logged for
// retraining (decision_log(), write_trace()).
//
// Thread safety: every function here is safe to call from several threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rocket/mover/mover.h"
#include "rocket/status.h"

namespace rocket::skyrocket {

// What the model sees of a copy, read without a system call: the samplers
// refresh the process-wide ones every 10 ms on a thread of their own. Cache
// pressure is estimated from what Rocket itself moves (reuse distance, bytes
// in flight), not read from hardware counters: the virtual machines this
// project runs on expose none (perf_event_open says ENOENT for LLC misses).
enum Feature : uint8_t {
  kSizeLog2,      // log2 of the bytes copied
  kReuseLog2,     // log2(1 + bytes this process copied since it last copied
                  // from or to the source's bytes, on average over them;
                  // kNeverCopied: not lately, or mostly not)
  kDstReuseLog2,  // the same for the destination's address
  kFaultsLog2,    // log2(1 + page faults per second) of this process
  kInflightLog2,  // log2(1 + bytes of other copies in flight in this process
                  // that SkyRocket placed): the cache footprint competing
  kActive,        // other such copies in flight
  kRunnable,      // runnable tasks on the machine beyond this one (CPU pressure)
  kNumFeatures,
};
inline constexpr float kNeverCopied = 48.0f;
std::string_view feature_name(Feature f) noexcept;

struct Features {
  std::array<float, kNumFeatures> v{};
};

// One candidate: which engine, and where the destination should land.
struct Config {
  MoverKind mover = MoverKind::kCpu;
  Cache cache = Cache::kAuto;
  bool operator==(const Config&) const = default;
};
std::string config_name(const Config& c);  // "threads/bypass"

// The features of a copy of `bytes` from `src` to `dst` (nullptr: not known
// yet, taken as not recently touched), now; notes both addresses for the
// reuse features of later copies. Starts the samplers on first use.
Features observe(const void* src, const void* dst, size_t bytes) noexcept;

// Marks a copy in flight for the kActive and kInflightLog2 features of
// others, for as long as the scope lives.
class InFlight {
 public:
  explicit InFlight(size_t bytes) noexcept;
  ~InFlight();
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  size_t bytes_;
};

// When a feature's value is needed as the model saw it when deciding: the
// values decisions use are quantised (so that they can be cached), and
// predictions are made on the quantised values.
Features quantised(const Features& f) noexcept;

// A fitted model: gradient-boosted regression trees over the features plus
// the configuration (its mover and cache as numbers), predicting
// log(1 + microseconds) of the copy.
class Model {
 public:
  struct Node {
    uint32_t feature = 0;  // kLeaf for a leaf
    float value = 0;       // split threshold (go left when x < value), or the leaf's output
    uint32_t left = 0, right = 0;
  };
  static constexpr uint32_t kLeaf = UINT32_MAX;
  // Inputs to the trees: the features, then the config's mover and cache.
  static constexpr size_t kInputs = kNumFeatures + 2;

  // What `rocket train` measured by cross-validation: each situation of the
  // traces predicted by a model fitted without it. Regret: the measured time
  // of the configuration chosen over the best one's, minus one.
  struct Metrics {
    double rmse_log = 0, r2 = 0;
    double optimal_accuracy = 0;  // chose the measured best
    double near_optimal = 0;      // chose one within 5% of the best
    double macro_f1 = 0, mean_regret = 0, p90_regret = 0;
    size_t train_rows = 0, situations = 0, folds = 0;
  };
  // The execution mode the offline stage recommends from `min_bytes` up.
  struct ModeHint {
    uint64_t min_bytes = 0;
    std::string mode;  // "sync", "async" or "pipelined"
  };

  // Builds a model from its parts, checking every tree: child indices inside
  // the tree and after their parent (so every walk ends at a leaf), depth at
  // most 64, feature indices below kInputs, finite values. kInvalidArgument
  // otherwise.
  static Result<Model> make(std::vector<Config> configs, double base_score, std::vector<std::vector<Node>> trees);
  // Reads a model file written by `rocket train` (save()); a file of another
  // shape, or whose trees fail make()'s checks, is kDataLoss with the reason.
  static Result<Model> parse(std::string_view json);
  static Result<Model> load(const std::string& path);
  Status save(const std::string& path) const;
  std::string to_json() const;

  // log(1 + predicted microseconds) of config `config_index` for `f`.
  double predict_log(const Features& f, size_t config_index) const noexcept;
  double predict_us(const Features& f, size_t config_index) const noexcept;
  // Every tree on one input row (features then mover and cache numbers).
  double predict_row(std::span<const float, kInputs> row) const noexcept;

  const std::vector<Config>& configs() const noexcept { return configs_; }
  size_t trees() const noexcept { return tree_start_.size(); }
  Metrics metrics;
  std::vector<ModeHint> mode_hints;
  std::string machine;  // where the traces were measured

 private:
  std::vector<Config> configs_;
  double base_score_ = 0;
  std::vector<Node> nodes_;           // every tree's nodes, one after another
  std::vector<uint32_t> tree_start_;  // index of each tree's root in nodes_
};

// The model decisions use; nullptr removes it (kAuto then uses the cost
// model). Installing resets the decision cache. A replaced model stays in
// memory until the process exits (decisions read it without a lock).
void install_model(std::shared_ptr<const Model> model);
std::shared_ptr<const Model> installed_model();
// Loads `path` and installs it. kNotFound when there is no file.
Status load_model(const std::string& path);
// $ROCKET_MODEL, else ~/.cache/rocket/model.json.
std::string default_model_path();
// traces.csv beside the default model: where `rocket profile` writes and
// `rocket train` reads when not told.
std::string default_trace_path();
// Loads the default model once per process (the runtime calls this before
// its first kAuto decision); a malformed file is reported on stderr and
// ignored. Returns whether a model is installed.
bool ensure_default_model();

struct Decision {
  Config config;
  float predicted_us = 0;
  bool cached = false;  // answered from the decision cache
};
// The installed model's cheapest configuration for `f` among those whose
// engine is usable here (and asynchronous, when `async`; and whose cache is
// `cache` unless that is kAuto, or whose engine has no cache control);
// nullopt without a model or with no usable candidate.
std::optional<Decision> decide(const Features& f, bool async, Cache cache = Cache::kAuto);

// One measured copy: a row of a trace file.
struct TraceRow {
  std::string situation;  // the profile's factor levels, or "online"
  Features features;
  Config config;
  double us = 0;
};
// Notes a decision and the copy's measured time for retraining. Cheap and
// lossy: a full log (kLogCapacity) keeps the newest rows, and a row that
// would wait for another thread's is dropped.
inline constexpr size_t kLogCapacity = 4096;
void log_decision(const Features& f, const Config& c, double measured_us) noexcept;
// The logged rows, oldest first, and empties the log.
std::vector<TraceRow> drain_decision_log();

// Trace files are CSV with a header line (the same for profiles and logs).
Status write_trace(const std::string& path, std::span<const TraceRow> rows, bool append = false);
// Reads a trace; a malformed line is kDataLoss naming the file and line.
Result<std::vector<TraceRow>> read_trace(const std::string& path);

}  // namespace rocket::skyrocket
