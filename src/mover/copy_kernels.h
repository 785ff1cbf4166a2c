// Copy kernels shared by the CPU-side engines: regular stores (memcpy) and
// non-temporal streaming stores (AVX-512, AVX2 or SSE2, chosen once by CPUID).
// Streaming stores write around the cache: the right choice when the
// destination is large and will not be read soon by this core (cache bypass).
#pragma once

#include <cstddef>
#include <string_view>

#include "rocket/mover/mover.h"

namespace rocket::detail {

enum class StreamIsa { kNone, kSse2, kAvx2, kAvx512 };

// The widest streaming-store variant this CPU supports.
StreamIsa stream_isa() noexcept;
std::string_view stream_isa_name(StreamIsa isa) noexcept;

// Copies with non-temporal stores (the destination bypasses the cache), then
// fences so the data is globally visible when it returns.
void copy_stream(std::byte* dst, const std::byte* src, size_t n) noexcept;
// Copies with the store kind `cache` asks for: kBypass streams, kInject and
// kAuto use regular stores.
void copy_with_policy(std::byte* dst, const std::byte* src, size_t n, Cache cache) noexcept;

// Below this size kAuto means regular stores even for engines that default
// to bypass: streaming a small buffer out of the cache only costs.
inline constexpr size_t kStreamThreshold = size_t{1} << 20;

}  // namespace rocket::detail
