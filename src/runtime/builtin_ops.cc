#include "rocket/runtime/builtin_ops.h"

#include <cstring>

namespace rocket {

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
  return ok_status();
}

}  // namespace rocket
