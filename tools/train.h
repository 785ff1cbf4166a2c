// SkyRocket's trainer: gradient-boosted regression trees (XGBoost) on
// log(1 + microseconds) of traced copies, exported as the runtime's compact
// model, and judged on situations held out of training.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "rocket/policy/skyrocket.h"

namespace rocket::tools {

// The defaults are what cross-validated best, by mean regret, on the
// profile of the CI machine and on the trainer's test law: shallow trees
// whose splits may use 70% of the inputs each generalise to situations not
// profiled (deep ones learn each situation's size level and miss how the
// other factors act in a situation held out).
struct TrainOptions {
  int trees = 60;
  int depth = 4;
  double eta = 0.2;
  double colsample = 0.7;  // share of the inputs each split may choose from
  // Cross-validation: situations (sorted by name) are dealt into this many
  // folds; each fold is predicted by a model fitted on the others.
  int folds = 5;
  unsigned threads = 0;  // 0: XGBoost's default
};

// Converts XGBoost's JSON dump of trees ("split": "f3", "split_condition",
// "yes"/"no", "leaf") into the runtime's model; children are renumbered to
// follow their parents.
Result<skyrocket::Model> model_from_dump(std::span<const std::string> trees_json,
                                         std::vector<skyrocket::Config> configs, double base_score);

// The fold of each row: its situation's place among the sorted situation
// names, modulo `folds`.
std::vector<int> situation_folds(std::span<const skyrocket::TraceRow> rows, int folds);

// One situation of the traces: the configuration measured cheapest (median
// time) and the one a model chose, from the median features quantised as
// decisions quantise them.
struct SituationChoice {
  std::string situation;
  skyrocket::Config best, chosen;
  double best_us = 0, chosen_us = 0;
  double regret() const { return chosen_us / std::max(best_us, 1e-3) - 1; }
};
// What `model` chooses in each situation of `rows` with two or more
// configurations, and its squared error on log(1 + us) over the rows.
struct Evaluation {
  std::vector<SituationChoice> choices;
  double sse_log = 0;
  std::vector<double> y_log;  // the rows' log(1 + us)
};
void evaluate(const skyrocket::Model& model, std::span<const skyrocket::TraceRow> rows, Evaluation& into);
skyrocket::Model::Metrics metrics(const Evaluation& e);

// Mean regret of choosing one fixed configuration everywhere, over the
// situations of `rows` that measured it.
double fixed_regret(const skyrocket::Config& c, std::span<const skyrocket::TraceRow> rows);
// Mean regret of the runtime's choice without a model: the engine whose
// calibrated cost model predicts the least (for a synchronous copy).
double cost_model_regret(std::span<const skyrocket::TraceRow> rows);

struct Trained {
  skyrocket::Model model;  // fitted on every row; metrics from cross-validation
  Evaluation cross_validated;
};
// Cross-validates, then fits on every row; each fit's export is checked
// against XGBoost's own predictions (kInternal if they differ). Requires
// libxgboost in the build (kUnimplemented without).
Result<Trained> train_model(std::span<const skyrocket::TraceRow> rows, const TrainOptions& options);

// The execution mode to deploy from each size up, from the model's
// predictions for a lone copy from and to memory not recently touched:
// `sync` while a copy is short (under 50 us) or no asynchronous engine comes
// within 25% of the best synchronous one, `pipelined` once the asynchronous copy takes a millisecond
// (long enough to split and overlap with the server's work), `async` between.
std::vector<skyrocket::Model::ModeHint> mode_hints(const skyrocket::Model& model, size_t min_bytes, size_t max_bytes);

}  // namespace rocket::tools
