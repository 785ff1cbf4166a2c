// Conformance suite run against every mover kind; engines that are not usable
// on this machine skip with the reason from probe_movers().
#include "rocket/mover/mover.h"

#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace rocket {
namespace {

class MoverConformance : public ::testing::TestWithParam<MoverKind> {
 protected:
  void SetUp() override {
    auto m = make_mover(GetParam());
    if (!m.ok()) GTEST_SKIP() << m.status().to_string();
    mover_ = std::move(*m);
  }
  std::unique_ptr<Mover> mover_;
};

std::vector<std::byte> filled(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + static_cast<size_t>(seed)) & 0xff);
  return v;
}

TEST_P(MoverConformance, CopiesOddSizesAndAlignments) {
  for (size_t size : {1u, 3u, 63u, 64u, 65u, 4095u, 4097u, 1u << 20, (1u << 20) + 17}) {
    for (size_t src_off : {0u, 1u, 7u}) {
      for (size_t dst_off : {0u, 3u, 64u}) {
        auto src = filled(size + src_off, static_cast<int>(size));
        std::vector<std::byte> dst(size + dst_off + 8, std::byte{0xee});
        CopyOp op{dst.data() + dst_off, src.data() + src_off, size};
        ASSERT_TRUE(mover_->execute({&op, 1}, Cache::kAuto).ok());
        ASSERT_EQ(std::memcmp(dst.data() + dst_off, src.data() + src_off, size), 0) << size;
        EXPECT_EQ(dst[size + dst_off], std::byte{0xee}) << "wrote past the end";
      }
    }
  }
}

TEST_P(MoverConformance, ZeroLengthIsANoOp) {
  CopyOp op{nullptr, nullptr, 0};
  EXPECT_TRUE(mover_->execute({&op, 1}, Cache::kAuto).ok());
  EXPECT_TRUE(mover_->execute({}, Cache::kAuto).ok());
}

TEST_P(MoverConformance, RejectsOverlapAndNull) {
  std::vector<std::byte> buf(1024);
  CopyOp overlap{buf.data() + 10, buf.data(), 100};
  EXPECT_EQ(mover_->execute({&overlap, 1}, Cache::kAuto).code(), StatusCode::kInvalidArgument);
  CopyOp null_src{buf.data(), nullptr, 10};
  EXPECT_EQ(mover_->execute({&null_src, 1}, Cache::kAuto).code(), StatusCode::kInvalidArgument);
}

TEST_P(MoverConformance, BatchOfManyOps) {
  auto src = filled(1 << 16, 5);
  std::vector<std::byte> dst(1 << 16);
  std::vector<CopyOp> ops;
  for (size_t off = 0; off < src.size(); off += 4096) ops.push_back({dst.data() + off, src.data() + off, 4096});
  auto t = mover_->submit(ops, Cache::kInject);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(mover_->wait(*t).ok());
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), src.size()), 0);
}

TEST_P(MoverConformance, ConcurrentSubmitters) {
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto src = filled(300000, t);
      std::vector<std::byte> dst(src.size());
      for (int i = 0; i < 20; ++i) {
        CopyOp op{dst.data(), src.data(), src.size()};
        if (!mover_->execute({&op, 1}, Cache::kAuto).ok() || dst != src) bad++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_P(MoverConformance, DeclaresACostModel) {
  CostModel c = mover_->cost();
  EXPECT_GT(c.predict_us(1 << 20), c.predict_us(1 << 10));
  EXPECT_EQ(mover_->kind(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(AllEngines, MoverConformance,
                         ::testing::Values(MoverKind::kCpu, MoverKind::kCpuStream, MoverKind::kThreads,
                                           MoverKind::kKernel, MoverKind::kDsa, MoverKind::kCuda),
                         [](const auto& info) { return std::string(mover_kind_name(info.param)); });

TEST(MoverRegistry, ProbeListsEveryEngineWithAReason) {
  auto infos = probe_movers();
  EXPECT_EQ(infos.size(), 6u);
  for (const auto& i : infos) EXPECT_FALSE(i.reason.empty()) << mover_kind_name(i.kind);
  EXPECT_TRUE(infos[0].usable);
}

TEST(MoverRegistry, ParsesNames) {
  EXPECT_EQ(*parse_mover_kind("cpu_stream"), MoverKind::kCpuStream);
  EXPECT_FALSE(parse_mover_kind("warp").ok());
  EXPECT_EQ(*parse_cache("bypass"), Cache::kBypass);
}

}  // namespace
}  // namespace rocket
