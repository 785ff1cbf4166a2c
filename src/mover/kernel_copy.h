// Single-copy transfers between address spaces with process_vm_readv/writev:
// the kernel copies straight from one process's private memory into
// another's, with no shared segment in between. Needs ptrace access to the
// peer (same uid, and Yama's ptrace_scope permitting; a client grants its
// server access with PR_SET_PTRACER).
#pragma once

#include <sys/types.h>

#include <cstddef>

#include "rocket/status.h"

namespace rocket::detail {

// Copies `n` bytes from `remote_src` in process `pid` to local `dst`.
Status kernel_read(pid_t pid, void* dst, const void* remote_src, size_t n) noexcept;
// Copies `n` bytes from local `src` to `remote_dst` in process `pid`.
Status kernel_write(pid_t pid, void* remote_dst, const void* src, size_t n) noexcept;

// A pidfd for `pid` (-1 if the kernel has none): lets a long-lived user of a
// pid check that it still names the same process (pids are reused).
int open_pidfd(pid_t pid) noexcept;
// True if the process behind `pidfd` has exited.
bool pidfd_exited(int pidfd) noexcept;

}  // namespace rocket::detail
