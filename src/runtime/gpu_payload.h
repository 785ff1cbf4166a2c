// GPU payloads by reference (Client::call_gpu): the client names a range of
// its own device memory with a CUDA IPC handle; the server opens the handle
// once per session, caches it, and hands its handler a device pointer. No
// byte of the payload is copied. Both sides use the `cuda` module
// (mover/cuda/cuda_api.h); where it or a GPU is missing they say so.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mover/cuda/cuda_api.h"
#include "rocket/status.h"
#include "runtime/protocol.h"

namespace rocket::detail {

// Client side: the reference for [device_ptr, device_ptr + bytes), which must
// lie in one device allocation of this process.
Result<GpuRef> make_gpu_ref(const void* device_ptr, size_t bytes);

// Server side, one per session: the handles a client named, opened in this
// process. Closes them all when destroyed (the session ends).
// Thread safety: owned by the session's dispatcher thread.
class GpuHandleCache {
 public:
  GpuHandleCache() = default;
  GpuHandleCache(const GpuHandleCache&) = delete;
  GpuHandleCache& operator=(const GpuHandleCache&) = delete;
  ~GpuHandleCache();

  // The device address of `ref`'s payload, after checking its range against
  // the allocation's real size. kFailedPrecondition where this process has no
  // GPU; kInvalidArgument for a bad reference.
  Result<void*> resolve(const GpuRef& ref);
  // Handles opened so far (a cached one is opened once).
  uint64_t opened() const noexcept { return opened_; }

  // At most this many allocations open per session; the least recently used
  // is closed to make room, so a client cannot pin unbounded GPU mappings.
  static constexpr size_t kMaxOpen = 64;

 private:
  struct Entry {
    std::array<unsigned char, 64> handle;
    void* base;
    size_t bytes;
    uint64_t last_use;
  };
  const RocketCudaApi* api_ = nullptr;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
  uint64_t opened_ = 0;
};

}  // namespace rocket::detail
