// `rocket bench movers`, `rocket bench overlap` and `rocket calibrate`: what
// each data mover costs on this machine, how much caller work an async copy
// hides, and the fitted cost profile the runtime loads.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_bench_movers(CLI::App& bench);
void add_calibrate(CLI::App& app);

}  // namespace rocket::tools
