// Unix-domain SOCK_SEQPACKET helpers for the session socket: message
// boundaries are kept, file descriptors travel with SCM_RIGHTS, and a peer's
// death shows as a hang-up.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <span>
#include <string>
#include <vector>

#include "rocket/status.h"

namespace rocket::detail {

// A listening socket bound at `path` (an existing stale socket file there is
// replaced only if nothing accepts on it). The file appears only once the
// socket listens, with `mode` where it is not 0, so a peer that waits for the
// file can connect as soon as it sees it.
Result<int> listen_unix(const std::string& path, int backlog, mode_t mode = 0);
Result<int> connect_unix(const std::string& path);

// Sends one message with `fds` attached.
Status send_message(int sock, const void* data, size_t len, std::span<const int> fds);
// Receives one message of at most `cap` bytes, waiting up to `timeout`.
// Received descriptors are appended to `fds` (close-on-exec); if more arrive
// than `max_fds`, or the message was truncated, all are closed and kDataLoss
// returned. Returns the message length; 0 means the peer closed.
Result<size_t> recv_message(int sock, void* buf, size_t cap, std::vector<int>* fds, size_t max_fds,
                            std::chrono::milliseconds timeout);

// True if the peer has hung up (no blocking).
bool peer_hung_up(int sock) noexcept;

void close_all(std::vector<int>& fds) noexcept;

}  // namespace rocket::detail
