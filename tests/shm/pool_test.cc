#include "rocket/shm/pool.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace rocket::shm {
namespace {

TEST(PoolAllocator, AllocatesAlignedDisjointBlocks) {
  PoolAllocator a(1 << 20);
  auto x = a.allocate(100);
  auto y = a.allocate(1);
  auto z = a.allocate(128 * 1024);
  ASSERT_TRUE(x.ok() && y.ok() && z.ok());
  EXPECT_EQ(*x % 64, 0u);
  EXPECT_EQ(*y % 64, 0u);
  EXPECT_EQ(*z % 4096, 0u);  // large blocks are page-aligned
  EXPECT_GE(*y, *x + 100);
  EXPECT_EQ(a.live_blocks(), 3u);
}

TEST(PoolAllocator, ExhaustionIsResourceExhaustedAndRecoverable) {
  PoolAllocator a(64 * 1024);
  std::vector<uint64_t> blocks;
  for (;;) {
    auto r = a.allocate(4096);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
      break;
    }
    blocks.push_back(*r);
  }
  EXPECT_EQ(blocks.size(), 16u);
  ASSERT_TRUE(a.free(blocks.back()).ok());
  EXPECT_TRUE(a.allocate(4096).ok());
}

TEST(PoolAllocator, OversizeIsInvalidArgument) {
  PoolAllocator a(1 << 20);
  auto r = a.allocate((1 << 20) + 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.allocate(0).status().code(), StatusCode::kInvalidArgument);
}

TEST(PoolAllocator, ForgedAndDoubleFreesAreRejected) {
  PoolAllocator a(1 << 20);
  auto x = a.allocate(256);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(a.free(*x + 64).code(), StatusCode::kNotFound);  // inside a block
  EXPECT_EQ(a.free(12345).code(), StatusCode::kNotFound);
  EXPECT_TRUE(a.free(*x).ok());
  EXPECT_EQ(a.free(*x).code(), StatusCode::kNotFound);  // double free
  EXPECT_EQ(a.bytes_in_use(), 0u);
}

TEST(PoolAllocator, CoalescesBackToOneExtent) {
  PoolAllocator a(1 << 20);
  std::mt19937 rng(42);
  std::vector<uint64_t> live;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      auto r = a.allocate(1 + rng() % 20000);
      if (r.ok()) live.push_back(*r);
    } else {
      size_t k = rng() % live.size();
      ASSERT_TRUE(a.free(live[k]).ok());
      live.erase(live.begin() + static_cast<long>(k));
    }
  }
  for (uint64_t off : live) ASSERT_TRUE(a.free(off).ok());
  EXPECT_EQ(a.bytes_in_use(), 0u);
  EXPECT_EQ(a.largest_free(), a.capacity());  // fully coalesced
  EXPECT_TRUE(a.allocate(a.capacity()).ok());
}

TEST(PoolAllocator, GrowsIntoTheFreeSpaceAtItsEnd) {
  PoolAllocator a(64 * 1024);
  auto x = a.allocate(40 * 1024);  // page-aligned at 0; 24 KiB free at the end
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(a.capacity_for(16 * 1024), a.capacity());              // fits now
  EXPECT_EQ(a.capacity_for(100 * 1024), 40u * 1024 + 100 * 1024);  // the free tail counts
  EXPECT_EQ(a.allocate(100 * 1024).status().code(), StatusCode::kInvalidArgument);
  a.grow(a.capacity_for(100 * 1024));
  EXPECT_EQ(a.capacity(), 140u * 1024);
  auto y = a.allocate(100 * 1024);  // straddles the old end: the tail joined the new space
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  EXPECT_EQ(*y, 40u * 1024);
  a.grow(1000);  // smaller: nothing changes
  EXPECT_EQ(a.capacity(), 140u * 1024);
  ASSERT_TRUE(a.free(*x).ok());
  ASSERT_TRUE(a.free(*y).ok());
  EXPECT_EQ(a.largest_free(), a.capacity());  // one extent again
  // A pool whose last block runs to its end grows by a separate extent.
  PoolAllocator b(4096);
  ASSERT_TRUE(b.allocate(4096).ok());
  EXPECT_EQ(b.capacity_for(64), 4096u + 64);
  b.grow(8192);
  EXPECT_EQ(b.largest_free(), 4096u);
  EXPECT_TRUE(b.allocate(4096).ok());
}

}  // namespace
}  // namespace rocket::shm
