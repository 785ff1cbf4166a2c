// Gradient-boosted trees: the backend trains a libxgboost model on synthetic
// data when it starts; a request is a batch of raw feature rows that the
// frontend has standardised, the response one probability per row.
#include <xgboost/c_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "workloads_internal.h"
#include "xgboost_model.h"

namespace rocket::workloads {
namespace {

constexpr uint32_t kRequestMagic = 0x52424758;   // "XGBR"
constexpr uint32_t kResponseMagic = 0x53424758;  // "XGBS"
constexpr uint64_t kMaxRows = uint64_t{1} << 26;

Status xgb_status(int rc, std::string_view what) {
  if (rc == 0) return ok_status();
  return internal_error("xgboost " + std::string(what) + ": " + XGBGetLastError());
}

// The hidden rule the model learns.
float label_of(const float* x) {
  double s = x[0] + 0.5 * x[1] * x[1] - x[2] * x[3];
  for (int j = 4; j < 10; ++j) s += 0.3 * x[j];
  return s > 0.5 ? 1.0f : 0.0f;
}

// Raw rows as a sensor would report them: column j has mean 10 j and
// standard deviation 1 + j; standardise() maps them back to N(0, 1).
void raw_rows(uint64_t seed, uint64_t rows, float* out) {
  SplitMix rng(seed);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < kXgbFeatures; ++j) {
      out[i * kXgbFeatures + j] = static_cast<float>(10.0 * static_cast<double>(j) + (1.0 + static_cast<double>(j)) * rng.normal());
    }
  }
}

// Column by column in effect, row by row in memory: three passes over the
// rows (means, deviations, scaling) instead of three strided passes per column.
void standardise(uint64_t rows, float* x) {
  double mean[kXgbFeatures] = {}, sq[kXgbFeatures] = {}, sd[kXgbFeatures];
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < kXgbFeatures; ++j) mean[j] += x[i * kXgbFeatures + j];
  }
  for (double& m : mean) m /= static_cast<double>(rows);
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < kXgbFeatures; ++j) {
      const double d = x[i * kXgbFeatures + j] - mean[j];
      sq[j] += d * d;
    }
  }
  for (uint64_t j = 0; j < kXgbFeatures; ++j) {
    sd[j] = std::sqrt(sq[j] / static_cast<double>(rows));
    if (sd[j] == 0) sd[j] = 1;
  }
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < kXgbFeatures; ++j) {
      x[i * kXgbFeatures + j] = static_cast<float>((x[i * kXgbFeatures + j] - mean[j]) / sd[j]);
    }
  }
}

}  // namespace

void xgb_features(uint64_t seed, uint64_t rows, float* out) {
  raw_rows(seed, rows, out);
  standardise(rows, out);
}

XgbBooster::~XgbBooster() {
  if (handle_ != nullptr) XGBoosterFree(handle_);
}

Result<std::unique_ptr<XgbBooster>> XgbBooster::train(const Scale& s) {
  const uint64_t rows = scaled(20'000, s, 500);
  std::vector<float> x(rows * kXgbFeatures), y(rows);
  xgb_features(s.seed, rows, x.data());
  for (uint64_t i = 0; i < rows; ++i) y[i] = label_of(&x[i * kXgbFeatures]);
  DMatrixHandle dtrain = nullptr;
  ROCKET_RETURN_IF_ERROR(xgb_status(XGDMatrixCreateFromMat(x.data(), rows, kXgbFeatures, NAN, &dtrain), "DMatrix"));
  std::unique_ptr<void, int (*)(DMatrixHandle)> dguard(dtrain, XGDMatrixFree);
  ROCKET_RETURN_IF_ERROR(xgb_status(XGDMatrixSetFloatInfo(dtrain, "label", y.data(), rows), "labels"));
  auto b = std::unique_ptr<XgbBooster>(new XgbBooster());
  ROCKET_RETURN_IF_ERROR(xgb_status(XGBoosterCreate(&dtrain, 1, &b->handle_), "create"));
  const std::pair<const char*, std::string> params[] = {
      {"objective", "binary:logistic"}, {"max_depth", "6"}, {"eta", "0.3"}, {"tree_method", "hist"},
      {"seed", std::to_string(s.seed)}, {"verbosity", "0"}};
  for (const auto& [k, v] : params) {
    ROCKET_RETURN_IF_ERROR(xgb_status(XGBoosterSetParam(b->handle_, k, v.c_str()), "param"));
  }
  for (int it = 0; it < 20; ++it) {
    ROCKET_RETURN_IF_ERROR(xgb_status(XGBoosterUpdateOneIter(b->handle_, it, dtrain), "training"));
  }
  return b;
}

Status XgbBooster::predict(const float* rows, uint64_t n, float* out) const {
  // In-place prediction on the request's own rows: no DMatrix copy of them,
  // and xgboost keeps the result per calling thread, so requests on several
  // dispatchers predict at once.
  char values[192];
  std::snprintf(values, sizeof(values), R"({"data": [%ju, true], "shape": [%ju, %ju], "typestr": "<f4", "version": 3})",
                static_cast<uintmax_t>(reinterpret_cast<uintptr_t>(rows)), static_cast<uintmax_t>(n),
                static_cast<uintmax_t>(kXgbFeatures));
  static constexpr const char* kConfig =
      R"({"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": true, "missing": NaN, "cache_id": 0})";
  const bst_ulong* shape = nullptr;
  bst_ulong dims = 0;
  const float* result = nullptr;
  ROCKET_RETURN_IF_ERROR(
      xgb_status(XGBoosterPredictFromDense(handle_, values, kConfig, nullptr, &shape, &dims, &result), "predict"));
  // strict_shape: rows x output groups, one group for a binary model.
  if (dims != 2 || shape[0] != n || shape[1] != 1) {
    return internal_error("xgboost predict returned an unexpected shape for " + std::to_string(n) + " rows");
  }
  std::memcpy(out, result, n * sizeof(float));
  return ok_status();
}

Status XgbBooster::predict_via_dmatrix(const float* rows, uint64_t n, float* out) const {
  DMatrixHandle dm = nullptr;
  ROCKET_RETURN_IF_ERROR(xgb_status(XGDMatrixCreateFromMat(rows, n, kXgbFeatures, NAN, &dm), "DMatrix"));
  std::unique_ptr<void, int (*)(DMatrixHandle)> dguard(dm, XGDMatrixFree);
  bst_ulong len = 0;
  const float* result = nullptr;
  ROCKET_RETURN_IF_ERROR(xgb_status(XGBoosterPredict(handle_, dm, 0, 0, 0, &len, &result), "predict"));
  if (len != n) {
    return internal_error("xgboost predict returned " + std::to_string(len) + " values for " + std::to_string(n) +
                          " rows");
  }
  std::memcpy(out, result, n * sizeof(float));
  return ok_status();
}

namespace {

class XgbModel final : public Model {
 public:
  explicit XgbModel(std::unique_ptr<XgbBooster> b) : booster_(std::move(b)) {}
  Result<size_t> process(std::span<const std::byte> request, const ResponseAlloc& alloc) const override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(request, kRequestMagic, "xgboost request"));
    const uint64_t rows = h.dims[0], cols = h.dims[1];
    if (cols != kXgbFeatures) {
      return invalid_argument("xgboost request: " + std::to_string(cols) + " features, the model takes " +
                              std::to_string(kXgbFeatures));
    }
    if (rows == 0 || rows > kMaxRows) return invalid_argument("xgboost request: " + std::to_string(rows) + " rows (1 to 2^26)");
    ROCKET_ASSIGN_OR_RETURN(uint64_t bytes, checked_product({rows, cols, sizeof(float)}, "xgboost request"));
    if (request.size() - sizeof(WireHeader) != bytes) return invalid_argument("xgboost request: length does not match its rows");
    ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(sizeof(WireHeader) + rows * sizeof(float)));
    write_header(out, WireHeader{.magic = kResponseMagic, .version = 1, .dims = {rows, 0, 0, 0}});
    ROCKET_RETURN_IF_ERROR(booster_->predict(reinterpret_cast<const float*>(request.data() + sizeof(WireHeader)), rows,
                                             reinterpret_cast<float*>(out.data() + sizeof(WireHeader))));
    return out.size();
  }

 private:
  std::unique_ptr<XgbBooster> booster_;
};

class XgbFrontend final : public Frontend {
 public:
  explicit XgbFrontend(const Scale& s) : seed_(s.seed), rows_(scaled(200'000, s, 16)) {}
  size_t request_bytes() const noexcept override { return sizeof(WireHeader) + rows_ * kXgbFeatures * sizeof(float); }
  size_t max_response_bytes() const noexcept override { return sizeof(WireHeader) + rows_ * sizeof(float); }
  void make_request(uint64_t i, std::span<std::byte> out) override {
    write_header(out, WireHeader{.magic = kRequestMagic, .version = 1, .dims = {rows_, kXgbFeatures, 0, 0}});
    xgb_features(seed_ * 7919 + i + 1, rows_, reinterpret_cast<float*>(out.data() + sizeof(WireHeader)));
  }
  Status consume(std::span<const std::byte> response) override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(response, kResponseMagic, "xgboost response"));
    if (h.dims[0] != rows_ || response.size() != max_response_bytes()) return data_loss("xgboost response: wrong row count");
    const auto* p = reinterpret_cast<const float*>(response.data() + sizeof(WireHeader));
    uint64_t positive = 0;
    for (uint64_t i = 0; i < rows_; ++i) {
      if (!(p[i] >= 0.0f && p[i] <= 1.0f)) return data_loss("xgboost response: a probability outside [0, 1]");
      positive += p[i] >= 0.5f;
    }
    summary_ = std::to_string(positive) + " of " + std::to_string(rows_) + " rows predicted positive";
    return ok_status();
  }
  std::string summary() const override { return summary_; }

 private:
  uint64_t seed_, rows_;
  std::string summary_;
};

class XgbWorkload final : public Workload {
 public:
  std::string_view name() const noexcept override { return "xgboost"; }
  std::string_view description() const noexcept override { return kXgboostDescription; }
  Result<std::unique_ptr<Model>> start_backend(const Scale& s) const override {
    ROCKET_ASSIGN_OR_RETURN(auto booster, XgbBooster::train(s));
    return std::unique_ptr<Model>(std::make_unique<XgbModel>(std::move(booster)));
  }
  std::unique_ptr<Frontend> frontend(const Scale& s) const override { return std::make_unique<XgbFrontend>(s); }
};

}  // namespace

const Workload& xgboost_workload() {
  static const XgbWorkload w;
  return w;
}

}  // namespace rocket::workloads
