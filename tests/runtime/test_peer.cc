// Test helper program: a client or server in its own process, so tests can
// SIGKILL it at a chosen moment. Prints "ready" when it reached that moment.
//
//   rocket_test_peer serve SOCKET             a server with the built-in ops and "sleep"
//   rocket_test_peer hold SOCKET BYTES        submit BYTES to "sleep" (10 s), then wait to be killed
//   rocket_test_peer stream SOCKET BYTES      call echo_copy with BYTES in a loop until killed
//   rocket_test_peer serve-gpu SOCKET         a server taking GPU payloads: "gpu_checksum"
//                                             (checksum64 of the device bytes) and
//                                             "gpu_handles" (handles opened so far, 8 bytes)
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

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
  if (!s.ok() || !s2.ok() || !server.start().ok()) return 2;
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  std::string mode = argv[1];
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
