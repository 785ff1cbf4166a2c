// `rocket-peers`: server and client processes of `rocket bench peers`.
//
//   rocket-peers server --transport T --endpoint PATH [--workload W --scale F]
//   rocket-peers client --transport T --endpoint PATH --op echo|W --size N ...
//
// Every transport serves the same two ops: `echo` (the request bytes back)
// and one workload (its Model, as in `rocket demo`). A client sends private
// bytes and receives the response into private memory, round trip after
// round trip, and prints one JSON line of round-trip times.
//   uds        SOCK_STREAM, length-prefixed frames
//   zmq        ZeroMQ REQ/REP over ipc://
//   grpc       gRPC unary call on unix:, message limits raised
//   shm_naive  a fresh POSIX shared-memory file per request and per response,
//              its name sent over a Unix socket
//   rocket     Rocket's copy path (copy-in, call, copy-out); `rocket_zc` the
//              zero-copy path (built in the pool, read in place)
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "exit_with_parent.h"
#include "mapped_buffer.h"
#include "peers.grpc.pb.h"
#include "stream_io.h"
#include "rocket/rocket.h"
#include "workload.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace rocket;
using tools::read_all;
using tools::write_all;

struct Args {
  std::string transport, endpoint, workload = "pagerank", op = "echo";
  double scale = 0.05;
  std::string mover = "auto";  // Rocket's copy path: the engine for copy-in and copy-out
  size_t size = 64;
  double budget_ms = 300;
  int min_iters = 5;
};

// --- the ops ---------------------------------------------------------------

class Ops {
 public:
  explicit Ops(const Args& a) {
    auto w = workloads::find_workload(a.workload);
    if (w.ok() && (*w)->unavailable_reason().empty()) {
      auto m = (*w)->start_backend(workloads::Scale{.factor = a.scale});
      if (m.ok()) model_ = std::move(*m);
      name_ = a.workload;
    }
  }
  // Runs `op` on `req`; the response goes into a buffer from `alloc`.
  Result<size_t> run(std::string_view op, std::span<const std::byte> req, const workloads::ResponseAlloc& alloc) const {
    if (op == "echo") {
      ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(req.size()));
      std::memcpy(out.data(), req.data(), req.size());
      return req.size();
    }
    if (model_ != nullptr && op == name_) return model_->process(req, alloc);
    return not_found("unknown op '" + std::string(op) + "'");
  }
  const workloads::Model* model() const { return model_.get(); }

 private:
  std::string name_;
  std::unique_ptr<workloads::Model> model_;
};

// --- helpers ---------------------------------------------------------------

// A frame on the UDS-based transports: op id, then the payload's length.
struct Frame {
  uint32_t op;  // 0: echo, 1: the workload
  uint32_t pad;
  uint64_t len;
};
constexpr uint64_t kMaxFrame = uint64_t{2} << 30;
// The socket baselines get large buffers: fewer wake-ups for big payloads.
constexpr int kSocketBuffer = 4 << 20;

std::string_view op_name(uint32_t id, const std::string& workload) { return id == 0 ? "echo" : workload; }

// A POSIX shared-memory file holding `n` bytes, mapped.
struct ShmFile {
  std::string name;
  std::byte* p = nullptr;
  size_t n = 0;
  static Result<ShmFile> create(const std::string& name, size_t n) {
    int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return errno_status("shm_open " + name, errno);
    ShmFile f{name, nullptr, n};
    if (::ftruncate(fd, static_cast<off_t>(std::max<size_t>(n, 1))) != 0) {
      ::close(fd);
      ::shm_unlink(name.c_str());
      return errno_status("ftruncate", errno);
    }
    void* m = ::mmap(nullptr, std::max<size_t>(n, 1), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) {
      ::shm_unlink(name.c_str());
      return errno_status("mmap", errno);
    }
    f.p = static_cast<std::byte*>(m);
    return f;
  }
  static Result<ShmFile> open(const std::string& name, size_t n) {
    int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return errno_status("shm_open " + name, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < n) {
      ::close(fd);
      return invalid_argument("shared-memory file " + name + " is smaller than announced");
    }
    void* m = ::mmap(nullptr, std::max<size_t>(n, 1), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) return errno_status("mmap", errno);
    return ShmFile{name, static_cast<std::byte*>(m), n};
  }
  void unmap() {
    if (p != nullptr) ::munmap(p, std::max<size_t>(n, 1));
    p = nullptr;
  }
};

// --- servers ---------------------------------------------------------------

// uds and shm_naive: one thread per connection.
void serve_stream_connection(int fd, const Ops& ops, const Args& a, bool naive) {
  std::vector<std::byte> in, out;
  uint64_t counter = 0;
  for (;;) {
    Frame f{};
    if (!read_all(fd, &f, sizeof(f)) || f.len > kMaxFrame) break;
    std::span<const std::byte> req;
    ShmFile req_file;
    if (naive) {
      char name[64] = {};
      if (!read_all(fd, name, sizeof(name))) break;
      name[sizeof(name) - 1] = 0;
      auto file = ShmFile::open(name, f.len);
      if (!file.ok()) break;
      req_file = *file;
      req = {req_file.p, f.len};
    } else {
      in.resize(f.len);
      if (!read_all(fd, in.data(), f.len)) break;
      req = in;
    }
    if (f.op == 0 && !naive) {
      // Echo writes the received bytes straight back, as a plain UDS echo
      // server would (Rocket's echo replies in place, too).
      Frame r{0, 0, f.len};
      if (!write_all(fd, &r, sizeof(r)) || !write_all(fd, in.data(), f.len)) break;
      continue;
    }
    Frame r{};
    ShmFile resp_file;
    std::string resp_name = "/rocket-naive-s" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    auto n = ops.run(op_name(f.op, a.workload), req, [&](size_t bytes) -> Result<std::span<std::byte>> {
      if (naive) {
        ROCKET_ASSIGN_OR_RETURN(resp_file, ShmFile::create(resp_name, bytes));
        return std::span<std::byte>(resp_file.p, bytes);
      }
      out.resize(bytes);
      return std::span<std::byte>(out);
    });
    req_file.unmap();
    r.len = n.ok() ? *n : 0;
    r.op = n.ok() ? 0 : 1;  // 1: failed
    if (!write_all(fd, &r, sizeof(r))) break;
    if (naive) {
      char name[64] = {};
      std::strncpy(name, resp_name.c_str(), sizeof(name) - 1);
      resp_file.unmap();
      if (!write_all(fd, name, sizeof(name))) break;  // the client unlinks it
    } else if (!write_all(fd, out.data(), r.len)) {
      break;
    }
  }
  ::close(fd);
}

int serve_stream(const Ops& ops, const Args& a, bool naive) {
  int lfd = tools::stream_listen(a.endpoint);
  if (lfd < 0) return 1;
  std::cout << "ready" << std::endl;
  for (;;) {
    int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    tools::set_socket_buffers(fd, kSocketBuffer);
    std::thread([fd, &ops, &a, naive] { serve_stream_connection(fd, ops, a, naive); }).detach();
  }
}

int serve_zmq(const Ops& ops, const Args& a) {
  zmq::context_t ctx(1);
  zmq::socket_t sock(ctx, zmq::socket_type::rep);
  sock.bind("ipc://" + a.endpoint);
  std::cout << "ready" << std::endl;
  for (;;) {
    // A request is two frames, op and payload. Anything else still gets an
    // (empty) reply: a REP socket must answer before it can receive again.
    zmq::message_t op, data, extra;
    if (!sock.recv(op)) continue;
    bool well_formed = op.more() && sock.recv(data).has_value();
    for (bool more = well_formed && data.more(); more; more = extra.more()) {  // drain surplus frames
      well_formed = false;
      if (!sock.recv(extra)) break;
    }
    if (!well_formed) {
      sock.send(zmq::message_t(), zmq::send_flags::none);
      continue;
    }
    if (op.to_string_view() == "echo") {
      sock.send(data, zmq::send_flags::none);  // the received message itself: no copy
      continue;
    }
    zmq::message_t out;
    auto n = ops.run(op.to_string_view(), {static_cast<const std::byte*>(data.data()), data.size()},
                     [&](size_t bytes) -> Result<std::span<std::byte>> {
                       out.rebuild(bytes);
                       return std::span<std::byte>(static_cast<std::byte*>(out.data()), bytes);
                     });
    if (!n.ok()) out.rebuild(0);
    sock.send(out, zmq::send_flags::none);
  }
}

class GrpcService final : public rocketpeers::Peer::Service {
 public:
  explicit GrpcService(const Ops& ops) : ops_(ops) {}
  grpc::Status Call(grpc::ServerContext*, const rocketpeers::Payload* req, rocketpeers::Payload* resp) override {
    std::string* out = resp->mutable_data();
    const std::string& in = req->data();
    auto n = ops_.run(req->op(), {reinterpret_cast<const std::byte*>(in.data()), in.size()},
                      [&](size_t bytes) -> Result<std::span<std::byte>> {
                        out->resize(bytes);
                        return std::span<std::byte>(reinterpret_cast<std::byte*>(out->data()), bytes);
                      });
    if (!n.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, n.status().to_string());
    out->resize(*n);
    return grpc::Status::OK;
  }

 private:
  const Ops& ops_;
};

int serve_grpc(const Ops& ops, const Args& a) {
  GrpcService svc(ops);
  grpc::ServerBuilder b;
  b.AddListeningPort("unix:" + a.endpoint, grpc::InsecureServerCredentials());
  b.SetMaxReceiveMessageSize(-1);
  b.SetMaxSendMessageSize(-1);
  b.RegisterService(&svc);
  auto server = b.BuildAndStart();
  if (!server) return 1;
  std::cout << "ready" << std::endl;
  server->Wait();
  return 0;
}

int serve_rocket(const Ops& ops, const Args& a) {
  ServerOptions o;
  o.socket_path = a.endpoint;
  o.max_pool_bytes = size_t{4} << 30;
  Server server(o);
  if (!register_builtin_ops(server).ok()) return 1;  // `echo` replies in place
  if (ops.model() != nullptr) {
    const workloads::Model* m = ops.model();
    if (!server.handle(a.workload, [m](const Request& rq, Response& rs) -> Status {
          return m->process(rq.data(), [&rs](size_t n) { return rs.alloc(n); }).status();
        }).ok()) {
      return 1;
    }
  }
  if (!server.start().ok()) return 1;
  std::cout << "ready" << std::endl;
  server.wait();
  return 0;
}

// --- clients ---------------------------------------------------------------

// One round trip: private request in, private response out; returns the
// response length.
using RoundTrip = std::function<Result<size_t>()>;

Status measure(const Args& a, const RoundTrip& rt, size_t expect_len, std::vector<double>* samples) {
  for (int i = 0; i < 2; ++i) {
    ROCKET_ASSIGN_OR_RETURN(size_t n, rt());
    if (n != expect_len) return data_loss("response of " + std::to_string(n) + " bytes, expected " + std::to_string(expect_len));
  }
  auto end = Clock::now() + std::chrono::microseconds(static_cast<int64_t>(a.budget_ms * 1000));
  while (static_cast<int>(samples->size()) < a.min_iters || Clock::now() < end) {
    auto t0 = Clock::now();
    ROCKET_ASSIGN_OR_RETURN(size_t n, rt());
    samples->push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (n != expect_len) return data_loss("response length changed");
    if (samples->size() > 100000) break;
  }
  return ok_status();
}

Status run_client(const Args& a) {
  // The request: `size` patterned bytes for echo, a workload request otherwise.
  std::unique_ptr<workloads::Frontend> fe;
  size_t req_len = a.size, resp_cap = a.size;
  if (a.op != "echo") {
    ROCKET_ASSIGN_OR_RETURN(const workloads::Workload* w, workloads::find_workload(a.op));
    fe = w->frontend(workloads::Scale{.factor = a.scale});
    if (fe == nullptr) return failed_precondition(w->unavailable_reason());
    req_len = fe->request_bytes();
    resp_cap = fe->max_response_bytes();
  }
  tools::MappedBuffer req(req_len), resp(resp_cap);
  if (fe) {
    fe->make_request(0, {req.data(), req_len});
  } else {
    for (size_t i = 0; i < req_len; ++i) req.data()[i] = static_cast<std::byte>(i * 7 + 1);
  }
  const uint32_t op_id = a.op == "echo" ? 0 : 1;
  const std::string op = a.op == "echo" ? "echo" : a.workload;
  RoundTrip rt;
  // Transport state lives here for the whole run.
  int fd = -1;
  uint64_t counter = 0;
  zmq::context_t ctx(1);
  zmq::socket_t zsock;
  std::unique_ptr<rocketpeers::Peer::Stub> stub;
  std::optional<Client> client;
  Buffer pool_req;
  if (a.transport == "uds" || a.transport == "shm_naive") {
    fd = tools::stream_connect(a.endpoint, kSocketBuffer);
    if (fd < 0) return errno_status("connect " + a.endpoint, errno);
    const bool naive = a.transport == "shm_naive";
    rt = [&, naive]() -> Result<size_t> {
      Frame f{op_id, 0, req_len};
      if (!write_all(fd, &f, sizeof(f))) return unavailable("server closed");
      if (naive) {
        std::string name = "/rocket-naive-c" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
        ROCKET_ASSIGN_OR_RETURN(ShmFile file, ShmFile::create(name, req_len));
        std::memcpy(file.p, req.data(), req_len);
        file.unmap();
        char buf[64] = {};
        std::strncpy(buf, name.c_str(), sizeof(buf) - 1);
        bool sent = write_all(fd, buf, sizeof(buf));
        Frame r{};
        bool got = sent && read_all(fd, &r, sizeof(r));
        ::shm_unlink(name.c_str());
        if (!got) return unavailable("server closed");
        char rname[64] = {};
        if (!read_all(fd, rname, sizeof(rname))) return unavailable("server closed");
        rname[sizeof(rname) - 1] = 0;
        if (r.op != 0 || r.len > resp_cap) {
          ::shm_unlink(rname);
          return internal_error("server failed the request");
        }
        auto rf = ShmFile::open(rname, r.len);
        ::shm_unlink(rname);
        if (!rf.ok()) return rf.status();
        std::memcpy(resp.data(), rf->p, r.len);
        rf->unmap();
        return r.len;
      }
      if (!write_all(fd, req.data(), req_len)) return unavailable("server closed");
      Frame r{};
      if (!read_all(fd, &r, sizeof(r))) return unavailable("server closed");
      if (r.op != 0 || r.len > resp_cap) return internal_error("server failed the request");
      if (!read_all(fd, resp.data(), r.len)) return unavailable("server closed");
      return r.len;
    };
  } else if (a.transport == "zmq") {
    zsock = zmq::socket_t(ctx, zmq::socket_type::req);
    zsock.connect("ipc://" + a.endpoint);
    rt = [&]() -> Result<size_t> {
      zsock.send(zmq::buffer(op), zmq::send_flags::sndmore);
      zsock.send(zmq::message_t(req.data(), req_len), zmq::send_flags::none);  // copies, as users do
      zmq::message_t r;
      if (!zsock.recv(r)) return unavailable("zmq receive failed");
      if (r.size() > resp_cap) return internal_error("response too large");
      std::memcpy(resp.data(), r.data(), r.size());
      return r.size();
    };
  } else if (a.transport == "grpc") {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    stub = rocketpeers::Peer::NewStub(grpc::CreateCustomChannel("unix:" + a.endpoint, grpc::InsecureChannelCredentials(), args));
    rt = [&]() -> Result<size_t> {
      rocketpeers::Payload in, out;
      in.set_op(op);
      in.set_data(reinterpret_cast<const char*>(req.data()), req_len);
      grpc::ClientContext cctx;
      grpc::Status st = stub->Call(&cctx, in, &out);
      if (!st.ok()) return internal_error("grpc: " + st.error_message());
      if (out.data().size() > resp_cap) return internal_error("response too large");
      std::memcpy(resp.data(), out.data().data(), out.data().size());
      return out.data().size();
    };
  } else if (a.transport == "rocket" || a.transport == "rocket_zc") {
    ClientOptions co;
    co.client_pool_bytes = (req_len + (size_t{8} << 20)) & ~size_t{4095};
    co.server_pool_bytes = (resp_cap + (size_t{8} << 20)) & ~size_t{4095};
    ROCKET_ASSIGN_OR_RETURN(Client c, Client::connect(a.endpoint, co));
    client.emplace(std::move(c));
    ROCKET_ASSIGN_OR_RETURN(MoverKind mover, parse_mover_kind(a.mover));
    const CallOptions call{.policy = {.mover = mover, .cache = Cache::kAuto}, .timeout = std::chrono::milliseconds(0)};
    const CopyOptions copy{.mover = mover, .cache = Cache::kAuto};
    if (a.transport == "rocket_zc") {
      ROCKET_ASSIGN_OR_RETURN(pool_req, client->alloc(std::max<size_t>(req_len, 1)));
      std::memcpy(pool_req.data(), req.data(), req_len);  // built in place once
      rt = [&]() -> Result<size_t> {
        ROCKET_ASSIGN_OR_RETURN(Reply r, client->call(op, pool_req));
        return r.size();  // read in place: no copy-out
      };
    } else {
      rt = [&, call, copy]() -> Result<size_t> {
        ROCKET_ASSIGN_OR_RETURN(Reply r, client->call(op, std::span<const std::byte>(req.data(), req_len), call));
        if (r.size() > resp_cap) return internal_error("response too large");
        ROCKET_RETURN_IF_ERROR(r.copy_to({resp.data(), r.size()}, copy));
        return r.size();
      };
    }
  } else {
    return invalid_argument("unknown transport '" + a.transport + "' (uds, zmq, grpc, shm_naive, rocket, rocket_zc)");
  }
  // The zero-copy echo of a pool buffer replies with a view of the request
  // block (`size` bytes); every other path returns the full response.
  std::vector<double> samples;
  size_t expect = a.op == "echo" ? req_len : resp_cap;
  ROCKET_RETURN_IF_ERROR(measure(a, rt, expect, &samples));
  // The bytes arrived intact (checked once, outside the timing).
  bool intact = true;
  if (a.op == "echo" && a.transport != "rocket_zc") intact = std::memcmp(resp.data(), req.data(), req_len) == 0;
  if (fe && a.transport != "rocket_zc") intact = fe->consume({resp.data(), expect}).ok();
  if (!intact) return data_loss("the response does not match");
  std::cout << json{{"samples", samples}}.dump() << std::endl;
  if (fd >= 0) ::close(fd);
  return ok_status();
}

}  // namespace

int main(int argc, char** argv) {
  rocket::tools::exit_with_parent();
  ::signal(SIGPIPE, SIG_IGN);
  // As in `rocket demo`: the workload's per-request temporaries stay mapped,
  // for every transport alike.
  if (!workloads::retain_freed_memory()) {
    std::cerr << "rocket-peers: this allocator ignores mallopt; freed memory goes back to the kernel\n";
  }
  CLI::App app{"rocket bench peers: servers and clients of the compared transports"};
  app.require_subcommand(1);
  Args a;
  auto* s = app.add_subcommand("server");
  s->add_option("--transport", a.transport)->required();
  s->add_option("--endpoint", a.endpoint)->required();
  s->add_option("--workload", a.workload);
  s->add_option("--scale", a.scale);
  auto* c = app.add_subcommand("client");
  c->add_option("--transport", a.transport)->required();
  c->add_option("--endpoint", a.endpoint)->required();
  c->add_option("--workload", a.workload);
  c->add_option("--op", a.op, "echo, or the workload's name");
  c->add_option("--scale", a.scale);
  c->add_option("--size", a.size);
  c->add_option("--mover", a.mover, "Rocket's copy path: auto, cpu, cpu_stream, threads");
  c->add_option("--budget-ms", a.budget_ms);
  c->add_option("--min-iters", a.min_iters);
  CLI11_PARSE(app, argc, argv);
  if (s->parsed()) {
    Ops ops(a);
    if (a.transport == "uds") return serve_stream(ops, a, false);
    if (a.transport == "shm_naive") return serve_stream(ops, a, true);
    if (a.transport == "zmq") return serve_zmq(ops, a);
    if (a.transport == "grpc") return serve_grpc(ops, a);
    if (a.transport == "rocket") return serve_rocket(ops, a);
    std::cerr << "rocket-peers: unknown transport " << a.transport << "\n";
    return 2;
  }
  Status st = run_client(a);
  if (!st.ok()) {
    std::cerr << "rocket-peers client (" << a.transport << "): " << st.to_string() << "\n";
    return 1;
  }
  return 0;
}
