// Registry entries of the individual workloads (one file each).
#pragma once

#include <cstdint>
#include <random>

#include "workload.h"

namespace rocket::workloads {

inline constexpr std::string_view kMobilenetDescription =
    "libtorch MobileNetV2 (random weights): 200 images 3x224x224 fp32 in, 1000 logits each out";
inline constexpr std::string_view kXgboostDescription =
    "libxgboost model trained at backend start: 200,000 rows x 30 features in, one prediction per row out";
inline constexpr std::string_view kPagerankDescription =
    "PageRank of a power-law graph: 10 M edges in (edge list), CSR + 20 iterations, ranks out";
inline constexpr std::string_view kVectorSearchDescription =
    "faiss exact search over embeddings built at backend start: 1 MB of queries in, neighbours' ids and vectors out";

const Workload& mobilenet_workload();
const Workload& xgboost_workload();
const Workload& pagerank_workload();
const Workload& vector_search_workload();

// A fast, seedable generator (splitmix64), identical on every platform, so a
// frontend and a backend (or a test) regenerate the same data.
class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : s_(seed) {}
  uint64_t next() noexcept {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Standard normal (Box-Muller: each pair of uniforms gives two).
  double normal() noexcept;

 private:
  uint64_t s_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace rocket::workloads
