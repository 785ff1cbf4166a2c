#include "mover/copy_kernels.h"

#include <cpuid.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace rocket::detail {
namespace {

StreamIsa detect() noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) != 0) {
    // AVX-512F (EBX bit 16) and AVX2 (EBX bit 5) need the OS to save the
    // registers: check XCR0 via __builtin_cpu_supports, which does.
    if ((b & (1u << 16)) != 0 && __builtin_cpu_supports("avx512f")) return StreamIsa::kAvx512;
    if ((b & (1u << 5)) != 0 && __builtin_cpu_supports("avx2")) return StreamIsa::kAvx2;
  }
  if (__builtin_cpu_supports("sse2")) return StreamIsa::kSse2;
  return StreamIsa::kNone;
}

// Each body copies whole 64-byte lines to a 64-byte-aligned destination;
// loads are unaligned. The caller handles head and tail.
__attribute__((target("avx512f"))) void body_avx512(std::byte* d, const std::byte* s, size_t lines) noexcept {
  for (size_t i = 0; i < lines; ++i) {
    __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(s + i * 64));
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i * 64), v);
  }
}

__attribute__((target("avx2"))) void body_avx2(std::byte* d, const std::byte* s, size_t lines) noexcept {
  for (size_t i = 0; i < lines; ++i) {
    __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i * 64));
    __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i * 64 + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i * 64), v0);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i * 64 + 32), v1);
  }
}

void body_sse2(std::byte* d, const std::byte* s, size_t lines) noexcept {
  for (size_t i = 0; i < lines; ++i) {
    for (int k = 0; k < 4; ++k) {
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * 64 + 16 * k));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i * 64 + 16 * k), v);
    }
  }
}

const StreamIsa g_isa = detect();

}  // namespace

StreamIsa stream_isa() noexcept { return g_isa; }

std::string_view stream_isa_name(StreamIsa isa) noexcept {
  switch (isa) {
    case StreamIsa::kAvx512: return "avx512";
    case StreamIsa::kAvx2: return "avx2";
    case StreamIsa::kSse2: return "sse2";
    case StreamIsa::kNone: return "none";
  }
  return "none";
}

void copy_stream(std::byte* dst, const std::byte* src, size_t n) noexcept {
  if (n < 256 || g_isa == StreamIsa::kNone) {
    std::memcpy(dst, src, n);
    return;
  }
  // Head: bring the destination to a cache-line boundary with regular stores.
  size_t head = (64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t lines = n / 64;
  switch (g_isa) {
    case StreamIsa::kAvx512: body_avx512(dst, src, lines); break;
    case StreamIsa::kAvx2: body_avx2(dst, src, lines); break;
    default: body_sse2(dst, src, lines); break;
  }
  // Streaming stores are weakly ordered: fence so that whoever learns of the
  // completion after us (another thread, another process) sees the data.
  _mm_sfence();
  std::memcpy(dst + lines * 64, src + lines * 64, n - lines * 64);
}

void copy_with_policy(std::byte* dst, const std::byte* src, size_t n, Cache cache) noexcept {
  if (cache == Cache::kBypass) {
    copy_stream(dst, src, n);
  } else {
    std::memcpy(dst, src, n);
  }
}

}  // namespace rocket::detail
