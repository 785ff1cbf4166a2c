// A thin seam over the OS calls whose failure the runtime must survive
// (memfd_create, mmap), so tests can inject failures (leveldb's Env idea).
// Product code always calls through detail::os(); tests swap in a fault
// injector with detail::set_os_for_testing().
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace rocket::shm::detail {

class OsCalls {
 public:
  virtual ~OsCalls() = default;
  virtual int memfd_create(const char* name, unsigned flags);
  virtual void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off);
};

OsCalls& os() noexcept;
// Replaces the OS seam; nullptr restores the real one. Not thread-safe against
// concurrent segment creation: call only while no session is being set up.
void set_os_for_testing(OsCalls* os) noexcept;

}  // namespace rocket::shm::detail
