// Benchmark memory: page-aligned, pre-faulted anonymous mappings, optionally
// huge-page advised (as large-data applications allocate) and registered with
// an engine that needs it (the GPU), unregistered before the unmap.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>

#include "rocket/mover/mover.h"

namespace rocket::tools {

struct MappedBufferOptions {
  int fill = 0;                    // every byte, which also pre-faults every page
  bool huge_pages = false;         // MADV_HUGEPAGE, size rounded up to 2 MiB
  Mover* register_with = nullptr;  // registered if the engine needs registered memory
};

class MappedBuffer {
 public:
  explicit MappedBuffer(size_t n, MappedBufferOptions o = {}) : size_(n) {
    constexpr size_t kHuge = size_t{2} << 20;
    cap_ = std::max<size_t>(n, 1);
    if (o.huge_pages) cap_ = (cap_ + kHuge - 1) / kHuge * kHuge;
    void* p = ::mmap(nullptr, cap_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    if (o.huge_pages) ::madvise(p, cap_, MADV_HUGEPAGE);  // advisory
    p_ = static_cast<std::byte*>(p);
    std::memset(p_, o.fill, cap_);
    Mover* m = o.register_with;
    if (m != nullptr && m->capabilities().needs_registered_memory && m->register_memory(p_, cap_, false).ok()) {
      registered_ = m;
    }
  }
  ~MappedBuffer() {
    if (registered_ != nullptr) registered_->unregister_memory(p_);
    if (p_ != nullptr) ::munmap(p_, cap_);
  }
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;

  // nullptr if the mapping failed.
  std::byte* data() const { return p_; }
  size_t size() const { return size_; }
  operator std::span<std::byte>() const { return {p_, size_}; }
  operator std::span<const std::byte>() const { return {p_, size_}; }

 private:
  size_t size_;
  size_t cap_ = 0;
  std::byte* p_ = nullptr;
  Mover* registered_ = nullptr;
};

}  // namespace rocket::tools
