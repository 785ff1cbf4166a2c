#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

namespace rocket::testing {
namespace {

TEST(ClientServer, CopyPathEchoRoundTrips) {
  TestServer srv;
  Client c = srv.connect();
  auto data = pattern(100000, 1);
  for (const char* op : {"echo", "echo_copy"}) {
    auto r = c.call(op, std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->size(), data.size());
    EXPECT_EQ(std::memcmp(r->data().data(), data.data(), data.size()), 0);
    std::vector<std::byte> out(data.size());
    ASSERT_TRUE(r->copy_to(out).ok());
    EXPECT_EQ(out, data);
  }
}

TEST(ClientServer, ZeroCopyBufferRoundTrips) {
  TestServer srv;
  Client c = srv.connect();
  auto buf = c.alloc(1 << 20);
  ASSERT_TRUE(buf.ok());
  auto data = pattern(1 << 20, 2);
  std::memcpy(buf->data(), data.data(), data.size());
  auto r = c.call("echo", *buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data().data(), buf->data());  // in place: the reply is the request buffer
  auto sum = c.call("checksum", *buf);
  ASSERT_TRUE(sum.ok());
  uint64_t got;
  ASSERT_EQ(sum->size(), 8u);
  std::memcpy(&got, sum->data().data(), 8);
  EXPECT_EQ(got, checksum64(data));
}

TEST(ClientServer, EmptyRequestAndUnknownOp) {
  TestServer srv;
  Client c = srv.connect();
  auto r = c.call("echo", std::span<const std::byte>{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 0u);
  auto bad = c.call("no_such_op", std::span<const std::byte>{});
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
  auto ops = c.ops();
  EXPECT_NE(std::find(ops.begin(), ops.end(), "checksum"), ops.end());
}

TEST(ClientServer, HandlerErrorsTravelAsStatuses) {
  TestServer srv;
  Client c = srv.connect();
  auto r = c.call("fail", std::span<const std::byte>{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(r.status().message(), "model is busy, try later");
  auto t = c.call("throw", std::span<const std::byte>{});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInternal);
  EXPECT_NE(t.status().message().find("boom"), std::string::npos);
  // The server and the session are fine afterwards.
  EXPECT_TRUE(c.call("echo", bytes_of("still here")).ok());
}

TEST(ClientServer, ALoanIsAHintAServerWithoutLendingIgnores) {
  TestServer srv;
  Client c = srv.connect();
  const CallOptions lend{.policy = {.lend_millicpus = 500, .lend_memory_bytes = 1 << 20}};
  auto r = c.call("echo_copy", bytes_of("work"), lend);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->lent_millicpus(), 0u);
  EXPECT_EQ(r->lent_memory_bytes(), 0u);
  auto f = c.call_async("echo_copy", bytes_of("more"), lend).get();
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->lent_millicpus(), 0u);
  EXPECT_EQ(srv.server->stats().lends, 0u);
  EXPECT_EQ(srv.server->stats().lends_refused, 2u);
  // More than the protocol carries is the caller's mistake, caught before sending.
  auto bad = c.call("echo", bytes_of("x"), {.policy = {.lend_millicpus = kMaxLendMillicpus + 1}});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      c.call_async("echo", bytes_of("x"), {.policy = {.lend_millicpus = kMaxLendMillicpus + 1}}).get().status().code(),
      StatusCode::kInvalidArgument);
  auto too_much = c.call("echo", bytes_of("x"), {.policy = {.lend_memory_bytes = kMaxLendMemoryBytes + 1}});
  EXPECT_EQ(too_much.status().code(), StatusCode::kInvalidArgument);
}

TEST(ClientServer, StatsOpReportsTheServersCounters) {
  TestServer srv;
  Client c = srv.connect();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.call("echo", bytes_of("x")).ok());
  EXPECT_FALSE(c.call("no_such_op", bytes_of("x")).ok());
  auto r = c.call("stats", std::span<const std::byte>{});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  auto j = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(r->data().data()), r->size()));
  EXPECT_EQ(j["requests"].get<uint64_t>(), srv.server->stats().requests);
  EXPECT_GE(j["requests"].get<uint64_t>(), 6u);  // five echoes and this call
  EXPECT_EQ(j["sessions_open"].get<uint64_t>(), 1u);
  EXPECT_EQ(j["bytes_mapped"].get<uint64_t>(), srv.server->stats().bytes_mapped);
  EXPECT_EQ(j["pool_grows"].get<uint64_t>(), srv.server->stats().pool_grows);
  EXPECT_TRUE(j.contains("lends_refused"));
}

TEST(ClientServer, ClientPoolExhaustionIsResourceExhausted) {
  TestServer srv;
  Client c = srv.connect({.client_pool_bytes = 1 << 20, .max_client_pool_bytes = 1 << 20});
  auto a = c.alloc(600 << 10);
  ASSERT_TRUE(a.ok());
  auto b = c.alloc(600 << 10);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  auto data = pattern(600 << 10, 3);
  EXPECT_EQ(c.call("echo", std::span<const std::byte>(data)).status().code(), StatusCode::kResourceExhausted);
  a = Buffer();  // frees the block
  EXPECT_TRUE(c.call("echo", std::span<const std::byte>(data)).ok());
}

TEST(ClientServer, OversizePayloadIsAClearInvalidArgument) {
  TestServer srv;
  Client c = srv.connect({.client_pool_bytes = 1 << 20, .max_client_pool_bytes = 1 << 20});
  auto data = pattern(2 << 20, 4);
  auto r = c.call("echo", std::span<const std::byte>(data));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("max_client_pool_bytes"), std::string::npos) << r.status().message();
}

TEST(ClientServer, ServerPoolExhaustionFailsTheRequestNotTheSession) {
  TestServer srv;
  Client c = srv.connect({.server_pool_bytes = 1 << 20, .max_server_pool_bytes = 1 << 20});
  auto data = pattern(700 << 10, 5);
  auto r1 = c.call("echo_copy", std::span<const std::byte>(data));
  ASSERT_TRUE(r1.ok());
  auto r2 = c.call("echo_copy", std::span<const std::byte>(data));  // r1 still holds the pool
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kResourceExhausted);
  r1 = Reply();  // returns the block to the server by message
  auto r3 = c.call("echo_copy", std::span<const std::byte>(data));
  EXPECT_TRUE(r3.ok()) << r3.status().to_string();
}

// Pools start small and grow on demand: a request and a response five times
// the starting pools go through, the pools' growth counts against the
// server's budget while the session lasts, and all of it is given back when
// the session ends.
TEST(ClientServer, PoolsGrowForPayloadsLargerThanTheyStart) {
  TestServer srv;  // 8 MiB pools to start with
  const uint64_t before = srv.server->stats().bytes_mapped;
  Client c = srv.connect();
  const uint64_t at_connect = srv.server->stats().bytes_mapped;
  EXPECT_LT(at_connect - before, uint64_t{17} << 20);
  auto data = pattern(size_t{40} << 20, 11);
  auto r = c.call("echo_copy", std::span<const std::byte>(data));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->size(), data.size());
  EXPECT_EQ(std::memcmp(r->data().data(), data.data(), data.size()), 0);
  const ClientStats cs = c.stats();
  EXPECT_GE(cs.client_pool_bytes, data.size());
  EXPECT_LT(cs.client_pool_bytes, data.size() + (size_t{4} << 20));  // grown to fit, not to its most
  EXPECT_EQ(cs.client_pool_grows, 1u);
  EXPECT_EQ(cs.client_pool_max_bytes, ServerOptions{}.max_pool_bytes);
  const ServerStats ss = srv.server->stats();
  EXPECT_EQ(ss.pool_grows, 2u);  // the client pool for the request, the server pool for the response
  EXPECT_GE(ss.bytes_mapped - at_connect, 2 * data.size() - (size_t{16} << 20));
  // Grown pools stay grown: the next call of that size needs no growth.
  r = Reply();
  ASSERT_TRUE(c.call("echo_copy", std::span<const std::byte>(data)).ok());
  EXPECT_EQ(srv.server->stats().pool_grows, 2u);
  c.close();
  ASSERT_TRUE(srv.wait_sessions(0));
  EXPECT_EQ(srv.server->stats().bytes_mapped, before);
}

TEST(PoolGrowth, TargetDoublesInWholeHugePagesUpToTheMost) {
  constexpr uint64_t MiB = uint64_t{1} << 20;
  using detail::pool_growth_target;
  EXPECT_EQ(pool_growth_target(8 * MiB, 9 * MiB, 2048 * MiB), 16 * MiB);       // at least double
  EXPECT_EQ(pool_growth_target(8 * MiB, 40 * MiB + 5, 2048 * MiB), 42 * MiB);  // or what is needed, in 2 MiB units
  EXPECT_EQ(pool_growth_target(1 * MiB, 1 * MiB + 1, 3 * MiB), 2 * MiB);
  EXPECT_EQ(pool_growth_target(8 * MiB, 9 * MiB, 12 * MiB + 4096), 12 * MiB + 4096);  // capped at the most
  EXPECT_EQ(pool_growth_target(8 * MiB, 13 * MiB, 12 * MiB), 0u);                     // cannot fit
  EXPECT_EQ(pool_growth_target(12 * MiB, 12 * MiB, 12 * MiB), 0u);                    // already at its most
  EXPECT_EQ(pool_growth_target(1 << 12, 1 << 13, 1 << 20), uint64_t{1} << 20);        // a most below 2 MiB
}

// Each pool grows only to its most: the client's own (ClientOptions::max_*)
// or the server's max_pool_bytes.
TEST(ClientServer, PoolsGrowNoFurtherThanTheirMost) {
  TestServer srv({.max_pool_bytes = size_t{24} << 20});
  Client c = srv.connect({.max_server_pool_bytes = size_t{12} << 20});
  EXPECT_EQ(c.stats().client_pool_max_bytes, size_t{24} << 20);
  EXPECT_EQ(c.stats().server_pool_max_bytes, size_t{12} << 20);
  auto big = pattern(size_t{25} << 20, 12);
  auto r = c.call("echo", std::span<const std::byte>(big));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("max_client_pool_bytes"), std::string::npos) << r.status().message();
  // 20 MiB fits the client pool's most but not the server pool's: the
  // response cannot be made, and the session goes on.
  auto mid = pattern(size_t{20} << 20, 13);
  r = c.call("echo_copy", std::span<const std::byte>(mid));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  EXPECT_NE(r.status().message().find("max_server_pool_bytes"), std::string::npos) << r.status().message();
  r = c.call("echo", std::span<const std::byte>(mid));  // answered in place
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(std::memcmp(r->data().data(), mid.data(), mid.size()), 0);
}

// A payload within a pool's most that cannot fit beside the blocks held now
// is a matter of room (RESOURCE_EXHAUSTED), not of size.
TEST(ClientServer, APayloadThatFitsOnlyAnEmptyPoolIsRefusedForRoom) {
  TestServer srv;
  Client c = srv.connect({.client_pool_bytes = 1 << 20, .max_client_pool_bytes = 4 << 20});
  auto held = c.alloc(2 << 20);  // the pool grows to 4 MiB, its most
  ASSERT_TRUE(held.ok()) << held.status().to_string();
  auto whole = c.alloc(4 << 20);
  ASSERT_FALSE(whole.ok());
  EXPECT_EQ(whole.status().code(), StatusCode::kResourceExhausted) << whole.status().to_string();
  held = Buffer();
  EXPECT_TRUE(c.alloc(4 << 20).ok());
}

// Many threads outgrowing the pools at once: each grows it or finds it grown.
TEST(ClientServer, ThreadsOutgrowingThePoolsAtOnceAllGetTheirBytes) {
  TestServer srv({.dispatchers = 2});
  Client c = srv.connect({.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 6; ++i) {
        auto data =
            pattern((size_t{1} << 20) * static_cast<size_t>(1 + i + t), static_cast<uint32_t>(100 + t * 10 + i));
        auto r = c.call("echo_copy", std::span<const std::byte>(data));
        if (!r.ok() || r->size() != data.size() || std::memcmp(r->data().data(), data.data(), data.size()) != 0) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GE(c.stats().client_pool_grows, 1u);
}

TEST(ClientServer, RepliesAreFreedOnTheServer) {
  TestServer srv;
  Client c = srv.connect({.server_pool_bytes = 1 << 20, .max_server_pool_bytes = 1 << 20});
  auto data = pattern(300 << 10, 6);
  for (int i = 0; i < 200; ++i) {  // 60 MB through a 1 MiB pool: leaks would exhaust it
    auto r = c.call("echo_copy", std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << i << " " << r.status().to_string();
  }
}

TEST(ClientServer, AsyncFuturesOverlapAndResolve) {
  TestServer srv({.dispatchers = 2});
  Client c = srv.connect();
  uint32_t ms = 30;
  auto slow = c.call_async("sleep", std::as_bytes(std::span{&ms, 1}));
  EXPECT_FALSE(slow.ready());
  auto data = pattern(5000, 7);
  auto fast = c.call_async("echo", std::span<const std::byte>(data));
  auto r = fast.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->to_vector().value(), data);
  EXPECT_TRUE(slow.get().ok());
  EXPECT_FALSE(slow.get().ok());  // get() once
}

TEST(ClientServer, AsyncCallsThroughTheThreadsEngine) {
  TestServer srv({.default_client_pool_bytes = 64 << 20});
  Client c = srv.connect({.client_pool_bytes = 64 << 20});
  std::vector<std::vector<std::byte>> payloads;
  std::vector<Future> futures;
  CallOptions opts{.policy = {.mover = MoverKind::kThreads, .cache = Cache::kBypass}};
  for (int i = 0; i < 6; ++i) payloads.push_back(pattern((4 << 20) + static_cast<size_t>(i) * 999, 30 + i));
  for (auto& p : payloads) futures.push_back(c.call_async("checksum", std::span<const std::byte>(p), opts));
  for (size_t i = 0; i < futures.size(); ++i) {
    auto r = futures[i].get();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    uint64_t got;
    std::memcpy(&got, r->data().data(), 8);
    EXPECT_EQ(got, checksum64(payloads[i]));
  }
  // Pipelined submit through the engine (copied before submit returns), and a sync call.
  auto id = c.submit("echo_copy", std::span<const std::byte>(payloads[0]), opts);
  ASSERT_TRUE(id.ok());
  auto r = c.query(*id);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->to_vector().value(), payloads[0]);
  auto s = c.call("echo", std::span<const std::byte>(payloads[1]), opts);
  ASSERT_TRUE(s.ok());
  std::vector<std::byte> out(payloads[1].size());
  ASSERT_TRUE(s->copy_to(out, {.mover = MoverKind::kThreads, .cache = Cache::kInject}).ok());
  EXPECT_EQ(out, payloads[1]);
}

TEST(ClientServer, DroppedAsyncFuturesWaitForTheirCopy) {
  TestServer srv({.default_client_pool_bytes = 64 << 20});
  Client c = srv.connect({.client_pool_bytes = 64 << 20});
  CallOptions opts{.policy = {.mover = MoverKind::kThreads, .cache = Cache::kAuto}};
  for (int i = 0; i < 10; ++i) {
    auto data = pattern(8 << 20, 40 + i);
    auto f = c.call_async("echo", std::span<const std::byte>(data), opts);
    // `data` dies right after `f`: the destructor must have let the copy finish.
  }
  EXPECT_TRUE(c.call("echo", bytes_of("after")).ok());
  EXPECT_EQ(c.stats().client_pool_in_use, 0u);
}

// Requests of dropped futures that were already posted hold their pool
// blocks until their responses arrive, and nobody can collect those: a call
// that finds the pool full waits for them instead of failing.
TEST(ClientServer, PoolSpaceOfDroppedFuturesComesBack) {
  TestServer srv({.default_client_pool_bytes = 16 << 20});
  Client c = srv.connect({.client_pool_bytes = 16 << 20});
  CallOptions opts{.policy = {.mover = MoverKind::kThreads, .cache = Cache::kAuto}};
  for (int i = 0; i < 2; ++i) {
    auto data = pattern(7 << 20, i);
    const uint32_t ms = 150;  // the server holds each request this long
    std::memcpy(data.data(), &ms, 4);
    auto f = c.call_async("sleep", std::span<const std::byte>(data), opts);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // copied and posted before the drop
  }
  auto data = pattern(4 << 20, 9);
  auto r = c.call("echo", std::span<const std::byte>(data));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->to_vector().value(), data);
  r = Reply();
  EXPECT_EQ(c.stats().client_pool_in_use, 0u);
}

TEST(ClientServer, KernelPathMovesPrivateBytesBothWays) {
  TestServer srv;
  Client c = srv.connect({.allow_kernel_copy = true});
  ASSERT_TRUE(c.kernel_copy()) << "same uid, no Yama restriction: the probe should pass";
  CallOptions kernel{.policy = {.mover = MoverKind::kKernel}};
  for (size_t n : {size_t{0}, size_t{1}, size_t{4095}, size_t{3} << 20}) {
    auto req = pattern(n, n + 1);
    std::vector<std::byte> resp(n + 16, std::byte{0});
    auto got = c.call_into("echo", std::span<const std::byte>(req), resp, kernel);
    ASSERT_TRUE(got.ok()) << n << " " << got.status().to_string();
    ASSERT_EQ(*got, n);
    if (n > 0) EXPECT_EQ(std::memcmp(resp.data(), req.data(), n), 0);
  }
  // The server pool is untouched by the kernel path: a checksum response
  // written straight into our buffer.
  auto big = pattern(2 << 20, 77);
  uint64_t sum = 0;
  auto got = c.call_into("checksum", std::span<const std::byte>(big), std::as_writable_bytes(std::span{&sum, 1}), kernel);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(sum, checksum64(big));
  // Remote request, reply in the server pool.
  auto r = c.call("echo", std::span<const std::byte>(big), kernel);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->to_vector().value(), big);
  // A response that does not fit.
  std::vector<std::byte> small(10);
  auto too_small = c.call_into("echo", std::span<const std::byte>(big), small, kernel);
  EXPECT_EQ(too_small.status().code(), StatusCode::kOutOfRange);
  // Other movers give the same result through the pool.
  std::vector<std::byte> out(big.size());
  auto via_pool = c.call_into("echo", std::span<const std::byte>(big), out);
  ASSERT_TRUE(via_pool.ok());
  EXPECT_EQ(out, big);
}

TEST(ClientServer, KernelPathNeedsTheClientsConsent) {
  TestServer srv;
  Client c = srv.connect();
  EXPECT_FALSE(c.kernel_copy());
  std::vector<std::byte> out(8);
  auto r = c.call_into("echo", bytes_of("x"), out, {.policy = {.mover = MoverKind::kKernel}});
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
}

TEST(ClientServer, UnusableMoverIsAClearError) {
  TestServer srv;
  Client c = srv.connect();
  auto r = c.call("echo", bytes_of("x"), {.policy = {.mover = MoverKind::kDsa}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("dsa"), std::string::npos);
}

TEST(ClientServer, DroppedFutureDoesNotLeakServerPool) {
  TestServer srv;
  Client c = srv.connect({.server_pool_bytes = 1 << 20});
  auto data = pattern(400 << 10, 8);
  for (int i = 0; i < 50; ++i) {
    auto f = c.call_async("echo_copy", std::span<const std::byte>(data));
    (void)f;  // abandoned: its reply must be freed when it arrives
  }
  // A call completes after every earlier job of the session (one dispatcher,
  // in order), so by its end all abandoned replies were seen and freed.
  ASSERT_TRUE(c.call("echo", bytes_of("flush")).ok());
  auto r = c.call("echo_copy", std::span<const std::byte>(data));
  EXPECT_TRUE(r.ok()) << r.status().to_string();
}

TEST(ClientServer, PipelinedQueryInAnyOrder) {
  TestServer srv;
  Client c = srv.connect();
  std::vector<JobId> ids;
  std::vector<std::vector<std::byte>> sent;
  for (int i = 0; i < 100; ++i) {
    sent.push_back(pattern(100 + static_cast<size_t>(i) * 37, static_cast<uint64_t>(i)));
    auto id = c.submit("echo_copy", std::span<const std::byte>(sent.back()));
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    ids.push_back(*id);
  }
  // Collect backwards: completions arrive in order, queries need not.
  for (int i = 99; i >= 0; --i) {
    auto r = c.query(ids[static_cast<size_t>(i)]);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->to_vector().value(), sent[static_cast<size_t>(i)]);
  }
  EXPECT_EQ(c.query(ids[0]).status().code(), StatusCode::kNotFound);  // already collected
}

TEST(ClientServer, SubmitBatchCopiesInParallelAndPostsTogether) {
  TestServer srv;
  Client c = srv.connect({.client_pool_bytes = 64 << 20, .server_pool_bytes = 64 << 20});
  std::vector<std::vector<std::byte>> data;
  for (int i = 0; i < 12; ++i) data.push_back(pattern(static_cast<size_t>(i) * 300000 + (i == 3 ? 0 : 17), 500 + i));
  std::vector<std::span<const std::byte>> spans(data.begin(), data.end());
  uint64_t wakeups_before = c.stats().server_wakeups;
  auto ids = c.submit_batch("echo_copy", spans, {.policy = {.mover = MoverKind::kThreads}});
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  ASSERT_EQ(ids->size(), data.size());
  EXPECT_LE(c.stats().server_wakeups, wakeups_before + 1);  // one wake-up at most for the batch
  for (size_t i = ids->size(); i-- > 0;) {
    auto r = c.query((*ids)[i]);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->to_vector().value(), data[i]);
  }
}

TEST(ClientServer, SubmitBatchIsAllOrNothing) {
  TestServer srv;
  Client c = srv.connect({.client_pool_bytes = 1 << 20, .max_client_pool_bytes = 1 << 20});
  std::vector<std::vector<std::byte>> data{pattern(600 << 10, 1), pattern(600 << 10, 2)};  // 1.2 MiB > pool
  std::vector<std::span<const std::byte>> spans(data.begin(), data.end());
  auto ids = c.submit_batch("echo", spans);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.stats().client_pool_in_use, 0u);  // the first block was returned
  EXPECT_EQ(c.stats().requests, 0u);
  EXPECT_TRUE(c.call("echo", bytes_of("fine")).ok());
}

TEST(ClientServer, SubmitReportsFullCompletionRing) {
  TestServer srv;
  Client c = srv.connect({.ring_entries = 8});
  uint32_t ms = 50;
  std::vector<JobId> ids;
  Status last;
  for (int i = 0; i < 20; ++i) {
    auto id = c.submit("sleep", std::as_bytes(std::span{&ms, 1}));
    if (!id.ok()) {
      last = id.status();
      break;
    }
    ids.push_back(*id);
  }
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_EQ(last.code(), StatusCode::kUnavailable);
  for (auto id : ids) EXPECT_TRUE(c.query(id).ok());
}

TEST(ClientServer, SessionsCannotQueryEachOthersJobs) {
  TestServer srv;
  Client a = srv.connect({.tenant = "a"});
  Client b = srv.connect({.tenant = "b"});
  uint32_t ms = 20;
  auto id = a.submit("sleep", std::as_bytes(std::span{&ms, 1}));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(b.query(*id).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(a.query(*id).ok());
}

TEST(ClientServer, QueryTimesOutThenSucceeds) {
  TestServer srv;
  Client c = srv.connect();
  uint32_t ms = 100;
  auto id = c.submit("sleep", std::as_bytes(std::span{&ms, 1}));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(c.query(*id, std::chrono::milliseconds(10)).status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(c.query(*id).ok());
}

TEST(ClientServer, SleepingServerIsWokenAndSleepingClientIsWoken) {
  TestServer srv;
  Client c = srv.connect({.spin = std::chrono::microseconds(0)});
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // server goes to sleep
    ASSERT_TRUE(c.call("echo", bytes_of("ping")).ok());
  }
  EXPECT_GT(c.stats().server_wakeups, 0u);
}

TEST(ClientServer, RepliesOutliveTheClient) {
  TestServer srv;
  Reply r;
  {
    Client c = srv.connect();
    auto x = c.call("echo_copy", bytes_of("kept"));
    ASSERT_TRUE(x.ok());
    r = std::move(*x);
  }
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.data().data()), r.size()), "kept");
}

TEST(ClientServer, CallsFailAfterClose) {
  TestServer srv;
  Client c = srv.connect();
  c.close();
  EXPECT_EQ(c.call("echo", bytes_of("x")).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(srv.wait_sessions(0));
}

TEST(ClientServer, PerThreadHandlerInstances) {
  ServerOptions o;
  o.socket_path = unique_socket_path("pt");
  o.dispatchers = 2;
  o.default_client_pool_bytes = o.default_server_pool_bytes = 1 << 20;
  Server server(o);
  std::atomic<int> instances{0};
  ASSERT_TRUE(server.handle_per_thread("count", [&] {
    instances++;
    return Handler([n = 0](const Request&, Response& resp) mutable {
      ++n;  // per-instance state, no lock needed
      return resp.write(std::as_bytes(std::span{&n, 1}));
    });
  }).ok());
  EXPECT_EQ(server.handle("count", [](const Request&, Response&) { return ok_status(); }).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(server.start().ok());
  EXPECT_EQ(instances.load(), 2);
  EXPECT_EQ(server.handle("late", [](const Request&, Response&) { return ok_status(); }).code(),
            StatusCode::kFailedPrecondition);
  auto c = Client::connect(o.socket_path);
  ASSERT_TRUE(c.ok());
  auto r = c->call("count", std::span<const std::byte>{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), sizeof(int));
}

TEST(ClientServer, SecondServerOnTheSameSocketIsRefused) {
  TestServer srv;
  Server other(ServerOptions{.socket_path = srv.path});
  EXPECT_EQ(other.start().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(srv.connect().call("echo", bytes_of("x")).ok());
}

// Without a GPU, call_gpu says why instead of failing obscurely; with one,
// host memory is refused (the GPU test in cuda_test.cc covers the real path).
TEST(ClientServer, CallGpuExplainsWhatIsMissing) {
  TestServer srv;
  Client c = srv.connect();
  std::vector<std::byte> host(4096);
  auto r = c.call_gpu("echo", host.data(), host.size());
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().code() == StatusCode::kUnavailable || r.status().code() == StatusCode::kInvalidArgument)
      << r.status().to_string();
  EXPECT_FALSE(r.status().message().empty());
  EXPECT_TRUE(c.call("echo", std::span<const std::byte>(host)).ok());  // the session is fine
}

// A handler sharing host memory as a GPU response is refused with the reason
// (no GPU here; not device memory where there is one) whether or not the
// caller accepts GPU responses; its release is not run, since the memory
// stays the handler's. Accepting GPU responses changes nothing for an op
// that answers with host bytes.
TEST(ClientServer, ShareDeviceRefusesWhatIsNotDeviceMemory) {
  TestServer srv;
  Client c = srv.connect();
  const int before = g_share_host_releases.load();
  for (bool accept : {false, true}) {
    auto r = c.call("share_host", bytes_of("x"), {.gpu_response = accept});
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().code() == StatusCode::kUnavailable || r.status().code() == StatusCode::kInvalidArgument)
        << r.status().to_string();
    EXPECT_NE(r.status().message().find("share_device"), std::string::npos) << r.status().to_string();
  }
  EXPECT_EQ(g_share_host_releases.load(), before);
  EXPECT_EQ(srv.server->stats().gpu_responses_shared, 0u);
  auto data = pattern(100000, 9);
  auto r = c.call("echo", std::span<const std::byte>(data), {.gpu_response = true});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_FALSE(r->on_gpu());
  EXPECT_EQ(r->to_vector().value(), data);
}

// The GPU backend hooks (Request::copy_to_device, Response::write_from_device)
// behind the built-in gpu_echo say what is missing on a machine without a
// GPU; scripts/gpu_check.sh measures them where there is one.
TEST(ClientServer, GpuBackendHooksExplainWhatIsMissing) {
  if (shared_mover(MoverKind::kCuda).ok()) GTEST_SKIP() << "a GPU is present: scripts/gpu_check.sh covers gpu_echo";
  TestServer srv;
  Client c = srv.connect();
  auto data = pattern(1 << 20, 5);
  auto r = c.call("gpu_echo", std::span<const std::byte>(data));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("GPU"), std::string::npos) << r.status().to_string();
  EXPECT_TRUE(c.call("echo", std::span<const std::byte>(data)).ok());
}

}  // namespace
}  // namespace rocket::testing
