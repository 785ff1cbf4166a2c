// The xgboost workload's model, exposed for tests (in-process predictions).
#pragma once

#include <cstdint>
#include <memory>

#include "workload.h"

namespace rocket::workloads {

inline constexpr uint64_t kXgbFeatures = 30;

// Standardised synthetic feature rows (what a frontend sends).
void xgb_features(uint64_t seed, uint64_t rows, float* out);

class XgbBooster {
 public:
  // Trains on synthetic rows (20,000 x factor) for 20 rounds.
  static Result<std::unique_ptr<XgbBooster>> train(const Scale& s);
  ~XgbBooster();
  XgbBooster(const XgbBooster&) = delete;
  XgbBooster& operator=(const XgbBooster&) = delete;
  // Probabilities for `n` rows of kXgbFeatures floats, predicted in place on
  // the rows. Thread-safe; calls from several threads run at once.
  Status predict(const float* rows, uint64_t n, float* out) const;
  // The same through a DMatrix copy of the rows, xgboost's classic route: an
  // independent check of predict(). Not thread-safe (the booster owns the result).
  Status predict_via_dmatrix(const float* rows, uint64_t n, float* out) const;

 private:
  XgbBooster() = default;
  void* handle_ = nullptr;  // BoosterHandle
};

}  // namespace rocket::workloads
