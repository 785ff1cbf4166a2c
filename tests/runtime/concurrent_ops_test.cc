// OpOptions::concurrent: an idle dispatcher helps a busy one with a session's
// waiting requests to such ops. Other ops keep their order; a session whose
// client dies, or a server that stops, while a helper runs one of its
// requests is cleaned up only after the helper is done.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "test_util.h"

namespace rocket::testing {
namespace {

using std::chrono::milliseconds;

// Counts the handlers inside at once, and can hold them there.
class Room {
 public:
  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    ++inside_;
    most_ = std::max(most_, inside_);
    cv_.notify_all();
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mu_);
    --inside_;
    cv_.notify_all();
  }
  // True once `n` handlers have been inside together (they may have left
  // since); false after `limit`.
  bool wait_for_together(int n, milliseconds limit) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return most_ >= n; });
  }
  // Holds the caller until open() (or `limit`).
  void wait_open(milliseconds limit) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, limit, [&] { return open_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int most() {
    std::lock_guard<std::mutex> lock(mu_);
    return most_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int inside_ = 0, most_ = 0;
  bool open_ = false;
};

ServerOptions two_dispatchers(const char* tag) {
  ServerOptions o;
  o.socket_path = unique_socket_path(tag);
  o.dispatchers = 2;
  o.default_client_pool_bytes = o.default_server_pool_bytes = 4 << 20;
  o.spin = std::chrono::microseconds(20);
  return o;
}

// "park": waits in the room until it opens (10 s at most). Registered
// concurrent unless `concurrent` is false, as `name`.
Status register_park(Server& server, Room& room, const char* name = "park", bool concurrent = true) {
  Handler park = [&room](const Request&, Response&) {
    room.enter();
    room.wait_open(milliseconds(10000));
    room.leave();
    return ok_status();
  };
  OpOptions options;
  options.concurrent = concurrent;
  return server.handle(name, std::move(park), options);
}

uint64_t wait_sessions(Server& server, uint64_t n, milliseconds limit = milliseconds(5000)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (server.stats().sessions_open != n && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(milliseconds(2));
  }
  return server.stats().sessions_open;
}

TEST(ConcurrentOps, OneSessionsPipelineRunsOnSeveralDispatchers) {
  Room room;
  Server server(two_dispatchers("meet"));
  // Each request waits until two are inside at once: with one dispatcher per
  // session they never are, and each gives up after 5 s.
  Handler meet = [&room](const Request&, Response& resp) {
    room.enter();
    const uint8_t met = room.wait_for_together(2, milliseconds(5000)) ? 1 : 0;
    room.leave();
    return resp.write(std::as_bytes(std::span{&met, 1}));
  };
  ASSERT_TRUE(server.handle("meet", std::move(meet), {.concurrent = true}).ok());
  ASSERT_TRUE(server.start().ok());
  auto c = Client::connect(server.options().socket_path);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto a = c->submit("meet", std::span<const std::byte>{});
  auto b = c->submit("meet", std::span<const std::byte>{});
  ASSERT_TRUE(a.ok() && b.ok());
  for (JobId id : {*a, *b}) {
    auto r = c->query(id);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->size(), 1u);
    EXPECT_EQ(r->data()[0], std::byte{1});
  }
  EXPECT_EQ(room.most(), 2);
  // One ran on the session's own dispatcher, the other on its helper.
  EXPECT_EQ(server.stats().requests_helped, 1u);
}

TEST(ConcurrentOps, OtherOpsKeepTheirOrderAndRunOneAtATime) {
  Room room;
  std::mutex mu;
  std::vector<uint32_t> order;
  Server server(two_dispatchers("order"));
  // A concurrent op makes this a helping server...
  ASSERT_TRUE(register_park(server, room).ok());
  // ...but "log" is not concurrent. Its 2 ms handlers leave the helper (which
  // looks every millisecond) time to see the queue behind them.
  Handler log = [&](const Request& req, Response&) {
    if (req.data().size() != 4) return invalid_argument("log takes a u32");
    room.enter();
    uint32_t i;
    std::memcpy(&i, req.data().data(), 4);
    std::this_thread::sleep_for(milliseconds(2));
    {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(i);
    }
    room.leave();
    return ok_status();
  };
  ASSERT_TRUE(server.handle("log", std::move(log)).ok());
  ASSERT_TRUE(server.start().ok());
  auto c = Client::connect(server.options().socket_path);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  std::vector<JobId> ids;
  for (uint32_t i = 0; i < 30; ++i) {
    auto id = c->submit("log", std::as_bytes(std::span{&i, 1}));
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    ids.push_back(*id);
  }
  for (JobId id : ids) ASSERT_TRUE(c->query(id).ok());
  std::vector<uint32_t> expected(30);
  std::iota(expected.begin(), expected.end(), 0u);
  {
    // Under the lock although every handler is done: the completions that tell
    // us so travel through a second mapping of the ring, where ThreadSanitizer
    // cannot see them order anything.
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(order, expected);
  }
  EXPECT_EQ(room.most(), 1);
  EXPECT_EQ(server.stats().requests_helped, 0u);
}

TEST(ConcurrentOps, ManyRequestsFromTwoSessionsArriveIntact) {
  Server server(two_dispatchers("many"));
  // Answers the request's checksum in a pool block, after a short pause so
  // that requests queue up and the helper takes some.
  Handler sum = [](const Request& req, Response& resp) -> Status {
    const uint64_t value = checksum64(req.data());
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, resp.alloc(sizeof(value)));
    std::memcpy(out.data(), &value, sizeof(value));
    return ok_status();
  };
  ASSERT_TRUE(server.handle("sum", std::move(sum), {.concurrent = true}).ok());
  ASSERT_TRUE(server.start().ok());
  auto client = [&](uint64_t seed) {
    auto c = Client::connect(server.options().socket_path);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    std::mt19937_64 rng(seed);
    for (int round = 0; round < 8; ++round) {
      std::vector<std::vector<std::byte>> sent;
      std::vector<JobId> ids;
      for (int i = 0; i < 32; ++i) {
        sent.push_back(pattern(1 + rng() % (64 << 10), rng()));
        auto id = c->submit("sum", std::span<const std::byte>(sent.back()));
        ASSERT_TRUE(id.ok()) << id.status().to_string();
        ids.push_back(*id);
      }
      std::vector<size_t> pick(ids.size());
      std::iota(pick.begin(), pick.end(), size_t{0});
      std::shuffle(pick.begin(), pick.end(), rng);
      for (size_t k : pick) {
        auto r = c->query(ids[k]);
        ASSERT_TRUE(r.ok()) << r.status().to_string();
        ASSERT_EQ(r->size(), sizeof(uint64_t));
        uint64_t got;
        std::memcpy(&got, r->data().data(), sizeof(got));
        ASSERT_EQ(got, checksum64(sent[k])) << "request " << k << " of round " << round;
      }  // each reply is dropped here: its block goes back through a free
    }
  };
  std::thread first(client, 1), second(client, 2);
  first.join();
  second.join();
  const ServerStats st = server.stats();
  EXPECT_EQ(st.requests, 2u * 8 * 32);
  EXPECT_EQ(st.request_errors, 0u);
  EXPECT_EQ(st.protocol_errors, 0u);
  EXPECT_GT(st.requests_helped, 0u);
}

TEST(ConcurrentOps, ClientKilledWhileAHelperRunsItsRequest) {
  Room room;
  ServerOptions o = two_dispatchers("killed");
  Server server(o);
  ASSERT_TRUE(register_builtin_ops(server).ok());
  ASSERT_TRUE(register_park(server, room).ok());
  ASSERT_TRUE(server.start().ok());
  auto bystander = Client::connect(o.socket_path, {.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  ASSERT_TRUE(bystander.ok());
  ASSERT_TRUE(bystander->call("echo", bytes_of("warm")).ok());
  const int fds_before = open_fd_count();
  const uint64_t mapped_before = server.stats().bytes_mapped;
  const long shmem_before = rss_shmem_kb();
  {
    Peer peer({"hold-pair", o.socket_path, "4096"});
    ASSERT_EQ(peer.read_line(), "ready");
    // Both of its requests are running: one on its own dispatcher, one on the helper.
    ASSERT_TRUE(room.wait_for_together(2, milliseconds(5000)));
    peer.kill(SIGKILL);
  }
  // The dead session stays while handlers use its pool...
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(server.stats().sessions_open, 2u);
  room.open();
  // ...and goes once both are done, with everything it held.
  EXPECT_EQ(wait_sessions(server, 1), 1u);
  EXPECT_EQ(server.stats().bytes_mapped, mapped_before);
  EXPECT_EQ(open_fd_count(), fds_before);
  EXPECT_LE(rss_shmem_kb(), shmem_before + 64);
  EXPECT_EQ(server.stats().requests_helped, 1u);
  auto data = pattern(100000, 5);
  auto r = bystander->call("echo_copy", std::span<const std::byte>(data));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->to_vector().value(), data);
}

TEST(ConcurrentOps, ServerStoppedWhileAHelperRunsARequest) {
  Room room;
  auto server = std::make_unique<Server>(two_dispatchers("stopped"));
  ASSERT_TRUE(register_park(*server, room).ok());
  ASSERT_TRUE(server->start().ok());
  auto c = Client::connect(server->options().socket_path);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto a = c->submit("park", std::span<const std::byte>{});
  auto b = c->submit("park", std::span<const std::byte>{});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(room.wait_for_together(2, milliseconds(5000)));
  std::thread stopper([&] {
    server->stop();
    server->wait();  // returns only after both handlers are done
  });
  std::this_thread::sleep_for(milliseconds(50));
  room.open();
  stopper.join();
  EXPECT_EQ(server->stats().sessions_open, 0u);
  for (JobId id : {*a, *b}) {
    // Either the reply made it out before the session closed, or the query fails cleanly.
    Status st = c->query(id).status();
    EXPECT_TRUE(st.ok() || st.code() == StatusCode::kUnavailable) << st.to_string();
  }
  server.reset();
}

// Hostile descriptors on a helping server: the helper validates what it takes
// as the owner does, and a ring it finds corrupt closes that session only.
class HostileWithHelpers : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o = two_dispatchers("hostile");
    server_ = std::make_unique<Server>(o);
    ASSERT_TRUE(register_builtin_ops(*server_).ok());
    ASSERT_TRUE(register_park(*server_, room_).ok());
    // Not concurrent: no helper takes it, so it parks the session's own
    // dispatcher. ("park" could land on an idle helper when the owner is
    // slow to wake, as on a loaded machine, and turn the tests inside out.)
    ASSERT_TRUE(register_park(*server_, room_, "hold", /*concurrent=*/false).ok());
    Handler nap = [](const Request&, Response&) {
      std::this_thread::sleep_for(milliseconds(1));
      return ok_status();
    };
    ASSERT_TRUE(server_->handle("nap", std::move(nap), {.concurrent = true}).ok());
    ASSERT_TRUE(server_->start().ok());
    raw_ = RawSession::open(o.socket_path);
    ASSERT_NE(raw_, nullptr);
    bystander_ = std::make_unique<Client>(std::move(Client::connect(o.socket_path)).value());
  }
  void TearDown() override {
    room_.open();
    server_->stop();
    server_->wait();
  }
  void expect_bystander_ok() {
    auto data = pattern(50000, 7);
    auto r = bystander_->call("echo_copy", std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->to_vector().value(), data);
  }
  Room room_;  // declared before the server: handlers use it until the server is gone
  std::unique_ptr<Server> server_;
  std::unique_ptr<RawSession> raw_;
  std::unique_ptr<Client> bystander_;
};

TEST_F(HostileWithHelpers, HelperFailsBadRequestsAndIgnoresForgedFrees) {
  // The raw session's own dispatcher is parked: what follows is the helper's.
  raw_->push(raw_request(raw_->op("hold"), 1, 0, 0));
  ASSERT_TRUE(room_.wait_for_together(1, milliseconds(5000)));
  const uint64_t errors_before = server_->stats().protocol_errors;
  detail::SubDesc forged{};
  forged.kind = static_cast<uint16_t>(detail::SubKind::kFreeReply);
  forged.offset = 12345;
  raw_->push(forged);
  const uint64_t pool = raw_->welcome->client_pool_bytes;
  raw_->push(raw_request(raw_->op("nap"), 2, pool - 10, 11));  // runs past the pool
  raw_->push(raw_request(raw_->op("nap"), 3, 8, UINT64_MAX));  // wraps
  for (uint64_t job : {2, 3}) {
    detail::CompDesc c{};
    ASSERT_TRUE(raw_->pop(&c));
    EXPECT_EQ(c.job_id, job);
    EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
  }
  EXPECT_EQ(server_->stats().requests_helped, 2u);
  EXPECT_EQ(server_->stats().protocol_errors, errors_before + 3);  // the forged free and two ranges
  // An unknown kind is not the helper's to take: it waits for the owner.
  detail::SubDesc odd{};
  odd.kind = 0x7777;
  odd.job_id = 4;
  raw_->push(odd);
  detail::CompDesc c{};
  EXPECT_FALSE(raw_->pop(&c, milliseconds(100)));
  room_.open();
  for (uint64_t job : {1, 4}) {
    ASSERT_TRUE(raw_->pop(&c));
    EXPECT_EQ(c.job_id, job);
  }
  EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
  expect_bystander_ok();
}

TEST_F(HostileWithHelpers, CorruptRingSeenByTheHelperClosesOnlyThatSession) {
  raw_->push(raw_request(raw_->op("hold"), 1, 0, 0));
  ASSERT_TRUE(room_.wait_for_together(1, milliseconds(5000)));
  const uint64_t errors_before = server_->stats().protocol_errors;
  raw_->cb->sub.tail.value.store(1'000'000, std::memory_order_release);
  // The helper sees it while the owner is parked...
  auto end = std::chrono::steady_clock::now() + milliseconds(5000);
  while (server_->stats().protocol_errors == errors_before && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(server_->stats().protocol_errors, errors_before + 1);
  expect_bystander_ok();
  // ...and the session ends once the parked handler returns.
  room_.open();
  EXPECT_EQ(wait_sessions(*server_, 1), 1u);
  expect_bystander_ok();
}

TEST_F(HostileWithHelpers, FullCompletionRingWithTwoPostersLosesNothing) {
  // The raw client reads no completions until it has sent 100 requests, on a
  // 64-entry completion ring: both dispatchers run them and hold back what
  // does not fit. Every job must then arrive exactly once.
  const uint32_t nap = raw_->op("nap");
  for (uint64_t j = 0; j < 60; ++j) raw_->push(raw_request(nap, j, 0, 0));
  std::this_thread::sleep_for(milliseconds(100));
  std::vector<int> seen(100, 0);
  detail::CompDesc c{};
  for (uint64_t j = 60; j < 100; ++j) {
    // The submission ring has 64 slots too: make room as the server frees them.
    while (raw_->tx.try_push(raw_request(nap, j, 0, 0)) == shm::RingResult::kFull) {
      ASSERT_TRUE(raw_->pop(&c));
      ASSERT_LT(c.job_id, 100u);
      ++seen[c.job_id];
    }
    uint64_t one = 1;
    ASSERT_EQ(::write(raw_->wake_fd, &one, 8), 8);
  }
  for (int got = std::accumulate(seen.begin(), seen.end(), 0); got < 100; ++got) {
    ASSERT_TRUE(raw_->pop(&c)) << got << " of 100";
    ASSERT_LT(c.job_id, 100u);
    ++seen[c.job_id];
  }
  EXPECT_EQ(seen, std::vector<int>(100, 1));
  EXPECT_FALSE(raw_->pop(&c, milliseconds(50)));
  EXPECT_GT(server_->stats().requests_helped, 0u);
  expect_bystander_ok();
}

}  // namespace
}  // namespace rocket::testing
