// A multi-tenant backend in the Pocket style, and a frontend for it: each
// client opens a server-side "counter" and gets a capability handle that is
// good in its own session only; "reset_all" is kept to the operator's uid;
// a call may lend the backend CPU while it works.
//
//   ./rocket_pocket serve /tmp/pocket.sock &          # add --lend to take CPU loans
//   rocket run --socket /tmp/pocket.sock -- ./rocket_pocket call /tmp/pocket.sock
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

#include "rocket/rocket.h"

namespace {

using rocket::Request;
using rocket::Response;
using rocket::Status;

struct Counter {
  std::atomic<uint64_t> value{0};
};

rocket::Result<uint64_t> handle_in(const Request& req) {
  if (req.data().size() != sizeof(uint64_t)) return rocket::invalid_argument("send the 8-byte handle");
  uint64_t h;
  std::memcpy(&h, req.data().data(), sizeof(h));
  return h;
}

Status reply_u64(Response& resp, uint64_t v) { return resp.write(std::as_bytes(std::span<const uint64_t>(&v, 1))); }

int serve(const char* path, bool lend) {
  rocket::ServerOptions o;
  o.socket_path = path;
  o.dispatchers = 2;
  o.lending.enabled = lend;  // the backend's own cgroup must have a CPU limit
  rocket::Server server(o);
  rocket::CapabilityTable<Counter> counters(server, /*max_per_session=*/16);
  Status st = server.handle("open", [&](const Request& req, Response& resp) -> Status {
    ROCKET_ASSIGN_OR_RETURN(uint64_t h, counters.add(req, std::make_shared<Counter>()));
    return reply_u64(resp, h);
  });
  if (st.ok()) {
    st = server.handle("add", [&](const Request& req, Response& resp) -> Status {
      ROCKET_ASSIGN_OR_RETURN(uint64_t h, handle_in(req));
      ROCKET_ASSIGN_OR_RETURN(auto counter, counters.get(req, h));  // NOT_FOUND unless it is this session's
      return reply_u64(resp, counter->value.fetch_add(1) + 1);
    });
  }
  if (st.ok()) {
    rocket::OpOptions admin;
    admin.allowed_uids = {::geteuid()};  // the operator's account only
    st = server.handle(
        "reset_all", [](const Request&, Response&) { return rocket::ok_status(); }, admin);
  }
  if (st.ok()) st = server.run();  // until killed
  if (!st.ok()) std::fprintf(stderr, "serve: %s\n", st.to_string().c_str());
  return st.ok() ? 0 : 1;
}

int call(const char* path) {
  auto client = rocket::Client::connect(path, {.tenant = "pocket-example"});
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().to_string().c_str());
    return 1;
  }
  auto opened = client->call("open", std::span<const std::byte>{});
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().to_string().c_str());
    return 1;
  }
  uint64_t h;
  std::memcpy(&h, opened->data().data(), sizeof(h));
  // Lend the backend half a CPU for each call (a server without lending ignores it).
  const rocket::CallOptions lend{.policy = {.lend_millicpus = 500}};
  for (int i = 0; i < 3; ++i) {
    auto r = client->call("add", std::as_bytes(std::span<const uint64_t>(&h, 1)), lend);
    if (!r.ok()) {
      std::fprintf(stderr, "add: %s\n", r.status().to_string().c_str());
      return 1;
    }
    uint64_t v;
    std::memcpy(&v, r->data().data(), sizeof(v));
    std::printf("counter %016llx is at %llu (lent %u millicpus)\n", static_cast<unsigned long long>(h),
                static_cast<unsigned long long>(v), r->lent_millicpus());
  }
  // Someone else's handle is nothing here: a guessed one finds no counter.
  const uint64_t guess = h ^ 1;
  auto other = client->call("add", std::as_bytes(std::span<const uint64_t>(&guess, 1)));
  std::printf("a guessed handle: %s\n", other.ok() ? "found (!)" : other.status().to_string().c_str());
  auto reset = client->call("reset_all", std::span<const std::byte>{});
  std::printf("reset_all: %s\n", reset.ok() ? "allowed" : reset.status().to_string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string role = argc > 1 ? argv[1] : "";
  const char* path = argc > 2 ? argv[2] : "/tmp/pocket.sock";
  if (role == "serve") return serve(path, argc > 3 && std::string(argv[3]) == "--lend");
  if (role == "call") return call(path);
  std::fprintf(stderr, "usage: %s serve SOCKET [--lend] | call SOCKET\n", argv[0]);
  return 2;
}
