// Capability handles: a handle finds its object only in the session that got
// it, only until it is released or the session ends; forged, stale and
// borrowed handles find nothing.
#include "rocket/pocket/capabilities.h"

#include <random>
#include <set>
#include <thread>

#include "test_util.h"

namespace rocket::testing {
namespace {

using detail::CapabilityCore;

TEST(Capabilities, AHandleFindsItsObjectInItsSessionOnly) {
  CapabilityCore t(16);
  auto obj = std::make_shared<int>(42);
  auto h = t.add(/*session=*/1, obj);
  ASSERT_TRUE(h.ok());
  auto got = t.get(1, *h);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->get(), obj.get());
  // Another session holding the very same number finds nothing, and cannot release it.
  EXPECT_EQ(t.get(2, *h).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(t.release(2, *h).code(), StatusCode::kNotFound);
  EXPECT_TRUE(t.get(1, *h).ok());
}

TEST(Capabilities, AReleasedHandleIsStaleEvenWhenItsSlotIsReused) {
  CapabilityCore t(16);
  auto h1 = t.add(1, std::make_shared<int>(1));
  ASSERT_TRUE(h1.ok());
  ASSERT_TRUE(t.release(1, *h1).ok());
  EXPECT_EQ(t.get(1, *h1).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(t.release(1, *h1).code(), StatusCode::kNotFound);  // no double release
  auto h2 = t.add(1, std::make_shared<int>(2));                // takes the freed slot
  ASSERT_TRUE(h2.ok());
  EXPECT_NE(*h1, *h2);
  EXPECT_EQ((*h1 & 0xfffff), (*h2 & 0xfffff));  // same slot index
  EXPECT_EQ(t.get(1, *h1).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(*std::static_pointer_cast<int>(*t.get(1, *h2)), 2);
}

TEST(Capabilities, ForgedHandlesFindNothing) {
  CapabilityCore t(4096);
  std::vector<uint64_t> real;
  for (int i = 0; i < 1000; ++i) real.push_back(*t.add(7, std::make_shared<int>(i)));
  std::mt19937_64 rng(11);
  int found = 0;
  for (int i = 0; i < 100000; ++i) {
    uint64_t forged = rng();
    if (i % 2 == 0) forged = (forged & ~uint64_t{0xfffff}) | (real[i % real.size()] & 0xfffff);  // a live slot
    found += t.get(7, forged).ok() && std::find(real.begin(), real.end(), forged) == real.end();
  }
  EXPECT_EQ(found, 0);
  // Tags differ between handles: one handle says nothing about the next.
  std::set<uint64_t> tags;
  for (uint64_t h : real) tags.insert(h >> 32);
  EXPECT_GT(tags.size(), 990u);
}

TEST(Capabilities, ASessionHoldsAtMostItsLimit) {
  CapabilityCore t(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(t.add(1, std::make_shared<int>(i)).ok());
  auto over = t.add(1, std::make_shared<int>(9));
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(t.add(2, std::make_shared<int>(9)).ok());  // others are not affected
  EXPECT_EQ(t.add(1, nullptr).status().code(), StatusCode::kInvalidArgument);
}

TEST(Capabilities, DroppingASessionReleasesItsObjectsOnly) {
  CapabilityCore t(16);
  auto mine = std::make_shared<int>(1);
  std::weak_ptr<int> watch = mine;
  auto h = t.add(1, std::move(mine));
  auto other = t.add(2, std::make_shared<int>(2));
  ASSERT_TRUE(h.ok() && other.ok());
  auto in_use = *t.get(1, *h);  // a handler still using it
  t.drop_session(1);
  EXPECT_EQ(t.get(1, *h).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(watch.expired());  // lives while used
  in_use.reset();
  EXPECT_TRUE(watch.expired());
  EXPECT_TRUE(t.get(2, *other).ok());
  EXPECT_EQ(t.size(), 1u);
}

TEST(Capabilities, ConcurrentSessionsKeepTheirOwn) {
  CapabilityCore t(100000);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (uint64_t session = 1; session <= 4; ++session) {
    threads.emplace_back([&, session] {
      std::vector<uint64_t> mine;
      for (int i = 0; i < 2000; ++i) {
        mine.push_back(*t.add(session, std::make_shared<uint64_t>(session)));
        if (i % 3 == 0) {
          if (!t.release(session, mine.front()).ok()) ++wrong;
          mine.erase(mine.begin());
        }
      }
      for (uint64_t h : mine) {
        auto p = t.get(session, h);
        if (!p.ok() || *std::static_pointer_cast<uint64_t>(*p) != session) ++wrong;
      }
      t.drop_session(session);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(t.size(), 0u);
}

// Through a server: one client's handle is nothing in another's session, and
// a session's objects go when it ends.
TEST(Capabilities, ThroughAServerHandlesStayWithTheirSession) {
  ServerOptions o{.socket_path = unique_socket_path("caps"), .dispatchers = 2};
  o.default_client_pool_bytes = o.default_server_pool_bytes = 1 << 20;
  Server server(o);
  CapabilityTable<std::string> notes(server, /*max_per_session=*/8);
  ASSERT_TRUE(notes.registered().ok());
  auto handle_of = [](const Request& req) -> Result<uint64_t> {
    if (req.data().size() != 8) return invalid_argument("a handle is 8 bytes");
    uint64_t h;
    std::memcpy(&h, req.data().data(), 8);
    return h;
  };
  ASSERT_TRUE(server
                  .handle("open",
                          [&](const Request& req, Response& resp) -> Status {
                            auto text = std::make_shared<std::string>(reinterpret_cast<const char*>(req.data().data()),
                                                                      req.data().size());
                            ROCKET_ASSIGN_OR_RETURN(uint64_t h, notes.add(req, std::move(text)));
                            return resp.write(std::as_bytes(std::span<const uint64_t>(&h, 1)));
                          })
                  .ok());
  ASSERT_TRUE(server
                  .handle("read",
                          [&](const Request& req, Response& resp) -> Status {
                            ROCKET_ASSIGN_OR_RETURN(uint64_t h, handle_of(req));
                            ROCKET_ASSIGN_OR_RETURN(auto text, notes.get(req, h));
                            return resp.write(bytes_of(*text));
                          })
                  .ok());
  ASSERT_TRUE(server
                  .handle("close",
                          [&](const Request& req, Response&) -> Status {
                            ROCKET_ASSIGN_OR_RETURN(uint64_t h, handle_of(req));
                            return notes.release(req, h);
                          })
                  .ok());
  ASSERT_TRUE(server.start().ok());
  // A table made after start() has no session-end hook, and says so.
  CapabilityTable<int> late(server);
  EXPECT_EQ(late.registered().code(), StatusCode::kFailedPrecondition);

  auto connect = [&] {
    return std::move(Client::connect(o.socket_path, {.client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20}))
        .value();
  };
  auto call_h = [](Client& c, const char* op, uint64_t h) {
    return c.call(op, std::as_bytes(std::span<const uint64_t>(&h, 1)));
  };
  Client alice = connect();
  Client mallory = connect();
  auto opened = alice.call("open", bytes_of("alice's secret"));
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  uint64_t h;
  std::memcpy(&h, opened->data().data(), 8);
  auto mine = call_h(alice, "read", h);
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mine->data().data()), mine->size()), "alice's secret");
  // Mallory learns the number: it opens nothing in her session.
  EXPECT_EQ(call_h(mallory, "read", h).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(call_h(mallory, "close", h).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(call_h(alice, "read", h).ok());
  // The per-session limit holds through the server too.
  for (int i = 1; i < 8; ++i) ASSERT_TRUE(alice.call("open", bytes_of("more")).ok());
  EXPECT_EQ(alice.call("open", bytes_of("one too many")).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(notes.size(), 8u);
  // Alice goes: her objects go with her session.
  alice.close();
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    gone = notes.size() == 0;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(gone) << notes.size() << " objects left";
  EXPECT_TRUE(mallory.call("open", bytes_of("fine")).ok());
}

}  // namespace
}  // namespace rocket::testing
