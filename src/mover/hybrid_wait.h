// Hybrid waiting for an asynchronous copy (DESIGN.md §3): sleep for about
// 0.95 of the predicted time, then poll -- UMWAIT where the CPU has WAITPKG,
// `pause` otherwise -- and fall back to futex sleeps for waits that run long.
// A waiter never burns a core for the length of a large copy.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace rocket::detail {

// How late the kernel may end this thread's timed sleeps (PR_GET_TIMERSLACK,
// read once per thread): a sleep meant to end before a copy does aims this
// much earlier.
std::chrono::nanoseconds timer_slack() noexcept;

// CPUID leaf 7 sub-leaf 0, ECX bit 5.
bool cpu_has_waitpkg() noexcept;

struct WaitStats {
  uint64_t sleeps = 0;  // futex sleeps taken
  uint64_t polls = 0;   // poll iterations
};

// Waits until `*word != 0`. `predicted` is the copy's predicted total time
// and `started` when it was submitted. `*waiters` is incremented around futex
// sleeps so the completer knows to wake (it must futex-wake `word` when it
// sees waiters != 0 after setting *word).
void hybrid_wait(const std::atomic<uint32_t>* word, std::atomic<uint32_t>* waiters,
                 std::chrono::nanoseconds predicted, std::chrono::steady_clock::time_point started,
                 WaitStats* stats = nullptr) noexcept;

// Sets *word = 1 and wakes sleepers (pairs with hybrid_wait).
void complete_and_wake(std::atomic<uint32_t>* word, const std::atomic<uint32_t>* waiters) noexcept;

}  // namespace rocket::detail
