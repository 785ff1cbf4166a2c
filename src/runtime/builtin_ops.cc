#include "rocket/runtime/builtin_ops.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "mover/cuda_mover.h"

namespace rocket {

namespace {
// gpu_echo's device buffer, one per dispatcher thread, grown as needed.
class DeviceScratch {
 public:
  ~DeviceScratch() {
    if (p_ != nullptr) api_->device_free(p_);
  }
  Result<void*> reserve(size_t n) {
    if (api_ == nullptr) {
      auto api = detail::load_cuda_module(0);
      if (!api.ok()) return unavailable("gpu_echo needs a GPU: " + api.status().message());
      api_ = *api;
    }
    if (n <= cap_) return p_;
    if (p_ != nullptr) api_->device_free(p_);
    p_ = nullptr;
    cap_ = 0;
    if (api_->device_alloc(&p_, n) != 0) return resource_exhausted(std::string("gpu_echo: ") + api_->last_error());
    cap_ = n;
    return p_;
  }

 private:
  const RocketCudaApi* api_ = nullptr;
  void* p_ = nullptr;
  size_t cap_ = 0;
};
// gpu_share's output buffers, one set per dispatcher thread: a buffer is lent
// to the client with its response and comes back when the client drops the
// reply (or its session ends), possibly on another thread.
class LentBuffers {
 public:
  static constexpr int kSlots = 2;
  // A free buffer of at least `n` bytes; kResourceExhausted while all are lent.
  Result<std::pair<int, void*>> take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < kSlots; ++i) {
      if (lent_[i]) continue;
      ROCKET_ASSIGN_OR_RETURN(void* p, slots_[i].reserve(n));
      lent_[i] = true;
      return std::make_pair(i, p);
    }
    return resource_exhausted("gpu_share: all output buffers are lent to clients; drop some replies");
  }
  void give_back(int slot) {
    std::lock_guard<std::mutex> lock(mu_);
    lent_[slot] = false;
  }

 private:
  std::mutex mu_;
  DeviceScratch slots_[kSlots];
  bool lent_[kSlots] = {};
};
}  // namespace

uint64_t checksum64(std::span<const std::byte> bytes) noexcept {
  // Four independent multiply-xor lanes keep the loop at memory speed; the
  // length and lane mixing at the end make truncation and reordering visible.
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ULL;
  uint64_t lane[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL};
  const std::byte* p = bytes.data();
  size_t n = bytes.size();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      lane[k] = (lane[k] ^ w) * kMul;
      lane[k] ^= lane[k] >> 29;
    }
  }
  uint64_t h = n * kMul;
  for (int k = 0; k < 4; ++k) h = (h ^ lane[k]) * kMul + static_cast<uint64_t>(k);
  for (; i < n; ++i) h = (h ^ static_cast<uint8_t>(p[i])) * 0x100000001b3ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

Status register_builtin_ops(Server& server) {
  ROCKET_RETURN_IF_ERROR(server.handle("echo", [](const Request& req, Response& resp) {
    return resp.reply_in_place(0, req.data().size());
  }));
  ROCKET_RETURN_IF_ERROR(server.handle("echo_copy", [](const Request& req, Response& resp) {
    return resp.write(req.data());
  }));
  ROCKET_RETURN_IF_ERROR(server.handle("checksum", [](const Request& req, Response& resp) {
    uint64_t sum = checksum64(req.data());
    return resp.write(std::as_bytes(std::span{&sum, 1}));
  }));
  auto gpu_echo = [] {
    auto scratch = std::make_shared<DeviceScratch>();
    return Handler([scratch](const Request& req, Response& resp) -> Status {
      const size_t n = req.data().size();
      ROCKET_ASSIGN_OR_RETURN(void* dev, scratch->reserve(std::max<size_t>(n, 1)));
      ROCKET_RETURN_IF_ERROR(req.copy_to_device(dev));
      return resp.write_from_device(dev, n);
    });
  };
  ROCKET_RETURN_IF_ERROR(server.handle_per_thread("gpu_echo", gpu_echo));
  auto gpu_share = [] {
    auto lent = std::make_shared<LentBuffers>();
    return Handler([lent](const Request& req, Response& resp) -> Status {
      const size_t n = req.data().size();
      ROCKET_ASSIGN_OR_RETURN(auto slot, lent->take(std::max<size_t>(n, 1)));
      const auto [index, dev] = slot;
      Status st = req.copy_to_device(dev);
      if (st.ok()) st = resp.share_device(dev, n, [lent, i = index] { lent->give_back(i); });
      if (!st.ok()) lent->give_back(index);  // share_device keeps no release on error
      return st;
    });
  };
  ROCKET_RETURN_IF_ERROR(server.handle_per_thread("gpu_share", gpu_share));
  // The server's counters, for `rocket top`: the operator's account only.
  OpOptions operator_only;
  operator_only.allowed_uids = {::geteuid()};
  return server.handle(
      "stats",
      [&server](const Request&, Response& resp) -> Status {
        const ServerStats st = server.stats();
        const nlohmann::json j{{"sessions_open", st.sessions_open},
                               {"sessions_total", st.sessions_total},
                               {"sessions_refused", st.sessions_refused},
                               {"requests", st.requests},
                               {"request_errors", st.request_errors},
                               {"protocol_errors", st.protocol_errors},
                               {"bytes_mapped", st.bytes_mapped},
                               {"mapped_budget_bytes", st.mapped_budget_bytes},
                               {"pool_grows", st.pool_grows},
                               {"requests_helped", st.requests_helped},
                               {"lends", st.lends},
                               {"lends_refused", st.lends_refused},
                               {"lends_returned_on_exit", st.lends_returned_on_exit},
                               {"memory_lent_bytes", st.memory_lent_bytes},
                               {"memory_held_over_bytes", st.memory_held_over_bytes},
                               {"gpu_handles_opened", st.gpu_handles_opened},
                               {"gpu_responses_shared", st.gpu_responses_shared},
                               {"gpu_responses_copied", st.gpu_responses_copied}};
        const std::string text = j.dump();
        return resp.write(std::as_bytes(std::span<const char>(text.data(), text.size())));
      },
      operator_only);
}

}  // namespace rocket
