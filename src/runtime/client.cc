#include "rocket/runtime/client.h"

#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "rocket/policy/skyrocket.h"
#include "rocket/shm/pool.h"
#include "rocket/shm/segment.h"
#include "runtime/gpu_payload.h"
#include "runtime/protocol.h"
#include "runtime/socket.h"
#include "sys/fork.h"
#include "sys/futex.h"

namespace rocket {
namespace detail {

using Clock = std::chrono::steady_clock;

// How long one futex sleep lasts before the waiter checks that the server is
// still alive. Bounds how late a dead server is noticed.
constexpr auto kLivenessSlice = std::chrono::milliseconds(20);

// Up to this size an automatic policy takes memcpy without consulting the
// cost models: nothing beats an inline copy of a few cache lines, and the
// lookup would cost more than the copy.
constexpr size_t kInlineCopyBytes = size_t{64} << 10;

// Below this size an automatic policy copies inline even for async calls:
// handing the copy to an engine thread costs more than the overlap gains.
constexpr size_t kAsyncCopyThreshold = size_t{256} << 10;

// What a request carries besides its payload.
struct ReqTags {
  uint16_t flags = 0;              // SubFlags
  uint32_t lend_millicpus = 0;     // Policy::lend_millicpus
  uint64_t lend_memory_bytes = 0;  // Policy::lend_memory_bytes
};

// A block of the client pool; returned to the allocator when the last
// reference (Buffer, in-flight job, in-place Reply) goes away.
struct PoolBlock {
  PoolBlock(std::shared_ptr<ClientCore> c, uint64_t off, uint64_t len)
      : core(std::move(c)), offset(off), size(len) {}
  ~PoolBlock();
  std::shared_ptr<ClientCore> core;
  uint64_t offset;
  uint64_t size;
};

struct ReplyBlock {
  ~ReplyBlock();
  std::shared_ptr<ClientCore> core;
  PayloadPool pool = PayloadPool::kNone;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t service_ns = 0;
  uint32_t lent_millicpus = 0;
  uint64_t lent_memory_bytes = 0;
  std::shared_ptr<PoolBlock> request;  // in-place replies view the request bytes
  GpuView gpu;                         // GPU responses: the server's device memory, opened here
};

// The session. Shared by the Client handle and every Buffer, Reply and
// Future, so the mappings outlive any of them.
//
// Thread safety: all mutable state is guarded by mu_; the shared-memory
// indices are owned by the ring ends it guards.
class ClientCore : public std::enable_shared_from_this<ClientCore> {
 public:
  static Result<std::shared_ptr<ClientCore>> connect(const std::string& path, const ClientOptions& opts);
  ~ClientCore();

  Result<std::shared_ptr<PoolBlock>> alloc_block(size_t bytes);
  // Collects responses of abandoned jobs (freeing their request blocks);
  // false when none is outstanding (or the session failed), so waiting for
  // pool space would be in vain.
  bool reclaim_abandoned();
  void free_block(uint64_t offset) noexcept;
  void free_reply(uint64_t offset) noexcept;

  Result<uint32_t> op_id(std::string_view op) const;
  // Posts a request for [offset, offset+length) of the client pool. `block`
  // stays referenced until the job completes. `abandoned` jobs are discarded
  // on completion.
  // `flags`: SubFlags (kSubGpuRequest for a GpuRef in the block).
  Result<JobId> post(uint32_t op, std::shared_ptr<PoolBlock> block, uint64_t offset, uint64_t length,
                     bool wait_for_space, ReqTags tags = {});
  // Copies `bytes` into a fresh pool block with the policy's mover.
  Result<std::shared_ptr<PoolBlock>> copy_in(std::span<const std::byte> bytes, const Policy& policy);
  // Starts an asynchronous copy-in and returns the job id at once; the
  // request is posted when the copy completes. Falls back to copy-in + post
  // when the chosen engine is synchronous.
  Result<JobId> submit_copy(uint32_t op, std::span<const std::byte> bytes, const Policy& policy, ReqTags tags);
  // The engine and cache for a copy of `bytes` from `src` to `dst`: the
  // policy's choice, or for kAuto the learned policy's (SkyRocket) when a
  // model is installed, else the engine with the lowest calibrated cost (an
  // asynchronous one when `async`).
  struct MoverChoice {
    Mover* mover = nullptr;
    Cache cache = Cache::kAuto;
    bool learned = false;  // SkyRocket chose: time the copy for its log
    skyrocket::Features features;
  };
  static MoverChoice fixed_choice(Mover* m, Cache cache) { return {m, cache, false, {}}; }
  Result<MoverChoice> choose_mover(MoverKind kind, const void* src, const void* dst, size_t bytes, Cache cache,
                                   bool async);
  // Runs `ops` (of `bytes` in all) synchronously on `c`; a learned choice's
  // copy is timed and logged for retraining.
  static Status run_copy(const MoverChoice& c, std::span<const CopyOp> ops, size_t bytes);
  Result<Reply> wait_job(JobId id, std::chrono::milliseconds timeout);
  bool job_done(JobId id);
  void abandon(JobId id) noexcept;
  Result<Mover*> mover(MoverKind kind);
  void close() noexcept;
  // True in a child forked after connect(): nothing of the session may be
  // touched there but this process's own copies of its memory.
  bool in_forked_child() const noexcept { return fork_generation() != fork_generation_; }
  // FAILED_PRECONDITION in a forked child, saying what to do instead.
  Status owner_check() const;

  std::byte* client_data() const noexcept { return cpool_.data(); }
  const std::byte* server_data() const noexcept { return spool_.data(); }
  std::vector<std::string> ops() const { return op_names_; }
  uint64_t session_id() const noexcept { return session_id_; }
  bool kernel_copy() const noexcept { return kernel_copy_; }
  // Bytes the server wrote into the caller's buffer (kernel path replies).
  static size_t written_length(const Reply& r) noexcept { return r.block_ ? r.block_->length : 0; }
  // Posts a request whose payload (and optionally response) stay in this
  // process's private memory for the server to reach with process_vm_*.
  Result<JobId> post_remote(uint32_t op, std::span<const std::byte> request, std::span<std::byte> response,
                            ReqTags tags = {});
  Result<std::vector<JobId>> submit_batch(uint32_t op, std::span<const std::span<const std::byte>> requests,
                                          const Policy& policy, ReqTags tags);
  ClientStats stats();

 private:
  struct Job {
    std::shared_ptr<PoolBlock> request;
    uint64_t req_offset = 0;
    uint64_t req_length = 0;
    bool done = false;
    bool abandoned = false;
    bool copying = false;  // an async copy-in is still running; not posted yet
    uint32_t op = 0;
    uint64_t remote_capacity = 0;  // kernel path: the caller's response buffer
    Status local_error;    // the copy-in failed; the request was never posted
    CompDesc comp{};
    ReqTags tags;  // what the request was posted with: a reply may report no more lent
  };

  ClientCore() = default;
  // Caller holds mu_.
  void drain_locked();
  void flush_frees_locked();
  // Pushes a request descriptor, waiting for ring space. Unlocks `lock`
  // while it waits.
  Status push_request(std::unique_lock<std::mutex>& lock, uint32_t op, JobId id, uint64_t offset, uint64_t length,
                      ReqTags tags = {});
  Status push_locked(std::unique_lock<std::mutex>& lock, const SubDesc& d);
  // `keep`: the engine's reference to the request's block, dropped under the
  // lock together with the job's, so the block is back in the pool by the
  // time anyone can see the job gone.
  void copy_done(JobId id, Status st, std::shared_ptr<PoolBlock> keep = nullptr);
  void wake_waiters() noexcept;
  void fail_locked(Status why);
  Result<Reply> take_locked(std::unordered_map<uint64_t, Job>::iterator it);
  void wake_server();

  ClientOptions opts_;
  int sock_ = -1;
  int server_wake_fd_ = -1;
  uint64_t session_id_ = 0;
  bool kernel_copy_ = false;
  // The process that connected, and how far down the fork line it is: a
  // forked child shares the session's mappings and socket but must not use
  // them (sys/fork.h).
  pid_t owner_pid_ = 0;
  uint64_t fork_generation_ = 0;
  shm::Segment control_, cpool_, spool_;
  ControlBlock* cb_ = nullptr;
  std::vector<std::string> op_names_;
  Mover* cpu_ = nullptr;  // the shared cpu engine, looked up once at connect

  std::mutex mu_;
  shm::RingProducer<SubDesc> tx_;                // guarded by mu_
  shm::RingConsumer<CompDesc> rx_;               // guarded by mu_
  // The client pool's allocator has its own lock because blocks are freed by
  // PoolBlock destructors, which can run while mu_ is held (a job's request
  // released in drain_locked/take_locked). Lock order: mu_, then alloc_mu_.
  std::mutex alloc_mu_;
  shm::PoolAllocator alloc_{0};                  // guarded by alloc_mu_
  std::vector<uint64_t> pending_frees_;          // guarded by mu_
  std::unordered_map<uint64_t, Job> jobs_;       // guarded by mu_
  uint64_t next_job_ = 1;                        // guarded by mu_
  uint64_t outstanding_ = 0;                     // posted, completion not yet read; guarded by mu_
  Status failure_;                               // guarded by mu_
  std::atomic<bool> failed_{false};              // mirrors !failure_.ok() for lock-free checks

  std::vector<Mover*> async_movers_;             // guarded by mu_: engines holding our queued copy-ins
  std::unique_ptr<GpuHandleCache> gpu_replies_;  // guarded by mu_: GPU responses' handles, made on first use
  // Pools registered with an engine that needs it (the GPU): unregistered
  // before the mappings go.
  std::mutex registered_mu_;
  Mover* registered_with_ = nullptr;             // guarded by registered_mu_
  std::vector<std::byte*> registered_starts_;    // guarded by registered_mu_
  uint64_t registered_client_bytes_ = 0;         // guarded by registered_mu_
  Status ensure_registered(Mover* m);
  // The client pool grows on demand (ClientOptions::max_client_pool_bytes):
  // asks the server to let requests reach `bytes` into it, then faults the
  // new part in and hands it to the allocator. One at a time (grow_mu_).
  Status grow_pool(uint64_t bytes);
  std::mutex grow_mu_;
  uint64_t grow_seq_ = 0;           // guarded by grow_mu_
  uint64_t server_pool_start_ = 0;  // the server pool's part in use at connect
  std::atomic<uint64_t> pool_grows_{0};

  // Statistics; relaxed: reported only.
  std::atomic<uint64_t> requests_{0}, futex_sleeps_{0}, server_wakeups_{0};
};

PoolBlock::~PoolBlock() { core->free_block(offset); }

ReplyBlock::~ReplyBlock() {
  if (pool == PayloadPool::kServer) core->free_reply(offset);
}

Result<std::shared_ptr<ClientCore>> ClientCore::connect(const std::string& path, const ClientOptions& opts) {
  if (opts.tenant.empty() || opts.tenant.size() >= kTenantNameBytes) {
    return invalid_argument("tenant name must be 1..63 bytes");
  }
  ROCKET_ASSIGN_OR_RETURN(int fd, connect_unix(path));
  std::shared_ptr<ClientCore> core(new ClientCore());
  core->sock_ = fd;  // closed by ~ClientCore on every failure below
  core->opts_ = opts;
  core->owner_pid_ = ::getpid();
  core->fork_generation_ = fork_generation();

  // The kernel path: let the server (our peer) read our memory where Yama
  // restricts ptrace to ancestors, and give it a token to prove it can.
  uint64_t probe_token = 0;
  if (opts.allow_kernel_copy) {
    ucred peer{};
    socklen_t len = sizeof(peer);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 && peer.pid > 0) {
      ::prctl(PR_SET_PTRACER, static_cast<unsigned long>(peer.pid), 0, 0, 0);  // fails harmlessly without Yama
    }
    probe_token = (reinterpret_cast<uint64_t>(&probe_token) * 0x9e3779b97f4a7c15ULL) ^
                  static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^ 1;
  }
  Hello hello{};
  hello.magic = kProtocolMagic;
  hello.version = kProtocolVersion;
  set_fixed_string(hello.tenant, sizeof(hello.tenant), opts.tenant);
  hello.client_pool_bytes = opts.client_pool_bytes;
  hello.server_pool_bytes = opts.server_pool_bytes;
  hello.client_pool_max_bytes = opts.max_client_pool_bytes;
  hello.server_pool_max_bytes = opts.max_server_pool_bytes;
  hello.sub_ring_entries = opts.ring_entries;
  hello.comp_ring_entries = opts.ring_entries;
  hello.probe_addr = probe_token != 0 ? reinterpret_cast<uint64_t>(&probe_token) : 0;
  hello.probe_value = probe_token;
  // A server may refuse before it reads the hello (too many connections
  // waiting): then the send fails, and its reason is already here to read.
  const Status sent = send_message(fd, &hello, sizeof(hello), {});

  auto w = std::make_unique<Welcome>();
  std::vector<int> fds;
  auto n = recv_message(fd, w.get(), sizeof(Welcome), &fds, kHandshakeFds,
                        sent.ok() ? opts.connect_timeout : std::chrono::milliseconds(0));
  struct FdGuard {
    std::vector<int>& v;
    ~FdGuard() { close_all(v); }
  } guard{fds};
  if (!sent.ok() && (!n.ok() || *n < kWelcomeHeaderBytes || w->magic != kProtocolMagic || w->status_code == 0)) {
    return sent;
  }
  if (!n.ok()) return n.status();
  if (*n == 0) return unavailable("server closed the connection during the handshake");
  // Magic, version, status and message lead the reply in every protocol
  // version: a server of another version is named as such.
  if (*n < offsetof(Welcome, session_id) || w->magic != kProtocolMagic) {
    return data_loss("server sent a malformed handshake reply");
  }
  if (w->status_code != 0) {
    int32_t code = w->status_code;
    if (code < 0 || code > kMaxStatusCode) code = static_cast<int32_t>(StatusCode::kUnknown);
    std::string_view msg = fixed_string(w->message, sizeof(w->message));
    return Status(static_cast<StatusCode>(code), "server refused the session: " + std::string(msg));
  }
  if (w->version != kProtocolVersion) {
    return failed_precondition("server speaks protocol version " + std::to_string(w->version) + ", this client " +
                               std::to_string(kProtocolVersion));
  }
  if (*n < kWelcomeHeaderBytes) return data_loss("server sent a malformed handshake reply");
  if (fds.size() != kHandshakeFds) return data_loss("server sent " + std::to_string(fds.size()) + " descriptors, expected 4");
  if (w->op_count > kMaxOps || *n != kWelcomeHeaderBytes + w->op_count * sizeof(OpEntry)) {
    return data_loss("server's op table is malformed");
  }
  if (!shm::valid_ring_capacity(w->sub_ring_entries) || !shm::valid_ring_capacity(w->comp_ring_entries) ||
      w->sub_ring_entries > kMaxRingEntries || w->comp_ring_entries > kMaxRingEntries) {
    return data_loss("server sent invalid ring sizes");
  }
  constexpr uint64_t kMaxPool = uint64_t{1} << 40;
  for (auto [in_use, most] : {std::pair{w->client_pool_bytes, w->client_pool_max_bytes},
                              std::pair{w->server_pool_bytes, w->server_pool_max_bytes}}) {
    if (in_use == 0 || most > kMaxPool || in_use > most || in_use % 4096 != 0 || most % 4096 != 0) {
      return data_loss("server sent invalid pool sizes");
    }
  }
  for (uint32_t i = 0; i < w->op_count; ++i) {
    std::string_view name = fixed_string(w->ops[i].name, sizeof(w->ops[i].name));
    if (w->ops[i].id != i || name.empty()) return data_loss("server's op table is malformed");
    core->op_names_.emplace_back(name);
  }

  const auto pages = opts.huge_pages ? shm::HugePages::kAsk : shm::HugePages::kRefuse;
  shm::SegmentOptions rw{.prefault = opts.prefault, .lock = false, .writable = true};
  // The pools are mapped at their most, populated as far as they are in use.
  shm::SegmentOptions pool_rw{.prefault = opts.prefault,
                              .prefault_data_bytes = w->client_pool_bytes,
                              .lock = false,
                              .writable = true,
                              .huge_pages = pages};
  shm::SegmentOptions pool_ro{.prefault = opts.prefault,
                              .prefault_data_bytes = w->server_pool_bytes,
                              .lock = false,
                              .writable = false,
                              .huge_pages = pages};
  // attach() takes ownership of each descriptor, success or failure.
  int cfd = fds[kFdControl], cpfd = fds[kFdClientPool], spfd = fds[kFdServerPool];
  core->server_wake_fd_ = fds[kFdServerWake];
  fds.clear();
  auto control = shm::Segment::attach(cfd, shm::SegmentKind::kControl,
                                      control_data_bytes(w->sub_ring_entries, w->comp_ring_entries), rw);
  auto cpool = shm::Segment::attach(cpfd, shm::SegmentKind::kClientPool, w->client_pool_max_bytes, pool_rw);
  auto spool = shm::Segment::attach(spfd, shm::SegmentKind::kServerPool, w->server_pool_max_bytes, pool_ro);
  if (!control.ok()) return control.status();
  if (!cpool.ok()) return cpool.status();
  if (!spool.ok()) return spool.status();
  for (const shm::Segment* seg : {&*control, &*cpool, &*spool}) {
    if (seg->header().session_id != w->session_id) return data_loss("segment belongs to another session");
  }
  core->control_ = std::move(*control);
  core->cpool_ = std::move(*cpool);
  core->spool_ = std::move(*spool);
  core->session_id_ = w->session_id;
  core->kernel_copy_ = opts.allow_kernel_copy && (w->flags & kWelcomeKernelCopy) != 0;
  auto view = control_view(core->control_.data(), w->sub_ring_entries);
  core->cb_ = view.block;
  core->tx_ = shm::RingProducer<SubDesc>(&core->cb_->sub, view.sub_slots, w->sub_ring_entries);
  core->rx_ = shm::RingConsumer<CompDesc>(&core->cb_->comp, view.comp_slots, w->comp_ring_entries);
  core->alloc_ = shm::PoolAllocator(w->client_pool_bytes);
  core->server_pool_start_ = w->server_pool_bytes;
  ROCKET_ASSIGN_OR_RETURN(core->cpu_, shared_mover(MoverKind::kCpu));
  return core;
}

ClientCore::~ClientCore() {
  // In a forked child the engine is the parent's (sys/fork.h): leave it be.
  if (registered_with_ != nullptr && !in_forked_child()) {
    for (std::byte* p : registered_starts_) registered_with_->unregister_memory(p);
  }
  if (sock_ >= 0) ::close(sock_);
  if (server_wake_fd_ >= 0) ::close(server_wake_fd_);
}

Status ClientCore::owner_check() const {
  if (!in_forked_child()) return ok_status();
  return failed_precondition("this session was opened by process " + std::to_string(owner_pid_) +
                             " before it forked; a forked child must connect a session of its own");
}

void ClientCore::close() noexcept {
  // A forked child's copy: shutting the socket down would end the parent's
  // session too (the socket is shared, not copied). Its descriptors close
  // with this object.
  if (in_forked_child()) return;
  std::vector<Mover*> movers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (sock_ >= 0) ::shutdown(sock_, SHUT_RDWR);  // the server sees the hang-up
    fail_locked(failed_precondition("session closed"));
    movers = async_movers_;
  }
  // Queued copy-ins of this session will never be posted: drop them. Their
  // callbacks find no job and only release the pool block.
  for (Mover* m : movers) m->cancel(reinterpret_cast<uint64_t>(this));
}

void ClientCore::fail_locked(Status why) {
  if (!failure_.ok()) return;
  failure_ = std::move(why);
  // release: a thread that sees failed_ also sees failure_ once it takes mu_.
  failed_.store(true, std::memory_order_release);
  pending_frees_.clear();
  // No job can complete now. Dropping them also breaks the reference cycle
  // core -> job -> request block -> core.
  jobs_.clear();
  outstanding_ = 0;
}

Result<std::shared_ptr<PoolBlock>> ClientCore::alloc_block(size_t bytes) {
  // acquire: pairs with the release store in fail_locked(); re-checked under
  // mu_ when the request is posted.
  if (failed_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }
  if (bytes > cpool_.data_bytes()) {
    return invalid_argument("request of " + std::to_string(bytes) + " bytes exceeds the client pool's most of " +
                            std::to_string(cpool_.data_bytes()) +
                            " bytes; connect with ClientOptions::max_client_pool_bytes larger (at most the "
                            "server's ServerOptions::max_pool_bytes)");
  }
  uint64_t off;
  for (;;) {
    Status full;
    uint64_t grow_to = 0;
    {
      std::lock_guard<std::mutex> lock(alloc_mu_);
      auto r = alloc_.allocate(bytes);
      if (r.ok()) {
        off = *r;
        break;
      }
      full = r.status();
      grow_to = pool_growth_target(alloc_.capacity(), alloc_.capacity_for(bytes), cpool_.data_bytes());
      if (full.code() == StatusCode::kInvalidArgument) {
        // Larger than the part in use but within the most: no room now is
        // what stops it, not its size.
        full = resource_exhausted("the client pool has no room for a " + std::to_string(bytes) + "-byte request (" +
                                  std::to_string(alloc_.bytes_in_use()) + " of " + std::to_string(alloc_.capacity()) +
                                  " bytes held, most " + std::to_string(cpool_.data_bytes()) +
                                  "); free buffers and replies");
      }
    }
    // No room now. The pool grows while it may; past its most, requests of
    // dropped futures hold their blocks until their responses arrive, and no
    // caller can collect those: wait for them rather than fail. Space held by
    // the caller's own buffers and jobs is theirs.
    if (grow_to != 0) {
      Status grown = grow_pool(grow_to);
      if (grown.ok()) continue;
      if (grown.code() != StatusCode::kResourceExhausted) return grown;
      full = std::move(grown);  // the server's budget allows no more: says why
    }
    if (!reclaim_abandoned()) return full;
  }
  return std::make_shared<PoolBlock>(shared_from_this(), off, bytes);
}

Status ClientCore::grow_pool(uint64_t bytes) {
  std::lock_guard<std::mutex> grow(grow_mu_);
  uint64_t from;
  {
    std::lock_guard<std::mutex> lock(alloc_mu_);
    from = alloc_.capacity();
  }
  if (bytes <= from) return ok_status();  // another thread grew it meanwhile
  // acquire: pairs with the release store in fail_locked().
  if (failed_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }
  GrowRequest g{};
  g.magic = kGrowMagic;
  g.seq = ++grow_seq_;
  g.bytes = bytes;
  ROCKET_RETURN_IF_ERROR(send_message(sock_, &g, sizeof(g), {}));
  // The answer to this request; older ones (a request that timed out) are
  // passed over.
  GrowReply reply{};
  const auto deadline = std::chrono::steady_clock::now() + opts_.connect_timeout;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    ROCKET_ASSIGN_OR_RETURN(
        size_t n, recv_message(sock_, &reply, sizeof(reply), nullptr, 0, std::max(left, std::chrono::milliseconds(0))));
    if (n == 0) return unavailable("server closed the session while the client pool grew");
    if (n != sizeof(reply) || reply.magic != kGrowMagic || reply.seq > g.seq) {
      return data_loss("server sent a malformed answer to a request to grow the client pool");
    }
    if (reply.seq == g.seq) break;
  }
  if (reply.status_code != 0) {
    int32_t code = reply.status_code;
    if (code < 0 || code > kMaxStatusCode) code = static_cast<int32_t>(StatusCode::kUnknown);
    return Status(static_cast<StatusCode>(code), "server refused to grow the client pool: " +
                                                     std::string(fixed_string(reply.message, sizeof(reply.message))));
  }
  // At least what was asked; more where an earlier request, whose answer
  // came too late, was granted.
  if (reply.bytes < bytes || reply.bytes > cpool_.data_bytes() || reply.bytes % 4096 != 0) {
    return data_loss("server granted a client pool of " + std::to_string(reply.bytes) + " bytes, asked for " +
                     std::to_string(bytes));
  }
  bytes = reply.bytes;
  // Ours to fault in (charged to this process): the data path then takes no
  // first-touch faults, as for the pool's starting part.
  if (opts_.prefault) cpool_.populate(from, bytes - from, /*writable=*/true);
  // An engine that needs registered memory gets the new part before any
  // block can lie in it; ensure_registered() takes the same two locks in the
  // same order, so it registers either before the growth or all of it.
  std::lock_guard<std::mutex> reg(registered_mu_);
  if (registered_with_ != nullptr && registered_client_bytes_ < bytes) {
    std::byte* at = cpool_.data() + registered_client_bytes_;
    if (registered_with_->register_memory(at, bytes - registered_client_bytes_, false).ok()) {
      registered_starts_.push_back(at);
      registered_client_bytes_ = bytes;
    }
  }
  std::lock_guard<std::mutex> lock(alloc_mu_);
  alloc_.grow(bytes);
  pool_grows_.fetch_add(1, std::memory_order_relaxed);
  return ok_status();
}

bool ClientCore::reclaim_abandoned() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    drain_locked();  // frees the blocks of abandoned jobs whose responses are in
    if (!failure_.ok()) return false;
    const bool pending = std::any_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j.second.abandoned; });
    if (!pending) return false;
  }
  if (peer_hung_up(sock_)) return false;
  wake_server();
  std::this_thread::sleep_for(std::chrono::microseconds(20));
  return true;
}

void ClientCore::free_block(uint64_t offset) noexcept {
  std::lock_guard<std::mutex> lock(alloc_mu_);
  alloc_.free(offset).ignore_error();  // our own bookkeeping: cannot be forged
}

void ClientCore::free_reply(uint64_t offset) noexcept {
  if (in_forked_child()) return;  // the block is the parent's to free
  std::lock_guard<std::mutex> lock(mu_);
  if (!failure_.ok()) return;
  pending_frees_.push_back(offset);
  flush_frees_locked();
}

void ClientCore::flush_frees_locked() {
  size_t i = 0;
  for (; i < pending_frees_.size(); ++i) {
    SubDesc d{};
    d.kind = static_cast<uint16_t>(SubKind::kFreeReply);
    d.offset = pending_frees_[i];
    shm::RingResult r = tx_.try_push(d);
    if (r == shm::RingResult::kFull) break;
    if (r == shm::RingResult::kCorrupt) {
      fail_locked(data_loss("submission ring indices corrupted by the server"));
      return;
    }
  }
  // Frees are not urgent: they ride along until the server next wakes.
  pending_frees_.erase(pending_frees_.begin(), pending_frees_.begin() + static_cast<ptrdiff_t>(i));
}

Result<uint32_t> ClientCore::op_id(std::string_view op) const {
  for (size_t i = 0; i < op_names_.size(); ++i) {
    if (op_names_[i] == op) return static_cast<uint32_t>(i);
  }
  return not_found("server has no op '" + std::string(op) + "'");
}

void ClientCore::wake_server() {
  // seq_cst fence: pairs with the dispatcher's fence between setting
  // server_sleeping and re-checking the ring (Dekker): either it sees our
  // request or we see that it sleeps.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (cb_->server_sleeping.load(std::memory_order_relaxed) != 0) {
    uint64_t one = 1;
    ssize_t r = ::write(server_wake_fd_, &one, sizeof(one));
    (void)r;  // a full eventfd counter still wakes the server
    server_wakeups_.fetch_add(1, std::memory_order_relaxed);
  }
}

Status ClientCore::push_request(std::unique_lock<std::mutex>& lock, uint32_t op, JobId id, uint64_t offset,
                                uint64_t length, ReqTags tags) {
  SubDesc d{};
  d.kind = static_cast<uint16_t>(SubKind::kRequest);
  d.flags = tags.flags;
  d.op_id = op;
  d.job_id = id;
  d.offset = offset;
  d.length = length;
  d.reserved[2] = tags.lend_millicpus;
  d.reserved[3] = tags.lend_memory_bytes;
  return push_locked(lock, d);
}

Status ClientCore::push_locked(std::unique_lock<std::mutex>& lock, const SubDesc& d) {
  for (;;) {
    if (!failure_.ok()) return failure_;
    flush_frees_locked();
    shm::RingResult r = tx_.try_push(d);
    if (r == shm::RingResult::kOk) return ok_status();
    if (r == shm::RingResult::kCorrupt) {
      fail_locked(data_loss("submission ring indices corrupted by the server"));
      return failure_;
    }
    // Full: the server frees slots as it reads. Completions we drain free credits.
    drain_locked();
    lock.unlock();
    wake_server();
    bool hung_up = peer_hung_up(sock_);
    std::this_thread::yield();
    lock.lock();
    if (hung_up) fail_locked(unavailable("server closed the session"));
  }
}

Result<JobId> ClientCore::post(uint32_t op, std::shared_ptr<PoolBlock> block, uint64_t offset, uint64_t length,
                               bool wait_for_space, ReqTags tags) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!failure_.ok()) return failure_;
  while (outstanding_ >= rx_.capacity()) {
    if (!wait_for_space) {
      return unavailable(std::to_string(outstanding_) + " jobs in flight fill the completion ring; query some first");
    }
    drain_locked();
    if (outstanding_ < rx_.capacity()) break;
    lock.unlock();
    bool hung_up = peer_hung_up(sock_);
    std::this_thread::yield();
    lock.lock();
    if (hung_up) fail_locked(unavailable("server closed the session"));
    if (!failure_.ok()) return failure_;
  }
  const JobId id = next_job_++;
  ROCKET_RETURN_IF_ERROR(push_request(lock, op, id, offset, length, tags));
  ++outstanding_;
  jobs_.emplace(id, Job{std::move(block), offset, length, false, false, false, op, 0, {}, {}, tags});
  lock.unlock();
  requests_.fetch_add(1, std::memory_order_relaxed);
  wake_server();
  return id;
}

Result<JobId> ClientCore::post_remote(uint32_t op, std::span<const std::byte> request, std::span<std::byte> response,
                                      ReqTags tags) {
  if (!kernel_copy_) {
    return failed_precondition("the kernel mover needs a session with the kernel copy path "
                               "(ClientOptions::allow_kernel_copy, and ptrace access for the server)");
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (!failure_.ok()) return failure_;
  if (outstanding_ >= rx_.capacity()) return unavailable("completion ring is full; query some jobs first");
  const JobId id = next_job_++;
  SubDesc d{};
  d.kind = static_cast<uint16_t>(SubKind::kRequest);
  d.flags =
      static_cast<uint16_t>(kSubRemoteRequest | (response.data() != nullptr ? kSubRemoteResponse : 0) | tags.flags);
  d.op_id = op;
  d.job_id = id;
  d.offset = reinterpret_cast<uint64_t>(request.data());
  d.length = request.size();
  d.reserved[0] = reinterpret_cast<uint64_t>(response.data());
  d.reserved[1] = response.size();
  d.reserved[2] = tags.lend_millicpus;
  d.reserved[3] = tags.lend_memory_bytes;
  ROCKET_RETURN_IF_ERROR(push_locked(lock, d));
  ++outstanding_;
  Job job{};
  job.op = op;
  job.remote_capacity = response.data() != nullptr ? response.size() : 0;
  job.tags = tags;
  job.tags.flags = d.flags;
  jobs_.emplace(id, std::move(job));
  lock.unlock();
  requests_.fetch_add(1, std::memory_order_relaxed);
  wake_server();
  return id;
}

Result<std::vector<JobId>> ClientCore::submit_batch(uint32_t op, std::span<const std::span<const std::byte>> requests,
                                                    const Policy& policy, ReqTags tags) {
  size_t total = 0;
  for (auto r : requests) total += r.size();
  // Blocks first: if the pool cannot hold the batch, nothing was copied.
  std::vector<std::shared_ptr<PoolBlock>> blocks;
  blocks.reserve(requests.size());
  std::vector<CopyOp> ops;
  for (auto r : requests) {
    if (r.empty()) {
      blocks.emplace_back();
      continue;
    }
    ROCKET_ASSIGN_OR_RETURN(auto b, alloc_block(r.size()));
    ops.push_back({client_data() + b->offset, r.data(), r.size()});
    blocks.push_back(std::move(b));
  }
  if (!ops.empty()) {
    ROCKET_ASSIGN_OR_RETURN(MoverChoice c,
                            choose_mover(policy.mover, ops[0].src, ops[0].dst, total, policy.cache, /*async=*/false));
    ROCKET_RETURN_IF_ERROR(run_copy(c, ops, total));
  }
  std::vector<JobId> ids;
  ids.reserve(requests.size());
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!failure_.ok()) return failure_;
    if (outstanding_ + requests.size() > rx_.capacity()) {
      return unavailable("a batch of " + std::to_string(requests.size()) + " with " + std::to_string(outstanding_) +
                         " jobs in flight would overfill the completion ring; query some first");
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      const JobId id = next_job_++;
      uint64_t off = blocks[i] ? blocks[i]->offset : 0;
      // push_request may wait for ring space; it never fails half-way except
      // when the session fails, and then every job is dropped anyway.
      ROCKET_RETURN_IF_ERROR(push_request(lock, op, id, off, requests[i].size(), tags));
      ++outstanding_;
      jobs_.emplace(id, Job{std::move(blocks[i]), off, requests[i].size(), false, false, false, op, 0, {}, {}, tags});
      ids.push_back(id);
    }
  }
  requests_.fetch_add(requests.size(), std::memory_order_relaxed);
  wake_server();  // once for the whole batch
  return ids;
}

Result<JobId> ClientCore::submit_copy(uint32_t op, std::span<const std::byte> bytes, const Policy& policy,
                                      ReqTags tags) {
  if (bytes.empty()) return post(op, nullptr, 0, 0, /*wait_for_space=*/false, tags);
  ROCKET_ASSIGN_OR_RETURN(auto block, alloc_block(bytes.size()));
  CopyOp cop{client_data() + block->offset, bytes.data(), bytes.size()};
  ROCKET_ASSIGN_OR_RETURN(MoverChoice c,
                          choose_mover(policy.mover, cop.src, cop.dst, bytes.size(), policy.cache, /*async=*/true));
  Mover* m = c.mover;
  if (!m->capabilities().async) {
    ROCKET_RETURN_IF_ERROR(run_copy(c, {&cop, 1}, bytes.size()));
    const uint64_t off = block->offset;
    return post(op, std::move(block), off, bytes.size(), /*wait_for_space=*/false, tags);
  }
  JobId id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.ok()) return failure_;
    if (outstanding_ >= rx_.capacity()) {
      return unavailable(std::to_string(outstanding_) + " jobs in flight fill the completion ring; query some first");
    }
    id = next_job_++;
    ++outstanding_;  // the credit is taken now so the post can never be refused
    jobs_.emplace(id, Job{block, block->offset, bytes.size(), false, false, true, op, 0, {}, {}, tags});
    if (std::find(async_movers_.begin(), async_movers_.end(), m) == async_movers_.end()) async_movers_.push_back(m);
  }
  // The callback keeps the block (and so the core and its mappings) alive
  // until the copy is over, whatever happens to the job meanwhile.
  auto self = shared_from_this();
  // A learned choice is timed from submission to completion for the log,
  // and counts as in flight for the features of other copies meanwhile.
  std::shared_ptr<skyrocket::InFlight> inflight;
  if (c.learned) inflight = std::make_shared<skyrocket::InFlight>(bytes.size());
  SubmitOptions so{.cache = c.cache,
                   .owner = reinterpret_cast<uint64_t>(this),
                   .on_done = [self, block, id, inflight, c, t0 = Clock::now()](Status st) mutable {
                     if (inflight && st.ok()) {
                       skyrocket::log_decision(c.features, {c.mover->kind(), c.cache},
                                               std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
                     }
                     inflight.reset();
                     self->copy_done(id, std::move(st), std::move(block));
                   }};
  auto t = m->submit({&cop, 1}, so);
  if (!t.ok()) {
    copy_done(id, t.status());
    return id;  // the job reports the failure through query()/get()
  }
  return id;
}

void ClientCore::copy_done(JobId id, Status st, std::shared_ptr<PoolBlock> keep) {
  std::unique_lock<std::mutex> lock(mu_);
  keep.reset();  // the job holds the block while it lives (lock order: mu_, then alloc_mu_)
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;  // the session failed meanwhile
  Job& job = it->second;
  job.copying = false;
  if (st.ok() && job.abandoned) st = cancelled("abandoned before the copy finished");
  if (st.ok()) {
    Status pushed = push_request(lock, job.op, id, job.req_offset, job.req_length, job.tags);
    if (pushed.ok()) {
      lock.unlock();
      requests_.fetch_add(1, std::memory_order_relaxed);
      wake_server();
      return;
    }
    st = pushed;
    it = jobs_.find(id);  // push_request may have dropped the lock
    if (it == jobs_.end()) return;
  }
  --outstanding_;
  if (it->second.abandoned) {
    jobs_.erase(it);
  } else {
    it->second.done = true;
    it->second.local_error = std::move(st);
  }
  lock.unlock();
  wake_waiters();
}

void ClientCore::wake_waiters() noexcept {
  // Waiters sleep on comp_futex; a local completion wakes them the same way
  // the server does.
  cb_->comp_futex.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (cb_->client_waiters.load(std::memory_order_relaxed) != 0) futex_wake_all(&cb_->comp_futex);
}

void ClientCore::drain_locked() {
  CompDesc c;
  for (;;) {
    shm::RingResult r = rx_.try_pop(&c);
    if (r == shm::RingResult::kEmpty) return;
    if (r == shm::RingResult::kCorrupt) {
      fail_locked(data_loss("completion ring indices corrupted by the server"));
      return;
    }
    // Validate everything the server sent before acting on it.
    auto it = jobs_.find(c.job_id);
    bool valid = it != jobs_.end() && !it->second.done && c.status >= 0 && c.status <= kMaxStatusCode &&
                 (c.flags & ~(kCompWrittenRemote | kCompGpuResponse)) == 0 &&
                 c.reserved[0] <= it->second.tags.lend_millicpus &&  // lent, at most what it asked to
                 c.reserved[1] <= it->second.tags.lend_memory_bytes;
    // A GPU response: one reference in the server pool, and only for a
    // request that accepts one.
    if (valid && (c.flags & kCompGpuResponse) != 0) {
      valid = c.status == 0 && static_cast<PayloadPool>(c.pool) == PayloadPool::kServer && c.length == sizeof(GpuRef) &&
              (it->second.tags.flags & kSubAcceptGpuResponse) != 0;
    }
    if (valid) {
      switch (static_cast<PayloadPool>(c.pool)) {
        case PayloadPool::kNone:
          // Only a kernel-path response carries a length without a pool.
          valid = c.length == 0 || ((c.flags & kCompWrittenRemote) != 0 && c.length <= it->second.remote_capacity);
          break;
        case PayloadPool::kServer:
          valid = c.offset <= spool_.data_bytes() && c.length <= spool_.data_bytes() - c.offset;
          break;
        case PayloadPool::kClient:
          valid = c.status == 0 && c.offset >= it->second.req_offset &&
                  c.offset - it->second.req_offset <= it->second.req_length &&
                  c.length <= it->second.req_length - (c.offset - it->second.req_offset);
          break;
        default:
          valid = false;
      }
    }
    if (!valid) {
      fail_locked(data_loss("server sent an invalid completion (job " + std::to_string(c.job_id) + ")"));
      return;
    }
    --outstanding_;
    if (it->second.abandoned) {
      if (static_cast<PayloadPool>(c.pool) == PayloadPool::kServer) pending_frees_.push_back(c.offset);
      jobs_.erase(it);
      continue;
    }
    it->second.done = true;
    it->second.comp = c;
  }
}

Result<Reply> ClientCore::take_locked(std::unordered_map<uint64_t, Job>::iterator it) {
  Job job = std::move(it->second);
  jobs_.erase(it);
  if (!job.local_error.ok()) return job.local_error;
  const CompDesc& c = job.comp;
  auto pool = static_cast<PayloadPool>(c.pool);
  if (c.status != 0) {
    std::string msg;
    if (pool == PayloadPool::kServer) {
      msg.assign(reinterpret_cast<const char*>(spool_.data() + c.offset),
                 std::min<uint64_t>(c.length, kMaxErrorMessage));
      pending_frees_.push_back(c.offset);
      flush_frees_locked();
    }
    return Status(static_cast<StatusCode>(c.status), msg.empty() ? "request failed on the server" : msg);
  }
  auto rb = std::make_shared<ReplyBlock>();
  rb->core = shared_from_this();
  rb->pool = pool;
  rb->offset = c.offset;
  rb->length = c.length;
  rb->service_ns = c.service_ns;
  rb->lent_millicpus = static_cast<uint32_t>(c.reserved[0]);  // checked against the request in drain_locked
  rb->lent_memory_bytes = c.reserved[1];
  if (pool == PayloadPool::kClient) rb->request = std::move(job.request);
  if ((c.flags & kCompGpuResponse) != 0) {
    // The block holds the reference; it is freed (and the server lets go of
    // its memory) when the Reply goes, or now if the reference is bad.
    GpuRef ref;
    std::memcpy(&ref, spool_.data() + c.offset, sizeof(ref));  // once: the server could rewrite it
    if (!gpu_replies_) gpu_replies_ = std::make_unique<GpuHandleCache>();
    auto view = gpu_replies_->resolve(ref, "GPU response");
    if (!view.ok()) {
      rb->pool = PayloadPool::kNone;
      pending_frees_.push_back(c.offset);
      flush_frees_locked();
      return view.status();
    }
    rb->gpu = std::move(*view);
  }
  return Reply(std::move(rb));
}

Result<Reply> ClientCore::wait_job(JobId id, std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  const auto deadline = timeout.count() > 0 ? start + timeout : Clock::time_point::max();
  const auto spin_until = start + opts_.spin;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = jobs_.find(id);
      if (it != jobs_.end() && !it->second.done) {
        drain_locked();
        it = jobs_.find(id);  // a failure while draining drops every job
      }
      if (it == jobs_.end()) {
        if (!failure_.ok()) return failure_;
        return not_found("no job " + std::to_string(id) + " in this session");
      }
      if (it->second.done) return take_locked(it);
    }
    auto now = Clock::now();
    if (now >= deadline) return deadline_exceeded("no response to job " + std::to_string(id) + " in time");
    if (now < spin_until) {
      cpu_relax();
      continue;
    }
    // Sleep: advertise, then re-check so a completion posted before the server
    // could see us is not missed.
    cb_->client_waiters.fetch_add(1, std::memory_order_relaxed);
    // seq_cst fence: pairs with the server's fence between pushing a
    // completion and reading client_waiters.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint32_t seen = cb_->comp_futex.load(std::memory_order_relaxed);
    bool ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drain_locked();
      auto it = jobs_.find(id);
      ready = it == jobs_.end() || it->second.done || !failure_.ok();
    }
    if (!ready) {
      auto slice = std::min<Clock::duration>(kLivenessSlice, deadline - Clock::now());
      futex_sleeps_.fetch_add(1, std::memory_order_relaxed);
      futex_wait(&cb_->comp_futex, seen, std::chrono::duration_cast<std::chrono::nanoseconds>(slice));
    }
    cb_->client_waiters.fetch_sub(1, std::memory_order_relaxed);
    if (!ready && cb_->comp_futex.load(std::memory_order_relaxed) == seen && peer_hung_up(sock_)) {
      std::lock_guard<std::mutex> lock(mu_);
      drain_locked();  // a completion may have landed just before the server died
      auto it = jobs_.find(id);
      if (it != jobs_.end() && it->second.done) return take_locked(it);
      fail_locked(unavailable("server closed the session"));
      return failure_;
    }
  }
}

bool ClientCore::job_done(JobId id) {
  if (in_forked_child()) return true;  // get() says why; the completions are the parent's
  std::lock_guard<std::mutex> lock(mu_);
  drain_locked();
  auto it = jobs_.find(id);
  return it == jobs_.end() || it->second.done || !failure_.ok();
}

void ClientCore::abandon(JobId id) noexcept {
  if (in_forked_child()) return;
  std::unique_lock<std::mutex> lock(mu_);
  drain_locked();  // responses already in: their jobs (this one too) free their blocks now
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  // The caller's bytes may be freed once we return: let a running copy-in
  // finish first (what std::future from std::async does, too).
  while (it->second.copying) {
    it->second.abandoned = true;
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    lock.lock();
    it = jobs_.find(id);
    if (it == jobs_.end()) return;
  }
  if (it->second.done) {
    if (static_cast<PayloadPool>(it->second.comp.pool) == PayloadPool::kServer && failure_.ok()) {
      pending_frees_.push_back(it->second.comp.offset);
      flush_frees_locked();
    }
    jobs_.erase(it);
  } else {
    it->second.abandoned = true;
  }
}

Status ClientCore::ensure_registered(Mover* m) {
  if (!m->capabilities().needs_registered_memory) return ok_status();
  std::lock_guard<std::mutex> lock(registered_mu_);
  if (registered_with_ == m) return ok_status();
  if (registered_with_ != nullptr) return failed_precondition("session pools are registered with another engine");
  // Both pools as far as they are in use (registering pins pages; a pool's
  // most would be pinned whole): the GPU reads requests from the client pool
  // and response payloads from the (read-only here) server pool. The client
  // pool's growth is registered as it comes (grow_pool); responses in a part
  // of the server pool it grew into after this are copied by the CPU.
  uint64_t client_bytes;
  {
    std::lock_guard<std::mutex> alloc_lock(alloc_mu_);
    client_bytes = alloc_.capacity();
  }
  ROCKET_RETURN_IF_ERROR(m->register_memory(cpool_.data(), client_bytes, false));
  Status s = m->register_memory(spool_.data(), server_pool_start_, true);
  if (!s.ok()) {
    m->unregister_memory(cpool_.data());
    return s;
  }
  registered_starts_ = {cpool_.data(), spool_.data()};
  registered_client_bytes_ = client_bytes;
  registered_with_ = m;
  return ok_status();
}

Result<Mover*> ClientCore::mover(MoverKind kind) {
  if (kind == MoverKind::kAuto) kind = opts_.default_mover;
  if (kind == MoverKind::kAuto) kind = MoverKind::kCpu;
  ROCKET_ASSIGN_OR_RETURN(Mover * m, shared_mover(kind));
  ROCKET_RETURN_IF_ERROR(ensure_registered(m));
  return m;
}

Result<ClientCore::MoverChoice> ClientCore::choose_mover(MoverKind kind, const void* src, const void* dst, size_t bytes,
                                                         Cache cache, bool async) {
  if (kind == MoverKind::kCpu) return fixed_choice(cpu_, cache);
  if (kind != MoverKind::kAuto) {
    ROCKET_ASSIGN_OR_RETURN(Mover * m, mover(kind));
    return fixed_choice(m, cache);
  }
  if (opts_.default_mover != MoverKind::kAuto) {
    ROCKET_ASSIGN_OR_RETURN(Mover * m, mover(opts_.default_mover));
    return fixed_choice(m, cache);
  }
  if (bytes <= kInlineCopyBytes) return fixed_choice(cpu_, cache);
  if (skyrocket::ensure_default_model()) {
    const skyrocket::Features f = skyrocket::observe(src, dst, bytes);
    // The model predicts copy times, not whether a hand-off pays: small
    // asynchronous copies stay with the engines that copy inline.
    if (auto d = skyrocket::decide(f, async && bytes >= kAsyncCopyThreshold, cache)) {
      auto m = mover(d->config.mover);  // registers the pools with the engine
      if (m.ok()) return MoverChoice{*m, cache == Cache::kAuto ? d->config.cache : cache, true, f};
    }
  }
  // Handing a small copy to another thread costs more than it overlaps.
  if (async && bytes >= kAsyncCopyThreshold) {
    ROCKET_ASSIGN_OR_RETURN(Mover * m, shared_mover(MoverKind::kThreads));
    return fixed_choice(m, cache);
  }
  Mover* best = nullptr;
  double best_us = 0;
  for (MoverKind k : {MoverKind::kCpu, MoverKind::kCpuStream, MoverKind::kThreads}) {
    auto m = shared_mover(k);
    if (!m.ok()) continue;
    // A synchronous copy (execute) may run on the caller and workers at once.
    double us = (async ? (*m)->cost(cache) : (*m)->execute_cost(cache)).predict_us(bytes);
    if (best == nullptr || us < best_us) {
      best = *m;
      best_us = us;
    }
  }
  if (best == nullptr) return unavailable("no usable data mover");
  return fixed_choice(best, cache);
}

Status ClientCore::run_copy(const MoverChoice& c, std::span<const CopyOp> ops, size_t bytes) {
  if (!c.learned) return c.mover->execute(ops, c.cache);
  skyrocket::InFlight inflight(bytes);
  const auto t0 = Clock::now();
  Status st = c.mover->execute(ops, c.cache);
  if (st.ok()) {
    skyrocket::log_decision(c.features, {c.mover->kind(), c.cache},
                            std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return st;
}

Result<std::shared_ptr<PoolBlock>> ClientCore::copy_in(std::span<const std::byte> bytes, const Policy& policy) {
  if (bytes.empty()) return std::shared_ptr<PoolBlock>();
  ROCKET_ASSIGN_OR_RETURN(auto block, alloc_block(bytes.size()));
  CopyOp op{client_data() + block->offset, bytes.data(), bytes.size()};
  ROCKET_ASSIGN_OR_RETURN(MoverChoice c, choose_mover(policy.mover, op.src, op.dst, bytes.size(), policy.cache, false));
  ROCKET_RETURN_IF_ERROR(run_copy(c, {&op, 1}, bytes.size()));
  return block;
}

ClientStats ClientCore::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  ClientStats s;
  s.requests = requests_.load(std::memory_order_relaxed);
  s.inflight = outstanding_;
  s.futex_sleeps = futex_sleeps_.load(std::memory_order_relaxed);
  s.server_wakeups = server_wakeups_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> alloc_lock(alloc_mu_);
  s.client_pool_bytes = alloc_.capacity();
  s.client_pool_in_use = alloc_.bytes_in_use();
  s.client_pool_max_bytes = cpool_.data_bytes();
  s.server_pool_max_bytes = spool_.data_bytes();
  s.client_pool_grows = pool_grows_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace detail

// --- Buffer, Reply, Future --------------------------------------------------------

std::byte* Buffer::data() const noexcept {
  return block_ ? block_->core->client_data() + block_->offset : nullptr;
}
size_t Buffer::size() const noexcept { return block_ ? block_->size : 0; }

std::span<const std::byte> Reply::data() const noexcept {
  if (!block_ || block_->gpu.data != nullptr) return {};  // a GPU response's block holds only the reference
  switch (block_->pool) {
    case detail::PayloadPool::kServer:
      return {block_->core->server_data() + block_->offset, block_->length};
    case detail::PayloadPool::kClient:
      return {block_->core->client_data() + block_->offset, block_->length};
    default:
      return {};
  }
}

bool Reply::on_gpu() const noexcept { return block_ && block_->gpu.data != nullptr; }
const void* Reply::gpu_data() const noexcept { return block_ ? block_->gpu.data : nullptr; }
size_t Reply::gpu_size() const noexcept { return block_ ? block_->gpu.size : 0; }

std::chrono::nanoseconds Reply::service_time() const noexcept {
  return std::chrono::nanoseconds(block_ ? block_->service_ns : 0);
}

uint32_t Reply::lent_millicpus() const noexcept { return block_ ? block_->lent_millicpus : 0; }
uint64_t Reply::lent_memory_bytes() const noexcept { return block_ ? block_->lent_memory_bytes : 0; }

Status Reply::copy_to(std::span<std::byte> dst, const CopyOptions& options) const {
  if (on_gpu()) {
    if (dst.size() < gpu_size()) {
      return invalid_argument("destination holds " + std::to_string(dst.size()) + " bytes, reply has " +
                              std::to_string(gpu_size()));
    }
    if (gpu_size() == 0) return ok_status();
    ROCKET_ASSIGN_OR_RETURN(Mover * gpu, shared_mover(MoverKind::kCuda));
    CopyOp op{dst.data(), static_cast<const std::byte*>(gpu_data()), gpu_size()};
    return gpu->execute({&op, 1}, Cache::kAuto);
  }
  auto src = data();
  if (dst.size() < src.size()) {
    return invalid_argument("destination holds " + std::to_string(dst.size()) + " bytes, reply has " +
                            std::to_string(src.size()));
  }
  if (src.empty()) return ok_status();
  // The same choice as the copy-in: kAuto asks the learned policy or the cost model.
  ROCKET_ASSIGN_OR_RETURN(
      auto c, block_->core->choose_mover(options.mover, src.data(), dst.data(), src.size(), options.cache, false));
  CopyOp op{dst.data(), src.data(), src.size()};
  return detail::ClientCore::run_copy(c, {&op, 1}, src.size());
}

Result<std::vector<std::byte>> Reply::to_vector() const {
  if (on_gpu()) {
    std::vector<std::byte> v(gpu_size());
    ROCKET_RETURN_IF_ERROR(copy_to(v));
    return v;
  }
  auto d = data();
  return std::vector<std::byte>(d.begin(), d.end());
}

Result<Reply> Future::get(std::chrono::milliseconds timeout) {
  if (!early_.ok()) return early_;
  if (!core_) return failed_precondition("future has no job (default-constructed or already consumed)");
  ROCKET_RETURN_IF_ERROR(core_->owner_check());
  auto core = std::move(core_);
  auto r = core->wait_job(id_, timeout);
  if (!r.ok() && r.status().code() == StatusCode::kDeadlineExceeded) core_ = std::move(core);  // may retry
  return r;
}

Future& Future::operator=(Future&& other) noexcept {
  if (this != &other) {
    if (core_) core_->abandon(id_);
    core_ = std::move(other.core_);
    id_ = other.id_;
    early_ = std::move(other.early_);
  }
  return *this;
}

Future::~Future() {
  if (core_) core_->abandon(id_);
}

bool Future::ready() const { return !early_.ok() || !core_ || core_->job_done(id_); }

// --- Client ----------------------------------------------------------------------

Result<Client> Client::connect(std::string_view socket_path, const ClientOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(auto core, detail::ClientCore::connect(std::string(socket_path), options));
  return Client(std::move(core));
}

Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() {
  if (core_) core_->close();
}

Result<Buffer> Client::alloc(size_t bytes) {
  if (bytes == 0) return invalid_argument("alloc of zero bytes");
  ROCKET_RETURN_IF_ERROR(core_->owner_check());
  ROCKET_ASSIGN_OR_RETURN(auto block, core_->alloc_block(bytes));
  return Buffer(std::move(block));
}

namespace {
detail::ReqTags tags_of(const CallOptions& o, uint16_t flags = 0) {
  return {static_cast<uint16_t>(flags | (o.gpu_response ? detail::kSubAcceptGpuResponse : 0)), o.policy.lend_millicpus,
          o.policy.lend_memory_bytes};
}

// The op's id, once the options are valid.
Result<uint32_t> op_for(const detail::ClientCore& core, std::string_view op, const CallOptions& o) {
  ROCKET_RETURN_IF_ERROR(core.owner_check());
  if (o.policy.lend_millicpus > kMaxLendMillicpus) {
    return invalid_argument("a call lends at most " + std::to_string(kMaxLendMillicpus) + " millicpus, not " +
                            std::to_string(o.policy.lend_millicpus));
  }
  if (o.policy.lend_memory_bytes > kMaxLendMemoryBytes) {
    return invalid_argument("a call lends at most " + std::to_string(kMaxLendMemoryBytes) + " bytes of memory, not " +
                            std::to_string(o.policy.lend_memory_bytes));
  }
  return core.op_id(op);
}
}  // namespace

Result<JobId> Client::submit(std::string_view op, const Buffer& request, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  if (request.block_ && request.block_->core != core_) {
    return invalid_argument("buffer belongs to another session");
  }
  uint64_t off = request.block_ ? request.block_->offset : 0;
  return core_->post(id, request.block_, off, request.size(), /*wait_for_space=*/false, tags_of(options));
}

Result<JobId> Client::submit(std::string_view op, std::span<const std::byte> request, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  // The copy-in is complete when submit() returns (it may still run on
  // several engine threads): a job id owns nothing that could wait for it.
  ROCKET_ASSIGN_OR_RETURN(auto block, core_->copy_in(request, options.policy));
  uint64_t off = block ? block->offset : 0;
  return core_->post(id, std::move(block), off, request.size(), /*wait_for_space=*/false, tags_of(options));
}

Result<Reply> Client::call(std::string_view op, const Buffer& request, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  if (request.block_ && request.block_->core != core_) {
    return invalid_argument("buffer belongs to another session");
  }
  uint64_t off = request.block_ ? request.block_->offset : 0;
  ROCKET_ASSIGN_OR_RETURN(JobId job, core_->post(id, request.block_, off, request.size(), true, tags_of(options)));
  return core_->wait_job(job, options.timeout);
}

Result<Reply> Client::call(std::string_view op, std::span<const std::byte> request, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  if (options.policy.mover == MoverKind::kKernel) {
    // The server reads the request from our memory; the reply comes back in
    // the server pool as usual.
    ROCKET_ASSIGN_OR_RETURN(JobId job, core_->post_remote(id, request, {}, tags_of(options)));
    return core_->wait_job(job, options.timeout);
  }
  ROCKET_ASSIGN_OR_RETURN(auto block, core_->copy_in(request, options.policy));
  uint64_t off = block ? block->offset : 0;
  ROCKET_ASSIGN_OR_RETURN(JobId job, core_->post(id, std::move(block), off, request.size(), true, tags_of(options)));
  return core_->wait_job(job, options.timeout);
}

Result<Reply> Client::call_gpu(std::string_view op, const void* device_ptr, size_t bytes, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  ROCKET_ASSIGN_OR_RETURN(detail::GpuRef ref, detail::make_gpu_ref(device_ptr, bytes, "call_gpu"));
  ROCKET_ASSIGN_OR_RETURN(auto block, core_->alloc_block(sizeof(ref)));
  std::memcpy(core_->client_data() + block->offset, &ref, sizeof(ref));
  const uint64_t off = block->offset;
  ROCKET_ASSIGN_OR_RETURN(
      JobId job, core_->post(id, std::move(block), off, sizeof(ref), true, tags_of(options, detail::kSubGpuRequest)));
  return core_->wait_job(job, options.timeout);
}

Result<size_t> Client::call_into(std::string_view op, std::span<const std::byte> request,
                                 std::span<std::byte> response, const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  if (options.policy.mover == MoverKind::kKernel) {
    // A zero-capacity span still names a destination for the server.
    static std::byte empty_response;
    std::span<std::byte> dst = response.data() != nullptr ? response : std::span<std::byte>(&empty_response, 0);
    ROCKET_ASSIGN_OR_RETURN(JobId job, core_->post_remote(id, request, dst, tags_of(options)));
    ROCKET_ASSIGN_OR_RETURN(Reply r, core_->wait_job(job, options.timeout));
    return detail::ClientCore::written_length(r);
  }
  ROCKET_ASSIGN_OR_RETURN(Reply r, call(op, request, options));
  if (r.size() > response.size()) {
    return Status(StatusCode::kOutOfRange, "response of " + std::to_string(r.size()) + " bytes does not fit the " +
                                               std::to_string(response.size()) + "-byte buffer");
  }
  ROCKET_RETURN_IF_ERROR(r.copy_to(response, {.mover = options.policy.mover, .cache = options.policy.cache}));
  return r.size();
}

bool Client::kernel_copy() const noexcept { return core_->kernel_copy(); }

Future Client::call_async(std::string_view op, std::span<const std::byte> request, const CallOptions& options) {
  auto id = op_for(*core_, op, options);
  if (!id.ok()) return Future(nullptr, 0, id.status());
  auto job = core_->submit_copy(*id, request, options.policy, tags_of(options));
  if (!job.ok()) return Future(nullptr, 0, job.status());
  return Future(core_, *job, ok_status());
}

Result<std::vector<JobId>> Client::submit_batch(std::string_view op,
                                                std::span<const std::span<const std::byte>> requests,
                                                const CallOptions& options) {
  ROCKET_ASSIGN_OR_RETURN(uint32_t id, op_for(*core_, op, options));
  return core_->submit_batch(id, requests, options.policy, tags_of(options));
}

Result<Reply> Client::query(JobId id, std::chrono::milliseconds timeout) {
  ROCKET_RETURN_IF_ERROR(core_->owner_check());
  return core_->wait_job(id, timeout);
}

std::vector<std::string> Client::ops() const { return core_->ops(); }
uint64_t Client::session_id() const noexcept { return core_->session_id(); }
ClientStats Client::stats() const { return core_->stats(); }
void Client::close() noexcept {
  if (core_) core_->close();
}

}  // namespace rocket
