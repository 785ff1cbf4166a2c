#include "rocket/shm/ring.h"

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace rocket::shm {
namespace {

struct Desc {
  uint64_t seq;
  uint64_t check;
  uint64_t pad[6];
};

struct RingFixture {
  explicit RingFixture(uint64_t cap) : slots(cap), cap(cap) {}
  RingIndices idx;
  std::vector<Desc> slots;
  uint64_t cap;
  RingProducer<Desc> producer() { return {&idx, slots.data(), cap}; }
  RingConsumer<Desc> consumer() { return {&idx, slots.data(), cap}; }
};

Desc make(uint64_t i) { return Desc{i, i * 31 + 7, {}}; }

TEST(SubmissionRing, PopFailsWhenEmpty) {
  RingFixture f(4);
  auto rx = f.consumer();
  Desc d;
  EXPECT_EQ(rx.try_pop(&d), RingResult::kEmpty);
  EXPECT_EQ(rx.peek(), RingResult::kEmpty);
}

TEST(SubmissionRing, PushFailsWhenFull) {
  RingFixture f(4);
  auto tx = f.producer();
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(tx.try_push(make(i)), RingResult::kOk);
  EXPECT_EQ(tx.try_push(make(4)), RingResult::kFull);
  auto rx = f.consumer();
  Desc d;
  ASSERT_EQ(rx.try_pop(&d), RingResult::kOk);
  EXPECT_EQ(d.seq, 0u);
  EXPECT_EQ(tx.try_push(make(4)), RingResult::kOk);  // one slot freed
  EXPECT_EQ(tx.try_push(make(5)), RingResult::kFull);
}

TEST(SubmissionRing, WrapsAroundInOrder) {
  RingFixture f(8);
  auto tx = f.producer();
  auto rx = f.consumer();
  uint64_t next_in = 0, next_out = 0;
  // Many laps around an 8-slot ring with uneven batch sizes.
  for (int round = 0; round < 1000; ++round) {
    int burst = 1 + round % 7;
    for (int i = 0; i < burst; ++i) ASSERT_EQ(tx.try_push(make(next_in++)), RingResult::kOk);
    Desc d;
    while (rx.try_pop(&d) == RingResult::kOk) {
      ASSERT_EQ(d.seq, next_out);
      ASSERT_EQ(d.check, next_out * 31 + 7);
      ++next_out;
    }
  }
  EXPECT_EQ(next_in, next_out);
  EXPECT_GT(next_in, 8u * 100);
}

TEST(SubmissionRing, DeclinedDescriptorStaysAtTheHead) {
  RingFixture f(4);
  auto tx = f.producer();
  auto rx = f.consumer();
  ASSERT_EQ(tx.try_push(make(1)), RingResult::kOk);
  ASSERT_EQ(tx.try_push(make(2)), RingResult::kOk);
  Desc d{};
  int asked = 0;
  auto odd_only = [&asked](const Desc& x) {
    ++asked;
    return x.seq % 2 == 1;
  };
  ASSERT_EQ(rx.try_pop_if(&d, odd_only), RingResult::kOk);
  EXPECT_EQ(d.seq, 1u);
  // Seq 2 is declined: reported empty, and still there for an ordinary pop.
  EXPECT_EQ(rx.try_pop_if(&d, odd_only), RingResult::kEmpty);
  EXPECT_EQ(rx.try_pop_if(&d, odd_only), RingResult::kEmpty);
  EXPECT_EQ(asked, 3);
  EXPECT_EQ(rx.peek(), RingResult::kOk);
  ASSERT_EQ(rx.try_pop(&d), RingResult::kOk);
  EXPECT_EQ(d.seq, 2u);
  EXPECT_EQ(rx.try_pop_if(&d, odd_only), RingResult::kEmpty);
  EXPECT_EQ(asked, 3);  // an empty ring asks nothing
  // The producer saw both slots freed, not three.
  EXPECT_EQ(f.idx.head.value.load(), 2u);
}

TEST(SubmissionRing, ConsumerDetectsTailBeyondCapacity) {
  RingFixture f(8);
  auto rx = f.consumer();
  f.idx.tail.value.store(9, std::memory_order_relaxed);  // a peer scribbling
  Desc d;
  EXPECT_EQ(rx.try_pop(&d), RingResult::kCorrupt);
  f.idx.tail.value.store(UINT64_MAX, std::memory_order_relaxed);  // "backwards"
  EXPECT_EQ(rx.try_pop(&d), RingResult::kCorrupt);
}

TEST(SubmissionRing, ProducerDetectsHeadBeyondTail) {
  RingFixture f(4);
  auto tx = f.producer();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_EQ(tx.try_push(make(i)), RingResult::kOk);
  f.idx.head.value.store(100, std::memory_order_relaxed);  // consumer claims to have read unwritten slots
  EXPECT_EQ(tx.try_push(make(4)), RingResult::kCorrupt);
}

TEST(SubmissionRing, PeerCannotRewindOurIndex) {
  RingFixture f(4);
  auto tx = f.producer();
  auto rx = f.consumer();
  ASSERT_EQ(tx.try_push(make(0)), RingResult::kOk);
  Desc d;
  ASSERT_EQ(rx.try_pop(&d), RingResult::kOk);
  // The peer rewrites the shared head; our consumer keeps its private index.
  f.idx.head.value.store(0, std::memory_order_relaxed);
  ASSERT_EQ(tx.try_push(make(1)), RingResult::kOk);
  ASSERT_EQ(rx.try_pop(&d), RingResult::kOk);
  EXPECT_EQ(d.seq, 1u);
}

TEST(SubmissionRingConcurrency, ProducerConsumerThreadsLoseNothing) {
  constexpr uint64_t kCount = 2'000'000;
  RingFixture f(256);
  auto tx = f.producer();
  auto rx = f.consumer();
  std::thread producer([&] {
    for (uint64_t i = 0; i < kCount;) {
      if (tx.try_push(make(i)) == RingResult::kOk) ++i;
    }
  });
  uint64_t expected = 0;
  bool ok = true;
  while (expected < kCount) {
    Desc d;
    RingResult r = rx.try_pop(&d);
    if (r == RingResult::kOk) {
      ok = ok && d.seq == expected && d.check == expected * 31 + 7;
      ++expected;
    } else if (r == RingResult::kCorrupt) {
      ok = false;
      break;
    }
  }
  producer.join();
  EXPECT_TRUE(ok);
  EXPECT_EQ(expected, kCount);
}

TEST(SubmissionRing, IndicesSitOnTheirOwnCacheLines) {
  static_assert(offsetof(RingIndices, tail) - offsetof(RingIndices, head) == kCacheLine);
  EXPECT_TRUE(valid_ring_capacity(1024));
  EXPECT_FALSE(valid_ring_capacity(1000));
  EXPECT_FALSE(valid_ring_capacity(1));
  EXPECT_FALSE(valid_ring_capacity(0));
}

}  // namespace
}  // namespace rocket::shm
