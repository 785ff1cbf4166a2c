// SkyRocket's offline tools: `rocket profile` sweeps situations x
// configurations here and writes traces; `rocket train` fits the model the
// runtime's automatic policy uses; `rocket bench policy` compares the learned
// choice with the cost model's and with every fixed configuration.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_profile(CLI::App& app);
void add_train(CLI::App& app);
void add_bench_policy(CLI::App& bench);

}  // namespace rocket::tools
