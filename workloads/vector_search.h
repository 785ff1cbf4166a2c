// The vector_search workload's data, exposed for tests (brute-force checks).
#pragma once

#include <cstdint>
#include <vector>

#include "workload.h"

namespace rocket::workloads {

inline constexpr uint64_t kVsDim = 128;

uint64_t vs_base_size(const Scale& s);
uint64_t vs_neighbours(const Scale& s);
// The indexed vectors (vs_base_size x kVsDim), as the backend builds them.
std::vector<float> vs_base(const Scale& s);
// Query batch `i`: `n` vectors.
void vs_queries(const Scale& s, uint64_t i, uint64_t n, float* out);

}  // namespace rocket::workloads
