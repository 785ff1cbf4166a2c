#include "runtime/gpu_payload.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "mover/cuda_mover.h"

namespace rocket::detail {

Result<GpuRef> make_gpu_ref(const void* device_ptr, size_t bytes, std::string_view who) {
  auto w = [who] { return std::string(who); };  // error paths only: no allocation per call
  auto loaded = load_cuda_module(0);
  if (!loaded.ok()) return unavailable(w() + ": " + loaded.status().message());
  const RocketCudaApi* api = *loaded;
  if (device_ptr == nullptr) return invalid_argument(w() + ": null device pointer");
  if (api->pointer_kind(device_ptr) != ROCKET_CUDA_DEVICE) {
    return invalid_argument(w() + ": the pointer is not device memory (host bytes go through the pools)");
  }
  void* base = nullptr;
  size_t alloc_bytes = 0;
  if (api->mem_range(device_ptr, &base, &alloc_bytes) != 0) {
    return invalid_argument(w() + ": " + api->last_error());
  }
  const size_t offset = static_cast<size_t>(static_cast<const std::byte*>(device_ptr) - static_cast<std::byte*>(base));
  if (bytes > alloc_bytes - offset) {
    return invalid_argument(w() + ": " + std::to_string(bytes) + " bytes run past the end of the device allocation");
  }
  GpuRef ref{};
  ref.magic = kGpuRefMagic;
  ref.offset = offset;
  ref.length = bytes;
  if (api->ipc_get(base, ref.handle) != 0) return unavailable(w() + ": " + api->last_error());
  return ref;
}

Result<GpuView> GpuHandleCache::resolve(const GpuRef& ref, std::string_view who) {
  auto w = [who] { return std::string(who); };  // error paths only: no allocation per call
  if (ref.magic != kGpuRefMagic) return invalid_argument(w() + " reference has a wrong magic");
  if (api_ == nullptr) {
    auto api = load_cuda_module(0);
    if (!api.ok()) return failed_precondition("this process cannot take a " + w() + ": " + api.status().message());
    api_ = *api;
  }
  std::array<unsigned char, 64> key;
  std::memcpy(key.data(), ref.handle, key.size());
  ++clock_;
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.handle == key; });
  if (it == entries_.end()) {
    void* opened = nullptr;
    if (api_->ipc_open(ref.handle, &opened) != 0) {
      return invalid_argument(w() + ": cannot open the IPC handle: " + api_->last_error());
    }
    const RocketCudaApi* api = api_;
    std::shared_ptr<void> base(opened, [api](void* p) { api->ipc_close(p); });
    void* real_base = nullptr;
    size_t bytes = 0;
    if (api_->mem_range(opened, &real_base, &bytes) != 0) return internal_error(w() + ": " + api_->last_error());
    if (entries_.size() >= kMaxOpen) {
      auto lru = std::min_element(entries_.begin(), entries_.end(),
                                  [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
      entries_.erase(lru);
    }
    entries_.push_back(Entry{key, std::move(base), bytes, clock_});
    ++opened_;
    it = entries_.end() - 1;
  }
  it->last_use = clock_;
  if (ref.offset > it->bytes || ref.length > it->bytes - ref.offset) {
    return invalid_argument(w() + " [" + std::to_string(ref.offset) + ", +" + std::to_string(ref.length) +
                            ") lies outside its allocation of " + std::to_string(it->bytes) + " bytes");
  }
  return GpuView{static_cast<std::byte*>(it->base.get()) + ref.offset, static_cast<size_t>(ref.length), it->base};
}

}  // namespace rocket::detail
