// Test helper program: a client or server in its own process, so tests can
// SIGKILL it at a chosen moment. Prints "ready" when it reached that moment.
//
//   rocket_test_peer serve SOCKET             a server with the built-in ops and "sleep"
//   rocket_test_peer hold SOCKET BYTES        submit BYTES to "sleep" (10 s), then wait to be killed
//   rocket_test_peer stream SOCKET BYTES      call echo_copy with BYTES in a loop until killed
//   rocket_test_peer hold-pair SOCKET BYTES   submit two requests of BYTES to "park", then wait
//                                             to be killed
//   rocket_test_peer serve-gpu SOCKET         a server taking GPU payloads: "gpu_checksum"
//                                             (checksum64 of the device bytes) and
//                                             "gpu_handles" (handles opened so far, 8 bytes),
//                                             "gpu_fill" (request: u32 bytes, u32 seed; answers
//                                             with device memory holding gpu_pattern(), shared
//                                             by share_device from a pool of 2 buffers) and
//                                             "gpu_counts" (u64 releases run, responses shared,
//                                             responses copied)
//   rocket_test_peer gpu-alloc BYTES          device memory held open: prints its IPC
//                                             handle (hex) and waits
//   rocket_test_peer serve-lend SOCKET CGROUP JOURNAL
//                                             a server with "sleep" that takes CPU loans
//                                             into cgroup directory CGROUP, with a journal
//   rocket_test_peer call-as UID GID SOCKET OP...
//                                             becomes UID:GID, connects, calls each OP
//                                             with "hi", printing "OP ok" or "OP CODE"
//   rocket_test_peer lend SOCKET CGROUP MILLICPUS OP MS
//                                             joins cgroup directory CGROUP, connects,
//                                             prints "ready", calls OP with the u32 MS
//                                             lending MILLICPUS, then prints "lent N"
//   rocket_test_peer serve-lend-memory SOCKET CPU_CGROUP MEM_CGROUP RESERVE JOURNAL
//                                             joins memory cgroup MEM_CGROUP and serves
//                                             "sleep", "hog" (u32 MiB mapped and kept),
//                                             "free" (all of it) and "held" (u64: the
//                                             memory held over), taking CPU and memory
//                                             loans with RESERVE bytes kept by lenders
//   rocket_test_peer lend-memory SOCKET MEM_CGROUP BYTES OP ARG
//                                             joins memory cgroup MEM_CGROUP, connects,
//                                             prints "ready", calls OP with the u32 ARG
//                                             lending BYTES, then prints "lent-memory N"
//                                             (and " value V" for a u64 reply)
#include <grp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mover/cuda_mover.h"
#include "pocket/cgroup.h"
#include "rocket/rocket.h"

using namespace rocket;

static int serve(const char* path) {
  Server server({.socket_path = path, .default_client_pool_bytes = 64 << 20, .default_server_pool_bytes = 64 << 20});
  if (!register_builtin_ops(server).ok()) return 2;
  Status s = server.handle("sleep", [](const Request& req, Response&) {
    uint32_t ms = 0;
    if (req.data().size() >= 4) std::memcpy(&ms, req.data().data(), 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ok_status();
  });
  if (!s.ok() || !server.start().ok()) return 2;
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

// A GPU backend in its own process (CUDA IPC handles cannot be opened by the
// process that made them).
static int serve_gpu(const char* path) {
  Server server({.socket_path = path});
  auto cuda = make_mover(MoverKind::kCuda);
  if (!cuda.ok()) {
    std::fprintf(stderr, "peer: %s\n", cuda.status().to_string().c_str());
    return 3;
  }
  Mover* m = cuda->get();
  Status s = server.handle("gpu_checksum", [m](const Request& req, Response& resp) -> Status {
    if (!req.on_gpu()) return invalid_argument("gpu_checksum takes a GPU payload");
    std::vector<std::byte> host(req.gpu_size());
    CopyOp op{host.data(), static_cast<const std::byte*>(req.gpu_data()), host.size()};
    ROCKET_RETURN_IF_ERROR(m->execute({&op, 1}, Cache::kAuto));
    uint64_t sum = checksum64(host);
    return resp.write(std::as_bytes(std::span<const uint64_t>(&sum, 1)));
  });
  Server* self = &server;
  Status s2 = server.handle("gpu_handles", [self](const Request&, Response& resp) -> Status {
    uint64_t n = self->stats().gpu_handles_opened;
    return resp.write(std::as_bytes(std::span<const uint64_t>(&n, 1)));
  });
  // Output buffers a GPU backend reuses: a response's buffer is busy until
  // its release runs (the client dropped the reply, or its session ended).
  auto api = detail::load_cuda_module(0);
  if (!api.ok()) return 3;
  struct OutBuffers {
    std::mutex mu;
    void* dev[2] = {};
    bool busy[2] = {};
    uint64_t released = 0;
  };
  static OutBuffers outs;
  for (void*& d : outs.dev) {
    if ((*api)->device_alloc(&d, size_t{16} << 20) != 0) return 3;
  }
  Status s3 = server.handle("gpu_fill", [m](const Request& req, Response& resp) -> Status {
    uint32_t hdr[2];
    if (req.data().size() != sizeof(hdr)) return invalid_argument("gpu_fill takes u32 bytes, u32 seed");
    std::memcpy(hdr, req.data().data(), sizeof(hdr));
    if (hdr[0] > (16u << 20)) return invalid_argument("gpu_fill: at most 16 MiB");
    int slot = -1;
    {
      std::lock_guard<std::mutex> lock(outs.mu);
      for (int i = 0; i < 2 && slot < 0; ++i) {
        if (!outs.busy[i]) slot = i;
      }
      if (slot < 0) return resource_exhausted("both output buffers are still shared");
      outs.busy[slot] = true;
    }
    std::vector<std::byte> host(hdr[0]);
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>(i * 131 + hdr[1]);
    CopyOp op{static_cast<std::byte*>(outs.dev[slot]), host.data(), host.size()};
    auto give_back = [slot] {
      std::lock_guard<std::mutex> lock(outs.mu);
      outs.busy[slot] = false;
      ++outs.released;
    };
    if (Status st = m->execute({&op, 1}, Cache::kAuto); !st.ok()) {
      give_back();
      return st;
    }
    Status st = resp.share_device(outs.dev[slot], host.size(), give_back);
    if (!st.ok()) give_back();
    return st;
  });
  Status s4 = server.handle("gpu_counts", [self](const Request&, Response& resp) -> Status {
    uint64_t v[3];
    {
      std::lock_guard<std::mutex> lock(outs.mu);
      v[0] = outs.released;
    }
    v[1] = self->stats().gpu_responses_shared;
    v[2] = self->stats().gpu_responses_copied;
    return resp.write(std::as_bytes(std::span<const uint64_t>(v, 3)));
  });
  if (!s.ok() || !s2.ok() || !s3.ok() || !s4.ok() || !server.start().ok()) return 2;
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

// Device memory of another process, for tests that play a hostile server:
// allocates `bytes`, prints the allocation's IPC handle in hex, and keeps it.
static int gpu_alloc(size_t bytes) {
  auto api = detail::load_cuda_module(0);
  void* dev = nullptr;
  unsigned char handle[64];
  if (!api.ok() || (*api)->device_alloc(&dev, bytes) != 0 || (*api)->ipc_get(dev, handle) != 0) return 3;
  for (unsigned char b : handle) std::printf("%02x", b);
  std::printf("\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

// A backend whose callers lend it CPU, killed by the test mid-call.
static int serve_lend(const char* path, const char* cgroup, const char* journal) {
  ServerOptions o{.socket_path = path};
  o.lending = {.enabled = true, .backend_cgroup = cgroup, .journal_path = journal};
  Server server(o);
  Status s = server.handle("sleep", [](const Request& req, Response&) {
    uint32_t ms = 0;
    if (req.data().size() >= 4) std::memcpy(&ms, req.data().data(), 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ok_status();
  });
  if (!s.ok()) return 2;
  if (s = server.start(); !s.ok()) {
    std::fprintf(stderr, "peer: %s\n", s.to_string().c_str());
    return 2;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

// A backend in a memory cgroup of its own whose callers lend it memory: what
// "hog" maps stays (and so stays charged to the backend) until "free".
static int serve_lend_memory(const char* path, const char* cpu_cgroup, const std::string& memory_cgroup,
                             uint64_t reserve, const char* journal) {
  auto cg = detail::memory_cgroup_at(memory_cgroup);
  Status joined = cg.ok() ? detail::join_cgroup(*cg) : cg.status();
  if (!joined.ok()) {
    std::fprintf(stderr, "peer: cannot join %s: %s\n", memory_cgroup.c_str(), joined.to_string().c_str());
    return 2;
  }
  ServerOptions o{.socket_path = path};
  o.lending = {.enabled = true, .backend_cgroup = cpu_cgroup, .journal_path = journal};
  o.lending.memory = {.enabled = true, .backend_cgroup = memory_cgroup, .reserve_bytes = reserve};
  Server server(o);
  std::mutex mu;
  std::vector<std::pair<void*, size_t>> hogs;
  auto u32_of = [](const Request& req) {
    uint32_t v = 0;
    if (req.data().size() >= 4) std::memcpy(&v, req.data().data(), 4);
    return v;
  };
  Status s = server.handle("sleep", [&](const Request& req, Response&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(u32_of(req)));
    return ok_status();
  });
  if (s.ok()) {
    s = server.handle("hog", [&](const Request& req, Response&) {
      const size_t bytes = size_t{u32_of(req)} << 20;
      // Populated by the kernel, so charged now, and never touched here: a
      // sanitizer's shadow of it would be charged too, several times over.
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (p == MAP_FAILED) return resource_exhausted("hog: mmap");
      std::lock_guard<std::mutex> lock(mu);
      hogs.emplace_back(p, bytes);
      return ok_status();
    });
  }
  if (s.ok()) {
    s = server.handle("free", [&](const Request&, Response&) {
      std::lock_guard<std::mutex> lock(mu);
      for (auto [p, n] : hogs) ::munmap(p, n);
      hogs.clear();
      return ok_status();
    });
  }
  if (s.ok()) {
    s = server.handle("held", [&](const Request&, Response& resp) {
      const uint64_t held = server.stats().memory_held_over_bytes;
      return resp.write(std::as_bytes(std::span{&held, 1}));
    });
  }
  if (!s.ok()) return 2;
  if (s = server.start(); !s.ok()) {
    std::fprintf(stderr, "peer: %s\n", s.to_string().c_str());
    return 2;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

// A lender's session: joins cgroup `cg` (at directory `dir`), connects, says
// "ready". Exits the process with 2 (no cgroup) or 1 (no session).
static Client lender_session(const char* path, Result<detail::Cgroup> cg, const std::string& dir) {
  Status joined = cg.ok() ? detail::join_cgroup(*cg) : cg.status();
  if (!joined.ok()) {
    std::fprintf(stderr, "peer: cannot join %s: %s\n", dir.c_str(), joined.to_string().c_str());
    std::exit(2);
  }
  auto c = Client::connect(path, {.tenant = "lender", .client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  if (!c.ok()) {
    std::fprintf(stderr, "peer: %s\n", c.status().to_string().c_str());
    std::exit(1);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  return std::move(*c);
}

// A frontend in its own memory cgroup that lends the backend memory for one call.
static int lend_memory(const char* path, const std::string& cgroup, uint64_t bytes, const char* op, uint32_t arg) {
  Client c = lender_session(path, detail::memory_cgroup_at(cgroup), cgroup);
  auto r = c.call(op, std::as_bytes(std::span<const uint32_t>(&arg, 1)), {.policy = {.lend_memory_bytes = bytes}});
  if (r.ok()) {
    std::printf("lent-memory %llu", static_cast<unsigned long long>(r->lent_memory_bytes()));
    if (r->size() == 8) {
      uint64_t v = 0;
      std::memcpy(&v, r->data().data(), 8);
      std::printf(" value %llu", static_cast<unsigned long long>(v));
    }
    std::printf("\n");
  } else {
    std::printf("error %s\n", r.status().to_string().c_str());
  }
  std::fflush(stdout);
  return 0;
}

// A frontend in its own cgroup that lends the backend CPU for one call.
static int lend(const char* path, const std::string& cgroup, uint32_t millicpus, const char* op, uint32_t ms) {
  Client c = lender_session(path, detail::cpu_cgroup_at(cgroup), cgroup);
  auto r = c.call(op, std::as_bytes(std::span<const uint32_t>(&ms, 1)), {.policy = {.lend_millicpus = millicpus}});
  if (r.ok()) {
    std::printf("lent %u\n", r->lent_millicpus());
  } else {
    std::printf("error %s\n", r.status().to_string().c_str());
  }
  std::fflush(stdout);
  return 0;
}

// A client under another account: prints "ok" or the status of each call.
static int call_as(uid_t uid, gid_t gid, const char* path, int nops, char** ops) {
  if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) {
    std::fprintf(stderr, "peer: cannot become %u:%u\n", uid, gid);
    return 2;
  }
  auto c = Client::connect(path, {.tenant = "other", .client_pool_bytes = 1 << 20, .server_pool_bytes = 1 << 20});
  if (!c.ok()) {
    std::printf("connect %s\n", c.status().to_string().c_str());
    return 1;
  }
  for (int i = 0; i < nops; ++i) {
    auto r = c->call(ops[i], std::as_bytes(std::span<const char>("hi", 2)));
    std::printf("%s %s\n", ops[i], r.ok() ? "ok" : std::string(status_code_name(r.status().code())).c_str());
  }
  std::fflush(stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  std::string mode = argv[1];
  if (mode == "call-as" && argc >= 6) {
    return call_as(static_cast<uid_t>(std::stoul(argv[2])), static_cast<gid_t>(std::stoul(argv[3])), argv[4], argc - 5,
                   argv + 5);
  }
  if (mode == "serve-lend" && argc == 5) return serve_lend(argv[2], argv[3], argv[4]);
  if (mode == "lend" && argc == 7) {
    return lend(argv[2], argv[3], static_cast<uint32_t>(std::stoul(argv[4])), argv[5],
                static_cast<uint32_t>(std::stoul(argv[6])));
  }
  if (mode == "serve-lend-memory" && argc == 7) {
    return serve_lend_memory(argv[2], argv[3], argv[4], std::stoull(argv[5]), argv[6]);
  }
  if (mode == "lend-memory" && argc == 7) {
    return lend_memory(argv[2], argv[3], std::stoull(argv[4]), argv[5], static_cast<uint32_t>(std::stoul(argv[6])));
  }
  if (mode == "gpu-alloc") return gpu_alloc(std::stoull(argv[2]));
  if (mode == "serve") return serve(argv[2]);
  if (mode == "serve-gpu") return serve_gpu(argv[2]);
  size_t bytes = argc > 3 ? std::stoull(argv[3]) : 4096;
  auto c = Client::connect(argv[2], {.tenant = "peer", .client_pool_bytes = 2 * bytes + (1 << 20),
                                     .server_pool_bytes = 2 * bytes + (1 << 20)});
  if (!c.ok()) {
    std::fprintf(stderr, "peer: %s\n", c.status().to_string().c_str());
    return 1;
  }
  std::vector<std::byte> data(bytes, std::byte{0x5a});
  if (mode == "hold") {
    uint32_t ms = 10000;
    std::memcpy(data.data(), &ms, 4);
    auto id = c->submit("sleep", std::span<const std::byte>(data));
    if (!id.ok()) return 1;
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) ::pause();
  }
  if (mode == "hold-pair") {
    for (int i = 0; i < 2; ++i) {
      if (!c->submit("park", std::span<const std::byte>(data)).ok()) return 1;
    }
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) ::pause();
  }
  if (mode == "stream") {
    bool announced = false;
    for (;;) {
      auto r = c->call("echo_copy", std::span<const std::byte>(data));
      if (!r.ok()) return 1;
      if (!announced) {
        std::printf("ready\n");
        std::fflush(stdout);
        announced = true;
      }
    }
  }
  return 2;
}
