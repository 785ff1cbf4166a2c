// The server's side of lending (rocket/pocket/lending.h): moves CPU quota and
// memory limit between a caller's cgroups and the backend's for the duration
// of a request,
// keeps the books when requests overlap, and puts everything back -- when the
// handler returns, when the caller dies first (a watcher thread waits on the
// callers' pidfds), when the server stops, and, through the journal, when a
// server restarts after a crash.
//
// Thread safety: every method may be called from any thread; one mutex
// serialises the cgroup writes, so overlapping requests see consistent sums.
//
// Bookkeeping: the first grant touching a cgroup reads its limit as the
// base (and records it in the journal before changing anything); each grant
// adds or takes a delta; the last one out writes the base back exactly, so an
// operator's changes between requests are respected. A change made while
// grants are out is overwritten when they end. The cgroups' limit files stay
// open between requests (up to kMaxCachedCgroups of them), which makes a
// loan about a dozen system calls. Memory is kept the same way, with one
// more state: a backend that still uses memory it was lent when the loan
// ends keeps a limit above what it is owed until its usage falls (the
// watcher retries every 100 ms); the caller is paid back at once.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "pocket/cgroup.h"
#include "rocket/pocket/lending.h"
#include "rocket/status.h"

namespace rocket::detail {

class Amplifier {
 public:
  // Resolves the backend's cgroups (each must have a limit and be writable:
  // the CPU one, and the memory one when memory is lent), restores what the
  // journal records, and starts the watcher.
  [[nodiscard]] static Result<std::unique_ptr<Amplifier>> create(const LendingOptions& options);
  // Gives back every grant still out, then stops the watcher.
  ~Amplifier();
  Amplifier(const Amplifier&) = delete;
  Amplifier& operator=(const Amplifier&) = delete;

  // Who may lend: a caller's cgroup and factor, or why it cannot lend.
  struct Lender {
    CpuCgroup cgroup;
    double factor = 0;
    std::string why_not;  // non-empty: this caller's requests lend no CPU
    MemoryCgroup memory;
    std::string memory_why_not;  // non-empty: ... and no memory
  };
  // For process `pid`, which `pidfd` (if >= 0) must still name once its
  // cgroup has been read (pids are reused).
  Lender lender_of(pid_t pid, int pidfd) const;

  struct Grant {
    uint64_t id = 0;            // 0: nothing lent
    uint32_t millicpus = 0;     // what the caller lent (the backend gained factor times this)
    uint64_t memory_bytes = 0;  // likewise
  };
  // Lends up to `millicpus` (at most the configured maximum, and never the
  // caller's last millisecond per period) and up to `memory_bytes` (at most
  // the maximum, and only the caller's headroom above its usage and the
  // reserve) until give_back(id), or until the process behind `pidfd` exits.
  // Each resource is lent or refused on its own: a refusal (no limit to lend
  // from, a write that fails) lends none of it, and `why` says why.
  Grant lend(const Lender& lender, uint32_t millicpus, uint64_t memory_bytes, int pidfd, std::string* why);
  // Puts grant `id` back; nothing if it was already (its caller died).
  void give_back(uint64_t id) noexcept;

  const CpuCgroup& backend() const noexcept { return backend_; }
  uint64_t grants_out() const;
  uint64_t returned_on_exit() const noexcept { return returned_on_exit_.load(std::memory_order_relaxed); }
  // Memory the backend keeps beyond what it is owed, because it still used
  // it when the loans ended.
  uint64_t memory_held_over() const;

 private:
  static constexpr size_t kMaxCachedCgroups = 256;
  struct Held {
    CpuCgroup cgroup;
    CpuLimitFiles files;
    CpuLimit base;
    int64_t delta_us = 0;  // current quota = base + delta
    int grants = 0;
    int journal_slot = -1;
  };
  // A memory cgroup's books: its limit is owed base + delta while it has
  // grants, base after. `written` is the limit last written; only the
  // backend's can exceed what it is owed (memory held over).
  struct MemHeld {
    MemoryCgroup cgroup;
    MemoryFiles files;
    int64_t base = 0;
    int64_t delta = 0;
    int64_t written = 0;
    int grants = 0;
    int journal_slot = -1;
    int64_t owed() const { return grants > 0 ? base + delta : base; }
    bool busy() const { return grants > 0 || written != base; }
  };
  struct Out {
    std::string lender_dir;
    int64_t taken_us = 0;  // from the lender
    int64_t added_us = 0;  // to the backend
    std::string memory_lender_dir;
    int64_t memory_taken = 0;  // bytes, from the lender
    int64_t memory_added = 0;  // to the backend
    int pidfd = -1;            // a dup, watched by the watcher
  };
  class Journal;

  explicit Amplifier(const LendingOptions& options);
  // Caller holds mu_. The cgroup's bookkeeping; on its first grant, with the
  // base read now (and journaled).
  Result<Held*> hold(const CpuCgroup& cg);
  // Caller holds mu_. After a cgroup's last grant: no longer journaled.
  void release_hold(const std::string& dir);
  // Caller holds mu_. Each resource's part of lend(); `out` records it.
  uint32_t lend_cpu_locked(const Lender& lender, uint32_t millicpus, Out& out, std::string* why);
  uint64_t lend_memory_locked(const Lender& lender, uint64_t bytes, Out& out, std::string* why);
  // Caller holds mu_. The memory cgroup's books, as hold() for the CPU.
  Result<MemHeld*> hold_memory(const MemoryCgroup& cg);
  void release_memory_hold(const std::string& dir);
  // Caller holds mu_. Brings the backend's memory limit to what it is owed:
  // up at once, down once its usage allows (v2), or the kernel could reclaim
  // enough (v1). Returns whether it is there.
  bool settle_backend_memory();
  void give_back_locked(uint64_t id) noexcept;
  void watch();

  const LendingOptions opts_;
  CpuCgroup backend_;
  MemoryCgroup backend_memory_;                           // when opts_.memory.enabled
  std::chrono::steady_clock::time_point next_reclaim_{};  // GUARDED_BY(mu_): v1's next reclaiming shrink
  int epoll_fd_ = -1;
  int stop_fd_ = -1;
  int kick_fd_ = -1;                               // wakes the watcher to retry a held-over backend
  static constexpr uint64_t kKick = ~uint64_t{0};  // its epoll tag; grant ids never reach it
  std::unique_ptr<Journal> journal_;
  std::thread watcher_;
  mutable std::mutex mu_;
  std::map<std::string, Held> held_;       // GUARDED_BY(mu_), by directory
  std::map<std::string, MemHeld> mem_held_;  // GUARDED_BY(mu_), by directory
  std::unordered_map<uint64_t, Out> out_;  // GUARDED_BY(mu_), by grant id
  uint64_t next_id_ = 1;                   // GUARDED_BY(mu_)
  std::atomic<uint64_t> returned_on_exit_{0};
};

}  // namespace rocket::detail
