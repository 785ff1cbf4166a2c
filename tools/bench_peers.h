// `rocket bench peers`: the same echo (and one workload) through a plain Unix
// socket, ZeroMQ ipc://, gRPC on unix:, a naive shared-memory file per call,
// and Rocket's copy and zero-copy paths, measured in one run. The transports
// run in `rocket-peers` processes, so `rocket` links none of their libraries.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_bench_peers(CLI::App& bench);

}  // namespace rocket::tools
