// `rocket bench connect`: what a session costs to open. A server in this
// process takes bursts of clients connecting at once (from threads), with
// pools of a given size; the report is the connect latency per burst size.
// Setting up a session is faulting in its pools, so this is mostly the
// machine's page-population speed, and a burst queues on the server.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_bench_connect(CLI::App& bench);

}  // namespace rocket::tools
