// Single-owner allocator for one pool segment.
//
// Only the process that owns a pool allocates in it (the client in the client
// pool, the server in the server pool); the other side returns blocks by
// message. All bookkeeping lives in the owner's private heap, never in shared
// memory, so a peer cannot corrupt it, and free() can tell a real block from a
// forged offset sent by a hostile peer.
//
// Best-fit over free extents, coalescing on free; O(log n) per operation.
// Blocks are 64-byte aligned (a cache line); blocks of 64 KiB and more are
// page-aligned so copy engines and DMA see whole pages.
//
// Thread safety: not thread-safe; the owner serialises calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "rocket/status.h"

namespace rocket::shm {

class PoolAllocator {
 public:
  explicit PoolAllocator(uint64_t capacity);

  // Returns the offset of a block of at least `size` bytes. kInvalidArgument if
  // `size` is zero or can never fit (larger than the pool);
  // kResourceExhausted if it would fit but the pool has no room now.
  Result<uint64_t> allocate(uint64_t size);
  // Frees the block that starts at `offset`. kNotFound if no live block starts
  // there (a double free or a forged offset); nothing changes then.
  Status free(uint64_t offset);
  // Size of the live block at `offset`, or 0 if there is none.
  uint64_t block_size(uint64_t offset) const;

  // Extends the pool to `capacity` bytes (the new space joins the free extent
  // at the old end); a capacity not above the current one changes nothing.
  void grow(uint64_t capacity);
  // The capacity at which allocate(size) would succeed now, given the free
  // space at the pool's end (alignment included); at most the current
  // capacity when it already would.
  uint64_t capacity_for(uint64_t size) const noexcept;

  uint64_t capacity() const noexcept { return capacity_; }
  uint64_t bytes_in_use() const noexcept { return in_use_; }
  size_t live_blocks() const noexcept { return live_.size(); }
  // Largest block allocate() could return now.
  uint64_t largest_free() const noexcept;

 private:
  void insert_free(uint64_t off, uint64_t size);
  // The free extent that ends where the pool ends, or free_by_offset_.end().
  std::map<uint64_t, uint64_t>::const_iterator free_at_end() const noexcept;
  void erase_free(std::map<uint64_t, uint64_t>::iterator it);

  uint64_t capacity_;
  uint64_t in_use_ = 0;
  std::map<uint64_t, uint64_t> free_by_offset_;           // offset -> size
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;  // (size, offset)
  std::map<uint64_t, uint64_t> live_;                     // offset -> size (rounded)
};

}  // namespace rocket::shm
