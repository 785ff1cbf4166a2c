// Pocket's resource amplification: a call lends the backend CPU, and memory,
// for as long as the backend works on it.
//
// A frontend blocked in a call leaves its CPU quota unused, while the shared
// backend computing the answer may be capped below what it could use. With
// lending on, a request whose policy carries `lend_millicpus` moves that much
// CPU quota from the caller's cgroup to the backend's while its handler runs:
// the caller's cgroup shrinks by the amount lent, the backend's grows by the
// amount times the caller's factor, and both are put back when the handler
// returns, or at once if the caller dies first.
//
//   rocket::ServerOptions o{.socket_path = "/run/rocket/ml.sock"};
//   o.lending = {.enabled = true, .factors = {{"/frontends/premium", 2.0}}};
//   ...
//   client.call("classify", bytes, {.policy = {.lend_millicpus = 1000}});  // lend one CPU
//
// The writes go straight to the cgroup files on the request path (cgroup v1
// cpu.cfs_quota_us, v2 cpu.max), tens of microseconds per request: worth it
// for calls that compute for milliseconds, not for microsecond calls. Both
// cgroups need a CPU limit (an unlimited one has nothing to lend or gain), the
// server needs write access to both, and each frontend should have a cgroup
// of its own: lending shrinks every process in the caller's cgroup.
//
// Memory (`memory.enabled`, Policy::lend_memory_bytes) moves limit the same
// way between the memory cgroups (v1 memory.limit_in_bytes, v2 memory.max),
// with two differences that keep both sides safe:
// * A caller lends only the headroom it does not use: at most its limit less
//   its usage less `memory.reserve_bytes`, so its limit never drops below
//   what it uses (a v2 limit below the usage would make the kernel kill it).
// * Memory the backend still uses when the call ends cannot be taken back at
//   once. The caller gets its limit back at once all the same; the backend
//   keeps the excess until its usage falls under its own limit again (the
//   server retries every 100 ms, and on v1 lets the kernel reclaim), never
//   longer. ServerStats::memory_held_over_bytes says how much that is.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace rocket {

// The most one request may ask to lend, in thousandths of a CPU and in bytes
// of memory; a larger hint is an invalid argument.
inline constexpr uint32_t kMaxLendMillicpus = 1'000'000;
inline constexpr uint64_t kMaxLendMemoryBytes = uint64_t{1} << 40;

struct MemoryLendingOptions {
  // Off by default, and only with LendingOptions::enabled.
  bool enabled = false;
  // The backend's memory cgroup, as a directory (/sys/fs/cgroup/memory/backend
  // on cgroup v1); empty: this process's own. It must have a memory limit.
  std::string backend_cgroup;
  // The most one request lends; a larger hint lends this much.
  uint64_t max_lend_bytes = uint64_t{64} << 30;
  // What a caller keeps above its usage when it lends.
  uint64_t reserve_bytes = uint64_t{64} << 20;
};

struct LendingOptions {
  // Off by default: lending rewrites cgroup limits, which an operator opts into.
  bool enabled = false;
  // The backend's cpu cgroup, as a directory (/sys/fs/cgroup/cpu/backend on
  // cgroup v1); empty: this process's own. It must have a CPU limit.
  std::string backend_cgroup;
  // What the backend gains per CPU lent, by the caller's cgroup path as
  // /proc/PID/cgroup names it ("/frontends/a"). Callers in cgroups not listed
  // get `default_factor`. 0 forbids a cgroup to lend.
  std::map<std::string, double> factors;
  double default_factor = 1.0;
  // The most one request lends; a larger hint lends this much.
  uint32_t max_lend_millicpus = 64'000;
  // Memory lending, beside the CPU. The factors apply to memory too.
  MemoryLendingOptions memory;
  // A small file recording the limits lending has changed, so that a server
  // restarted after a crash puts back what its predecessor had lent (empty:
  // no record; a crash mid-call then leaves the limits changed), CPU and memory. One server
  // per file; it is locked while the server runs.
  std::string journal_path;
};

}  // namespace rocket
