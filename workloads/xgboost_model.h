// The xgboost workload's model, exposed for tests (in-process predictions).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

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
  // Probabilities for `n` rows of kXgbFeatures floats. Thread-safe.
  Status predict(const float* rows, uint64_t n, float* out) const;

 private:
  XgbBooster() = default;
  void* handle_ = nullptr;  // BoosterHandle
  mutable std::mutex mu_;
};

}  // namespace rocket::workloads
