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

}  // namespace
}  // namespace rocket::shm
