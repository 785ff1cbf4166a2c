// Test doubles of a server, for the client's side of the protocol: one that
// answers the handshake with crafted segments, and one that completes it and
// then lets the test read requests and write completions by hand, as a buggy
// or hostile server could.
#pragma once

#include <sys/eventfd.h>
#include <sys/socket.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "test_util.h"

namespace rocket::testing {

// A test double of a server that answers the handshake with crafted segments.
struct FakeServer {
  explicit FakeServer(std::function<void(int)> answer) : path(unique_socket_path("fake")) {
    auto l = detail::listen_unix(path, 4);
    EXPECT_TRUE(l.ok());
    lfd = *l;
    th = std::thread([this, answer] {
      int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      detail::Hello h;
      (void)detail::recv_message(fd, &h, sizeof(h), nullptr, 0, std::chrono::milliseconds(2000));
      answer(fd);
      ::close(fd);
    });
  }
  ~FakeServer() {
    th.join();
    ::close(lfd);
    ::unlink(path.c_str());
  }
  std::string path;
  int lfd = -1;
  std::thread th;
};

// A test double of a server: completes the handshake with one op ("echo"),
// then the test reads the submission ring and writes completions by hand, as
// a buggy or hostile server could.
struct ScriptedServer {
  ScriptedServer() {
    auto c = shm::Segment::create("c", shm::SegmentKind::kControl, detail::control_data_bytes(64, 64), 1, {});
    auto p = shm::Segment::create("p", shm::SegmentKind::kClientPool, 1 << 20, 1, {});
    auto s = shm::Segment::create("s", shm::SegmentKind::kServerPool, 1 << 20, 1, {});
    EXPECT_TRUE(c.ok() && p.ok() && s.ok());
    control = std::move(*c);
    cpool = std::move(*p);
    spool = std::move(*s);
    auto view = detail::control_view(control.data(), 64);
    rx = shm::RingConsumer<detail::SubDesc>(&view.block->sub, view.sub_slots, 64);
    tx = shm::RingProducer<detail::CompDesc>(&view.block->comp, view.comp_slots, 64);
    fake = std::make_unique<FakeServer>([this](int fd) {
      int efd = ::eventfd(0, EFD_CLOEXEC);
      auto w = std::make_unique<detail::Welcome>();
      std::memset(w.get(), 0, sizeof(*w));
      w->magic = detail::kProtocolMagic;
      w->version = detail::kProtocolVersion;
      w->session_id = 1;
      w->client_pool_bytes = w->server_pool_bytes = 1 << 20;
      w->client_pool_max_bytes = w->server_pool_max_bytes = 1 << 20;
      w->sub_ring_entries = w->comp_ring_entries = 64;
      w->op_count = 1;
      w->ops[0].id = 0;
      detail::set_fixed_string(w->ops[0].name, sizeof(w->ops[0].name), "echo");
      int fds[4] = {control.fd(), cpool.fd(), spool.fd(), efd};
      EXPECT_TRUE(detail::send_message(fd, w.get(), detail::kWelcomeHeaderBytes + sizeof(detail::OpEntry), fds).ok());
      ::close(efd);
      while (!done.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the session lives
    });
  }
  ~ScriptedServer() { done = true; }
  // A client of this server (the handshake is expected to succeed).
  Client connect() {
    auto c = Client::connect(fake->path);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return std::move(c).value();
  }
  // The next descriptor the client posted (kind 0: none within 5 s).
  detail::SubDesc next() {
    detail::SubDesc d{};
    for (int i = 0; i < 5000; ++i) {
      if (rx.try_pop(&d) == shm::RingResult::kOk) return d;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return detail::SubDesc{};
  }
  void complete(const detail::CompDesc& c) { EXPECT_EQ(tx.try_push(c), shm::RingResult::kOk); }

  shm::Segment control, cpool, spool;
  shm::RingConsumer<detail::SubDesc> rx;
  shm::RingProducer<detail::CompDesc> tx;
  std::atomic<bool> done{false};
  std::unique_ptr<FakeServer> fake;  // last: its thread stops before the segments go
};

// A completion saying the response is a GpuRef at `offset` of the server pool.
inline detail::CompDesc gpu_completion(uint64_t job, uint64_t offset) {
  detail::CompDesc c{};
  c.job_id = job;
  c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
  c.flags = detail::kCompGpuResponse;
  c.offset = offset;
  c.length = sizeof(detail::GpuRef);
  return c;
}

}  // namespace rocket::testing
