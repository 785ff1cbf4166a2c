// rocket::Client: a frontend's session with a Rocket server.
//
//   auto client = rocket::Client::connect("/run/rocket/demo.sock");
//   if (!client.ok()) return client.status();
//
//   // Zero-copy: build the request straight in the client pool.
//   auto buf = client->alloc(120 << 20);
//   fill(buf->data());
//   auto reply = client->call("classify", *buf);        // reply views the server pool
//
//   // Copy path: the runtime copies private bytes into the pool with a mover.
//   auto fut = client->call_async("classify", std::span{bytes});
//   overlap_other_work();
//   auto r2 = fut.get();
//
//   // Pipelined: many jobs in flight, collected by id.
//   for (auto& s : batch) ids.push_back(*client->submit("classify", s));
//   for (auto id : ids) results.push_back(client->query(id));
//   r2->copy_to(dst);
//
// Buffers and replies keep the session's memory mapped for as long as they
// live, even after the Client is destroyed; a reply's server-pool block is
// returned to the server when the Reply is destroyed.
//
// When the server dies, blocked calls return kUnavailable within about 20 ms
// and the session stays failed; connect again.
//
// A session belongs to the process that connected it: in a child forked
// after connect(), calls return kFailedPrecondition, and dropping or closing
// the parent's objects there does not touch the parent's session. The child
// connects its own.
//
// Thread safety: a Client is safe for concurrent use from multiple threads.
// Buffer, Reply and Future are values owned by one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rocket/mover/mover.h"
#include "rocket/runtime/policy.h"
#include "rocket/status.h"

namespace rocket {

namespace detail {
class ClientCore;
struct PoolBlock;
struct ReplyBlock;
}  // namespace detail

using JobId = uint64_t;

struct ClientOptions {
  std::string tenant = "default";
  // Each pool's starting size and its most; 0: the server's defaults (32 MiB
  // growing to ServerOptions::max_pool_bytes, 2 GiB). The client pool holds
  // requests and grows when a request or Buffer does not fit; the server pool
  // holds responses and the server grows it when a response does not fit.
  // The largest request and response are bounded by the pools' most. A most
  // below the starting size keeps the pool at its starting size.
  size_t client_pool_bytes = 0;
  size_t server_pool_bytes = 0;
  size_t max_client_pool_bytes = 0;
  size_t max_server_pool_bytes = 0;
  uint32_t ring_entries = 0;
  // Spin this long for a response before sleeping on the futex.
  std::chrono::microseconds spin{50};
  // How long to wait for the server's answer to the handshake, and to a
  // request to grow the client pool. A server takes new sessions one at a
  // time, and each costs faulting in its pools' starting parts (two 32 MiB
  // pools by default), so a burst of clients queues; this bounds a server
  // that does not answer at all, not a busy one.
  std::chrono::milliseconds connect_timeout{30000};
  bool prefault = true;
  // Map the pools with 2 MiB pages where the server made them so (see
  // ServerOptions::huge_pages); false maps them with 4 KiB pages.
  bool huge_pages = true;
  // Offer the `kernel` single-copy path: the server may read requests from
  // and write responses into this process's private memory (it verifies
  // access with a probe at the handshake). Grants the server process ptrace
  // access to us where Yama requires it (PR_SET_PTRACER). Off by default.
  bool allow_kernel_copy = false;
  // Engine for the copy path when a call's policy says kAuto; kAuto picks by
  // the (calibrated) cost model, and an asynchronous engine for large async
  // copies.
  MoverKind default_mover = MoverKind::kAuto;
};

// A block of the client pool that a request can be built in (zero-copy path).
class Buffer {
 public:
  Buffer() = default;
  std::byte* data() const noexcept;
  size_t size() const noexcept;
  std::span<std::byte> span() const noexcept { return {data(), size()}; }
  explicit operator bool() const noexcept { return block_ != nullptr; }

 private:
  friend class Client;
  friend class detail::ClientCore;
  explicit Buffer(std::shared_ptr<detail::PoolBlock> block) : block_(std::move(block)) {}
  std::shared_ptr<detail::PoolBlock> block_;
};

struct CopyOptions {
  MoverKind mover = MoverKind::kAuto;
  Cache cache = Cache::kAuto;
};

// A response. Views the server pool (or, for in-place responses, the request
// buffer) without copying.
class Reply {
 public:
  Reply() = default;
  // Host bytes; empty for a GPU response.
  std::span<const std::byte> data() const noexcept;
  // The payload's size, wherever it lies.
  size_t size() const noexcept { return on_gpu() ? gpu_size() : data().size(); }
  // A GPU response (CallOptions::gpu_response): the server's device memory,
  // opened in this process through CUDA IPC (each allocation once per
  // session). Valid while this Reply lives and the session is open: the
  // server reuses the memory once the Reply is gone or the session closed.
  // Read it with your own kernels or copies.
  bool on_gpu() const noexcept;
  const void* gpu_data() const noexcept;
  size_t gpu_size() const noexcept;
  // Handler time on the server.
  std::chrono::nanoseconds service_time() const noexcept;
  // CPU this call lent the backend while it worked (Policy::lend_millicpus),
  // in thousandths of a CPU: 0 where the server does not lend or could not.
  uint32_t lent_millicpus() const noexcept;
  // Memory likewise (Policy::lend_memory_bytes), in bytes.
  uint64_t lent_memory_bytes() const noexcept;
  // Copies the payload into `dst` (which must hold size() bytes) with a mover;
  // a GPU response on the GPU's copy engines.
  Status copy_to(std::span<std::byte> dst, const CopyOptions& options = {}) const;
  // The payload as a vector (a GPU response copied down; its status if that
  // fails).
  Result<std::vector<std::byte>> to_vector() const;

 private:
  friend class detail::ClientCore;
  explicit Reply(std::shared_ptr<detail::ReplyBlock> block) : block_(std::move(block)) {}
  std::shared_ptr<detail::ReplyBlock> block_;
};

// The result of call_async(). get() may be called once.
class Future {
 public:
  Future() = default;
  Future(Future&& other) noexcept = default;
  Future& operator=(Future&& other) noexcept;
  // A future dropped before get() abandons its job: the response is
  // discarded (and its pool block freed) when it arrives.
  ~Future();
  JobId id() const noexcept { return id_; }
  // Blocks until the response arrives.
  Result<Reply> get(std::chrono::milliseconds timeout = std::chrono::milliseconds{0});
  // True once get() would not block.
  bool ready() const;

 private:
  friend class Client;
  Future(std::shared_ptr<detail::ClientCore> core, JobId id, Status early)
      : core_(std::move(core)), id_(id), early_(std::move(early)) {}
  std::shared_ptr<detail::ClientCore> core_;
  JobId id_ = 0;
  Status early_;  // a failure before the request was posted
};

struct ClientStats {
  uint64_t requests = 0;
  uint64_t inflight = 0;
  uint64_t futex_sleeps = 0;   // times a waiter slept in the kernel
  uint64_t server_wakeups = 0; // eventfd writes to wake the server
  size_t client_pool_bytes = 0;      // the client pool's part in use now (it grows on demand)
  size_t client_pool_in_use = 0;     // bytes of it held by requests and buffers
  size_t client_pool_max_bytes = 0;  // the most it may grow to: the largest request
  size_t server_pool_max_bytes = 0;  // the server pool's most: the largest response
  uint64_t client_pool_grows = 0;
};

class Client {
 public:
  static Result<Client> connect(std::string_view socket_path, const ClientOptions& options = {});

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // A buffer of `bytes` in the client pool, which grows toward its most to
  // make room (the server is asked; ClientOptions::max_client_pool_bytes).
  // kResourceExhausted when the pool is at its most or the server's memory
  // budget allows no more, and it is full now (after waiting for the
  // responses of dropped futures' jobs, whose requests hold pool space until
  // they arrive); kInvalidArgument when it could never fit.
  Result<Buffer> alloc(size_t bytes);

  // Synchronous call on a pool buffer (zero-copy) or on private bytes (copied
  // into the pool with the policy's mover).
  Result<Reply> call(std::string_view op, const Buffer& request, const CallOptions& options = {});
  Result<Reply> call(std::string_view op, std::span<const std::byte> request,
                     const CallOptions& options = {});
  // Synchronous call whose response lands in `response` (which must be large
  // enough: kOutOfRange otherwise). Returns the response's size. With the
  // `kernel` mover the server reads `request` and writes `response` straight
  // from and into this process's memory (one copy each way, no pool space);
  // with other movers: copy-in, call, copy-out.
  Result<size_t> call_into(std::string_view op, std::span<const std::byte> request, std::span<std::byte> response,
                           const CallOptions& options = {});
  // A GPU payload by reference: [device_ptr, device_ptr + bytes) is device
  // memory of this process (cudaMalloc); the server's handler gets it as
  // Request::gpu_data() through CUDA IPC, with no copy. The server opens each
  // allocation's handle once per session and keeps it open while the session
  // lives, so keep the allocation alive until the session is closed.
  // kUnavailable without a GPU (or the cuda module); kInvalidArgument for
  // host memory or a range past the allocation.
  Result<Reply> call_gpu(std::string_view op, const void* device_ptr, size_t bytes, const CallOptions& options = {});
  // Whether the server accepted the kernel single-copy path.
  bool kernel_copy() const noexcept;
  // Returns at once; the copy-in (on an asynchronous engine for large
  // payloads) and the request proceed while the caller works. `request` must
  // stay valid until the future is ready; a future dropped early waits for
  // its copy-in to finish.
  Future call_async(std::string_view op, std::span<const std::byte> request,
                    const CallOptions& options = {});
  // Pipelined: posts the request and returns its job id. kUnavailable when as
  // many jobs are in flight as the completion ring holds (query some first).
  // With private bytes the copy-in is finished when submit() returns (use
  // call_async() to overlap the copy itself with other work).
  Result<JobId> submit(std::string_view op, const Buffer& request, const CallOptions& options = {});
  Result<JobId> submit(std::string_view op, std::span<const std::byte> request,
                       const CallOptions& options = {});
  // Pipelined, batched: copies every request into the pool with one mover
  // submission (an async engine runs them in parallel), then posts them all
  // with at most one wake-up of the server. All or nothing: if any request
  // cannot be copied or posted, none is. The copies are finished on return.
  Result<std::vector<JobId>> submit_batch(std::string_view op, std::span<const std::span<const std::byte>> requests,
                                          const CallOptions& options = {});
  // The response of a job this client submitted, waiting for it if needed.
  // kNotFound for an id this session did not issue or already collected.
  Result<Reply> query(JobId id, std::chrono::milliseconds timeout = std::chrono::milliseconds{0});

  // Ops the server offered in the handshake.
  std::vector<std::string> ops() const;
  uint64_t session_id() const noexcept;
  ClientStats stats() const;
  // Ends the session. Outstanding buffers and replies stay readable (a GPU
  // response's memory goes back to the server, though).
  void close() noexcept;

 private:
  explicit Client(std::shared_ptr<detail::ClientCore> core) : core_(std::move(core)) {}
  std::shared_ptr<detail::ClientCore> core_;
};

}  // namespace rocket
