// `rocket bench echo`: round-trip latency and throughput of an echo through
// Rocket (copy path and zero-copy path; sync, async and pipelined), through a
// plain Unix-domain stream socket, and the two-memcpy floor, all in one run.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_bench_echo(CLI::App& bench);
// Hidden subcommands the benchmark runs in child processes.
void add_bench_children(CLI::App& app);

}  // namespace rocket::tools
