// `rocket bench lend`: what Pocket's CPU lending does for a backend whose
// cgroup caps it below what a request needs, and what a loan costs a call.
// A backend and a frontend run in scratch cgroups of their own (under this
// process's cpu cgroup; needs root and a cpu controller it may write), and the
// frontend's closed loop alternates calls that lend with calls that do not.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_bench_lend(CLI::App& bench);
// The hidden subcommand the benchmark runs its backend and frontend as.
void add_bench_lend_children(CLI::App& app);

}  // namespace rocket::tools
