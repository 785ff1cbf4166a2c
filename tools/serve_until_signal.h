// Runs a Server in a command-line process: starts it, lets SIGINT and SIGTERM
// stop it (Server::stop is async-signal-safe), and blocks until it stops.
// Used by `rocket serve` and `rocket-workloads backend`.
#pragma once

#include <signal.h>

#include <functional>
#include <iostream>
#include <string_view>

#include "rocket/runtime/server.h"

namespace rocket::tools {

inline Server* g_signalled_server = nullptr;

extern "C" inline void stop_signalled_server(int) {
  if (g_signalled_server != nullptr) g_signalled_server->stop();
}

// `on_ready` runs once the server accepts (print the line scripts wait for).
// Returns the process exit code: 1 if the server could not start.
inline int serve_until_signal(Server& server, std::string_view who, const std::function<void()>& on_ready) {
  g_signalled_server = &server;
  struct sigaction sa {};
  sa.sa_handler = stop_signalled_server;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  if (Status st = server.start(); !st.ok()) {
    std::cerr << who << ": " << st.to_string() << "\n";
    return 1;
  }
  on_ready();
  server.wait();
  g_signalled_server = nullptr;
  return 0;
}

}  // namespace rocket::tools
