// Ops every `rocket serve` offers, for smoke tests, integrity checks and the
// echo benchmark:
//
//   echo        the response is the request's own bytes, in place (no copy on
//               the server: what a transform-in-place handler costs)
//   echo_copy   the response is a copy of the request in the server pool (what
//               a handler that produces fresh output costs)
//   checksum    the response is checksum64() of the request, 8 bytes
//   gpu_echo    a GPU backend's round trip: the request is copied from the
//               shared pool into GPU memory and back into the server pool on
//               the copy engines (kUnavailable where there is no GPU)
//   gpu_share   the request is copied into GPU memory and answered from there
//               by reference (Response::share_device): a caller that accepts
//               GPU responses reads the server's device memory with no copy
//               back; others get it copied into the pool. Two output buffers
//               per dispatcher: while clients hold two replies, further
//               calls on that dispatcher get kResourceExhausted (a benchmark
//               op; a real backend bounds what each tenant may hold)
//   stats       the server's counters (ServerStats) as one JSON object, for
//               `rocket top`; only the server's own uid may call it
//
//   rocket::Server server({.socket_path = path});
//   if (auto s = rocket::register_builtin_ops(server); !s.ok()) die(s);
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "rocket/runtime/server.h"
#include "rocket/status.h"

namespace rocket {

Status register_builtin_ops(Server& server);

// A fast 64-bit checksum (not cryptographic) for end-to-end integrity checks.
uint64_t checksum64(std::span<const std::byte> bytes) noexcept;

}  // namespace rocket
