// Children the benchmark and demo drivers spawn (servers, workers, backends,
// frontends) end with their driver: a driver killed by `timeout`, a closed
// pipe or a crash must not leave a server spinning on a core and skewing the
// next measurement. Child::spawn_program marks the child's environment with
// the driver's pid; each executable's main() calls exit_with_parent() first.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace rocket::tools {

inline constexpr const char* kParentPidVariable = "ROCKET_PARENT_PID";

inline void exit_with_parent() {
  const char* v = std::getenv(kParentPidVariable);
  if (v == nullptr) return;
  const long parent = std::strtol(v, nullptr, 10);
  ::unsetenv(kParentPidVariable);  // not inherited by what this process starts by other means
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (parent > 0 && ::getppid() != parent) std::_Exit(1);  // the driver died before the prctl
}

}  // namespace rocket::tools
