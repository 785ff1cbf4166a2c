#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "scripted_server.h"
#include "test_util.h"

namespace rocket::testing {
namespace {

TEST(Handshake, WrongVersionIsRefused) {
  TestServer srv;
  Status why;
  auto raw = RawSession::open(srv.path, detail::kProtocolVersion + 7, &why);
  EXPECT_EQ(raw, nullptr);
  EXPECT_EQ(why.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(why.message().find("version"), std::string::npos);
  EXPECT_EQ(srv.server->stats().sessions_refused, 1u);
  EXPECT_TRUE(srv.connect().call("echo", bytes_of("x")).ok());  // others unaffected
}

// Peers of the previous protocol version, whose handshake messages are
// shorter, are told that the versions differ, not that they sent garbage.
TEST(Handshake, APeerOfTheOlderVersionIsToldSo) {
  TestServer srv;
  auto fd = detail::connect_unix(srv.path);
  ASSERT_TRUE(fd.ok());
  detail::Hello h{};
  h.magic = detail::kProtocolMagic;
  h.version = 1;
  detail::set_fixed_string(h.tenant, sizeof(h.tenant), "old");
  ASSERT_TRUE(detail::send_message(*fd, &h, sizeof(h) - 16, {}).ok());  // version 1 had no pool maxima
  auto w = std::make_unique<detail::Welcome>();
  auto n = detail::recv_message(*fd, w.get(), sizeof(*w), nullptr, 0, std::chrono::milliseconds(5000));
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_EQ(w->status_code, static_cast<int32_t>(StatusCode::kFailedPrecondition));
  EXPECT_NE(std::string(detail::fixed_string(w->message, sizeof(w->message))).find("protocol version 1"),
            std::string::npos);
  ::close(*fd);

  FakeServer old([](int fd) {
    auto ow = std::make_unique<detail::Welcome>();
    std::memset(ow.get(), 0, sizeof(*ow));
    ow->magic = detail::kProtocolMagic;
    ow->version = 1;
    EXPECT_TRUE(detail::send_message(fd, ow.get(), detail::kWelcomeHeaderBytes - 16, {}).ok());
  });
  auto c = Client::connect(old.path);
  EXPECT_EQ(c.status().code(), StatusCode::kFailedPrecondition) << c.status().to_string();
  EXPECT_NE(c.status().message().find("protocol version 1"), std::string::npos) << c.status().to_string();
}

// The socket file appears only once the server listens: a peer that waits
// for the file and connects the moment it sees it is never refused. A stale
// file is replaced, a live server is not, and nothing is left beside it.
TEST(Handshake, TheSocketFileAppearsOnlyOnceItListens) {
  const std::string path = unique_socket_path("listen");
  // Each round: the watcher spins until the file appears, connects at once
  // and reports; only then is the socket closed and the file removed, so a
  // refusal can only mean a file that was there before anything listened.
  std::atomic<int> round{0}, answered{0}, refused{0};
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    for (int r = 1; !done.load(); ++r) {
      while (!done.load() && (round.load() < r || ::access(path.c_str(), F_OK) != 0)) {
      }
      if (done.load()) break;
      auto c = detail::connect_unix(path);
      if (c.ok()) {
        ::close(*c);
      } else {
        ++refused;
      }
      answered.store(r);
    }
  });
  for (int r = 1; r <= 2000; ++r) {
    round.store(r);
    auto fd = detail::listen_unix(path, 4);
    ASSERT_TRUE(fd.ok()) << fd.status().to_string();
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (answered.load() < r && std::chrono::steady_clock::now() < until) {
    }
    ASSERT_EQ(answered.load(), r) << "the watcher did not answer";
    ::unlink(path.c_str());
    ::close(*fd);
  }
  done = true;
  watcher.join();
  EXPECT_EQ(refused.load(), 0) << "of 2000";
  auto live = detail::listen_unix(path, 4);
  ASSERT_TRUE(live.ok());
  EXPECT_EQ(detail::listen_unix(path, 4).status().code(), StatusCode::kUnavailable);  // a live server stays
  ::close(*live);                                                                     // now a stale file
  auto again = detail::listen_unix(path, 4, 0666);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666u);
  ::close(*again);
  ::unlink(path.c_str());
  const std::string dir = path.substr(0, path.rfind('/'));
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().rfind(".rocket-" + std::to_string(::getpid()) + "-", 0), std::string::npos)
        << e.path();
  }
}

TEST(Handshake, UidNotInAccessListIsRefused) {
  // A server always admits its own uid, so the refused client must run under
  // another uid than the server: a child drops to uid 65534 and serves with
  // an access list of {4242}; we connect as root (uid 0), which is not listed.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the server under another uid";
  ServerOptions o;
  o.socket_path = unique_socket_path("acl");
  o.allowed_uids = {4242};
  o.default_client_pool_bytes = o.default_server_pool_bytes = 1 << 20;
  // Child process: become uid 65534 and serve; we (root, uid 0) are not listed.
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(3);
    Server s(o);
    if (!register_builtin_ops(s).ok()) _exit(4);
    if (!s.start().ok()) _exit(5);
    ::pause();
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  // The socket is created by uid 65534; root may still connect.
  Result<Client> c = unavailable("not tried");
  for (int i = 0; i < 200; ++i) {
    c = Client::connect(o.socket_path);
    if (c.ok() || c.status().code() == StatusCode::kPermissionDenied) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ::unlink(o.socket_path.c_str());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status().to_string();
  EXPECT_NE(c.status().message().find("access list"), std::string::npos);
}

TEST(Handshake, PerOpAccessListsKeepOpsToTheirAccounts) {
  // The server runs as root and admits uid 65534 ("nobody", group 65534);
  // "admin" is root's alone, "staff" group 65534's, "echo" anyone's.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client under another uid";
  ServerOptions o{.socket_path = unique_socket_path("opacl")};
  o.allowed_uids = {65534};
  Server server(o);
  ASSERT_TRUE(register_builtin_ops(server).ok());
  auto answer = [](const Request&, Response& resp) { return resp.write(bytes_of("done")); };
  ASSERT_TRUE(server.handle("admin", answer, {.allowed_uids = {0}}).ok());
  ASSERT_TRUE(server.handle("staff", answer, {.allowed_gids = {65534}}).ok());
  ASSERT_TRUE(server.start().ok());
  {
    Peer nobody({"call-as", "65534", "65534", o.socket_path, "admin", "staff", "echo", "admin", "stats"});
    EXPECT_EQ(nobody.read_line(), "admin PERMISSION_DENIED");
    EXPECT_EQ(nobody.read_line(), "staff ok");
    EXPECT_EQ(nobody.read_line(), "echo ok");
    EXPECT_EQ(nobody.read_line(), "admin PERMISSION_DENIED");  // the session outlives a refusal
    EXPECT_EQ(nobody.read_line(), "stats PERMISSION_DENIED");  // the built-in counters are the operator's
  }
  auto root = Client::connect(o.socket_path, {.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  ASSERT_TRUE(root.ok()) << root.status().to_string();
  EXPECT_TRUE(root->call("admin", bytes_of("x")).ok());
  auto staff = root->call("staff", bytes_of("x"));
  EXPECT_EQ(staff.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(staff.status().message().find("may not call op 'staff'"), std::string::npos) << staff.status().to_string();
}

TEST(Handshake, ListedUidIsAccepted) {
  TestServer srv({.allowed_uids = {::geteuid(), 4242}});
  EXPECT_TRUE(srv.connect().call("echo", bytes_of("x")).ok());
}

TEST(Handshake, BadRequestsAreRefusedWithReasons) {
  TestServer srv({.max_pool_bytes = 4 << 20});
  auto too_big = Client::connect(srv.path, {.client_pool_bytes = 64 << 20});
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
  auto bad_ring = Client::connect(srv.path, {.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20,
                                             .ring_entries = 1000});
  EXPECT_EQ(bad_ring.status().code(), StatusCode::kInvalidArgument);
  auto bad_tenant = Client::connect(srv.path, {.tenant = "has space", .client_pool_bytes = 1 << 20,
                                               .server_pool_bytes = 1 << 20});
  EXPECT_EQ(bad_tenant.status().code(), StatusCode::kInvalidArgument);
}

TEST(Handshake, SessionLimitIsUnavailable) {
  TestServer srv({.max_sessions = 2});
  Client a = srv.connect();
  Client b = srv.connect();
  auto c = Client::connect(srv.path);
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
  a.close();
  ASSERT_TRUE(srv.wait_sessions(1));
  EXPECT_TRUE(Client::connect(srv.path).ok());
}

// One account holds at most max_sessions_per_uid sessions; the next is
// refused with the reason, and gets in once one of them closes.
TEST(Handshake, OneAccountHoldsAtMostItsShareOfSessions) {
  TestServer srv({.max_sessions_per_uid = 2});
  Client a = srv.connect();
  Client b = srv.connect();
  auto c = Client::connect(srv.path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(c.status().message().find("max_sessions_per_uid"), std::string::npos) << c.status().to_string();
  a.close();
  ASSERT_TRUE(srv.wait_sessions(1));
  auto again = Client::connect(srv.path);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_TRUE(again->call("echo", bytes_of("x")).ok());
}

// Sessions' segments stay within the server's memory budget: with two 8 MiB
// pools and a control segment each, 40 MiB holds two sessions; a third is
// refused with the reason until one closes, and one larger than the whole
// budget is refused outright.
TEST(Handshake, SessionsStayWithinTheServersMemoryBudget) {
  TestServer srv({.max_mapped_bytes = uint64_t{40} << 20});
  EXPECT_EQ(srv.server->stats().mapped_budget_bytes, uint64_t{40} << 20);
  Client a = srv.connect();
  Client b = srv.connect();
  auto c = Client::connect(srv.path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("memory budget"), std::string::npos) << c.status().to_string();
  EXPECT_LE(srv.server->stats().bytes_mapped, uint64_t{40} << 20);
  a.close();
  ASSERT_TRUE(srv.wait_sessions(1));
  auto again = Client::connect(srv.path);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_TRUE(again->call("echo", bytes_of("x")).ok());
  b.close();
  again->close();
  ASSERT_TRUE(srv.wait_sessions(0));
  auto big = Client::connect(srv.path, {.client_pool_bytes = size_t{48} << 20});
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
}

// A pool's growth takes from the same budget: past it, the request that
// needed the room fails with the reason, and the session goes on.
TEST(Handshake, PoolsGrowWithinTheServersMemoryBudget) {
  TestServer srv({.max_mapped_bytes = uint64_t{40} << 20});
  Client c = srv.connect();  // two 8 MiB pools: ~17 MiB of the 40
  auto twelve = pattern(size_t{12} << 20, 21);
  auto r = c.call("echo_copy", std::span<const std::byte>(twelve));  // both pools to 16 MiB: ~33 MiB
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  r = Reply();
  auto thirty = pattern(size_t{30} << 20, 22);
  r = c.call("echo", std::span<const std::byte>(thirty));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("memory budget"), std::string::npos) << r.status().to_string();
  EXPECT_LE(srv.server->stats().bytes_mapped, uint64_t{40} << 20);
  // The response side: room in the client pool, none to grow the server pool into.
  auto held = c.call("echo_copy", std::span<const std::byte>(twelve));  // 12 of the server pool's 16 MiB
  ASSERT_TRUE(held.ok()) << held.status().to_string();
  auto fourteen = pattern(size_t{14} << 20, 23);
  auto buf = c.alloc(fourteen.size());  // 14 of the client pool's 16 MiB
  ASSERT_TRUE(buf.ok()) << buf.status().to_string();
  std::memcpy(buf->data(), fourteen.data(), fourteen.size());
  r = c.call("echo_copy", *buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("memory budget"), std::string::npos) << r.status().to_string();
  EXPECT_TRUE(c.call("echo", bytes_of("still here")).ok());
}

// Without a budget given, it is half of what the server may use.
TEST(Handshake, TheDefaultMemoryBudgetIsHalfOfWhatTheServerMayUse) {
  TestServer srv;
  const uint64_t machine =
      static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(::sysconf(_SC_PAGE_SIZE));
  const uint64_t budget = srv.server->stats().mapped_budget_bytes;
  EXPECT_GT(budget, 0u);
  EXPECT_LE(budget, machine / 2);
}

TEST(Handshake, GarbageAndSilentPeersDoNotBlockOthers) {
  TestServer srv({.handshake_timeout = std::chrono::milliseconds(200)});
  auto junk = detail::connect_unix(srv.path);
  ASSERT_TRUE(junk.ok());
  char garbage[17] = "not a handshake!";
  ASSERT_TRUE(detail::send_message(*junk, garbage, sizeof(garbage), {}).ok());
  auto silent = detail::connect_unix(srv.path);  // says nothing: times out
  ASSERT_TRUE(silent.ok());
  EXPECT_TRUE(srv.connect().call("echo", bytes_of("x")).ok());
  ::close(*junk);
  ::close(*silent);
}

// What the server answered a raw connection: the refusal's status code, or
// kOk for a welcome; nothing if it has said nothing within `wait`.
std::optional<StatusCode> answer_of(int fd, std::chrono::milliseconds wait) {
  auto w = std::make_unique<detail::Welcome>();
  std::vector<int> fds;
  auto n = detail::recv_message(fd, w.get(), sizeof(*w), &fds, detail::kHandshakeFds, wait);
  for (int f : fds) ::close(f);
  if (!n.ok()) {
    if (n.status().code() == StatusCode::kDeadlineExceeded) return std::nullopt;
    return n.status().code();
  }
  if (*n < detail::kWelcomeHeaderBytes) return StatusCode::kDataLoss;
  return static_cast<StatusCode>(w->status_code);
}

// `n` raw connections to `path` that say nothing (fewer where one failed).
std::vector<int> connect_silently(const std::string& path, int n) {
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    auto fd = detail::connect_unix(path);
    EXPECT_TRUE(fd.ok()) << fd.status().to_string();
    if (fd.ok()) fds.push_back(*fd);
  }
  return fds;
}

// Peers that connect and say nothing wait for their hello beside everyone
// else: with a minute's handshake timeout, a client connecting behind four
// of them is in at once (one at a time, it would have waited four minutes),
// and they are still waiting when it is.
TEST(Handshake, SilentPeersHoldUpNoOne) {
  TestServer srv({.handshake_timeout = std::chrono::milliseconds(60000)});
  std::vector<int> silent = connect_silently(srv.path, 4);
  ASSERT_EQ(silent.size(), 4u);
  auto c = Client::connect(srv.path, {.connect_timeout = std::chrono::milliseconds(20000)});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->call("echo", bytes_of("x")).ok());
  for (int fd : silent) {
    EXPECT_EQ(answer_of(fd, std::chrono::milliseconds(0)), std::nullopt) << "answered already";
    ::close(fd);
  }
}

// One account cannot fill the server's door with silent connections: past
// 16 waiting, its next is refused at once (UNAVAILABLE, saying why); once
// they go, it connects again.
TEST(Handshake, OneAccountKeepsAtMostSixteenConnectionsWaiting) {
  TestServer srv({.handshake_timeout = std::chrono::milliseconds(60000)});
  std::vector<int> silent = connect_silently(srv.path, 16);
  ASSERT_EQ(silent.size(), 16u);
  // Connections are accepted in order: the seventeenth finds sixteen waiting.
  auto extra = detail::connect_unix(srv.path);
  ASSERT_TRUE(extra.ok());
  EXPECT_EQ(answer_of(*extra, std::chrono::milliseconds(20000)), StatusCode::kUnavailable);
  ::close(*extra);
  auto refused = Client::connect(srv.path, {.connect_timeout = std::chrono::milliseconds(20000)});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("have not said hello"), std::string::npos) << refused.status().to_string();
  for (int fd : silent) ::close(fd);
  // Hung-up peers leave the table as the server sees them go.
  auto connect_again = [&]() -> Result<Client> {
    for (int i = 0;; ++i) {
      auto c = Client::connect(srv.path, {.connect_timeout = std::chrono::milliseconds(20000)});
      if (c.ok() || i == 200) return c;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  auto back = connect_again();
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->call("echo", bytes_of("x")).ok());
}

// A peer that says nothing within the timeout is told so and let go.
TEST(Handshake, SilentPeerIsRefusedAfterTheTimeout) {
  TestServer srv({.handshake_timeout = std::chrono::milliseconds(100)});
  auto fd = detail::connect_unix(srv.path);
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(answer_of(*fd, std::chrono::milliseconds(20000)), StatusCode::kDeadlineExceeded);
  ::close(*fd);
}

TEST(Handshake, NoServerIsUnavailable) {
  auto c = Client::connect("/tmp/rocket-test-nobody-listens.sock");
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
}

void send_welcome(int fd, bool corrupt_header, bool unsealed) {
  auto control = shm::Segment::create("c", shm::SegmentKind::kControl, detail::control_data_bytes(64, 64), 1, {});
  auto cpool = shm::Segment::create("p", shm::SegmentKind::kClientPool, 1 << 20, 1, {});
  auto spool = shm::Segment::create("s", shm::SegmentKind::kServerPool, 1 << 20, 1, {});
  ASSERT_TRUE(control.ok() && cpool.ok() && spool.ok());
  if (corrupt_header) reinterpret_cast<shm::SegmentHeader*>(cpool->base())->magic = 0xdeadbeef;
  int pool_fd = cpool->fd();
  int plain = -1;
  if (unsealed) {
    plain = ::memfd_create("plain", MFD_CLOEXEC);
    ASSERT_EQ(::ftruncate(plain, static_cast<off_t>(shm::segment_total_bytes(1 << 20))), 0);
    pool_fd = plain;
  }
  int efd = ::eventfd(0, EFD_CLOEXEC);
  auto w = std::make_unique<detail::Welcome>();
  std::memset(w.get(), 0, sizeof(*w));
  w->magic = detail::kProtocolMagic;
  w->version = detail::kProtocolVersion;
  w->client_pool_bytes = w->server_pool_bytes = 1 << 20;
  w->client_pool_max_bytes = w->server_pool_max_bytes = 1 << 20;
  w->sub_ring_entries = w->comp_ring_entries = 64;
  int fds[4] = {control->fd(), pool_fd, spool->fd(), efd};
  ASSERT_TRUE(detail::send_message(fd, w.get(), detail::kWelcomeHeaderBytes, fds).ok());
  ::close(efd);
  if (plain >= 0) ::close(plain);
}

TEST(Handshake, ClientRejectsBadSegmentHeader) {
  int before = open_fd_count();
  {
    FakeServer fake([](int fd) { send_welcome(fd, /*corrupt_header=*/true, false); });
    auto c = Client::connect(fake.path);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(c.status().message().find("magic"), std::string::npos) << c.status().message();
  }
  EXPECT_EQ(open_fd_count(), before);  // every received descriptor was closed
}

TEST(Handshake, ClientRejectsUnsealedSegment) {
  FakeServer fake([](int fd) { send_welcome(fd, false, /*unsealed=*/true); });
  auto c = Client::connect(fake.path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(c.status().message().find("sealed"), std::string::npos) << c.status().message();
}

TEST(Handshake, ClientRejectsServerThatHangsUp) {
  FakeServer fake([](int) {});
  auto c = Client::connect(fake.path);
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
}

// A server whose answer to a request to grow the client pool is wrong, late
// or missing: the call that needed the room fails with the reason, in
// bounded time, and the client never uses what was not granted.
TEST(Handshake, ClientSurvivesBadAnswersToGrowingItsPool) {
  enum class Answer { kNone, kHangUp, kWrongSize, kMalformed, kRefused, kStaleThenRight };
  struct Case {
    Answer answer;
    StatusCode want;
  };
  for (const Case& k :
       {Case{Answer::kNone, StatusCode::kDeadlineExceeded}, Case{Answer::kHangUp, StatusCode::kUnavailable},
        Case{Answer::kWrongSize, StatusCode::kDataLoss}, Case{Answer::kMalformed, StatusCode::kDataLoss},
        Case{Answer::kRefused, StatusCode::kResourceExhausted}, Case{Answer::kStaleThenRight, StatusCode::kOk}}) {
    SCOPED_TRACE(static_cast<int>(k.answer));
    auto control = shm::Segment::create("c", shm::SegmentKind::kControl, detail::control_data_bytes(64, 64), 1, {});
    auto cpool = shm::Segment::create("p", shm::SegmentKind::kClientPool, 4 << 20, 1, {.prefault = false});
    auto spool = shm::Segment::create("s", shm::SegmentKind::kServerPool, 1 << 20, 1, {});
    ASSERT_TRUE(control.ok() && cpool.ok() && spool.ok());
    FakeServer fake([&](int fd) {
      int efd = ::eventfd(0, EFD_CLOEXEC);
      auto w = std::make_unique<detail::Welcome>();
      std::memset(w.get(), 0, sizeof(*w));
      w->magic = detail::kProtocolMagic;
      w->version = detail::kProtocolVersion;
      w->client_pool_bytes = w->server_pool_bytes = w->server_pool_max_bytes = 1 << 20;
      w->client_pool_max_bytes = 4 << 20;
      w->session_id = 1;
      w->sub_ring_entries = w->comp_ring_entries = 64;
      int fds[4] = {control->fd(), cpool->fd(), spool->fd(), efd};
      EXPECT_TRUE(detail::send_message(fd, w.get(), detail::kWelcomeHeaderBytes, fds).ok());
      ::close(efd);
      detail::GrowRequest g{};
      auto n = detail::recv_message(fd, &g, sizeof(g), nullptr, 0, std::chrono::milliseconds(5000));
      if (!n.ok() || *n != sizeof(g)) return;
      detail::GrowReply r{};
      r.magic = detail::kGrowMagic;
      r.seq = g.seq;
      r.bytes = g.bytes;
      switch (k.answer) {
        case Answer::kNone:
          std::this_thread::sleep_for(std::chrono::milliseconds(600));  // past the client's wait
          return;
        case Answer::kHangUp:
          return;
        case Answer::kWrongSize:
          r.bytes = g.bytes - 4096;  // less than asked
          break;
        case Answer::kMalformed:
          r.magic = 0;
          break;
        case Answer::kRefused:
          r.status_code = static_cast<int32_t>(StatusCode::kResourceExhausted);
          detail::set_fixed_string(r.message, sizeof(r.message), "no room");
          break;
        case Answer::kStaleThenRight: {
          detail::GrowReply stale = r;
          stale.seq = g.seq - 1;
          stale.bytes = 0;
          EXPECT_TRUE(detail::send_message(fd, &stale, sizeof(stale), {}).ok());
          break;
        }
      }
      EXPECT_TRUE(detail::send_message(fd, &r, sizeof(r), {}).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    });
    auto c = Client::connect(fake.path, {.connect_timeout = std::chrono::milliseconds(300)});
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    auto b = c->alloc(size_t{2} << 20);  // needs the pool grown
    EXPECT_EQ(b.status().code(), k.want) << b.status().to_string();
    EXPECT_EQ(c->stats().client_pool_bytes, k.want == StatusCode::kOk ? size_t{2} << 20 : size_t{1} << 20);
  }
}

}  // namespace
}  // namespace rocket::testing

namespace rocket::testing {
namespace {

// A GPU response to a request that did not accept one is a broken server:
// the session fails with DATA_LOSS instead of the client opening anything.
TEST(HostileServer, UnaskedGpuResponseFailsTheSession) {
  ScriptedServer srv;
  Client c = srv.connect();
  auto id = c.submit("echo", bytes_of("hello"));
  ASSERT_TRUE(id.ok());
  detail::SubDesc d = srv.next();
  ASSERT_EQ(d.kind, static_cast<uint16_t>(detail::SubKind::kRequest));
  EXPECT_EQ(d.flags & detail::kSubAcceptGpuResponse, 0);
  srv.complete(gpu_completion(d.job_id, 0));
  auto r = c.query(*id, std::chrono::milliseconds(5000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().to_string();
  EXPECT_FALSE(c.call("echo", bytes_of("x")).ok());  // the session stays failed
}

// Every field of a completion is checked before the client acts on it: a
// completion for a job it never posted, a payload range outside the server
// pool or outside the request, a status code out of range or unknown flags
// fail the session with DATA_LOSS -- no crash, no read out of bounds.
TEST(HostileServer, ForgedCompletionsFailTheSessionCleanly) {
  struct Forgery {
    const char* what;
    std::function<void(detail::CompDesc&)> forge;
  };
  const std::vector<Forgery> forgeries = {
      {"unknown job", [](detail::CompDesc& c) { c.job_id += 1000; }},
      {"server range past the pool",
       [](detail::CompDesc& c) {
         c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
         c.offset = (1 << 20) - 16;
         c.length = 64;
       }},
      {"server offset wraps",
       [](detail::CompDesc& c) {
         c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
         c.offset = UINT64_MAX - 8;
         c.length = 16;
       }},
      {"client range outside the request",
       [](detail::CompDesc& c) {
         c.pool = static_cast<uint16_t>(detail::PayloadPool::kClient);
         c.length = 4096;
       }},
      {"status out of range", [](detail::CompDesc& c) { c.status = 999; }},
      {"negative status", [](detail::CompDesc& c) { c.status = -3; }},
      {"unknown pool", [](detail::CompDesc& c) { c.pool = 7; }},
      {"unknown flags", [](detail::CompDesc& c) { c.flags = 0x80; }},
      {"remote length without a remote buffer",
       [](detail::CompDesc& c) {
         c.flags = detail::kCompWrittenRemote;
         c.length = 100;
       }},
      {"CPU lent that the call did not offer", [](detail::CompDesc& c) { c.reserved[0] = 1; }},
      {"memory lent that the call did not offer", [](detail::CompDesc& c) { c.reserved[1] = 4096; }},
  };
  for (const auto& f : forgeries) {
    ScriptedServer srv;
    Client c = srv.connect();
    auto id = c.submit("echo", bytes_of("hello"));
    ASSERT_TRUE(id.ok());
    detail::SubDesc d = srv.next();
    ASSERT_EQ(d.kind, static_cast<uint16_t>(detail::SubKind::kRequest)) << f.what;
    detail::CompDesc comp{};
    comp.job_id = d.job_id;
    comp.offset = d.offset;
    f.forge(comp);
    srv.complete(comp);
    auto r = c.query(*id, std::chrono::milliseconds(5000));
    ASSERT_FALSE(r.ok()) << f.what;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << f.what << ": " << r.status().to_string();
  }
}

// An error completion carries its text in the server pool: the call gets the
// code and the text, and the block goes back to the server.
TEST(HostileServer, ErrorTextArrivesAndItsBlockIsFreed) {
  ScriptedServer srv;
  Client c = srv.connect();
  auto id = c.submit("echo", bytes_of("hello"));
  ASSERT_TRUE(id.ok());
  detail::SubDesc d = srv.next();
  const std::string text = "model is busy";
  std::memcpy(srv.spool.data() + 256, text.data(), text.size());
  detail::CompDesc comp{};
  comp.job_id = d.job_id;
  comp.status = static_cast<int32_t>(StatusCode::kResourceExhausted);
  comp.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
  comp.offset = 256;
  comp.length = text.size();
  srv.complete(comp);
  auto r = c.query(*id, std::chrono::milliseconds(5000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(r.status().message(), text);
  detail::SubDesc freed = srv.next();
  EXPECT_EQ(freed.kind, static_cast<uint16_t>(detail::SubKind::kFreeReply));
  EXPECT_EQ(freed.offset, 256u);
}

// A bad GPU reference fails that call only; the client hands the block back
// (so the server can release its memory) and the session goes on.
TEST(HostileServer, BadGpuReferenceFailsThatCallAndIsFreed) {
  ScriptedServer srv;
  Client c = srv.connect();
  const uint64_t offsets[2] = {4096, 8192};
  for (int round = 0; round < 2; ++round) {
    detail::GpuRef ref{};
    ref.magic = round == 0 ? 0x0badf00d : detail::kGpuRefMagic;  // a wrong magic, then a garbage handle
    ref.length = 64;
    std::memset(ref.handle, 0xcd, sizeof(ref.handle));
    std::memcpy(srv.spool.data() + offsets[round], &ref, sizeof(ref));
    auto id = c.submit("echo", bytes_of("hello"), {.gpu_response = true});
    ASSERT_TRUE(id.ok());
    detail::SubDesc d = srv.next();
    ASSERT_EQ(d.kind, static_cast<uint16_t>(detail::SubKind::kRequest));
    EXPECT_NE(d.flags & detail::kSubAcceptGpuResponse, 0);
    srv.complete(gpu_completion(d.job_id, offsets[round]));
    auto r = c.query(*id, std::chrono::milliseconds(5000));
    ASSERT_FALSE(r.ok());
    // Without a GPU here the handle cannot be opened at all; with one, the
    // garbage handle does not open.
    EXPECT_TRUE(r.status().code() == StatusCode::kInvalidArgument ||
                r.status().code() == StatusCode::kFailedPrecondition)
        << r.status().to_string();
    detail::SubDesc freed = srv.next();
    EXPECT_EQ(freed.kind, static_cast<uint16_t>(detail::SubKind::kFreeReply));
    EXPECT_EQ(freed.offset, offsets[round]);
  }
  // The session is fine: a plain completion still arrives.
  auto id = c.submit("echo", bytes_of("x"));
  ASSERT_TRUE(id.ok());
  detail::SubDesc d = srv.next();
  detail::CompDesc ok{};
  ok.job_id = d.job_id;
  srv.complete(ok);
  auto r = c.query(*id, std::chrono::milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->size(), 0u);
}

}  // namespace
}  // namespace rocket::testing
