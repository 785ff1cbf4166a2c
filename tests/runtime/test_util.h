// Test helpers: a server fixture with the built-in and test-only ops, a
// spawned peer process, descriptor and memory counters, and RawSession, a
// test double of a client that speaks the wire protocol directly so tests
// can send hostile descriptors.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "rocket/rocket.h"
#include "rocket/shm/segment.h"
#include "runtime/protocol.h"
#include "runtime/socket.h"

extern char** environ;

namespace rocket::testing {

inline std::string unique_socket_path(const char* tag) {
  static std::atomic<int> counter{0};
  return "/tmp/rocket-test-" + std::to_string(::getpid()) + "-" + tag + "-" +
         std::to_string(counter.fetch_add(1)) + ".sock";
}

inline std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span{s.data(), s.size()}); }

inline std::vector<std::byte> pattern(size_t n, uint64_t seed) {
  std::vector<std::byte> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = static_cast<std::byte>(x);
  }
  return v;
}

// Test-only ops: "sleep" (sleeps the number of ms in the first 4 bytes),
// "fail" (returns RESOURCE_EXHAUSTED with a message), "throw" (throws).
// Releases run by the "share_host" op's handler (never, if share_device
// refuses host memory as it must).
inline std::atomic<int> g_share_host_releases{0};

inline void register_test_ops(Server& server) {
  ASSERT_TRUE(server.handle("share_host", [](const Request&, Response& resp) -> Status {
    static std::byte host[4096];
    return resp.share_device(host, sizeof(host), [] { g_share_host_releases++; });
  }).ok());
  ASSERT_TRUE(server.handle("sleep", [](const Request& req, Response&) {
    uint32_t ms = 0;
    if (req.data().size() >= 4) std::memcpy(&ms, req.data().data(), 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ok_status();
  }).ok());
  ASSERT_TRUE(server.handle("fail", [](const Request&, Response& resp) {
    auto out = resp.alloc(64);  // allocated, then dropped on failure: must not leak
    (void)out;
    return resource_exhausted("model is busy, try later");
  }).ok());
  ASSERT_TRUE(server.handle("throw", [](const Request&, Response&) -> Status {
    throw std::runtime_error("boom");
  }).ok());
}

struct TestServer {
  explicit TestServer(ServerOptions o = {}) {
    if (o.socket_path.empty()) o.socket_path = unique_socket_path("srv");
    // Small starting pools (they grow to max_pool_bytes on demand).
    if (o.default_client_pool_bytes == ServerOptions{}.default_client_pool_bytes) o.default_client_pool_bytes = 8 << 20;
    if (o.default_server_pool_bytes == ServerOptions{}.default_server_pool_bytes) o.default_server_pool_bytes = 8 << 20;
    o.spin = std::chrono::microseconds(20);
    path = o.socket_path;
    server = std::make_unique<Server>(o);
    EXPECT_TRUE(register_builtin_ops(*server).ok());
    register_test_ops(*server);
    Status s = server->start();
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
  ~TestServer() {
    server->stop();
    server->wait();
  }
  Client connect(ClientOptions o = {}) {
    auto c = Client::connect(path, o);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return std::move(c).value();
  }
  // Waits until the server has `n` open sessions (sessions close asynchronously).
  bool wait_sessions(uint64_t n, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (server->stats().sessions_open == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return server->stats().sessions_open == n;
  }
  std::string path;
  std::unique_ptr<Server> server;
};

inline int open_fd_count() {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

// Shared-memory pages mapped by this process (kB).
inline long rss_shmem_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stol(line.substr(9));
  }
  return -1;
}

// The test peer binary: beside the running test binary (a build tree that
// was moved, e.g. to the GPU machine), else where CMake built it.
inline std::string peer_program() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    std::string dir(buf, static_cast<size_t>(n));
    dir = dir.substr(0, dir.rfind('/'));
    std::string beside = dir + "/rocket_test_peer";
    if (::access(beside.c_str(), X_OK) == 0) return beside;
  }
  return ROCKET_TEST_PEER;
}

// A child process running the test peer binary with `args`; its stdout is
// readable line by line.
class Peer {
 public:
  explicit Peer(std::vector<std::string> args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    std::vector<std::string> all{peer_program()};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    out_ = fds[0];
  }
  ~Peer() {
    kill(SIGKILL);
    if (out_ >= 0) ::close(out_);
  }
  pid_t pid() const { return pid_; }
  // Reads one line (without newline); "" on EOF or after `limit`.
  std::string read_line(std::chrono::milliseconds limit = std::chrono::milliseconds(10000)) {
    std::string line;
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char c;
      if (::read(out_, &c, 1) != 1) return line;
      if (c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }
  void kill(int sig) {
    if (pid_ > 0) {
      ::kill(pid_, sig);
      int st;
      ::waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
};

// A request descriptor as a RawSession sends it.
inline detail::SubDesc raw_request(uint32_t op, uint64_t job, uint64_t off, uint64_t len) {
  detail::SubDesc d{};
  d.kind = static_cast<uint16_t>(detail::SubKind::kRequest);
  d.op_id = op;
  d.job_id = job;
  d.offset = off;
  d.length = len;
  return d;
}

// Test double: a client that performs the handshake itself and exposes the
// raw rings, so tests can send descriptors the real Client never would.
struct RawSession {
  // Both pools start at 1 MiB; the client pool may grow to `client_max`.
  static std::unique_ptr<RawSession> open(const std::string& path, uint32_t version = detail::kProtocolVersion,
                                          Status* refused = nullptr, bool kernel = false,
                                          uint64_t client_max = 1 << 20) {
    auto fd = detail::connect_unix(path);
    if (!fd.ok()) return nullptr;
    auto s = std::make_unique<RawSession>();
    s->sock = *fd;
    detail::Hello h{};
    h.magic = detail::kProtocolMagic;
    h.version = version;
    detail::set_fixed_string(h.tenant, sizeof(h.tenant), "raw");
    h.client_pool_bytes = 1 << 20;
    h.server_pool_bytes = 1 << 20;
    h.client_pool_max_bytes = client_max;
    h.server_pool_max_bytes = 1 << 20;
    h.sub_ring_entries = 64;
    h.comp_ring_entries = 64;
    static uint64_t token = 0x1234567890abcdefULL;
    if (kernel) {
      h.probe_addr = reinterpret_cast<uint64_t>(&token);
      h.probe_value = token;
    }
    if (!detail::send_message(s->sock, &h, sizeof(h), {}).ok()) return nullptr;
    s->welcome = std::make_unique<detail::Welcome>();
    std::vector<int> fds;
    auto n = detail::recv_message(s->sock, s->welcome.get(), sizeof(detail::Welcome), &fds, 4,
                                  std::chrono::milliseconds(5000));
    if (!n.ok() || s->welcome->status_code != 0 || fds.size() != 4) {
      if (refused != nullptr) {
        *refused = n.ok() ? Status(static_cast<StatusCode>(s->welcome->status_code),
                                   detail::fixed_string(s->welcome->message, sizeof(s->welcome->message)).data())
                          : n.status();
      }
      detail::close_all(fds);
      return nullptr;
    }
    shm::SegmentOptions rw{.prefault = false, .lock = false, .writable = true};
    auto control = shm::Segment::attach(fds[0], shm::SegmentKind::kControl,
                                        detail::control_data_bytes(64, 64), rw);
    auto cpool = shm::Segment::attach(fds[1], shm::SegmentKind::kClientPool, s->welcome->client_pool_max_bytes, rw);
    auto spool = shm::Segment::attach(fds[2], shm::SegmentKind::kServerPool, s->welcome->server_pool_max_bytes,
                                      {.prefault = false, .lock = false, .writable = false});
    s->wake_fd = fds[3];
    if (!control.ok() || !cpool.ok() || !spool.ok()) return nullptr;
    s->control = std::move(*control);
    s->cpool = std::move(*cpool);
    s->spool = std::move(*spool);
    auto v = detail::control_view(s->control.data(), 64);
    s->cb = v.block;
    s->tx = shm::RingProducer<detail::SubDesc>(&v.block->sub, v.sub_slots, 64);
    s->rx = shm::RingConsumer<detail::CompDesc>(&v.block->comp, v.comp_slots, 64);
    return s;
  }
  ~RawSession() {
    if (sock >= 0) ::close(sock);
    if (wake_fd >= 0) ::close(wake_fd);
  }
  uint32_t op(std::string_view name) const {
    for (uint32_t i = 0; i < welcome->op_count; ++i) {
      if (detail::fixed_string(welcome->ops[i].name, sizeof(welcome->ops[i].name)) == name) return i;
    }
    return UINT32_MAX;
  }
  void push(const detail::SubDesc& d) {
    ASSERT_EQ(tx.try_push(d), shm::RingResult::kOk);
    uint64_t one = 1;
    ASSERT_EQ(::write(wake_fd, &one, 8), 8);
  }
  // Waits for the next completion.
  bool pop(detail::CompDesc* c, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (rx.try_pop(c) == shm::RingResult::kOk) return true;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return false;
  }
  int sock = -1;
  int wake_fd = -1;
  std::unique_ptr<detail::Welcome> welcome;
  shm::Segment control, cpool, spool;
  detail::ControlBlock* cb = nullptr;
  shm::RingProducer<detail::SubDesc> tx;
  shm::RingConsumer<detail::CompDesc> rx;
};

}  // namespace rocket::testing
