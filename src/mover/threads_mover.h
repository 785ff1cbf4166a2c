// A software copy engine: its own worker threads take chunks from a bounded
// queue; copies are split so large ones run on all workers at once. The pool
// starts with the engine and stops and joins in its destructor; queued work
// still pending then completes with kCancelled. Two engines share it:
//   `threads`  workers copy with regular or streaming stores per the cache policy;
//   `kernel`   workers copy with process_vm_readv/writev, so one side of a copy
//              may be another process's private memory (CopyOp::remote).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "mover/hybrid_wait.h"
#include "rocket/mover/mover.h"

namespace rocket::detail {

// Thread safety: all public methods are safe from any thread.
class ThreadsMover final : public Mover {
 public:
  // `kind` is kThreads or kKernel.
  ThreadsMover(const MoverConfig& config, MoverKind kind);
  ~ThreadsMover() override;

  MoverKind kind() const noexcept override { return kind_; }
  const MoverCapabilities& capabilities() const noexcept override { return caps_; }
  Result<Ticket> submit(std::span<const CopyOp> ops, const SubmitOptions& options) override;
  Result<bool> poll(Ticket ticket) override;
  Status wait(Ticket ticket) override;
  Status execute(std::span<const CopyOp> ops, Cache cache) override;
  // cost() is what the workers alone take (calibrated with submit + wait);
  // execute() adds the caller as one more copier.
  CostModel execute_cost(Cache cache) const noexcept override;
  void cancel(uint64_t owner) noexcept override;

  unsigned workers() const noexcept { return static_cast<unsigned>(threads_.size()); }

 protected:
  CostModel default_cost(Cache cache) const noexcept override;

 private:
  // One submission's completion record. Slots are reused; a ticket carries
  // the slot's generation so a stale ticket is recognised.
  struct Slot {
    std::atomic<uint32_t> done{0};      // futex word: 1 when complete
    std::atomic<uint32_t> waiters{0};
    std::atomic<uint32_t> remaining{0};  // chunks not yet finished
    std::atomic<int32_t> status{0};      // first failure (StatusCode), 0 if none
    uint32_t generation = 0;             // guarded by mu_
    bool in_use = false;                 // guarded by mu_
    bool detached = false;               // set before the slot's chunks are queued
    CopyCallback on_done;                // likewise
    std::chrono::nanoseconds predicted{0};
    std::chrono::steady_clock::time_point started;
  };
  struct Chunk {
    std::byte* dst;
    const std::byte* src;
    size_t size;
    Cache cache;  // resolved: kInject or kBypass
    uint32_t slot;
    uint64_t owner;
    RemoteSide remote;
    pid_t pid;
  };
  StatusCode copy_chunk(const Chunk& c) noexcept;

  // Runs the queued chunks of slot `index` on the calling thread; true if
  // there were any.
  bool help(uint32_t index) noexcept;
  // Waits for `s` (ticket `t`) and retires it.
  Status finish_wait(Ticket t, Slot* s, std::chrono::nanoseconds predicted);
  void worker_loop();
  void finish_chunk(uint32_t slot, StatusCode code) noexcept;
  Result<Slot*> lookup(Ticket t);
  void release_slot(uint32_t index) noexcept;

  MoverKind kind_;
  MoverCapabilities caps_;
  MoverConfig config_;
  std::vector<std::thread> threads_;
  std::unique_ptr<Slot[]> slots_;
  size_t slot_count_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;        // guarded by mu_
  std::vector<uint32_t> free_slots_;  // guarded by mu_
  bool stopping_ = false;          // guarded by mu_
};

}  // namespace rocket::detail
