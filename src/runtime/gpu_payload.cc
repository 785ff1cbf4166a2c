#include "runtime/gpu_payload.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "mover/cuda_mover.h"

namespace rocket::detail {

Result<GpuRef> make_gpu_ref(const void* device_ptr, size_t bytes) {
  ROCKET_ASSIGN_OR_RETURN(const RocketCudaApi* api, load_cuda_module(0));
  if (device_ptr == nullptr) return invalid_argument("call_gpu: null device pointer");
  if (api->pointer_kind(device_ptr) != ROCKET_CUDA_DEVICE) {
    return invalid_argument("call_gpu: the request is not device memory (use call() for host memory)");
  }
  void* base = nullptr;
  size_t alloc_bytes = 0;
  if (api->mem_range(device_ptr, &base, &alloc_bytes) != 0) {
    return invalid_argument(std::string("call_gpu: ") + api->last_error());
  }
  const size_t offset = static_cast<size_t>(static_cast<const std::byte*>(device_ptr) - static_cast<std::byte*>(base));
  if (bytes > alloc_bytes - offset) {
    return invalid_argument("call_gpu: " + std::to_string(bytes) + " bytes run past the end of the device allocation");
  }
  GpuRef ref{};
  ref.magic = kGpuRefMagic;
  ref.offset = offset;
  ref.length = bytes;
  if (api->ipc_get(base, ref.handle) != 0) return unavailable(std::string("call_gpu: ") + api->last_error());
  return ref;
}

GpuHandleCache::~GpuHandleCache() {
  for (const Entry& e : entries_) api_->ipc_close(e.base);
}

Result<void*> GpuHandleCache::resolve(const GpuRef& ref) {
  if (ref.magic != kGpuRefMagic) return invalid_argument("GPU payload reference has a wrong magic");
  if (api_ == nullptr) {
    auto api = load_cuda_module(0);
    if (!api.ok()) return failed_precondition("this server cannot take GPU payloads: " + api.status().message());
    api_ = *api;
  }
  std::array<unsigned char, 64> key;
  std::memcpy(key.data(), ref.handle, key.size());
  ++clock_;
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.handle == key; });
  if (it == entries_.end()) {
    void* base = nullptr;
    if (api_->ipc_open(ref.handle, &base) != 0) {
      return invalid_argument(std::string("GPU payload: cannot open the IPC handle: ") + api_->last_error());
    }
    void* real_base = nullptr;
    size_t bytes = 0;
    if (api_->mem_range(base, &real_base, &bytes) != 0) {
      std::string why = api_->last_error();
      api_->ipc_close(base);
      return internal_error("GPU payload: " + why);
    }
    if (entries_.size() >= kMaxOpen) {
      auto lru = std::min_element(entries_.begin(), entries_.end(),
                                  [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
      api_->ipc_close(lru->base);
      entries_.erase(lru);
    }
    entries_.push_back(Entry{key, base, bytes, clock_});
    ++opened_;
    it = entries_.end() - 1;
  }
  it->last_use = clock_;
  if (ref.offset > it->bytes || ref.length > it->bytes - ref.offset) {
    return invalid_argument("GPU payload [" + std::to_string(ref.offset) + ", +" + std::to_string(ref.length) +
                            ") lies outside its allocation of " + std::to_string(it->bytes) + " bytes");
  }
  return static_cast<std::byte*>(it->base) + ref.offset;
}

}  // namespace rocket::detail
