// `rocket demo`: the main job. Starts a backend and closed-loop frontends
// (processes of `rocket-workloads`) for each real workload, runs them under
// the baseline (sync + cpu), "always offload", the execution modes x engines
// x cache policies and `auto`, prints throughput, latency, caller CPU and the
// share of time spent moving data, and writes a report folder (JSON + PNG).
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_demo(CLI::App& app);

}  // namespace rocket::tools
