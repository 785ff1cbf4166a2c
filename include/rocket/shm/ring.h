// Single-producer single-consumer ring of fixed 64-byte descriptors in shared
// memory, for rings whose two ends live in different processes.
//
// The shared part (RingIndices + the entry array) holds only two indices and
// the entries. Each end keeps its own authoritative index and its cached copy
// of the opposite index in private memory: the peer can scribble over the
// shared words, but it can never make this end read out of bounds. An opposite
// index that moved backwards or further than the capacity is reported as
// kCorrupt, and the caller ends the session.
//
//   RingIndices* idx = ...; Desc* slots = ...;           // inside a segment
//   RingProducer<Desc> tx(idx, slots, 1024);
//   if (tx.try_push(d) == RingResult::kFull) { /* back off */ }
//   RingConsumer<Desc> rx(idx, slots, 1024);
//   Desc out; while (rx.try_pop(&out) == RingResult::kOk) { ... }
//
// When not to use: several producers or consumers in one process must
// serialise access to their end themselves (the runtime holds a mutex per end).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace rocket::shm {

inline constexpr size_t kCacheLine = 64;

// Each index on its own cache line so producer and consumer never share one.
struct alignas(kCacheLine) RingIndex {
  std::atomic<uint64_t> value{0};
};
static_assert(sizeof(RingIndex) == kCacheLine);
static_assert(std::atomic<uint64_t>::is_always_lock_free, "cross-process atomics must be lock-free");

struct RingIndices {
  RingIndex head;  // written by the consumer only: next slot to read
  RingIndex tail;  // written by the producer only: next slot to write
};
static_assert(sizeof(RingIndices) == 2 * kCacheLine);

enum class RingResult : uint8_t {
  kOk,
  kFull,     // producer: no free slot now
  kEmpty,    // consumer: nothing to read now
  kCorrupt,  // the peer wrote an impossible index; stop using this ring
};

// True for a power of two in [2, 2^24].
constexpr bool valid_ring_capacity(uint64_t n) noexcept {
  return n >= 2 && n <= (uint64_t{1} << 24) && (n & (n - 1)) == 0;
}

template <typename Desc>
class RingProducer {
  static_assert(std::is_trivially_copyable_v<Desc> && sizeof(Desc) == 64,
                "ring descriptors are trivially copyable 64-byte records");

 public:
  RingProducer() = default;
  // `capacity` comes from this process's own configuration, never from shared
  // memory. Starts at the indices' current values (zero for a fresh ring).
  RingProducer(RingIndices* idx, Desc* slots, uint64_t capacity) noexcept
      : idx_(idx), slots_(slots), mask_(capacity - 1), capacity_(capacity) {
    // relaxed: set up before the ring is shared with the peer.
    tail_ = idx_->tail.value.load(std::memory_order_relaxed);
    cached_head_ = tail_;
  }

  RingResult try_push(const Desc& d) noexcept {
    if (tail_ - cached_head_ >= capacity_) {
      // acquire: pairs with the consumer's release store of head in try_pop(), so
      // its reads of the slot are done before we overwrite it.
      uint64_t h = idx_->head.value.load(std::memory_order_acquire);
      if (tail_ - h > capacity_ || h - cached_head_ > capacity_) return RingResult::kCorrupt;
      cached_head_ = h;
      if (tail_ - cached_head_ >= capacity_) return RingResult::kFull;
    }
    std::memcpy(&slots_[tail_ & mask_], &d, sizeof(Desc));
    ++tail_;
    // release: publishes the slot contents to the consumer's acquire load of tail.
    idx_->tail.value.store(tail_, std::memory_order_release);
    return RingResult::kOk;
  }

  // Slots that a push could use right now without reloading the head.
  uint64_t free_slots_hint() const noexcept { return capacity_ - (tail_ - cached_head_); }
  uint64_t capacity() const noexcept { return capacity_; }
  uint64_t pushed() const noexcept { return tail_; }

 private:
  RingIndices* idx_ = nullptr;
  Desc* slots_ = nullptr;
  uint64_t mask_ = 0;
  uint64_t capacity_ = 0;
  uint64_t tail_ = 0;         // authoritative; the shared copy is only published
  uint64_t cached_head_ = 0;  // last head seen
};

template <typename Desc>
class RingConsumer {
  static_assert(std::is_trivially_copyable_v<Desc> && sizeof(Desc) == 64,
                "ring descriptors are trivially copyable 64-byte records");

 public:
  RingConsumer() = default;
  RingConsumer(RingIndices* idx, Desc* slots, uint64_t capacity) noexcept
      : idx_(idx), slots_(slots), mask_(capacity - 1), capacity_(capacity) {
    // relaxed: set up before the ring is shared with the peer.
    head_ = idx_->head.value.load(std::memory_order_relaxed);
    cached_tail_ = head_;
  }

  // Copies the next descriptor out of shared memory (one read, so the peer
  // cannot change it between our check and our use) and frees the slot.
  RingResult try_pop(Desc* out) noexcept {
    return try_pop_if(out, [](const Desc&) { return true; });
  }

  // Like try_pop(), but consumes the descriptor only if `accept(*out)` is
  // true; a declined one stays at the head and the result is kEmpty. The
  // decision is made on the private copy, so the peer cannot change the
  // descriptor between the check and its use.
  template <typename Accept>
  RingResult try_pop_if(Desc* out, Accept&& accept) noexcept {
    if (head_ == cached_tail_) {
      RingResult r = refresh();
      if (r != RingResult::kOk) return r;
      if (head_ == cached_tail_) return RingResult::kEmpty;
    }
    std::memcpy(out, &slots_[head_ & mask_], sizeof(Desc));
    if (!accept(static_cast<const Desc&>(*out))) return RingResult::kEmpty;
    ++head_;
    // release: our read of the slot happens before the producer may reuse it
    // (pairs with the acquire load of head in try_push()).
    idx_->head.value.store(head_, std::memory_order_release);
    return RingResult::kOk;
  }

  // True if a descriptor is waiting (reloads the producer's tail).
  RingResult peek() noexcept {
    if (head_ != cached_tail_) return RingResult::kOk;
    RingResult r = refresh();
    if (r != RingResult::kOk) return r;
    return head_ == cached_tail_ ? RingResult::kEmpty : RingResult::kOk;
  }

  uint64_t capacity() const noexcept { return capacity_; }
  uint64_t popped() const noexcept { return head_; }

 private:
  RingResult refresh() noexcept {
    // acquire: pairs with the producer's release store of tail in try_push(), so
    // the slot contents written before it are visible.
    uint64_t t = idx_->tail.value.load(std::memory_order_acquire);
    if (t - head_ > capacity_ || t - cached_tail_ > capacity_) return RingResult::kCorrupt;
    cached_tail_ = t;
    return RingResult::kOk;
  }

  RingIndices* idx_ = nullptr;
  Desc* slots_ = nullptr;
  uint64_t mask_ = 0;
  uint64_t capacity_ = 0;
  uint64_t head_ = 0;         // authoritative
  uint64_t cached_tail_ = 0;  // last tail seen
};

}  // namespace rocket::shm
