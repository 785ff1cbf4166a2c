#include "runtime/socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

namespace rocket::detail {
namespace {

Result<sockaddr_un> make_addr(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return invalid_argument("socket path must be 1.." + std::to_string(sizeof(addr.sun_path) - 1) +
                            " bytes: '" + path + "'");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

Result<int> listen_unix(const std::string& path, int backlog, mode_t mode) {
  ROCKET_ASSIGN_OR_RETURN(sockaddr_un addr, make_addr(path));
  // A socket file there already: refused if a server answers on it, else
  // stale and replaced.
  if (::access(path.c_str(), F_OK) == 0) {
    auto probe = connect_unix(path);
    if (probe.ok()) {
      ::close(*probe);
      return unavailable("another server is listening on " + path);
    }
  }
  // Bound and listening under a private name in the same directory, then
  // renamed into place: whoever sees the socket file can connect to it at
  // once (bind makes the file, listen comes after it). A path too long for a
  // private name beside it is bound in place.
  static std::atomic<unsigned> serial{0};
  const size_t slash = path.rfind('/');
  const std::string aside = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + ".rocket-" +
                            std::to_string(::getpid()) + "-" + std::to_string(serial.fetch_add(1)) + ".sock";
  auto aside_addr = make_addr(aside);
  const std::string& bound = aside_addr.ok() ? aside : path;
  if (aside_addr.ok()) addr = *aside_addr;
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno);
  auto fail = [&](const std::string& what, int err) -> Result<int> {
    ::close(fd);
    if (aside_addr.ok()) ::unlink(aside.c_str());
    return errno_status(what, err);
  };
  if (!aside_addr.ok()) ::unlink(path.c_str());  // stale (checked above)
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return fail("bind " + bound, errno);
  if (::listen(fd, backlog) != 0) return fail("listen " + bound, errno);
  if (mode != 0 && ::chmod(bound.c_str(), mode) != 0) return fail("chmod " + bound, errno);
  if (aside_addr.ok() && ::rename(aside.c_str(), path.c_str()) != 0) return fail("rename to " + path, errno);
  return fd;
}

Result<int> connect_unix(const std::string& path) {
  ROCKET_ASSIGN_OR_RETURN(sockaddr_un addr, make_addr(path));
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return errno_status("connect " + path, err);
  }
  return fd;
}

Status send_message(int sock, const void* data, size_t len, std::span<const int> fds) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  if (!fds.empty()) {
    if (fds.size() > 8) return invalid_argument("at most 8 descriptors per message");
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n >= 0) {
      if (static_cast<size_t>(n) != len) return internal_error("short sendmsg on a seqpacket socket");
      return ok_status();
    }
    if (errno == EINTR) continue;
    return errno_status("sendmsg", errno);
  }
}

Result<size_t> recv_message(int sock, void* buf, size_t cap, std::vector<int>* fds, size_t max_fds,
                            std::chrono::milliseconds timeout) {
  pollfd p{sock, POLLIN, 0};
  for (;;) {
    int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (r > 0) break;
    if (r == 0) return deadline_exceeded("peer sent nothing within " + std::to_string(timeout.count()) + " ms");
    if (errno != EINTR) return errno_status("poll", errno);
  }
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_status("recvmsg", errno);
  std::vector<int> got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        got.push_back(fd);
      }
    }
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || got.size() > max_fds) {
    close_all(got);
    return data_loss("peer sent an oversized message or too many descriptors");
  }
  if (fds != nullptr) {
    fds->insert(fds->end(), got.begin(), got.end());
  } else {
    close_all(got);
  }
  return static_cast<size_t>(n);
}

bool peer_hung_up(int sock) noexcept {
  pollfd p{sock, POLLRDHUP, 0};
  int r = ::poll(&p, 1, 0);
  return r > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0;
}

void close_all(std::vector<int>& fds) noexcept {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

}  // namespace rocket::detail
