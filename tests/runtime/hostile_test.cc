// Descriptors from a misbehaving client: every bad one fails that request (or
// that session), never the server or another session.
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "test_util.h"

namespace rocket::testing {
namespace {

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    bystander_ = std::make_unique<Client>(srv_.connect({.tenant = "bystander"}));
    raw_ = RawSession::open(srv_.path);
    ASSERT_NE(raw_, nullptr);
  }
  // The bystander's traffic is intact.
  void expect_bystander_ok() {
    auto data = pattern(50000, 99);
    auto r = bystander_->call("echo_copy", std::span<const std::byte>(data));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->to_vector().value(), data);
  }
  detail::CompDesc expect_error(const detail::SubDesc& d, StatusCode code) {
    raw_->push(d);
    detail::CompDesc c{};
    EXPECT_TRUE(raw_->pop(&c));
    EXPECT_EQ(c.job_id, d.job_id);
    EXPECT_EQ(c.status, static_cast<int32_t>(code));
    return c;
  }
  TestServer srv_;
  std::unique_ptr<Client> bystander_;
  std::unique_ptr<RawSession> raw_;
};

TEST_F(Hostile, UnknownOpFailsThatRequest) {
  expect_error(raw_request(999, 1, 0, 10), StatusCode::kInvalidArgument);
  expect_bystander_ok();
}

TEST_F(Hostile, OutOfBoundsRangesFailThatRequest) {
  const uint64_t pool = raw_->welcome->client_pool_bytes;
  uint32_t echo = raw_->op("echo");
  expect_error(raw_request(echo, 1, pool, 1), StatusCode::kInvalidArgument);             // starts at the end
  expect_error(raw_request(echo, 2, pool - 10, 11), StatusCode::kInvalidArgument);       // runs past the end
  expect_error(raw_request(echo, 3, 8, UINT64_MAX), StatusCode::kInvalidArgument);       // wraps
  expect_error(raw_request(echo, 4, UINT64_MAX - 4, 16), StatusCode::kInvalidArgument);  // wraps
  auto c = expect_error(raw_request(echo, 5, pool + 4096, 0), StatusCode::kInvalidArgument);
  // The error text is readable in the server pool.
  ASSERT_EQ(c.pool, static_cast<uint16_t>(detail::PayloadPool::kServer));
  std::string msg(reinterpret_cast<const char*>(raw_->spool.data() + c.offset), c.length);
  EXPECT_NE(msg.find("outside the client pool"), std::string::npos) << msg;
  // A valid request on the same session still works.
  std::memcpy(raw_->cpool.data(), "abc", 3);
  raw_->push(raw_request(echo, 6, 0, 3));
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_EQ(c.status, 0);
  EXPECT_EQ(c.pool, static_cast<uint16_t>(detail::PayloadPool::kClient));
  EXPECT_EQ(c.length, 3u);
  expect_bystander_ok();
}

TEST_F(Hostile, LoansBeyondTheLimitFailThatRequest) {
  uint32_t echo = raw_->op("echo");
  std::memcpy(raw_->cpool.data(), "abc", 3);
  for (uint64_t lend : {uint64_t{kMaxLendMillicpus} + 1, uint64_t{UINT32_MAX} + 1, UINT64_MAX}) {
    auto d = raw_request(echo, lend & 0xffff, 0, 3);
    d.reserved[2] = lend;
    auto c = expect_error(d, StatusCode::kInvalidArgument);
    std::string msg(reinterpret_cast<const char*>(raw_->spool.data() + c.offset), c.length);
    EXPECT_NE(msg.find("lends at most"), std::string::npos) << msg;
  }
  for (uint64_t bytes : {kMaxLendMemoryBytes + 1, UINT64_MAX}) {
    auto d = raw_request(echo, bytes & 0xffff, 0, 3);
    d.reserved[3] = bytes;
    auto c = expect_error(d, StatusCode::kInvalidArgument);
    std::string msg(reinterpret_cast<const char*>(raw_->spool.data() + c.offset), c.length);
    EXPECT_NE(msg.find("lends at most"), std::string::npos) << msg;
  }
  // Within the limit, a server that does not lend runs the request and says it lent nothing.
  auto d = raw_request(echo, 7, 0, 3);
  d.reserved[2] = kMaxLendMillicpus;
  d.reserved[3] = kMaxLendMemoryBytes;
  raw_->push(d);
  detail::CompDesc c{};
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_EQ(c.status, 0);
  EXPECT_EQ(c.reserved[0], 0u);
  EXPECT_EQ(c.reserved[1], 0u);
  expect_bystander_ok();
}

TEST_F(Hostile, GarbageDescriptorsFailWithoutHarm) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 500; ++i) {
    detail::SubDesc d;
    uint64_t words[8];
    for (auto& w : words) w = rng();
    std::memcpy(&d, words, sizeof(d));
    if (d.kind == static_cast<uint16_t>(detail::SubKind::kRequest) ||
        d.kind == static_cast<uint16_t>(detail::SubKind::kFreeReply)) {
      d.kind = 0x7777;
    }
    raw_->push(d);
    detail::CompDesc c{};
    ASSERT_TRUE(raw_->pop(&c));
    EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
    // Free the error text so the 1 MiB server pool does not fill up.
    if (c.pool == static_cast<uint16_t>(detail::PayloadPool::kServer)) {
      detail::SubDesc f{};
      f.kind = static_cast<uint16_t>(detail::SubKind::kFreeReply);
      f.offset = c.offset;
      raw_->push(f);
    }
  }
  expect_bystander_ok();
  EXPECT_GE(srv_.server->stats().protocol_errors, 500u);
}

TEST_F(Hostile, RemoteFlagsWithoutTheKernelPathAreRefused) {
  auto d = raw_request(raw_->op("echo"), 1, 0x1000, 16);
  d.flags = detail::kSubRemoteRequest;
  expect_error(d, StatusCode::kPermissionDenied);
  d.flags = 0x80;  // unknown
  d.job_id = 2;
  expect_error(d, StatusCode::kInvalidArgument);
  expect_bystander_ok();
}

// GPU payload references: a wrong size, a wrong magic, a handle of garbage,
// or GPU and remote flags together fail that request only. Without a GPU the
// server says it cannot take GPU payloads; with one, the garbage handle does
// not open (and a forged range could never reach past an allocation: the
// server checks it against the opened allocation's real size).
TEST_F(Hostile, MalformedGpuReferencesFailThatRequest) {
  const uint32_t echo = raw_->op("echo");
  auto d = raw_request(echo, 1, 0, 40);  // not sizeof(GpuRef)
  d.flags = detail::kSubGpuRequest;
  expect_error(d, StatusCode::kInvalidArgument);
  detail::GpuRef ref{};
  ref.magic = 0x12345678;
  std::memcpy(raw_->cpool.data(), &ref, sizeof(ref));
  d = raw_request(echo, 2, 0, sizeof(ref));
  d.flags = detail::kSubGpuRequest;
  detail::CompDesc c{};
  raw_->push(d);
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_TRUE(c.status == static_cast<int32_t>(StatusCode::kInvalidArgument) ||
              c.status == static_cast<int32_t>(StatusCode::kFailedPrecondition))
      << c.status;
  ref.magic = detail::kGpuRefMagic;
  ref.offset = UINT64_MAX - 8;
  ref.length = 64;
  std::memset(ref.handle, 0xab, sizeof(ref.handle));
  std::memcpy(raw_->cpool.data(), &ref, sizeof(ref));
  d.job_id = 3;
  raw_->push(d);
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_TRUE(c.status == static_cast<int32_t>(StatusCode::kInvalidArgument) ||
              c.status == static_cast<int32_t>(StatusCode::kFailedPrecondition))
      << c.status;
  d.job_id = 4;
  d.flags = detail::kSubGpuRequest | detail::kSubRemoteRequest;
  expect_error(d, StatusCode::kInvalidArgument);
  EXPECT_EQ(srv_.server->stats().gpu_handles_opened, 0u);
  expect_bystander_ok();
}

TEST_F(Hostile, RemoteAddressesThatAreNotMappedFailThatRequest) {
  auto k = RawSession::open(srv_.path, detail::kProtocolVersion, nullptr, /*kernel=*/true);
  ASSERT_NE(k, nullptr);
  ASSERT_NE(k->welcome->flags & detail::kWelcomeKernelCopy, 0u);
  auto d = raw_request(k->op("echo"), 1, 0x10, 4096);  // page zero: never mapped
  d.flags = detail::kSubRemoteRequest;
  k->push(d);
  detail::CompDesc c{};
  ASSERT_TRUE(k->pop(&c));
  EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
  // A remote request larger than the session's pool limit.
  d = raw_request(k->op("echo"), 2, reinterpret_cast<uint64_t>(&c), uint64_t{1} << 40);
  d.flags = detail::kSubRemoteRequest;
  k->push(d);
  ASSERT_TRUE(k->pop(&c));
  EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
  // A response destination that is not mapped.
  static char src[8] = "payload";
  d = raw_request(k->op("echo"), 3, reinterpret_cast<uint64_t>(src), 7);
  d.flags = detail::kSubRemoteRequest | detail::kSubRemoteResponse;
  d.reserved[0] = 0x10;
  d.reserved[1] = 7;
  k->push(d);
  ASSERT_TRUE(k->pop(&c));
  EXPECT_EQ(c.status, static_cast<int32_t>(StatusCode::kInvalidArgument));
  expect_bystander_ok();
}

TEST_F(Hostile, ForgedFreesAreIgnored) {
  // Make the bystander hold a reply in its own server pool, then have the raw
  // session "free" offsets: its pool is separate, so nothing of the
  // bystander's can be touched, and its own pool's bookkeeping rejects them.
  auto data = pattern(4096, 1);
  auto held = bystander_->call("echo_copy", std::span<const std::byte>(data));
  ASSERT_TRUE(held.ok());
  uint64_t before = srv_.server->stats().protocol_errors;
  for (uint64_t off : {uint64_t{0}, uint64_t{64}, uint64_t{4096}, UINT64_MAX}) {
    detail::SubDesc f{};
    f.kind = static_cast<uint16_t>(detail::SubKind::kFreeReply);
    f.offset = off;
    raw_->push(f);
  }
  // A request after the frees proves they were processed.
  uint32_t echo = raw_->op("echo");
  raw_->push(raw_request(echo, 1, 0, 0));
  detail::CompDesc c{};
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_EQ(srv_.server->stats().protocol_errors, before + 4);
  EXPECT_EQ(held->to_vector().value(), data);
  expect_bystander_ok();
}

TEST_F(Hostile, AnotherSessionsJobIdIsJustANumberHere) {
  // The bystander has a job in flight; the raw session reuses its id. Job ids
  // are per session, so each gets its own answer and nothing crosses over.
  uint32_t ms = 30;
  auto id = bystander_->submit("sleep", std::as_bytes(std::span{&ms, 1}));
  ASSERT_TRUE(id.ok());
  std::memcpy(raw_->cpool.data(), "mine", 4);
  raw_->push(raw_request(raw_->op("echo_copy"), *id, 0, 4));
  detail::CompDesc c{};
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_EQ(c.job_id, *id);
  EXPECT_EQ(std::memcmp(raw_->spool.data() + c.offset, "mine", 4), 0);
  auto r = bystander_->query(*id);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 0u);  // the sleep op's empty reply, not "mine"
}

TEST_F(Hostile, CorruptRingIndicesCloseOnlyThatSession) {
  raw_->cb->sub.tail.value.store(1'000'000, std::memory_order_release);
  uint64_t one = 1;
  ASSERT_EQ(::write(raw_->wake_fd, &one, 8), 8);
  ASSERT_TRUE(srv_.wait_sessions(1));  // the raw session was closed
  EXPECT_TRUE(detail::peer_hung_up(raw_->sock) || srv_.server->stats().sessions_open == 1);
  expect_bystander_ok();
}

TEST_F(Hostile, CompletionRingLeftFullStallsOnlyThatSession) {
  // The raw client never reads completions: after 64 the server must hold
  // back (backlog) instead of overwriting or blocking its dispatcher.
  uint32_t echo = raw_->op("echo");
  for (uint64_t j = 0; j < 64; ++j) raw_->push(raw_request(echo, j, 0, 0));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (uint64_t j = 64; j < 70; ++j) raw_->push(raw_request(echo, j, 0, 0));
  expect_bystander_ok();
  detail::CompDesc c{};
  for (uint64_t j = 0; j < 70; ++j) {
    ASSERT_TRUE(raw_->pop(&c)) << j;
    EXPECT_EQ(c.job_id, j);
  }
}

// Requests to grow the client pool, from a client that may grow it to 4 MiB.
class HostileGrowth : public Hostile {
 protected:
  void SetUp() override {
    Hostile::SetUp();
    raw_ = RawSession::open(srv_.path, detail::kProtocolVersion, nullptr, false, /*client_max=*/4 << 20);
    ASSERT_NE(raw_, nullptr);
    ASSERT_EQ(raw_->welcome->client_pool_max_bytes, 4u << 20);
  }
  // Sends a GrowRequest and returns the server's answer.
  detail::GrowReply grow(uint64_t seq, uint64_t bytes) {
    detail::GrowRequest g{detail::kGrowMagic, 0, seq, bytes};
    EXPECT_TRUE(detail::send_message(raw_->sock, &g, sizeof(g), {}).ok());
    detail::GrowReply reply{};
    auto n = detail::recv_message(raw_->sock, &reply, sizeof(reply), nullptr, 0, std::chrono::milliseconds(5000));
    EXPECT_TRUE(n.ok() && *n == sizeof(reply)) << (n.ok() ? std::to_string(*n) : n.status().to_string());
    EXPECT_EQ(reply.magic, detail::kGrowMagic);
    EXPECT_EQ(reply.seq, seq);
    return reply;
  }
};

TEST_F(HostileGrowth, RequestsReachOnlyAsFarAsTheServerGranted) {
  const uint32_t echo = raw_->op("echo");
  const uint64_t at = uint64_t{2} << 20;  // past the 1 MiB in use, within the 4 MiB most
  std::memcpy(raw_->cpool.data() + at, "grown", 5);
  expect_error(raw_request(echo, 1, at, 5), StatusCode::kInvalidArgument);  // not granted yet
  for (uint64_t bad : {uint64_t{0}, (uint64_t{3} << 20) + 1, uint64_t{5} << 20, UINT64_MAX}) {
    detail::GrowReply r = grow(bad & 0xffff, bad);  // nothing, not pages, past the most
    EXPECT_EQ(r.status_code, static_cast<int32_t>(StatusCode::kInvalidArgument)) << bad;
    EXPECT_EQ(r.bytes, uint64_t{1} << 20);
  }
  for (uint64_t granted : {uint64_t{1} << 20, uint64_t{512} << 10}) {  // already in use: said again, unchanged
    detail::GrowReply r = grow(granted & 0xffff, granted);
    EXPECT_EQ(r.status_code, 0);
    EXPECT_EQ(r.bytes, uint64_t{1} << 20);
  }
  detail::GrowReply r = grow(7, uint64_t{3} << 20);
  EXPECT_EQ(r.status_code, 0) << detail::fixed_string(r.message, sizeof(r.message));
  EXPECT_EQ(r.bytes, uint64_t{3} << 20);
  raw_->push(raw_request(echo, 2, at, 5));
  detail::CompDesc c{};
  ASSERT_TRUE(raw_->pop(&c));
  EXPECT_EQ(c.status, 0);
  EXPECT_EQ(c.offset, at);  // answered in place, from the grown part
  expect_error(raw_request(echo, 3, uint64_t{3} << 20, 1), StatusCode::kInvalidArgument);  // past the grant
  EXPECT_GE(srv_.server->stats().protocol_errors, 4u);
  expect_bystander_ok();
}

TEST_F(HostileGrowth, AnythingElseOnTheSocketEndsOnlyThatSession) {
  const char junk[24] = "not a grow request";
  ASSERT_TRUE(detail::send_message(raw_->sock, junk, sizeof(junk), {}).ok());
  ASSERT_TRUE(srv_.wait_sessions(1));
  expect_bystander_ok();
}

// A client that asks and never reads the answers loses its session once its
// socket is full, instead of stalling the dispatcher its bystander shares.
TEST_F(HostileGrowth, AClientThatDoesNotReadTheAnswersLosesItsSession) {
  detail::GrowRequest g{detail::kGrowMagic, 0, 1, 1};  // refused each time: cheap to ask
  for (int i = 0; i < 1'000'000; ++i) {
    g.seq = static_cast<uint64_t>(i);
    if (::send(raw_->sock, &g, sizeof(g), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
      if (errno != EAGAIN) break;  // the server closed the session
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ASSERT_TRUE(srv_.wait_sessions(1));
  expect_bystander_ok();
}

}  // namespace
}  // namespace rocket::testing
