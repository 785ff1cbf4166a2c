#include "shm/os.h"

#include <sys/mman.h>

#include <atomic>

namespace rocket::shm::detail {

int OsCalls::memfd_create(const char* name, unsigned flags) { return ::memfd_create(name, flags); }
void* OsCalls::mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return ::mmap(addr, len, prot, flags, fd, off);
}

namespace {
OsCalls g_real;
// relaxed: swapped only by tests while no segment is being created.
std::atomic<OsCalls*> g_os{&g_real};
}  // namespace

OsCalls& os() noexcept { return *g_os.load(std::memory_order_relaxed); }
void set_os_for_testing(OsCalls* os) noexcept {
  g_os.store(os != nullptr ? os : &g_real, std::memory_order_relaxed);
}

}  // namespace rocket::shm::detail
