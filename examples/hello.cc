// The shortest useful Rocket frontend: connect, build a request in shared
// memory, call, read the reply; then the same through the copy path.
//
//   rocket serve --socket /tmp/rocket.sock &
//   ./rocket_hello /tmp/rocket.sock
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "rocket/rocket.h"

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "/tmp/rocket.sock";
  auto client = rocket::Client::connect(path, {.tenant = "hello"});
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().to_string().c_str());
    return 1;
  }

  // Zero-copy: the request is built where the server will read it.
  const size_t n = 32 << 20;
  auto buf = client->alloc(n);
  if (!buf.ok()) {
    std::fprintf(stderr, "alloc: %s\n", buf.status().to_string().c_str());
    return 1;
  }
  for (size_t i = 0; i < n; ++i) buf->data()[i] = static_cast<std::byte>(i);
  auto sum = client->call("checksum", *buf);
  if (!sum.ok()) {
    std::fprintf(stderr, "call: %s\n", sum.status().to_string().c_str());
    return 1;
  }
  uint64_t server_sum;
  std::memcpy(&server_sum, sum->data().data(), sizeof(server_sum));
  bool match = server_sum == rocket::checksum64(buf->span());
  std::printf("zero-copy: 32 MiB checksummed by the server in %.0f us: %s\n",
              static_cast<double>(sum->service_time().count()) / 1e3, match ? "matches" : "MISMATCH");

  // Copy path, asynchronously: private bytes are copied into the pool by a mover.
  std::string text = "private bytes travel through the copy path";
  auto fut = client->call_async("echo_copy", std::as_bytes(std::span{text}));
  auto reply = fut.get();
  if (!reply.ok()) {
    std::fprintf(stderr, "call_async: %s\n", reply.status().to_string().c_str());
    return 1;
  }
  std::vector<char> out(reply->size());
  if (auto s = reply->copy_to(std::as_writable_bytes(std::span{out})); !s.ok()) return 1;
  std::printf("copy path: \"%.*s\"\n", static_cast<int>(out.size()), out.data());
  return match ? 0 : 1;
}
