#include "mover/hybrid_wait.h"

#include <cpuid.h>
#include <sys/prctl.h>
#include <immintrin.h>
#include <x86intrin.h>

#include "sys/futex.h"

namespace rocket::detail {
namespace {

using Clock = std::chrono::steady_clock;

const bool g_waitpkg = [] {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (c & (1u << 5)) != 0;
}();

// Waits for a store to the line of `word` for at most ~`cycles` TSC cycles
// (the OS also caps each UMWAIT, see umwait_control/max_time).
__attribute__((target("waitpkg"))) void umwait_on(const std::atomic<uint32_t>* word, uint64_t cycles) noexcept {
  _umonitor(const_cast<std::atomic<uint32_t>*>(word));
  // acquire: pairs with the release store in complete_and_wake().
  if (word->load(std::memory_order_acquire) != 0) return;
  _umwait(0, __rdtsc() + cycles);  // 0: the deeper C0.2 state
}

// The poll phase before falling back to futex: long enough to catch a copy
// that runs slightly over its prediction, short enough not to burn a core.
constexpr auto kPollWindow = std::chrono::microseconds(50);
constexpr auto kMinSleep = std::chrono::microseconds(30);  // below this a futex sleep costs more than it saves
constexpr auto kLongSleep = std::chrono::milliseconds(1);

}  // namespace

std::chrono::nanoseconds timer_slack() noexcept {
  thread_local const std::chrono::nanoseconds slack{[] {
    long ns = ::prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    return ns > 0 && ns < 10'000'000 ? ns : 50'000L;
  }()};
  return slack;
}

bool cpu_has_waitpkg() noexcept { return g_waitpkg; }

void hybrid_wait(const std::atomic<uint32_t>* word, std::atomic<uint32_t>* waiters,
                 std::chrono::nanoseconds predicted, Clock::time_point started, WaitStats* stats) noexcept {
  // acquire: pairs with the release store in complete_and_wake(); the copied
  // bytes are visible once we see the flag.
  auto done = [word] { return word->load(std::memory_order_acquire) != 0; };
  if (done()) return;
  auto sleep = [&](std::chrono::nanoseconds t) {
    waiters->fetch_add(1, std::memory_order_seq_cst);
    if (!done()) futex_wait(word, 0, t, FutexScope::kPrivate);
    waiters->fetch_sub(1, std::memory_order_relaxed);
    if (stats != nullptr) ++stats->sleeps;
  };
  // Phase 1: sleep through most of the predicted time. The kernel may end a
  // timed sleep up to the thread's timer slack late (50 us by default), so
  // aim that much early: a late wake-up still lands before the copy ends,
  // and the poll below catches the end without a wake-up's latency.
  auto first = std::chrono::duration_cast<std::chrono::nanoseconds>(predicted * 95 / 100 - (Clock::now() - started)) -
               timer_slack();
  if (first > kMinSleep) sleep(first);
  // Phase 2: poll for a short window.
  auto poll_until = Clock::now() + kPollWindow;
  while (!done() && Clock::now() < poll_until) {
    if (g_waitpkg) {
      umwait_on(word, 20000);
    } else {
      for (int i = 0; i < 16; ++i) cpu_relax();
    }
    if (stats != nullptr) ++stats->polls;
  }
  // Phase 3: the copy overran its prediction; sleep in bounded slices.
  while (!done()) sleep(kLongSleep);
}

void complete_and_wake(std::atomic<uint32_t>* word, const std::atomic<uint32_t>* waiters) noexcept {
  // release: publishes the copied bytes to the waiter's acquire load.
  word->store(1, std::memory_order_release);
  // seq_cst fence: pairs with the waiter's seq_cst increment of *waiters
  // before its final check (Dekker): either it sees the flag or we see it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (waiters->load(std::memory_order_relaxed) != 0) futex_wake_all(word, FutexScope::kPrivate);
}

}  // namespace rocket::detail
