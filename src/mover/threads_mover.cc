#include "mover/threads_mover.h"

#include <unistd.h>

#include <algorithm>
#include <string>

#include "mover/copy_kernels.h"
#include "mover/kernel_copy.h"

namespace rocket::detail {

using Clock = std::chrono::steady_clock;

namespace {
std::string copy_error(int32_t code) {
  if (code == static_cast<int32_t>(StatusCode::kCancelled)) return "copy cancelled";
  return "copy failed: " + std::string(status_code_name(static_cast<StatusCode>(code)));
}
}  // namespace

ThreadsMover::ThreadsMover(const MoverConfig& config, MoverKind kind) : kind_(kind), config_(config) {
  // Default: one worker per core but one, so the caller keeps a core for the
  // work it overlaps with the copy.
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  unsigned n = config.threads != 0 ? config.threads : std::max(1u, hw - 1);
  if (config_.queue_chunks == 0) config_.queue_chunks = 1;
  if (config_.min_chunk_bytes < 4096) config_.min_chunk_bytes = 4096;
  caps_ = MoverCapabilities{.async = true,
                            .batch = true,
                            .cache_control = kind == MoverKind::kThreads,
                            .needs_registered_memory = false,
                            .cross_process = kind == MoverKind::kKernel,
                            .max_op_bytes = SIZE_MAX,
                            .alignment = 1};
  // Each submission needs one slot; at most one per queued chunk can exist.
  slot_count_ = config_.queue_chunks;
  slots_ = std::make_unique<Slot[]>(slot_count_);
  free_slots_.reserve(slot_count_);
  for (size_t i = slot_count_; i > 0; --i) free_slots_.push_back(static_cast<uint32_t>(i - 1));
  threads_.reserve(n);
  for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { worker_loop(); });
}

ThreadsMover::~ThreadsMover() {
  std::deque<Chunk> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped.swap(queue_);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  for (const Chunk& c : dropped) finish_chunk(c.slot, StatusCode::kCancelled);
}

CostModel ThreadsMover::default_cost(Cache cache) const noexcept {
  // Hand-off to a worker (a futex wake) plus parallel copying; refined by
  // `rocket calibrate`.
  if (kind_ == MoverKind::kKernel) {
    return {.fixed_us = 18.0, .us_per_mib = 70.0 / static_cast<double>(std::max<size_t>(1, threads_.size()))};
  }
  double per_mib = cache == Cache::kBypass ? 40.0 : 58.0;
  return {.fixed_us = 15.0, .us_per_mib = per_mib / static_cast<double>(std::max<size_t>(1, threads_.size()))};
}

CostModel ThreadsMover::execute_cost(Cache cache) const noexcept {
  CostModel c = cost(cache);
  const double w = static_cast<double>(std::max<size_t>(1, threads_.size()));
  c.us_per_mib *= w / (w + 1);
  return c;
}

Result<Ticket> ThreadsMover::submit(std::span<const CopyOp> ops, const SubmitOptions& options) {
  ROCKET_RETURN_IF_ERROR(validate(ops));
  if (kind_ == MoverKind::kThreads) {
    for (const CopyOp& op : ops) {
      if (op.remote != RemoteSide::kNone) return invalid_argument("the threads mover copies within this process only");
    }
  }
  size_t total = 0;
  for (const CopyOp& op : ops) total += op.size;
  if (total == 0) {
    if (options.on_done) options.on_done(ok_status());
    return Ticket{.id = 0, .done = true};
  }
  // kAuto: stream large copies past the cache, keep small ones in it.
  Cache cache = options.cache;
  if (cache == Cache::kAuto) cache = total >= kStreamThreshold ? Cache::kBypass : Cache::kInject;
  // Split so that every worker, and a caller that helps in wait(), gets a
  // share -- two each, so an early finisher can take another -- but never
  // below min_chunk_bytes.
  const size_t shares = 2 * (threads_.size() + 1);
  size_t chunk = std::max(config_.min_chunk_bytes, (total + shares - 1) / shares);
  chunk = (chunk + 63) / 64 * 64;
  size_t nchunks = 0;
  for (const CopyOp& op : ops) nchunks += (op.size + chunk - 1) / chunk;

  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return unavailable("threads mover is stopping");
  if (queue_.size() + nchunks > config_.queue_chunks || free_slots_.empty()) {
    return unavailable("threads mover queue is full (" + std::to_string(queue_.size()) + " chunks); retry");
  }
  uint32_t index = free_slots_.back();
  free_slots_.pop_back();
  Slot& s = slots_[index];
  s.in_use = true;
  ++s.generation;
  // relaxed: published to the workers by the queue mutex.
  s.done.store(0, std::memory_order_relaxed);
  s.status.store(0, std::memory_order_relaxed);
  s.remaining.store(static_cast<uint32_t>(nchunks), std::memory_order_relaxed);
  s.detached = static_cast<bool>(options.on_done);
  s.on_done = options.on_done;
  s.predicted = std::chrono::nanoseconds(static_cast<int64_t>(cost(cache).predict_us(total) * 1000.0));
  s.started = Clock::now();
  const uint64_t id = (uint64_t{s.generation} << 32) | index;
  // Read under the lock: once it is released a worker may finish, release
  // and reuse the slot.
  const bool detached = s.detached;
  for (const CopyOp& op : ops) {
    for (size_t off = 0; off < op.size; off += chunk) {
      queue_.push_back(Chunk{op.dst + off, op.src + off, std::min(chunk, op.size - off), cache, index, options.owner,
                             op.remote, op.pid});
    }
  }
  lock.unlock();
  if (nchunks == 1) {
    cv_.notify_one();
  } else {
    cv_.notify_all();
  }
  if (detached) return Ticket{.id = 0, .done = false};
  return Ticket{.id = id, .done = false};
}

void ThreadsMover::worker_loop() {
  for (;;) {
    Chunk c;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      c = queue_.front();
      queue_.pop_front();
    }
    finish_chunk(c.slot, copy_chunk(c));
  }
}

StatusCode ThreadsMover::copy_chunk(const Chunk& c) noexcept {
  if (kind_ == MoverKind::kThreads) {
    copy_with_policy(c.dst, c.src, c.size, c.cache);
    return StatusCode::kOk;
  }
  // kernel: a local op goes through the kernel too (pid = ourselves).
  Status st = c.remote == RemoteSide::kDst ? kernel_write(c.pid, c.dst, c.src, c.size)
              : c.remote == RemoteSide::kSrc ? kernel_read(c.pid, c.dst, c.src, c.size)
                                             : kernel_read(::getpid(), c.dst, c.src, c.size);
  return st.code();
}

void ThreadsMover::finish_chunk(uint32_t index, StatusCode code) noexcept {
  Slot& s = slots_[index];
  if (code != StatusCode::kOk) {
    int32_t expected = 0;
    // relaxed: ordered before completion by the acq_rel decrement below.
    s.status.compare_exchange_strong(expected, static_cast<int32_t>(code), std::memory_order_relaxed);
  }
  // acq_rel: the last finisher sees every other chunk's copy and status.
  if (s.remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (s.detached) {
    int32_t st = s.status.load(std::memory_order_relaxed);
    CopyCallback cb = std::move(s.on_done);
    release_slot(index);
    cb(st == 0 ? ok_status() : Status(static_cast<StatusCode>(st), copy_error(st)));
    return;
  }
  complete_and_wake(&s.done, &s.waiters);
}

void ThreadsMover::release_slot(uint32_t index) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  slots_[index].in_use = false;
  slots_[index].on_done = nullptr;
  free_slots_.push_back(index);
}

Result<ThreadsMover::Slot*> ThreadsMover::lookup(Ticket t) {
  uint32_t index = static_cast<uint32_t>(t.id);
  uint32_t gen = static_cast<uint32_t>(t.id >> 32);
  std::lock_guard<std::mutex> lock(mu_);
  if (index >= slot_count_ || !slots_[index].in_use || slots_[index].generation != gen || slots_[index].detached) {
    return invalid_argument("unknown or already completed ticket");
  }
  return &slots_[index];
}

Result<bool> ThreadsMover::poll(Ticket t) {
  if (t.done) return true;
  ROCKET_ASSIGN_OR_RETURN(Slot * s, lookup(t));
  // acquire: pairs with complete_and_wake()'s release store.
  if (s->done.load(std::memory_order_acquire) == 0) return false;
  int32_t st = s->status.load(std::memory_order_relaxed);
  release_slot(static_cast<uint32_t>(t.id));
  if (st != 0) return Status(static_cast<StatusCode>(st), copy_error(st));
  return true;
}

bool ThreadsMover::help(uint32_t index) noexcept {
  bool helped = false;
  for (;;) {
    Chunk c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find_if(queue_.begin(), queue_.end(), [index](const Chunk& q) { return q.slot == index; });
      if (it == queue_.end()) return helped;
      c = *it;
      queue_.erase(it);
    }
    helped = true;
    finish_chunk(index, copy_chunk(c));
  }
}

Status ThreadsMover::execute(std::span<const CopyOp> ops, Cache cache) {
  ROCKET_ASSIGN_OR_RETURN(Ticket t, submit(ops, SubmitOptions{.cache = cache, .owner = 0, .on_done = nullptr}));
  if (t.done) return ok_status();
  // The caller would only sleep: it copies the submission's queued chunks
  // itself, so a synchronous copy runs on the workers and the caller at once.
  // (wait() does not: an async caller waits to spend no CPU.) Once it has
  // helped, the rest is already in flight, so it skips the predicted sleep.
  ROCKET_ASSIGN_OR_RETURN(Slot * s, lookup(t));
  const bool helped = help(static_cast<uint32_t>(t.id));
  return finish_wait(t, s, helped ? std::chrono::nanoseconds(0) : s->predicted);
}

Status ThreadsMover::wait(Ticket t) {
  if (t.done) return ok_status();
  ROCKET_ASSIGN_OR_RETURN(Slot * s, lookup(t));
  return finish_wait(t, s, s->predicted);
}

Status ThreadsMover::finish_wait(Ticket t, Slot* s, std::chrono::nanoseconds predicted) {
  hybrid_wait(&s->done, &s->waiters, predicted, s->started);
  int32_t st = s->status.load(std::memory_order_relaxed);
  release_slot(static_cast<uint32_t>(t.id));
  if (st != 0) return Status(static_cast<StatusCode>(st), copy_error(st));
  return ok_status();
}

void ThreadsMover::cancel(uint64_t owner) noexcept {
  if (owner == 0) return;
  std::vector<uint32_t> cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::remove_if(queue_.begin(), queue_.end(), [&](const Chunk& c) {
      if (c.owner != owner) return false;
      cancelled.push_back(c.slot);
      return true;
    });
    queue_.erase(it, queue_.end());
  }
  for (uint32_t slot : cancelled) finish_chunk(slot, StatusCode::kCancelled);
}

}  // namespace rocket::detail
