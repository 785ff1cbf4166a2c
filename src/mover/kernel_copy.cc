#include "mover/kernel_copy.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace rocket::detail {
namespace {

// Both calls may move fewer bytes than asked (they stop at a page that
// faults, or at an internal limit); loop until done or an error.
template <typename Fn>
Status transfer(const char* what, void* local, void* remote, size_t n, Fn&& call) noexcept {
  auto* l = static_cast<char*>(local);
  auto* r = static_cast<char*>(remote);
  while (n > 0) {
    iovec liov{l, n};
    iovec riov{r, n};
    ssize_t got = call(&liov, &riov);
    if (got < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      if (err == EFAULT) return invalid_argument(std::string(what) + ": the peer's address range is not mapped");
      if (err == ESRCH) return unavailable(std::string(what) + ": the peer process is gone");
      if (err == EPERM) return permission_denied(std::string(what) + ": no ptrace access to the peer");
      return errno_status(what, err);
    }
    if (got == 0) return invalid_argument(std::string(what) + ": the peer's address range is not mapped");
    l += got;
    r += got;
    n -= static_cast<size_t>(got);
  }
  return ok_status();
}

}  // namespace

Status kernel_read(pid_t pid, void* dst, const void* remote_src, size_t n) noexcept {
  return transfer("process_vm_readv", dst, const_cast<void*>(remote_src), n, [pid](iovec* l, iovec* r) {
    return ::process_vm_readv(pid, l, 1, r, 1, 0);
  });
}

Status kernel_write(pid_t pid, void* remote_dst, const void* src, size_t n) noexcept {
  return transfer("process_vm_writev", const_cast<void*>(src), remote_dst, n, [pid](iovec* l, iovec* r) {
    return ::process_vm_writev(pid, l, 1, r, 1, 0);
  });
}

int open_pidfd(pid_t pid) noexcept {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

bool pidfd_exited(int pidfd) noexcept {
  if (pidfd < 0) return false;
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;  // a pidfd turns readable when its process exits
}

}  // namespace rocket::detail
