// The PageRank computation itself, exposed for tests.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "rocket/status.h"

namespace rocket::workloads {

// Damping 0.85; dangling nodes spread their rank evenly. `edge_pairs` holds
// (source, destination) pairs; kInvalidArgument for a node id >= `nodes`.
Result<std::vector<float>> pagerank(uint32_t nodes, std::span<const uint32_t> edge_pairs, uint32_t iterations);

}  // namespace rocket::workloads
