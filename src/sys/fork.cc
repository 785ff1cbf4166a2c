#include "sys/fork.h"

#include <pthread.h>

#include <atomic>

namespace rocket::detail {
namespace {

std::atomic<uint64_t> g_forks{0};

// Runs in the child, in the thread that forked: async-signal-safe.
void count_fork() noexcept { g_forks.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

uint64_t fork_generation() noexcept {
  static const int registered = ::pthread_atfork(nullptr, nullptr, &count_fork);
  (void)registered;  // fails only for want of memory; then forks go uncounted
  return g_forks.load(std::memory_order_relaxed);
}

}  // namespace rocket::detail
