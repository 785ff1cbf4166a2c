// The cuda engine on real hardware: registered host-to-host copies through
// the GPU (copy kernel and staged copy engines), host<->device round trips and
// CUDA IPC handles. Skips with the reason where there is no GPU or module.
#include <dlfcn.h>
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mover/cuda_mover.h"
#include "rocket/mover/mover.h"
#include "rocket/rocket.h"
#include "scripted_server.h"
#include "test_util.h"

namespace rocket {
namespace {

// A reply's bytes; a failed copy (of a GPU response) fails the test with
// its status and compares as empty.
std::vector<std::byte> vec_or_fail(const Reply& r) {
  auto v = r.to_vector();
  EXPECT_TRUE(v.ok()) << v.status().to_string();
  return v.ok() ? std::move(*v) : std::vector<std::byte>{};
}

struct Pinned {  // page-aligned host memory registered with the engine
  Pinned(Mover& m, size_t n) : mover(m), size(n) {
    p = static_cast<std::byte*>(::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
    ok = p != MAP_FAILED && m.register_memory(p, n, false).ok();
  }
  ~Pinned() {
    if (ok) mover.unregister_memory(p);
    if (p != MAP_FAILED) ::munmap(p, size);
  }
  Mover& mover;
  size_t size;
  std::byte* p;
  bool ok = false;
};

class CudaEngine : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    MoverConfig cfg;
    cfg.cuda_h2h = GetParam();
    auto m = make_mover(MoverKind::kCuda, cfg);
    if (!m.ok()) GTEST_SKIP() << m.status().to_string();
    mover_ = std::move(*m);
  }
  std::unique_ptr<Mover> mover_;
};

TEST_P(CudaEngine, RegisteredHostToHostThroughTheGpu) {
  for (size_t n : {size_t{1}, size_t{4097}, size_t{1} << 20, (size_t{24} << 20) + 13}) {
    Pinned src(*mover_, n + 64), dst(*mover_, n + 64);
    ASSERT_TRUE(src.ok && dst.ok);
    for (size_t i = 0; i < n; ++i) src.p[i] = static_cast<std::byte>(i * 7 + n);
    std::memset(dst.p, 0, n + 64);
    for (size_t off : {size_t{0}, size_t{3}}) {  // aligned and misaligned
      CopyOp op{dst.p + off, src.p + off, n - (off < n ? off : 0)};
      auto t = mover_->submit({&op, 1}, Cache::kAuto);
      ASSERT_TRUE(t.ok()) << t.status().to_string();
      ASSERT_TRUE(mover_->wait(*t).ok());
      ASSERT_EQ(std::memcmp(dst.p + off, src.p + off, op.size), 0) << n << " +" << off;
    }
  }
}

TEST_P(CudaEngine, HostDeviceRoundTripAndIpcHandle) {
  auto api = detail::load_cuda_module(0);
  ASSERT_TRUE(api.ok());
  const size_t n = (size_t{16} << 20) + 5;
  void* dev = nullptr;
  ASSERT_EQ((*api)->device_alloc(&dev, n), 0) << (*api)->last_error();
  Pinned a(*mover_, n), b(*mover_, n);
  ASSERT_TRUE(a.ok && b.ok);
  for (size_t i = 0; i < n; ++i) a.p[i] = static_cast<std::byte>(i ^ (i >> 9));
  CopyOp h2d{static_cast<std::byte*>(dev), a.p, n};
  ASSERT_TRUE(mover_->execute({&h2d, 1}, Cache::kAuto).ok());
  CopyOp d2h{b.p, static_cast<std::byte*>(dev), n};
  ASSERT_TRUE(mover_->execute({&d2h, 1}, Cache::kAuto).ok());
  EXPECT_EQ(std::memcmp(a.p, b.p, n), 0);
  unsigned char handle[64] = {};
  ASSERT_EQ((*api)->ipc_get(dev, handle), 0) << (*api)->last_error();
  bool nonzero = false;
  for (unsigned char c : handle) nonzero = nonzero || c != 0;
  EXPECT_TRUE(nonzero);
  EXPECT_EQ((*api)->device_free(dev), 0);
}

TEST_P(CudaEngine, DetachedCallbacksArriveAfterTheData) {
  const size_t n = size_t{8} << 20;
  Pinned src(*mover_, n), dst(*mover_, n);
  ASSERT_TRUE(src.ok && dst.ok);
  std::memset(src.p, 0x6b, n);
  std::atomic<int> done{0};
  std::atomic<bool> correct{false};
  CopyOp op{dst.p, src.p, n};
  SubmitOptions so{.cache = Cache::kAuto, .owner = 0, .on_done = [&](Status st) {
                     correct = st.ok() && dst.p[n - 1] == std::byte{0x6b} && dst.p[0] == std::byte{0x6b};
                     done++;
                   }};
  ASSERT_TRUE(mover_->submit({&op, 1}, so).ok());
  for (int i = 0; i < 5000 && done.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(done.load(), 1);
  EXPECT_TRUE(correct.load());
}

TEST_P(CudaEngine, PollReportsCompletionAndBadRangesFail) {
  const size_t n = (size_t{3} << 20) + 11;
  Pinned src(*mover_, n), dst(*mover_, n);
  ASSERT_TRUE(src.ok && dst.ok);
  std::memset(src.p, 0x3c, n);
  CopyOp op{dst.p, src.p, n};
  auto t = mover_->submit({&op, 1}, Cache::kAuto);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  bool done = false;
  for (int i = 0; i < 5'000'000 && !done; ++i) {
    auto p = mover_->poll(*t);
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    done = *p;
  }
  ASSERT_TRUE(done);
  EXPECT_EQ(dst.p[0], std::byte{0x3c});
  EXPECT_EQ(dst.p[n - 1], std::byte{0x3c});
  EXPECT_FALSE(mover_->poll(*t).ok());  // a completed ticket is gone
  // A copy past the end of a device allocation is an error, not corruption.
  auto api = detail::load_cuda_module(0);
  ASSERT_TRUE(api.ok());
  void* dev = nullptr;
  ASSERT_EQ((*api)->device_alloc(&dev, 4096), 0);
  CopyOp over{static_cast<std::byte*>(dev), src.p, 8192};
  EXPECT_FALSE(mover_->execute({&over, 1}, Cache::kAuto).ok());
  EXPECT_EQ((*api)->device_free(dev), 0);
}

// "auto" chooses the host-to-host method per copy from the variants' cost
// models: here a calibrated profile where the copy kernel wins small copies
// and staging wins large ones; without a profile, the built-in estimates from
// the H100 machine (kernel below ~4 MiB, staging above). Copies are right
// either way.
TEST(CudaAuto, ChoosesTheCheaperMethodPerSize) {
  MoverConfig cfg;
  cfg.cuda_h2h = "auto";
  auto m = make_mover(MoverKind::kCuda, cfg);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  auto* cuda = dynamic_cast<detail::CudaMover*>(m->get());
  ASSERT_NE(cuda, nullptr);
  if (std::getenv("ROCKET_CUDA_H2H") != nullptr) GTEST_SKIP() << "ROCKET_CUDA_H2H overrides auto";
  set_cost_profile({});
  for (size_t n : {size_t{4096}, size_t{1} << 20}) EXPECT_EQ(cuda->h2h_for(n), ROCKET_CUDA_H2H_KERNEL);
  for (size_t n : {size_t{16} << 20, size_t{128} << 20}) EXPECT_EQ(cuda->h2h_for(n), ROCKET_CUDA_H2H_STAGED);
  CostProfile p;
  p.entries.push_back({MoverKind::kCuda, Cache::kAuto, {2.0, 40.0}, "kernel"});
  p.entries.push_back({MoverKind::kCuda, Cache::kAuto, {80.0, 20.0}, "staged"});  // crossover at 3.9 MiB
  set_cost_profile(p);
  EXPECT_EQ(cuda->h2h_for(size_t{1} << 20), ROCKET_CUDA_H2H_KERNEL);
  EXPECT_EQ(cuda->h2h_for(size_t{16} << 20), ROCKET_CUDA_H2H_STAGED);
  for (size_t n : {size_t{1} << 20, size_t{16} << 20}) {
    Pinned src(**m, n), dst(**m, n);
    ASSERT_TRUE(src.ok && dst.ok);
    std::memset(src.p, 0x77, n);
    CopyOp op{dst.p, src.p, n};
    ASSERT_TRUE((*m)->execute({&op, 1}, Cache::kAuto).ok());
    EXPECT_EQ(std::memcmp(dst.p, src.p, n), 0);
  }
  MoverConfig fixed;
  fixed.cuda_h2h = "kernel";
  auto k = make_mover(MoverKind::kCuda, fixed);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(dynamic_cast<detail::CudaMover*>(k->get())->h2h_for(size_t{128} << 20), ROCKET_CUDA_H2H_KERNEL);
  // Each instance's cost is its own method's: the fixed one its variant's,
  // "auto" the profile's plain entry.
  p.entries.push_back({MoverKind::kCuda, Cache::kAuto, {7.0, 30.0}, ""});
  set_cost_profile(p);
  EXPECT_DOUBLE_EQ((*k)->cost().predict_us(size_t{1} << 20), 42.0);  // kernel: 2 + 40
  EXPECT_DOUBLE_EQ((*m)->cost().predict_us(size_t{1} << 20), 37.0);  // auto: 7 + 30
  set_cost_profile({});
}

INSTANTIATE_TEST_SUITE_P(H2H, CudaEngine, ::testing::Values("kernel", "staged"),
                         [](const auto& info) { return std::string(info.param); });

// A GPU payload handed to a backend in another process by CUDA IPC: the
// server computes over the client's device memory with no copy through the
// pools; each allocation's handle is opened once per session.
TEST(GpuPayload, HandedToAnotherProcessByReference) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) GTEST_SKIP() << api.status().to_string();
  auto cuda = make_mover(MoverKind::kCuda);
  ASSERT_TRUE(cuda.ok()) << cuda.status().to_string();
  const std::string sock = testing::unique_socket_path("gpu");
  testing::Peer server({"serve-gpu", sock});
  ASSERT_EQ(server.read_line(std::chrono::milliseconds(30000)), "ready");
  auto c = Client::connect(sock);
  ASSERT_TRUE(c.ok()) << c.status().to_string();

  const size_t n = size_t{8} << 20;
  void* dev = nullptr;
  ASSERT_EQ((*api)->device_alloc(&dev, n + 8192), 0) << (*api)->last_error();
  std::vector<std::byte> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<std::byte>(i * 31 + 7);
  auto* payload = static_cast<std::byte*>(dev) + 4096;  // not at the allocation's base
  CopyOp up{payload, host.data(), n};
  ASSERT_TRUE((*cuda)->execute({&up, 1}, Cache::kAuto).ok());

  const uint64_t expected = checksum64(host);
  for (int i = 0; i < 3; ++i) {
    auto r = c->call_gpu("gpu_checksum", payload, n);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->size(), 8u);
    uint64_t got = 0;
    std::memcpy(&got, r->data().data(), 8);
    EXPECT_EQ(got, expected);
  }
  auto opened = c->call("gpu_handles", std::span<const std::byte>());
  ASSERT_TRUE(opened.ok());
  uint64_t handles = 0;
  std::memcpy(&handles, opened->data().data(), 8);
  EXPECT_EQ(handles, 1u);  // three calls, one allocation: opened once

  // A range past the allocation, and host memory, are refused by the client.
  EXPECT_EQ(c->call_gpu("gpu_checksum", payload, n + 8192).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c->call_gpu("gpu_checksum", host.data(), n).status().code(), StatusCode::kInvalidArgument);
  c->close();
  (*api)->device_free(dev);
}

// The built-in gpu_echo: each request is copied from the shared pool into
// device memory and back into the server pool on the copy engines (the
// session's pools registered with the GPU once).
TEST(GpuPayload, GpuEchoRoundTripsThroughDeviceMemory) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) GTEST_SKIP() << api.status().to_string();
  testing::TestServer srv;
  Client c = srv.connect();
  for (size_t n : {size_t{1}, size_t{4097}, (size_t{3} << 20) + 5}) {
    std::vector<std::byte> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<std::byte>(i * 17 + n);
    auto r = c.call("gpu_echo", std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(vec_or_fail(*r), data) << n;
    auto f = c.call_async("gpu_echo", std::span<const std::byte>(data));
    auto r2 = f.get();
    ASSERT_TRUE(r2.ok()) << r2.status().to_string();
    EXPECT_EQ(vec_or_fail(*r2), data) << n;
  }
}

// The built-in gpu_share in a backend process: the response is the server's
// device memory by reference; its output buffers come back as replies go.
TEST(GpuPayload, GpuShareAnswersFromDeviceMemory) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) GTEST_SKIP() << api.status().to_string();
  const std::string sock = testing::unique_socket_path("gpushare");
  testing::Peer server({"serve", sock});
  ASSERT_EQ(server.read_line(std::chrono::milliseconds(30000)), "ready");
  auto c = Client::connect(sock);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  for (int i = 0; i < 5; ++i) {  // more calls than output buffers: each reply gives its buffer back
    std::vector<std::byte> data((size_t{3} << 20) + static_cast<size_t>(i));
    for (size_t k = 0; k < data.size(); ++k) data[k] = static_cast<std::byte>(k * 7 + static_cast<size_t>(i));
    auto r = c->call("gpu_share", std::span<const std::byte>(data), {.gpu_response = true});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_TRUE(r->on_gpu());
    EXPECT_EQ(vec_or_fail(*r), data);
    auto h = c->call("gpu_share", std::span<const std::byte>(data));
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    EXPECT_FALSE(h->on_gpu());
    EXPECT_EQ(vec_or_fail(*h), data);
  }
}

// A hostile server's GPU response naming real device memory (of another
// process) with a range past the allocation: the client checks the range
// against the allocation it opened and fails that call; its block goes back
// to the server, and a reference within bounds then reads the memory.
TEST(GpuPayload, ClientRefusesAGpuResponseOutsideItsAllocation) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) GTEST_SKIP() << api.status().to_string();
  const size_t bytes = size_t{1} << 20;
  testing::Peer owner({"gpu-alloc", std::to_string(bytes)});
  const std::string hex = owner.read_line(std::chrono::milliseconds(30000));
  ASSERT_EQ(hex.size(), 128u) << hex;
  testing::ScriptedServer srv;
  Client c = srv.connect();
  for (uint64_t length : {bytes + 1, uint64_t{4096}}) {
    detail::GpuRef ref{};
    ref.magic = detail::kGpuRefMagic;
    ref.offset = 0;
    ref.length = length;
    for (size_t i = 0; i < 64; ++i) ref.handle[i] = static_cast<unsigned char>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    std::memcpy(srv.spool.data() + 8192, &ref, sizeof(ref));
    auto id = c.submit("echo", testing::bytes_of("x"), {.gpu_response = true});
    ASSERT_TRUE(id.ok());
    detail::SubDesc d = srv.next();
    ASSERT_EQ(d.kind, static_cast<uint16_t>(detail::SubKind::kRequest));
    srv.complete(testing::gpu_completion(d.job_id, 8192));
    auto r = c.query(*id, std::chrono::milliseconds(5000));
    if (length > bytes) {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
      EXPECT_NE(r.status().message().find("outside"), std::string::npos) << r.status().to_string();
      detail::SubDesc freed = srv.next();
      EXPECT_EQ(freed.kind, static_cast<uint16_t>(detail::SubKind::kFreeReply));
      EXPECT_EQ(freed.offset, 8192u);
    } else {
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      ASSERT_TRUE(r->on_gpu());
      EXPECT_EQ(r->size(), length);
      auto v = r->to_vector();
      ASSERT_TRUE(v.ok()) << v.status().to_string();
      EXPECT_EQ(v->size(), length);
    }
  }
}

// The GPU reaches only registered host memory: a copy from a caller's own
// pageable buffer is made on the CPU inside submit(); once the buffer is
// registered, the same copy goes to the engine.
TEST(CudaEngineMemory, RegisteredPrivateBuffersGoToTheEngine) {
  auto m = make_mover(MoverKind::kCuda);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  const size_t n = size_t{2} << 20;
  Pinned pool(**m, n);
  ASSERT_TRUE(pool.ok);
  void* mine = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mine, MAP_FAILED);
  std::memset(mine, 0x5c, n);
  CopyOp op{pool.p, static_cast<const std::byte*>(mine), n};
  auto on_cpu = (*m)->submit({&op, 1}, Cache::kAuto);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status().to_string();
  EXPECT_TRUE(on_cpu->done);  // copied on the CPU before submit returned
  EXPECT_EQ(std::memcmp(pool.p, mine, n), 0);
  ASSERT_TRUE((*m)->register_memory(mine, n, false).ok());
  std::memset(mine, 0x3a, n);
  auto on_gpu = (*m)->submit({&op, 1}, Cache::kAuto);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status().to_string();
  EXPECT_FALSE(on_gpu->done);  // queued on the engine
  ASSERT_TRUE((*m)->wait(*on_gpu).ok());
  EXPECT_EQ(std::memcmp(pool.p, mine, n), 0);
  (*m)->unregister_memory(mine);
  ::munmap(mine, n);
}

// One of the GPU test double's test-only symbols, or null on a real GPU.
template <class Fn>
Fn* double_symbol(const char* name) {
  const char* path = std::getenv("ROCKET_CUDA_MODULE");
  if (path == nullptr) return nullptr;
  void* lib = ::dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  return reinterpret_cast<Fn*>(::dlsym(lib, (std::string("rocket_cuda_double_") + name).c_str()));
}

// Copies between ranges the engine registered itself need no driver query
// (two such queries cost the caller 5-14 us on the H100 machine). A range
// that starts in one but runs past it is copied by the CPU: the GPU would
// fault on the rest.
TEST(CudaEngineMemory, KnowsTheRangesItRegistered) {
  auto m = make_mover(MoverKind::kCuda);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  const size_t n = size_t{1} << 20;
  Pinned src(**m, n), dst(**m, n);
  ASSERT_TRUE(src.ok && dst.ok);
  std::memset(src.p, 0x6b, n);
  auto* queries = double_symbol<long()>("pointer_queries");
  const long before = queries != nullptr ? queries() : 0;
  CopyOp op{dst.p, src.p, n};
  ASSERT_TRUE((*m)->execute({&op, 1}, Cache::kAuto).ok());
  EXPECT_EQ(std::memcmp(dst.p, src.p, n), 0);
  if (queries != nullptr) {
    EXPECT_EQ(queries(), before);
  }

  // Register the first half of a buffer only, and copy a range that starts
  // there and runs into the second half.
  auto* big = static_cast<std::byte*>(::mmap(nullptr, 2 * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(big, MAP_FAILED);
  ASSERT_TRUE((*m)->register_memory(big, n, false).ok());
  for (size_t i = 0; i < 2 * n; ++i) big[i] = static_cast<std::byte>(i * 7);
  CopyOp across{dst.p, big + n / 2, n};
  auto t = (*m)->submit({&across, 1}, Cache::kAuto);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  if (!t->done) ASSERT_TRUE((*m)->wait(*t).ok());
  EXPECT_EQ(std::memcmp(dst.p, big + n / 2, n), 0);
  (*m)->unregister_memory(big);
  ::munmap(big, 2 * n);
}

// A detached submission (how call_async uses an engine) is only queued by
// the caller; the engine's threads make the driver calls, wait, and call
// back once each -- also for a side the GPU cannot reach, copied on their
// CPU. Destroying the engine first lets everything queued finish.
TEST(CudaEngineMemory, DetachedSubmissionsAreQueuedByTheEngine) {
  auto m = make_mover(MoverKind::kCuda);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  auto api = detail::load_cuda_module(0);
  ASSERT_TRUE(api.ok());
  const size_t n = size_t{1} << 20;
  constexpr int kCopies = 12;
  auto* src = static_cast<std::byte*>(::mmap(nullptr, n * kCopies, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  auto* dst = static_cast<std::byte*>(::mmap(nullptr, n * kCopies, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(src, MAP_FAILED);
  ASSERT_NE(dst, MAP_FAILED);
  std::vector<std::byte> pageable(n);
  ASSERT_TRUE((*m)->register_memory(src, n * kCopies, false).ok());
  ASSERT_TRUE((*m)->register_memory(dst, n * kCopies, false).ok());
  for (size_t i = 0; i < n * kCopies; ++i) src[i] = static_cast<std::byte>(i * 13 + 1);
  for (size_t i = 0; i < n; ++i) pageable[i] = static_cast<std::byte>(i * 3 + 2);
  std::array<std::atomic<int>, kCopies> calls{};
  std::array<Status, kCopies> status;
  for (int i = 0; i < kCopies; ++i) {
    // Every fourth copy reads a pageable buffer: copied on an engine thread.
    CopyOp op{dst + i * n, i % 4 == 3 ? pageable.data() : src + i * n, n};
    SubmitOptions so{.cache = Cache::kAuto, .owner = 0, .on_done = [&, i](Status st) {
                       status[i] = std::move(st);
                       calls[i].fetch_add(1);
                     }};
    auto t = (*m)->submit({&op, 1}, so);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
  }
  m->reset();  // waits for everything queued
  for (int i = 0; i < kCopies; ++i) {
    EXPECT_EQ(calls[i].load(), 1) << "copy " << i;
    EXPECT_TRUE(status[i].ok()) << status[i].to_string();
    EXPECT_EQ(std::memcmp(dst + i * n, i % 4 == 3 ? pageable.data() : src + i * n, n), 0) << "copy " << i;
  }
  (*api)->host_unregister(src);
  (*api)->host_unregister(dst);
  ::munmap(src, n * kCopies);
  ::munmap(dst, n * kCopies);
}

// A synchronous host-to-host copy is split: the GPU copies the head, the
// caller the tail, both at once, and what the engine learns of both speeds
// moves the split. Every byte lands where it belongs whatever the split,
// also for a batch whose split falls inside one copy and one with a side
// the GPU cannot reach.
TEST(CudaExecute, CallerAndGpuShareAHostCopy) {
  auto m = make_mover(MoverKind::kCuda);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  auto* cuda = dynamic_cast<detail::CudaMover*>(m->get());
  ASSERT_NE(cuda, nullptr);
  const size_t n = size_t{8} << 20;
  Pinned src(**m, n), dst(**m, n);
  ASSERT_TRUE(src.ok && dst.ok);
  std::vector<std::byte> pageable(100000);
  auto* copied = double_symbol<unsigned long long()>("copied_bytes");
  // 5 MiB, then a little under 3 MiB at odd offsets, then a pageable source.
  const size_t a = size_t{5} << 20, b = (size_t{3} << 20) - 100000 - 8192;
  for (int round = 0; round < 6; ++round) {
    for (size_t i = 0; i < n; i += 4096) std::memset(src.p + i, round * 16 + static_cast<int>(i >> 20), 4096);
    for (size_t i = 0; i < pageable.size(); ++i) pageable[i] = static_cast<std::byte>(i + round);
    std::memset(dst.p, 0, n);
    std::array<CopyOp, 3> ops{CopyOp{dst.p, src.p, a}, CopyOp{dst.p + a + 1, src.p + a + 3, b},
                              CopyOp{dst.p + a + b + 4096, pageable.data(), pageable.size()}};
    const unsigned long long gpu_before = copied != nullptr ? copied() : 0;
    ASSERT_TRUE((*m)->execute(ops, Cache::kAuto).ok());
    EXPECT_EQ(std::memcmp(dst.p, src.p, a), 0) << "round " << round;
    EXPECT_EQ(std::memcmp(dst.p + a + 1, src.p + a + 3, b), 0) << "round " << round;
    EXPECT_EQ(std::memcmp(dst.p + a + b + 4096, pageable.data(), pageable.size()), 0) << "round " << round;
    EXPECT_EQ(dst.p[a], std::byte{0});  // untouched between the copies
    if (copied != nullptr) {
      const unsigned long long gpu = copied() - gpu_before;
      EXPECT_GT(gpu, 0u) << "round " << round;
      EXPECT_LT(gpu, a + b) << "round " << round;  // the caller copied a share
    }
  }
  const double share = cuda->caller_share(a + b);
  EXPECT_GT(share, 0.0);
  EXPECT_LT(share, 1.0);

  // The same through submit() and wait(): no split, the GPU copies it all.
  CopyOp whole{dst.p, src.p, n};
  std::memset(src.p, 0x77, n);
  const unsigned long long gpu_before = copied != nullptr ? copied() : 0;
  auto t = (*m)->submit({&whole, 1}, Cache::kAuto);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*m)->wait(*t).ok());
  EXPECT_EQ(std::memcmp(dst.p, src.p, n), 0);
  if (copied != nullptr) EXPECT_EQ(copied() - gpu_before, n);
}

// Waits sleep through the cost model's prediction times what the engine has
// learned of its error per size: a model far too slow is backed off after
// waits find the copy already done, one far too fast is scaled up after
// waits see the copy finish late. A poll that finds the copies done returns
// at once, whatever the prediction.
TEST(CudaWait, LearnsHowWrongTheCostModelIs) {
  MoverConfig cfg;
  cfg.cuda_h2h = "kernel";
  auto m = make_mover(MoverKind::kCuda, cfg);
  if (!m.ok()) GTEST_SKIP() << m.status().to_string();
  auto* cuda = dynamic_cast<detail::CudaMover*>(m->get());
  ASSERT_NE(cuda, nullptr);
  auto copy_and_wait = [&](Pinned& src, Pinned& dst, size_t n) {
    CopyOp op{dst.p, src.p, n};
    auto t = (*m)->submit({&op, 1}, Cache::kAuto);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    ASSERT_TRUE((*m)->wait(*t).ok());
    EXPECT_EQ(std::memcmp(dst.p, src.p, n), 0);
  };
  const size_t small = size_t{1} << 20, large = size_t{64} << 20;
  Pinned s1(**m, small), d1(**m, small), s2(**m, large), d2(**m, large);
  ASSERT_TRUE(s1.ok && d1.ok && s2.ok && d2.ok);
  std::memset(s1.p, 0x21, small);
  std::memset(s2.p, 0x42, large);
  EXPECT_EQ(cuda->wait_scale(small), 1.0);

  // poll() that finds the copies done returns at once: it does not sleep out
  // a prediction of ten seconds.
  CostProfile glacial;
  glacial.entries.push_back({MoverKind::kCuda, Cache::kAuto, {10000000.0, 0.0}, "kernel"});
  set_cost_profile(glacial);
  CopyOp op{d1.p, s1.p, small};
  auto t0 = std::chrono::steady_clock::now();
  auto t = (*m)->submit({&op, 1}, Cache::kAuto);
  ASSERT_TRUE(t.ok());
  for (;;) {
    auto done = (*m)->poll(*t);
    ASSERT_TRUE(done.ok()) << done.status().to_string();
    if (*done) break;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(3000));
  EXPECT_EQ(cuda->wait_scale(small), 1.0);  // polling teaches nothing

  // 20 ms predicted for any copy: a 1 MiB copy is done long before.
  CostProfile slow;
  slow.entries.push_back({MoverKind::kCuda, Cache::kAuto, {20000.0, 0.0}, "kernel"});
  set_cost_profile(slow);
  // (A loaded machine can make a copy late now and then, which teaches the
  // other way: the scale must get there, not in a fixed number of steps.)
  for (int i = 0; i < 64 && cuda->wait_scale(small) >= 0.5; ++i) copy_and_wait(s1, d1, small);
  EXPECT_LT(cuda->wait_scale(small), 0.5);

  // 60 us predicted for 64 MiB: the copy runs far longer.
  CostProfile fast;
  fast.entries.push_back({MoverKind::kCuda, Cache::kAuto, {60.0, 0.0}, "kernel"});
  set_cost_profile(fast);
  for (int i = 0; i < 16 && cuda->wait_scale(large) <= 1.5; ++i) copy_and_wait(s2, d2, large);
  EXPECT_GT(cuda->wait_scale(large), 1.5);
  EXPECT_LT(cuda->wait_scale(small), 0.5);  // other sizes keep their own
  set_cost_profile({});
}

// A GPU backend's output handed back by reference: the client reads the
// server's device memory through CUDA IPC (Reply::on_gpu), the server's
// release runs when the reply is dropped, and a caller that does not accept
// GPU responses gets the same bytes copied into the pool.
TEST(GpuPayload, ResponseSharedByReferenceAndReleased) {
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) GTEST_SKIP() << api.status().to_string();
  const std::string sock = testing::unique_socket_path("gpuresp");
  testing::Peer server({"serve-gpu", sock});
  ASSERT_EQ(server.read_line(std::chrono::milliseconds(30000)), "ready");
  auto c = Client::connect(sock);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto expected = [](uint32_t n, uint32_t seed) {
    std::vector<std::byte> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 131 + seed);
    return v;
  };
  auto fill = [&](uint32_t n, uint32_t seed, bool accept) {
    uint32_t hdr[2] = {n, seed};
    return c->call("gpu_fill", std::as_bytes(std::span<const uint32_t>(hdr, 2)), {.gpu_response = accept});
  };
  auto counts = [&] {
    std::array<uint64_t, 3> v{};
    auto r = c->call("gpu_counts", std::span<const std::byte>());
    if (r.ok() && r->size() == sizeof(v)) std::memcpy(v.data(), r->data().data(), sizeof(v));
    return v;  // released, shared, copied
  };
  const uint32_t n = (8u << 20) + 3;
  {
    auto a = fill(n, 1, true);
    auto b = fill(n, 2, true);
    ASSERT_TRUE(a.ok() && b.ok()) << (a.ok() ? b.status() : a.status()).to_string();
    ASSERT_TRUE(a->on_gpu() && b->on_gpu());
    EXPECT_EQ(a->size(), n);
    EXPECT_TRUE(a->data().empty());
    EXPECT_EQ(vec_or_fail(*a), expected(n, 1));
    std::vector<std::byte> host(n);
    ASSERT_TRUE(b->copy_to(host).ok());
    EXPECT_EQ(host, expected(n, 2));
    // Both output buffers are lent out: a third fill is refused, not corrupted.
    EXPECT_EQ(fill(n, 3, true).status().code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(counts()[0], 0u);
  }
  // Dropping the replies released both buffers on the server.
  uint64_t released = 0;
  for (int i = 0; i < 500 && released < 2; ++i) {
    released = counts()[0];
    if (released < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(released, 2u);
  // A caller that does not accept GPU responses gets host bytes.
  auto h = fill(n, 4, false);
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  EXPECT_FALSE(h->on_gpu());
  EXPECT_EQ(vec_or_fail(*h), expected(n, 4));
  auto k = counts();
  EXPECT_EQ(k[0], 3u);  // released right after its copy
  EXPECT_EQ(k[1], 2u);
  EXPECT_EQ(k[2], 1u);
  // A reply held when the session ends is released by the server.
  auto held = fill(n, 5, true);
  ASSERT_TRUE(held.ok() && held->on_gpu());
  c->close();
  auto c2 = Client::connect(sock);
  ASSERT_TRUE(c2.ok());
  uint64_t after = 0;
  for (int i = 0; i < 500 && after < 4; ++i) {
    auto r = c2->call("gpu_counts", std::span<const std::byte>());
    ASSERT_TRUE(r.ok());
    std::memcpy(&after, r->data().data(), 8);
    if (after < 4) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(after, 4u);
  EXPECT_EQ(held->size(), n);  // the mapping stays open; its bytes are the server's again
}

}  // namespace
}  // namespace rocket
