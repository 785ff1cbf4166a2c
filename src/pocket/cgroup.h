// Where a process's CPU limit lives, and reading and writing it: the cgroup
// files behind Pocket's resource amplification (amplifier.h).
//
//   auto cg = detail::cpu_cgroup_of(pid);          // its cgroup's directory
//   auto lim = detail::read_cpu_limit(*cg);        // quota and period, in µs
//   detail::write_cpu_quota(*cg, lim->quota_us + 50000, lim->period_us);
//
// Both hierarchies: cgroup v1's `cpu` controller (cpu.cfs_quota_us,
// cpu.cfs_period_us) and cgroup v2 (cpu.max), found through
// /proc/PID/cgroup and /proc/self/mountinfo, never assumed to be at
// /sys/fs/cgroup. Where a process is in both, v1's `cpu` controller is the one
// that limits it. Not thread-safe against concurrent writers of the same
// cgroup; the amplifier serialises its own writes.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "rocket/status.h"

namespace rocket::detail {

// A cgroup of one controller's hierarchy (on cgroup v1 the `cpu` and the
// `memory` controllers usually have hierarchies, and so directories, of
// their own; on v2 one directory serves both).
struct Cgroup {
  std::string dir;   // the cgroup's directory in the mounted hierarchy
  std::string path;  // its path inside the hierarchy, as /proc/PID/cgroup names it
  bool v2 = false;

  bool operator==(const Cgroup&) const = default;
};
using CpuCgroup = Cgroup;
using MemoryCgroup = Cgroup;

struct CpuLimit {
  int64_t quota_us = -1;  // CPU time per period; -1: no limit
  int64_t period_us = 100000;
};

// The kernel refuses a quota below 1 ms per period.
inline constexpr int64_t kMinCpuQuotaUs = 1000;

// --- parsing, separate from the files so tests can feed it text ---------------

// From the text of /proc/PID/cgroup: the process's path in the v1 hierarchy
// that carries `controller` ("cpu", "memory"), or else in the v2 hierarchy
// (`0::`).
[[nodiscard]] Result<std::pair<std::string, bool>> parse_cgroup_path(std::string_view proc_cgroup,
                                                                     std::string_view controller);
[[nodiscard]] inline Result<std::pair<std::string, bool>> parse_cpu_cgroup_path(std::string_view proc_cgroup) {
  return parse_cgroup_path(proc_cgroup, "cpu");
}
// From the text of /proc/self/mountinfo: the directory of `path` in the mount
// of the v1 hierarchy of `controller` (v2 = false) or of cgroup2 (v2 = true).
// A mount of a sub-tree (its root field is not "/") serves only paths under
// that root.
[[nodiscard]] Result<std::string> cgroup_dir_in(std::string_view mountinfo, std::string_view path, bool v2,
                                                std::string_view controller = "cpu");
// "50000 100000" or "max 100000" (cgroup v2's cpu.max).
[[nodiscard]] Result<CpuLimit> parse_cpu_max(std::string_view text);

// --- the files ----------------------------------------------------------------

// A cgroup's CPU limit files, held open: a read or a write is one system
// call (the request path of lending makes several per request). Once the
// cgroup is removed, both fail with kUnavailable ("No such device"), also
// when a new cgroup has taken its name: open again then. Move-only.
class CpuLimitFiles {
 public:
  [[nodiscard]] static Result<CpuLimitFiles> open(const CpuCgroup& cg);
  CpuLimitFiles() = default;
  CpuLimitFiles(CpuLimitFiles&& o) noexcept;
  CpuLimitFiles& operator=(CpuLimitFiles&& o) noexcept;
  ~CpuLimitFiles();

  [[nodiscard]] Result<CpuLimit> read() const;
  // Sets the quota (-1: no limit) with `period_us`, which must be the
  // cgroup's current period (only v2 writes it, and unchanged).
  [[nodiscard]] Status write_quota(int64_t quota_us, int64_t period_us) const;

 private:
  void close() noexcept;
  std::string dir_;
  bool v2_ = false;
  int quota_fd_ = -1;   // cpu.cfs_quota_us, or v2's cpu.max
  int period_fd_ = -1;  // cpu.cfs_period_us (v1 only)
};

// The cpu cgroup of process `pid` (0: this process).
[[nodiscard]] Result<CpuCgroup> cpu_cgroup_of(pid_t pid);
// The cgroup at directory `dir` (an operator's configuration names it so).
[[nodiscard]] Result<CpuCgroup> cpu_cgroup_at(const std::string& dir);
// One-off reads and writes (CpuLimitFiles opened and closed).
[[nodiscard]] Result<CpuLimit> read_cpu_limit(const CpuCgroup& cg);
[[nodiscard]] Status write_cpu_quota(const CpuCgroup& cg, int64_t quota_us, int64_t period_us);

// --- memory ------------------------------------------------------------------

// A memory limit of "no limit": v1's memory.limit_in_bytes reads a huge
// page-rounded number then, v2's memory.max "max".
inline constexpr int64_t kNoMemoryLimit = -1;

// A cgroup's memory limit and usage files, held open (memory.limit_in_bytes
// and memory.usage_in_bytes on v1; memory.max and memory.current on v2).
// Move-only; like CpuLimitFiles, reads fail once the cgroup is removed.
class MemoryFiles {
 public:
  [[nodiscard]] static Result<MemoryFiles> open(const MemoryCgroup& cg);
  MemoryFiles() = default;
  MemoryFiles(MemoryFiles&& o) noexcept;
  MemoryFiles& operator=(MemoryFiles&& o) noexcept;
  ~MemoryFiles();

  // The limit in bytes, or kNoMemoryLimit.
  [[nodiscard]] Result<int64_t> limit() const;
  // What the cgroup's members use now, page cache included.
  [[nodiscard]] Result<int64_t> usage() const;
  // Sets the limit (kNoMemoryLimit: none). A limit below the usage makes the
  // kernel reclaim first; on v1 it then refuses (EBUSY) what it cannot
  // reclaim, but on v2 it kills a member (OOM), so callers check the usage.
  [[nodiscard]] Status set_limit(int64_t bytes) const;
  bool v2() const noexcept { return v2_; }

 private:
  void close() noexcept;
  std::string dir_;
  bool v2_ = false;
  int limit_fd_ = -1;
  int usage_fd_ = -1;
};

// The memory cgroup of process `pid` (0: this process).
[[nodiscard]] Result<MemoryCgroup> memory_cgroup_of(pid_t pid);
// The memory cgroup at directory `dir`.
[[nodiscard]] Result<MemoryCgroup> memory_cgroup_at(const std::string& dir);
// One-off reads and writes (MemoryFiles opened and closed).
[[nodiscard]] Result<int64_t> read_memory_limit(const MemoryCgroup& cg);
[[nodiscard]] Result<int64_t> read_memory_usage(const MemoryCgroup& cg);
[[nodiscard]] Status write_memory_limit(const MemoryCgroup& cg, int64_t bytes);
// A new cgroup `name` under `parent` with the memory controller (on v2 the
// parent must have it delegated); for tools and tests, like make_cpu_cgroup.
[[nodiscard]] Result<MemoryCgroup> make_memory_cgroup(const MemoryCgroup& parent, const std::string& name);

// --- trees ----------------------------------------------------------------------

// A new cgroup `name` under `parent`, with the cpu controller (on v2 the
// parent must have it delegated: "cpu" in its cgroup.subtree_control; this
// enables it for the new cgroup's own children too). For tools and tests
// that build a scratch tree; an existing directory is an error.
[[nodiscard]] Result<CpuCgroup> make_cpu_cgroup(const CpuCgroup& parent, const std::string& name);
// Where a process in cgroup `own` can make a scratch tree with controllers:
// `own` itself on v1; on v2, which lets no cgroup with members hand
// controllers to children, its parent (beside `own`).
[[nodiscard]] Cgroup scratch_parent(const Cgroup& own);
// Removes an empty cgroup, waiting up to `wait_ms` for exited members to
// leave it (the kernel lets go of a reaped process a moment later).
[[nodiscard]] Status remove_cgroup(const CpuCgroup& cg, int wait_ms = 2000);
// Moves process `pid` (0: the caller) into `cg`.
[[nodiscard]] Status join_cgroup(const CpuCgroup& cg, pid_t pid = 0);

}  // namespace rocket::detail
