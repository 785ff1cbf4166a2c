// rocket::Server: the backend process that serves many frontends over shared
// memory.
//
//   rocket::Server server({.socket_path = "/run/rocket/demo.sock"});
//   server.handle("classify", [](const rocket::Request& req, rocket::Response& resp) {
//     auto out = resp.alloc(4000);            // written straight into the server pool
//     if (!out.ok()) return out.status();
//     run_model(req.data(), *out);
//     return rocket::ok_status();
//   });
//   if (auto s = server.run(); !s.ok()) die(s);   // until stop()
//
// Each session (one connected client) gets private rings and pools; the
// session socket carries only the handshake and liveness. Dispatcher threads
// poll their sessions' submission rings, spin briefly when idle, then sleep in
// epoll on per-session eventfds. Every descriptor from a client is validated; a
// bad one fails that request only. A client that dies, or violates the ring
// protocol, loses its session and nothing else.
//
// Handlers run on dispatcher threads; a handler registered with handle() must
// be safe to call concurrently; handle_per_thread() gives each dispatcher its
// own instance instead. Handlers may throw: the exception becomes an INTERNAL
// error for that request and does not leave the server.
//
// A session's requests run one at a time, in order, on its own dispatcher --
// unless their op is registered with OpOptions::concurrent: then an idle
// dispatcher helps a busy one by taking the session's waiting requests to that
// op, so one client's pipeline (Client::submit) can use several of the
// server's threads.
//
// A started server belongs to the process that started it: in a child forked
// after start(), stop() and wait() do nothing and the destructor leaves the
// parent's threads, sessions and socket file alone (the memory stays
// allocated in the child).
//
// Thread safety: handle*() before start()/run(); stop() and stats() from any
// thread (stop() is also async-signal-safe).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rocket/pocket/lending.h"
#include "rocket/status.h"

namespace rocket {

namespace detail {
struct ServerSession;
}

// The request as the handler sees it. `data()` views the client's pool: it
// stays valid for the handler's call only, and the client can change it
// concurrently (only to its own detriment), so copy what must be stable.
class Request {
 public:
  std::string_view op() const noexcept { return op_; }
  std::span<const std::byte> data() const noexcept { return data_; }
  std::string_view tenant() const noexcept { return tenant_; }
  uid_t uid() const noexcept { return uid_; }
  pid_t pid() const noexcept { return pid_; }
  uint64_t job_id() const noexcept { return job_id_; }
  // The caller's session: unique within this server's lifetime (see
  // Server::on_session_end, CapabilityTable).
  uint64_t session_id() const noexcept { return session_id_; }
  // CPU the caller lent the backend for this request (ServerOptions::lending),
  // in thousandths of a CPU; 0 if it lent none.
  uint32_t lent_millicpus() const noexcept { return lent_millicpus_; }
  // Memory likewise (LendingOptions::memory), in bytes.
  uint64_t lent_memory_bytes() const noexcept { return lent_memory_bytes_; }
  // A GPU payload (Client::call_gpu): the client's device memory, opened in
  // this process through CUDA IPC (once per session, then cached); data() is
  // empty then. The pointer is valid during the handler only; the handler
  // must not write past gpu_size().
  bool on_gpu() const noexcept { return gpu_data_ != nullptr; }
  void* gpu_data() const noexcept { return gpu_data_; }
  size_t gpu_size() const noexcept { return gpu_size_; }
  // GPU backends: copies data() into device memory `device` (at least
  // data().size() bytes) on the GPU's copy engines, straight from the shared
  // pool, which is registered with the GPU once per session. kUnavailable
  // where this process has no GPU.
  Status copy_to_device(void* device) const;

 private:
  friend class Server;
  detail::ServerSession* session_ = nullptr;
  std::string_view op_;
  std::span<const std::byte> data_;
  void* gpu_data_ = nullptr;
  size_t gpu_size_ = 0;
  std::string_view tenant_;
  uid_t uid_ = 0;
  pid_t pid_ = 0;
  uint64_t job_id_ = 0;
  uint64_t session_id_ = 0;
  uint32_t lent_millicpus_ = 0;
  uint64_t lent_memory_bytes_ = 0;
};

// The response under construction. Exactly one of: alloc() (write the output
// straight into the server pool), write() (copy bytes in), reply_in_place()
// (answer with a range of the request's own bytes; no copy at all),
// write_from_device() or share_device() (a GPU backend's output), or nothing
// (an empty response).
class Response {
 public:
  // A block of the session's server pool for the output. A second call
  // replaces the first. kResourceExhausted when the pool is full.
  Result<std::span<std::byte>> alloc(size_t bytes);
  Status write(std::span<const std::byte> bytes);
  // The response is request bytes [offset, offset+length).
  Status reply_in_place(size_t offset, size_t length);
  // The response is `bytes` bytes of device memory, copied into the server
  // pool on the GPU's copy engines (the pool is registered once per session).
  Status write_from_device(const void* device, size_t bytes);
  // The response is `bytes` bytes of this process's device memory at
  // `device`, shared by reference (CUDA IPC) with a caller that accepts GPU
  // responses (CallOptions::gpu_response): no copy. The memory must stay
  // allocated and unchanged until `release` runs, which happens when the
  // client lets go of the reply or its session ends. A caller that does not
  // accept GPU responses (or takes the response into its own buffer with the
  // kernel path) gets the bytes copied into the server pool on the copy
  // engines, and `release` runs right after that copy. `release` runs on a
  // server thread, possibly another dispatcher's than the handler's, and its
  // exceptions are swallowed. On an error `release` is dropped unrun (the
  // memory stays the handler's): kUnavailable without a GPU, kInvalidArgument
  // for host memory or a range past the allocation. The client decides when
  // it lets go, so bound what one tenant may hold (Request::tenant()).
  Status share_device(void* device, size_t bytes, std::function<void()> release);

  Response(const Response&) = delete;
  Response& operator=(const Response&) = delete;
  ~Response();

 private:
  friend class Server;
  explicit Response(detail::ServerSession* session, size_t request_bytes) noexcept
      : session_(session), request_bytes_(request_bytes) {}
  void release() noexcept;
  // A shared GPU response for a caller that cannot take it by reference: the
  // bytes copied into the server pool, then the handler's memory released.
  Status device_to_pool();

  detail::ServerSession* session_;
  size_t request_bytes_;
  enum class Kind : uint8_t { kEmpty, kPool, kInPlace, kGpu } kind_ = Kind::kEmpty;
  uint64_t offset_ = 0;  // kGpu: the server-pool block holding the reference
  uint64_t length_ = 0;
  bool committed_ = false;
  const void* device_ = nullptr;        // kGpu: the shared memory
  size_t device_bytes_ = 0;
  std::function<void()> on_release_;    // kGpu: the handler's release
};

using Handler = std::function<Status(const Request&, Response&)>;

struct OpOptions {
  // Requests of one session to this op may run on several dispatcher threads
  // at once and finish in any order: while a session's own dispatcher is busy
  // (in a long handler, say), an idle dispatcher takes the session's waiting
  // requests to this op. For ops whose requests are independent of each other
  // (inference, queries); an op whose requests build on each other (append,
  // set-then-get) must leave it off. Requests to ops without it keep their
  // order among themselves and never run two at a time per session. Only
  // matters with more than one dispatcher; such a server's idle dispatchers
  // wake every millisecond to look for waiting requests.
  bool concurrent = false;
  // Who may call this op (Pocket's per-op access list): clients whose uid is
  // in `allowed_uids` or whose primary gid is in `allowed_gids`, as the kernel
  // reported them when they connected (SO_PEERCRED). Both empty: every client
  // the server admitted. A caller not on the list gets PERMISSION_DENIED for
  // that request; its session and its other ops are unaffected. The lists are
  // exact: the server's own uid is not implied, so an admin op can be kept to
  // one account.
  std::vector<uid_t> allowed_uids;
  std::vector<gid_t> allowed_gids;
};

struct ServerOptions {
  std::string socket_path;
  unsigned dispatchers = 1;
  // How long an idle dispatcher polls before it sleeps in epoll.
  std::chrono::microseconds spin{50};
  // Who may connect: the server's own uid always; also these uids and gids
  // (checked against the peer's SO_PEERCRED). With either list non-empty the
  // socket file is made connectable by all (0666) so that the listed accounts
  // can reach the check; the directory must let them in too.
  std::vector<uid_t> allowed_uids;
  std::vector<gid_t> allowed_gids;
  // Pools start at the client's ask, or these sizes, and grow on demand up
  // to max_pool_bytes (or the client's lower ClientOptions::max_*): the
  // server pool when a response does not fit, the client pool when the
  // client asks. Each session's segments are mapped at their most but take
  // memory, and count against max_mapped_bytes, only as far as they are in
  // use. A pool never shrinks while its session lasts.
  size_t default_client_pool_bytes = size_t{32} << 20;
  size_t default_server_pool_bytes = size_t{32} << 20;
  size_t max_pool_bytes = size_t{2} << 30;
  uint32_t default_ring_entries = 1024;
  unsigned max_sessions = 256;
  // Sessions one uid may hold open at once, so that one account cannot take
  // every session or the whole memory budget from the others; 0: no limit
  // but max_sessions. Past it, UNAVAILABLE saying why.
  unsigned max_sessions_per_uid = 0;
  // The most memory all sessions' segments may take together. A session that
  // would go past it is refused (RESOURCE_EXHAUSTED, saying why), where it
  // would otherwise run the machine or the server's cgroup out of memory and
  // have the server killed. 0: half of what the server may use (the smaller
  // of the machine's memory and its memory cgroup's limit), read at start();
  // ServerStats::mapped_budget_bytes says what it came to.
  uint64_t max_mapped_bytes = 0;
  bool prefault = true;
  // Back session pools with 2 MiB pages where the system allows shared-memory
  // huge pages (shm::HugePages); false keeps them to 4 KiB pages.
  bool huge_pages = true;
  // How long a new connection may take to say hello before it is refused.
  // Connections waiting to say hello hold up no one: the server takes each
  // hello as it arrives, and keeps at most 16 connections per uid (256 in
  // all) waiting, refusing more at once.
  std::chrono::milliseconds handshake_timeout{2000};
  // Pocket's resource amplification: callers lend the backend CPU for the
  // duration of their requests (rocket/pocket/lending.h). Off by default.
  LendingOptions lending;
};

struct ServerStats {
  uint64_t sessions_open = 0;
  uint64_t sessions_total = 0;
  uint64_t sessions_refused = 0;
  uint64_t requests = 0;
  uint64_t request_errors = 0;   // requests answered with a non-OK status
  uint64_t protocol_errors = 0;  // corrupt rings, forged frees, garbage descriptors
  uint64_t bytes_mapped = 0;     // segments currently mapped for sessions
  uint64_t mapped_budget_bytes = 0;  // the most they may take (ServerOptions::max_mapped_bytes)
  uint64_t pool_grows = 0;           // times a session's pool grew toward its most
  uint64_t gpu_handles_opened = 0;  // CUDA IPC handles of GPU payloads opened (once per session each)
  uint64_t gpu_responses_shared = 0;  // GPU responses handed over by reference
  uint64_t gpu_responses_copied = 0;  // GPU responses copied into the pool for callers that did not accept them
  uint64_t requests_helped = 0;       // requests run by a dispatcher other than their session's (OpOptions::concurrent)
  uint64_t lends = 0;                 // requests that lent the backend CPU or memory (ServerOptions::lending)
  uint64_t lends_refused =
      0;  // requests that asked to lend a resource and lent none of it (why: on stderr, once a session)
  uint64_t lends_returned_on_exit = 0;  // loans put back because the caller died before its request ended
  uint64_t memory_lent_bytes = 0;       // memory lent over all requests
  uint64_t memory_held_over_bytes = 0;  // now: memory the backend keeps after its loans ended, still using it
};

class Server {
 public:
  explicit Server(ServerOptions options);
  Server(std::string socket_path, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Registers `op`. kInvalidArgument for a bad or duplicate name;
  // kFailedPrecondition after start().
  Status handle(std::string_view op, Handler handler, OpOptions options = {});
  Status handle_per_thread(std::string_view op, std::function<Handler()> factory, OpOptions options = {});
  // Runs `hook` with a session's id when the session ends (its client closed
  // or died, or the server stopped), after its last request has finished:
  // the place to let go of what handlers keep per session. Hooks run on a
  // server thread, may run concurrently for different sessions, and their
  // exceptions are swallowed. kFailedPrecondition after start().
  Status on_session_end(std::function<void(uint64_t session_id)> hook);

  // Binds the socket and starts the acceptor and dispatcher threads.
  Status start();
  // start(), then blocks until stop().
  Status run();
  // Asks every thread to finish; returns at once. Sessions are closed when
  // the threads exit (in run() or the destructor).
  void stop() noexcept;
  // Joins all threads and closes every session. Idempotent.
  void wait();

  ServerStats stats() const;
  const ServerOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rocket
