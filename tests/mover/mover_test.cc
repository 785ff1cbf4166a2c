// Conformance suite run against every mover kind; engines that are not usable
// on this machine skip with the reason from probe_movers().
#include "rocket/mover/mover.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
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

TEST_P(MoverConformance, CopiesLargerThanAnyChunkWithEveryCachePolicy) {
  auto src = filled((8u << 20) + 4093, 11);
  for (Cache cache : {Cache::kAuto, Cache::kInject, Cache::kBypass}) {
    std::vector<std::byte> dst(src.size() + 1, std::byte{0x11});
    CopyOp op{dst.data() + 1, src.data(), src.size()};  // misaligned destination
    ASSERT_TRUE(mover_->execute({&op, 1}, cache).ok());
    ASSERT_EQ(std::memcmp(dst.data() + 1, src.data(), src.size()), 0) << cache_name(cache);
    EXPECT_EQ(dst[0], std::byte{0x11});
  }
}

TEST_P(MoverConformance, DetachedSubmissionCallsBackOnce) {
  auto src = filled(3 << 20, 12);
  std::vector<std::byte> dst(src.size());
  std::atomic<int> calls{0};
  std::atomic<bool> ok{false};
  CopyOp op{dst.data(), src.data(), src.size()};
  SubmitOptions so{.cache = Cache::kAuto, .owner = 0, .on_done = [&](Status st) {
                     ok = st.ok();
                     calls++;
                   }};
  ASSERT_TRUE(mover_->submit({&op, 1}, so).ok());
  for (int i = 0; i < 5000 && calls.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_TRUE(ok.load());
  EXPECT_EQ(dst, src);
}

TEST_P(MoverConformance, StaleTicketsAreRejected) {
  auto src = filled(1 << 20, 13);
  std::vector<std::byte> dst(src.size());
  CopyOp op{dst.data(), src.data(), src.size()};
  auto t = mover_->submit({&op, 1}, Cache::kAuto);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(mover_->wait(*t).ok());
  if (!t->done) EXPECT_FALSE(mover_->wait(*t).ok());  // retired
  EXPECT_FALSE(mover_->poll(Ticket{.id = 0xdead0000beefULL, .done = false}).ok());
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

TEST(ThreadsMover, CancelDropsQueuedWorkOfThatOwnerOnly) {
  MoverConfig cfg;
  cfg.threads = 1;
  cfg.min_chunk_bytes = 64 << 10;
  auto m = make_mover(MoverKind::kThreads, cfg);
  ASSERT_TRUE(m.ok());
  auto src = filled(16 << 20, 21);
  std::vector<std::byte> a(src.size()), b(src.size());
  std::atomic<int> cancelled{0}, completed{0};
  auto cb = [&](Status st) { (st.code() == StatusCode::kCancelled ? cancelled : completed)++; };
  // Owner 1 queues many chunks on the single worker; owner 2 queues after it.
  for (int i = 0; i < 8; ++i) {
    CopyOp op{a.data(), src.data(), src.size()};
    ASSERT_TRUE((*m)->submit({&op, 1}, SubmitOptions{Cache::kInject, 1, cb}).ok());
  }
  CopyOp op2{b.data(), src.data(), src.size()};
  auto t2 = (*m)->submit({&op2, 1}, SubmitOptions{Cache::kInject, 2, nullptr});
  ASSERT_TRUE(t2.ok());
  (*m)->cancel(1);
  ASSERT_TRUE((*m)->wait(*t2).ok());  // owner 2 is unaffected
  EXPECT_EQ(b, src);
  for (int i = 0; i < 5000 && cancelled + completed < 8; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(cancelled + completed, 8);
  EXPECT_GT(cancelled.load(), 0);  // one worker cannot have finished 128 MiB before the cancel
}

TEST(ThreadsMover, DestructionWithQueuedWorkCancelsAndJoins) {
  MoverConfig cfg;
  cfg.threads = 1;
  auto m = make_mover(MoverKind::kThreads, cfg);
  ASSERT_TRUE(m.ok());
  auto src = filled(8 << 20, 22);
  std::vector<std::byte> dst(src.size());
  std::atomic<int> calls{0};
  for (int i = 0; i < 16; ++i) {
    CopyOp op{dst.data(), src.data(), src.size()};
    ASSERT_TRUE((*m)->submit({&op, 1}, SubmitOptions{Cache::kAuto, 0, [&](Status) { calls++; }}).ok());
  }
  m->reset();  // must not hang, leak or skip a callback
  EXPECT_EQ(calls.load(), 16);
}

// execute() copies on the calling thread too: with the only worker held by
// another submission's callback, a synchronous copy still completes (it
// would hang if the caller only waited), for both engines on the pool.
TEST(ThreadsMover, ExecuteRunsOnTheCallerWhileWorkersAreBusy) {
  for (MoverKind kind : {MoverKind::kThreads, MoverKind::kKernel}) {
    SCOPED_TRACE(mover_kind_name(kind));
    MoverConfig cfg;
    cfg.threads = 1;
    cfg.min_chunk_bytes = 64 << 10;
    auto m = make_mover(kind, cfg);
    if (!m.ok()) {
      ASSERT_EQ(kind, MoverKind::kKernel) << m.status().to_string();
      continue;  // no process_vm_readv here: the threads case has run
    }
    auto small = filled(4096, 24);
    std::vector<std::byte> small_dst(small.size());
    std::atomic<bool> release{false}, blocking{false};
    CopyOp hold{small_dst.data(), small.data(), small.size()};
    ASSERT_TRUE((*m)->submit({&hold, 1}, SubmitOptions{Cache::kAuto, 0, [&](Status) {
                                blocking = true;
                                while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                              }}).ok());
    while (!blocking) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    auto src = filled(8 << 20, 25);
    std::vector<std::byte> dst(src.size());
    CopyOp op{dst.data(), src.data(), src.size()};
    EXPECT_TRUE((*m)->execute({&op, 1}, Cache::kAuto).ok());
    EXPECT_EQ(dst, src);
    release = true;
  }
}

TEST(ThreadsMover, FullQueueIsUnavailable) {
  MoverConfig cfg;
  cfg.threads = 1;
  cfg.queue_chunks = 4;
  cfg.min_chunk_bytes = 4096;
  auto m = make_mover(MoverKind::kThreads, cfg);
  ASSERT_TRUE(m.ok());
  auto src = filled(8 << 20, 23);
  std::vector<std::byte> dst(src.size());
  std::vector<CopyOp> ops;
  for (size_t i = 0; i < 8; ++i) ops.push_back({dst.data() + (i << 20), src.data() + (i << 20), 1 << 20});
  auto t = (*m)->submit(ops, Cache::kAuto);  // at least 8 chunks > a queue of 4
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnavailable);
}

TEST(CostProfile, RoundTripsAndDrivesCost) {
  std::string path = "/tmp/rocket-profile-test-" + std::to_string(::getpid()) + ".json";
  CostProfile p;
  p.machine = "test";
  p.entries.push_back({MoverKind::kCpu, Cache::kAuto, {3.0, 100.0}});
  p.entries.push_back({MoverKind::kCpu, Cache::kAuto, {9.0, 1.0}, "other"});  // a variant: not the engine's cost
  ASSERT_TRUE(save_cost_profile(p, path).ok());
  ASSERT_TRUE(load_cost_profile(path).ok());
  auto m = make_mover(MoverKind::kCpu);
  ASSERT_TRUE(m.ok());
  EXPECT_DOUBLE_EQ((*m)->cost().predict_us(1 << 20), 103.0);
  auto v = profiled_cost(MoverKind::kCpu, Cache::kAuto, "other");
  ASSERT_TRUE(v.has_value());
  EXPECT_DOUBLE_EQ(v->predict_us(1 << 20), 10.0);
  EXPECT_FALSE(profiled_cost(MoverKind::kCpu, Cache::kAuto, "missing").has_value());
  set_cost_profile({});
  EXPECT_NE((*m)->cost().predict_us(1 << 20), 103.0);
  std::remove(path.c_str());
}

TEST(CostProfile, FitRecoversSlopeFromLargeAndFixedCostFromSmallCopies) {
  // A cache-friendly engine: small copies cheaper than the DRAM slope predicts.
  std::vector<std::pair<double, double>> pts;
  for (double mib : {1.0, 4.0, 16.0, 64.0}) pts.emplace_back(mib, 5.0 + 60.0 * mib);
  for (double mib : {0.004, 0.0625, 0.25}) pts.emplace_back(mib, 5.0 + 60.0 * mib);
  CostModel m = fit_cost_model(pts);
  EXPECT_NEAR(m.us_per_mib, 60.0, 1e-9);
  EXPECT_NEAR(m.fixed_us, 5.0, 1e-9);
  // Only small points: no slope to fit, and the fixed cost is their median.
  std::vector<std::pair<double, double>> small{{0.01, 2.0}, {0.1, 3.0}, {0.5, 100.0}};
  CostModel s = fit_cost_model(small);
  EXPECT_EQ(s.us_per_mib, 0.0);
  EXPECT_EQ(s.fixed_us, 3.0);
  // Noise that would give a negative intercept clamps to zero.
  std::vector<std::pair<double, double>> neg{{0.01, 0.1}, {1.0, 70.0}, {16.0, 960.0}};
  EXPECT_EQ(fit_cost_model(neg).fixed_us, 0.0);
}

TEST(CostProfile, MalformedProfilesAreRejected) {
  std::string path = "/tmp/rocket-profile-bad-" + std::to_string(::getpid()) + ".json";
  for (const char* text : {"not json", "{\"movers\": 3}", "{\"movers\": [{\"mover\": \"warp\", \"cache\": \"auto\", \"fixed_us\": 1, \"us_per_mib\": 1}]}",
                           "{\"movers\": [{\"mover\": \"cpu\", \"cache\": \"auto\", \"fixed_us\": -5, \"us_per_mib\": 1}]}"}) {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text, f);
    std::fclose(f);
    EXPECT_FALSE(load_cost_profile(path).ok()) << text;
  }
  EXPECT_EQ(load_cost_profile("/nonexistent/profile.json").code(), StatusCode::kNotFound);
  std::remove(path.c_str());
}

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
