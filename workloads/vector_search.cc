// Vector search: the backend builds a faiss index over synthetic embeddings
// when it starts; a request is a batch of query embeddings, the response the
// k nearest neighbours' ids and their vectors (a bulky response).
#include <faiss/IndexFlat.h>

#include <cmath>
#include <cstring>

#include "vector_search.h"
#include "workloads_internal.h"

namespace rocket::workloads {
namespace {

constexpr uint32_t kRequestMagic = 0x52534356;   // "VCSR"
constexpr uint32_t kResponseMagic = 0x53534356;  // "VCSS"
constexpr uint64_t kMaxQueries = uint64_t{1} << 20;
constexpr uint64_t kClusters = 256;
constexpr double kSpread = 0.35;

void normalise(float* v) {
  double n = 0;
  for (uint64_t j = 0; j < kVsDim; ++j) n += static_cast<double>(v[j]) * v[j];
  n = std::sqrt(n);
  if (n == 0) return;
  for (uint64_t j = 0; j < kVsDim; ++j) v[j] = static_cast<float>(v[j] / n);
}

std::vector<float> centroids(uint64_t seed) {
  std::vector<float> c(kClusters * kVsDim);
  SplitMix rng(seed ^ 0xc3a5c85c97cb3127ULL);
  for (float& x : c) x = static_cast<float>(rng.normal());
  return c;
}

// `n` unit vectors near random centroids.
void embeddings(uint64_t seed, uint64_t stream, uint64_t n, float* out) {
  const std::vector<float> c = centroids(seed);
  SplitMix rng(seed * 6364136223846793005ULL + stream);
  for (uint64_t i = 0; i < n; ++i) {
    const float* base = &c[(rng.next() % kClusters) * kVsDim];
    for (uint64_t j = 0; j < kVsDim; ++j) out[i * kVsDim + j] = static_cast<float>(base[j] + kSpread * rng.normal());
    normalise(&out[i * kVsDim]);
  }
}

}  // namespace

uint64_t vs_base_size(const Scale& s) { return scaled(10'000, s, 400); }
uint64_t vs_neighbours(const Scale& s) { return std::min<uint64_t>(300, vs_base_size(s)); }

std::vector<float> vs_base(const Scale& s) {
  std::vector<float> v(vs_base_size(s) * kVsDim);
  embeddings(s.seed, 0, vs_base_size(s), v.data());
  return v;
}

void vs_queries(const Scale& s, uint64_t i, uint64_t n, float* out) { embeddings(s.seed, i + 1, n, out); }

namespace {

class VsModel final : public Model {
 public:
  explicit VsModel(const Scale& s) : base_(vs_base(s)), k_(vs_neighbours(s)), index_(static_cast<faiss::Index::idx_t>(kVsDim)) {
    index_.add(static_cast<faiss::Index::idx_t>(vs_base_size(s)), base_.data());
  }

  Result<size_t> process(std::span<const std::byte> request, const ResponseAlloc& alloc) const override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(request, kRequestMagic, "vector_search request"));
    const uint64_t nq = h.dims[0], dim = h.dims[1], k = h.dims[2];
    if (dim != kVsDim) return invalid_argument("vector_search request: dimension " + std::to_string(dim) + ", index has " + std::to_string(kVsDim));
    if (nq == 0 || nq > kMaxQueries) return invalid_argument("vector_search request: " + std::to_string(nq) + " queries (1 to 2^20)");
    if (k == 0 || k > k_) return invalid_argument("vector_search request: k = " + std::to_string(k) + " (1 to " + std::to_string(k_) + ")");
    ROCKET_ASSIGN_OR_RETURN(uint64_t qbytes, checked_product({nq, dim, sizeof(float)}, "vector_search request"));
    if (request.size() - sizeof(WireHeader) != qbytes) return invalid_argument("vector_search request: length does not match its queries");
    const auto* queries = reinterpret_cast<const float*>(request.data() + sizeof(WireHeader));
    for (uint64_t i = 0; i < nq * dim; ++i) {
      if (!std::isfinite(queries[i])) return invalid_argument("vector_search request: a query holds NaN or infinity");
    }
    std::vector<float> distances(nq * k);
    std::vector<faiss::Index::idx_t> ids(nq * k);
    index_.search(static_cast<faiss::Index::idx_t>(nq), queries, static_cast<faiss::Index::idx_t>(k), distances.data(), ids.data());
    // Post-processing: ids and the neighbours' vectors.
    ROCKET_ASSIGN_OR_RETURN(uint64_t vec_bytes, checked_product({nq, k, kVsDim, sizeof(float)}, "vector_search response"));
    const size_t bytes = sizeof(WireHeader) + nq * k * sizeof(int64_t) + vec_bytes;
    ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(bytes));
    write_header(out, WireHeader{.magic = kResponseMagic, .version = 1, .dims = {nq, k, kVsDim, 0}});
    std::byte* p = out.data() + sizeof(WireHeader);
    std::memcpy(p, ids.data(), nq * k * sizeof(int64_t));
    p += nq * k * sizeof(int64_t);
    for (uint64_t i = 0; i < nq * k; ++i, p += kVsDim * sizeof(float)) {
      // faiss pads with -1 when fewer than k vectors exist; k <= base size here.
      std::memcpy(p, &base_[static_cast<uint64_t>(ids[i]) * kVsDim], kVsDim * sizeof(float));
    }
    return bytes;
  }

 private:
  std::vector<float> base_;
  uint64_t k_;
  faiss::IndexFlatL2 index_;
};

class VsFrontend final : public Frontend {
 public:
  explicit VsFrontend(const Scale& s)
      : scale_(s), nq_(scaled(2000, s, 4)), k_(vs_neighbours(s)), base_size_(vs_base_size(s)) {}
  size_t request_bytes() const noexcept override { return sizeof(WireHeader) + nq_ * kVsDim * sizeof(float); }
  size_t max_response_bytes() const noexcept override {
    return sizeof(WireHeader) + nq_ * k_ * (sizeof(int64_t) + kVsDim * sizeof(float));
  }
  void make_request(uint64_t i, std::span<std::byte> out) override {
    write_header(out, WireHeader{.magic = kRequestMagic, .version = 1, .dims = {nq_, kVsDim, k_, 0}});
    vs_queries(scale_, i, nq_, reinterpret_cast<float*>(out.data() + sizeof(WireHeader)));
  }
  Status consume(std::span<const std::byte> response) override {
    ROCKET_ASSIGN_OR_RETURN(WireHeader h, read_header(response, kResponseMagic, "vector_search response"));
    if (h.dims[0] != nq_ || h.dims[1] != k_ || h.dims[2] != kVsDim || response.size() != max_response_bytes()) {
      return data_loss("vector_search response: wrong shape");
    }
    const auto* ids = reinterpret_cast<const int64_t*>(response.data() + sizeof(WireHeader));
    const auto* vecs = reinterpret_cast<const float*>(response.data() + sizeof(WireHeader) + nq_ * k_ * sizeof(int64_t));
    // Every id must name a base vector, and each query's nearest neighbour
    // must be a unit vector (all base vectors are).
    for (uint64_t q = 0; q < nq_; ++q) {
      for (uint64_t j = 0; j < k_; ++j) {
        if (ids[q * k_ + j] < 0 || static_cast<uint64_t>(ids[q * k_ + j]) >= base_size_) return data_loss("vector_search response: neighbour id out of range");
      }
      double n = 0;
      for (uint64_t d = 0; d < kVsDim; ++d) n += static_cast<double>(vecs[q * k_ * kVsDim + d]) * vecs[q * k_ * kVsDim + d];
      if (std::fabs(n - 1.0) > 1e-3) return data_loss("vector_search response: a neighbour vector is not a base vector");
    }
    summary_ = std::to_string(nq_) + " queries x " + std::to_string(k_) + " neighbours; nearest to query 0: id " +
               std::to_string(ids[0]);
    return ok_status();
  }
  std::string summary() const override { return summary_; }

 private:
  Scale scale_;
  uint64_t nq_, k_, base_size_;
  std::string summary_;
};

class VsWorkload final : public Workload {
 public:
  std::string_view name() const noexcept override { return "vector_search"; }
  std::string_view description() const noexcept override { return kVectorSearchDescription; }
  Result<std::unique_ptr<Model>> start_backend(const Scale& s) const override {
    return std::unique_ptr<Model>(std::make_unique<VsModel>(s));
  }
  std::unique_ptr<Frontend> frontend(const Scale& s) const override { return std::make_unique<VsFrontend>(s); }
};

}  // namespace

const Workload& vector_search_workload() {
  static const VsWorkload w;
  return w;
}

}  // namespace rocket::workloads
