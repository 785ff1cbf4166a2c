// Many clients at once, mixed sizes, every payload checksummed: no lost,
// duplicated or corrupted response.
#include <atomic>
#include <random>
#include <thread>

#include "test_util.h"

namespace rocket::testing {
namespace {

TEST(Stress, EightClientsMixedSizesAllVerified) {
  TestServer srv({.dispatchers = 2, .default_client_pool_bytes = 16 << 20, .default_server_pool_bytes = 16 << 20});
  constexpr int kClients = 8;
  const int kRounds = 60;
  std::atomic<int> failures{0};
  std::atomic<uint64_t> verified{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      auto c = Client::connect(srv.path, {.tenant = "c" + std::to_string(t)});
      if (!c.ok()) {
        failures++;
        return;
      }
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      const size_t sizes[] = {0, 1, 63, 4096, 65537, 1 << 20, 3 << 20};
      for (int i = 0; i < kRounds; ++i) {
        size_t n = sizes[rng() % 7];
        auto data = pattern(n, rng());
        const uint64_t want = checksum64(data);
        switch (i % 4) {
          case 0: {  // copy path, server-pool response
            auto r = c->call("echo_copy", std::span<const std::byte>(data));
            if (!r.ok() || r->size() != n || checksum64(r->data()) != want) failures++;
            break;
          }
          case 1: {  // zero-copy, checksum computed by the server
            if (n == 0) break;
            auto b = c->alloc(n);
            if (!b.ok()) {
              failures++;
              break;
            }
            std::memcpy(b->data(), data.data(), n);
            auto r = c->call("checksum", *b);
            uint64_t got = 0;
            if (r.ok() && r->size() == 8) std::memcpy(&got, r->data().data(), 8);
            if (got != want) failures++;
            break;
          }
          case 2: {  // async
            auto f = c->call_async("echo", std::span<const std::byte>(data));
            auto r = f.get();
            if (!r.ok() || checksum64(r->data()) != want) failures++;
            break;
          }
          case 3: {  // pipelined burst, collected out of order
            std::vector<std::pair<JobId, uint64_t>> jobs;
            for (int k = 0; k < 4; ++k) {
              auto d = pattern(n / 4 + static_cast<size_t>(k), rng());
              auto id = c->submit("echo_copy", std::span<const std::byte>(d));
              if (!id.ok()) {
                failures++;
                continue;
              }
              jobs.emplace_back(*id, checksum64(d));
            }
            std::shuffle(jobs.begin(), jobs.end(), rng);
            for (auto& [id, sum] : jobs) {
              auto r = c->query(id);
              if (!r.ok() || checksum64(r->data()) != sum) failures++;
            }
            break;
          }
        }
        verified++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(verified.load(), static_cast<uint64_t>(kClients * kRounds));
  EXPECT_EQ(srv.server->stats().request_errors, 0u);
}

TEST(Stress, ManyThreadsShareOneClient) {
  TestServer srv({.dispatchers = 2});
  Client c = srv.connect();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto data = pattern(static_cast<size_t>(1 + (i * 977 + t) % 20000), static_cast<uint64_t>(t * 1000 + i));
        auto r = c.call(i % 2 ? "echo" : "echo_copy", std::span<const std::byte>(data));
        if (!r.ok() || r->to_vector().value() != data) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(Stress, ConnectDisconnectChurn) {
  TestServer srv({.dispatchers = 2});
  const int fds_before = open_fd_count();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto c = Client::connect(srv.path, {.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
        if (!c.ok() || !c->call("echo", bytes_of("x")).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(srv.wait_sessions(0));
  EXPECT_EQ(open_fd_count(), fds_before);
  EXPECT_EQ(srv.server->stats().bytes_mapped, 0u);
}

}  // namespace
}  // namespace rocket::testing
