// `rocket top`: a running server's counters, sampled: sessions, requests and
// errors per second, memory mapped for sessions, CPU loans. Reads the
// built-in "stats" op, which only the server's own account may call.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_top(CLI::App& app);

}  // namespace rocket::tools
