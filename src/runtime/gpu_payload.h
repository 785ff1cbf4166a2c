// GPU payloads by reference. A request (Client::call_gpu) names a range of
// the client's device memory, a response (Response::share_device) a range of
// the server's, with a CUDA IPC handle; the receiver opens each allocation's
// handle once per session, caches it, and reads the payload in place. No byte
// of the payload is copied. Both sides use the `cuda` module
// (mover/cuda/cuda_api.h); where it or a GPU is missing they say so.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "mover/cuda/cuda_api.h"
#include "rocket/status.h"
#include "runtime/protocol.h"

namespace rocket::detail {

// The sender's side: the reference for [device_ptr, device_ptr + bytes),
// which must lie in one device allocation of this process. `who` prefixes the
// error messages (the API call that was given the pointer).
Result<GpuRef> make_gpu_ref(const void* device_ptr, size_t bytes, std::string_view who);

// A resolved reference: the payload's address in this process, and the open
// allocation it lies in, closed when the last holder lets go.
struct GpuView {
  void* data = nullptr;
  size_t size = 0;
  std::shared_ptr<void> mapping;
};

// The receiver's side, one per session: the handles the peer named, opened in
// this process. An evicted or destroyed entry's allocation stays open while a
// GpuView holds it.
// Thread safety: none; the owner serialises use (on the server the session's
// `mu` where other dispatchers may run its requests, else its dispatcher; the
// client's session lock).
class GpuHandleCache {
 public:
  GpuHandleCache() = default;
  GpuHandleCache(const GpuHandleCache&) = delete;
  GpuHandleCache& operator=(const GpuHandleCache&) = delete;
  ~GpuHandleCache() = default;

  // `ref`'s payload in this process, after checking its range against the
  // allocation's real size. kFailedPrecondition where this process has no
  // GPU; kInvalidArgument for a bad reference. `who` names the side for the
  // error messages ("GPU payload", "GPU response").
  Result<GpuView> resolve(const GpuRef& ref, std::string_view who = "GPU payload");
  // Handles opened so far (a cached one is opened once).
  uint64_t opened() const noexcept { return opened_; }

  // At most this many allocations open per session; the least recently used
  // is closed to make room, so a client cannot pin unbounded GPU mappings.
  static constexpr size_t kMaxOpen = 64;

 private:
  struct Entry {
    std::array<unsigned char, 64> handle;
    std::shared_ptr<void> base;  // closes the handle when the last holder lets go
    size_t bytes;
    uint64_t last_use;
  };
  const RocketCudaApi* api_ = nullptr;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
  uint64_t opened_ = 0;
};

}  // namespace rocket::detail
