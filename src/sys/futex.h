// Futex wait/wake and a spin-loop hint, shared by the runtime (futex words in
// shared memory, woken by another process) and the movers (process-private
// words).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>

namespace rocket::detail {

// kShared for a word in shared memory that another process wakes;
// kPrivate (cheaper in the kernel) for a word only this process touches.
enum class FutexScope { kShared, kPrivate };

// Sleeps while *word == expected, at most `timeout`. Spurious returns are
// allowed; the caller re-checks its condition.
inline void futex_wait(const std::atomic<uint32_t>* word, uint32_t expected, std::chrono::nanoseconds timeout,
                       FutexScope scope = FutexScope::kShared) noexcept {
  timespec ts{static_cast<time_t>(timeout.count() / 1000000000), static_cast<long>(timeout.count() % 1000000000)};
  int op = scope == FutexScope::kShared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE;
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), op, expected, &ts, nullptr, 0);
}

inline void futex_wake_all(const std::atomic<uint32_t>* word, FutexScope scope = FutexScope::kShared) noexcept {
  int op = scope == FutexScope::kShared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE;
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), op, INT_MAX, nullptr, nullptr, 0);
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace rocket::detail
