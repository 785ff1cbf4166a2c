#include "rocket/shm/pool.h"

#include <iterator>
#include <string>

namespace rocket::shm {
namespace {
constexpr uint64_t kMinAlign = 64;
constexpr uint64_t kPageAlign = 4096;
constexpr uint64_t kPageAlignFrom = 64 * 1024;

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

PoolAllocator::PoolAllocator(uint64_t capacity) : capacity_(capacity / kMinAlign * kMinAlign) {
  if (capacity_ > 0) insert_free(0, capacity_);
}

void PoolAllocator::insert_free(uint64_t off, uint64_t size) {
  free_by_offset_.emplace(off, size);
  free_by_size_.emplace(size, off);
}

void PoolAllocator::erase_free(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

Result<uint64_t> PoolAllocator::allocate(uint64_t size) {
  if (size == 0) return invalid_argument("allocation of zero bytes");
  if (size > capacity_) {
    return invalid_argument("payload of " + std::to_string(size) + " bytes exceeds the pool's capacity of " +
                           std::to_string(capacity_) + " bytes; connect with a larger pool");
  }
  const uint64_t align = size >= kPageAlignFrom ? kPageAlign : kMinAlign;
  const uint64_t need = RoundUp(size, kMinAlign);
  // Best fit: the smallest extent that holds `need` plus any alignment gap.
  // Extents are 64-byte aligned, so the gap is at most align - 64.
  auto it = free_by_size_.lower_bound({need, 0});
  for (; it != free_by_size_.end(); ++it) {
    uint64_t off = it->second, len = it->first;
    uint64_t start = RoundUp(off, align);
    if (start - off + need <= len) {
      auto ext = free_by_offset_.find(off);
      erase_free(ext);
      if (start > off) insert_free(off, start - off);
      if (start + need < off + len) insert_free(start + need, off + len - start - need);
      live_.emplace(start, need);
      in_use_ += need;
      return start;
    }
    if (align == kMinAlign) break;  // unreachable: any extent >= need fits
  }
  return resource_exhausted("pool has " + std::to_string(capacity_ - in_use_) + " of " +
                           std::to_string(capacity_) + " bytes free, largest block " +
                           std::to_string(largest_free()) + "; " + std::to_string(size) +
                           " needed (free replies and buffers, or connect with a larger pool)");
}

Status PoolAllocator::free(uint64_t offset) {
  auto live = live_.find(offset);
  if (live == live_.end()) return not_found("no live pool block at offset " + std::to_string(offset));
  uint64_t off = live->first, len = live->second;
  live_.erase(live);
  in_use_ -= len;
  // Coalesce with the neighbours.
  auto next = free_by_offset_.lower_bound(off);
  if (next != free_by_offset_.end() && next->first == off + len) {
    len += next->second;
    erase_free(next);
  }
  auto prev = free_by_offset_.lower_bound(off);
  if (prev != free_by_offset_.begin()) {
    --prev;
    if (prev->first + prev->second == off) {
      off = prev->first;
      len += prev->second;
      erase_free(prev);
    }
  }
  insert_free(off, len);
  return ok_status();
}

std::map<uint64_t, uint64_t>::const_iterator PoolAllocator::free_at_end() const noexcept {
  if (free_by_offset_.empty()) return free_by_offset_.end();
  auto last = std::prev(free_by_offset_.end());
  return last->first + last->second == capacity_ ? last : free_by_offset_.end();
}

void PoolAllocator::grow(uint64_t capacity) {
  capacity = capacity / kMinAlign * kMinAlign;
  if (capacity <= capacity_) return;
  uint64_t off = capacity_, len = capacity - capacity_;
  if (auto last = free_at_end(); last != free_by_offset_.end()) {
    off = last->first;
    len += last->second;
    erase_free(free_by_offset_.find(off));
  }
  insert_free(off, len);
  capacity_ = capacity;
}

uint64_t PoolAllocator::capacity_for(uint64_t size) const noexcept {
  if (size == 0) return capacity_;
  const uint64_t align = size >= kPageAlignFrom ? kPageAlign : kMinAlign;
  const uint64_t need = RoundUp(size, kMinAlign);
  if (largest_free() >= need + align - kMinAlign) return capacity_;
  // Where the free extent at the end starts (the end itself if none).
  auto last = free_at_end();
  const uint64_t tail = last != free_by_offset_.end() ? last->first : capacity_;
  return RoundUp(tail, align) + need;
}

uint64_t PoolAllocator::block_size(uint64_t offset) const {
  auto it = live_.find(offset);
  return it == live_.end() ? 0 : it->second;
}

uint64_t PoolAllocator::largest_free() const noexcept {
  return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
}

}  // namespace rocket::shm
