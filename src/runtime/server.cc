#include "rocket/runtime/server.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bitset>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <iterator>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <utility>

#include "mover/kernel_copy.h"
#include "pocket/amplifier.h"
#include "pocket/cgroup.h"
#include "rocket/mover/mover.h"
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

struct OpSpec {
  std::string name;
  Handler shared;
  std::function<Handler()> factory;
  OpOptions options;
};

// Statistics; relaxed: counters read for reporting, no ordering needed.
struct ServerCounters {
  std::atomic<uint64_t> sessions_open{0}, sessions_total{0}, sessions_refused{0};
  std::atomic<uint64_t> requests{0}, request_errors{0}, protocol_errors{0}, bytes_mapped{0};
  std::atomic<uint64_t> gpu_handles_opened{0}, gpu_responses_shared{0}, gpu_responses_copied{0};
  std::atomic<uint64_t> requests_helped{0};
  std::atomic<uint64_t> lends{0}, lends_refused{0}, memory_lent_bytes{0};
  std::atomic<uint64_t> pool_grows{0};
  // The most all sessions' segments may take (set by start(), before any
  // session); bytes_mapped is what they take now. Sessions' setup and their
  // pools' growth reserve against it, possibly on several threads at once.
  uint64_t mapped_budget = 0;
  bool reserve_mapped(uint64_t bytes) {
    uint64_t now = bytes_mapped.load(std::memory_order_relaxed);
    do {
      if (bytes > mapped_budget || now > mapped_budget - bytes) return false;
    } while (!bytes_mapped.compare_exchange_weak(now, now + bytes, std::memory_order_relaxed));
    return true;
  }

  // Open sessions per uid (ServerOptions::max_sessions_per_uid). The acceptor
  // adds, sessions take away as they end, on their dispatchers.
  uint32_t sessions_of(uid_t uid) {
    std::lock_guard<std::mutex> lock(uid_mu);
    auto it = sessions_by_uid.find(uid);
    return it == sessions_by_uid.end() ? 0 : it->second;
  }
  void add_session_of(uid_t uid) {
    std::lock_guard<std::mutex> lock(uid_mu);
    ++sessions_by_uid[uid];
  }
  void drop_session_of(uid_t uid) {
    std::lock_guard<std::mutex> lock(uid_mu);
    auto it = sessions_by_uid.find(uid);
    if (it != sessions_by_uid.end() && --it->second == 0) sessions_by_uid.erase(it);
  }

 private:
  std::mutex uid_mu;
  std::unordered_map<uid_t, uint32_t> sessions_by_uid;
};

// Tags let one epoll set tell a session's socket from its eventfd.
struct EpollTag {
  ServerSession* session;
  bool is_socket;
};

// One connected client. Owned by one dispatcher thread after the handshake
// (the acceptor builds it, then hands it over under a mutex). On a server
// with concurrent ops (Server::Impl::helping) other dispatchers may run its
// requests too; `shared` is set then, and two mutexes guard what they touch:
// `rx_mu` taking descriptors off the submission ring, `mu` the completion ring
// and backlog, the server pool's allocator and the GPU state. Without
// concurrent ops only the owner touches a session and no lock is taken.
struct ServerSession {
  ServerSession(ServerCounters* c, uint64_t sid) : counters(c), id(sid), alloc(0) {}
  ~ServerSession();

  ServerCounters* counters;
  uint64_t id;
  int sock = -1;
  int wake_fd = -1;  // the client writes here to wake our dispatcher
  std::string tenant;
  ucred cred{};
  bool counted_for_uid = false;  // in counters' sessions of cred.uid
  shm::Segment control, client_pool, server_pool;
  ControlBlock* cb = nullptr;
  shm::RingConsumer<SubDesc> rx;
  shm::RingProducer<CompDesc> tx;
  shm::PoolAllocator alloc;  // the server pool's allocator; its capacity is the pool's in-use part
  // How much of the client pool the client may use now (GrowRequest): the
  // most any request may reach. Set by the owner; read by whoever runs a
  // request.
  std::atomic<uint64_t> client_in_use{0};
  // What this session takes from the server's budget (ServerCounters::
  // bytes_mapped): given back when it ends.
  std::atomic<uint64_t> mapped_bytes{0};
  bool prefault = true;  // ServerOptions::prefault: populate the pools' parts as they come into use
  // Completions the full ring could not take, oldest first: at most one per
  // dispatcher, since nobody takes another request while it is not empty.
  std::deque<CompDesc> backlog;
  std::atomic<bool> dead{false};
  bool shared = false;
  std::mutex rx_mu, mu;
  // Dispatchers other than the owner now running this session's requests; the
  // owner destroys a dead session only once they are done.
  std::atomic<int> borrowers{0};
  bool unwatched = false;  // owner only: dead and out of the epoll set
  // Kernel single-copy path: allowed after the handshake probe succeeded.
  bool kernel_copy = false;
  int pidfd = -1;  // to notice pid reuse before touching the client's memory, and its exit while it lends
  // Lending (ServerOptions::lending): the client's cgroup and factor, read at
  // the handshake; `lend_refusal_logged` keeps the reason to one line a session.
  Amplifier::Lender lender;
  std::atomic<bool> lend_refusal_logged{false};
  // Ops whose access lists leave this client out (OpOptions::allowed_*), by
  // op id: settled at the handshake from the credentials, checked per request.
  std::bitset<kMaxOps> denied_ops;
  // Server::on_session_end's hooks, run when this session is destroyed.
  const std::vector<std::function<void(uint64_t)>>* end_hooks = nullptr;
  std::unique_ptr<GpuHandleCache> gpu;  // GPU payloads' IPC handles; made on first use
  // GPU backends: the cuda engine, once this session's pools are registered
  // with it (Request::copy_to_device, Response::write_from_device).
  Mover* gpu_mover = nullptr;
  // The parts of each pool registered with it: a pool that grew is
  // registered piece by piece, as far as it is in use.
  struct GpuRegistered {
    std::vector<std::byte*> starts;
    uint64_t bytes = 0;
  } gpu_client_pool, gpu_server_pool;
  // GPU responses shared by reference and not yet freed by the client: the
  // handler's release for each, by the server-pool block of its reference.
  std::unordered_map<uint64_t, std::function<void()>> gpu_replies;
  EpollTag sock_tag{this, true};
  EpollTag wake_tag{this, false};
};

}  // namespace detail

struct Server::Impl {
  explicit Impl(ServerOptions o) : opts(std::move(o)) {}

  class Dispatcher;

  ServerOptions opts;
  std::vector<detail::OpSpec> ops;
  std::vector<std::function<void(uint64_t)>> session_end_hooks;
  bool started = false;
  bool joined = false;
  // How far down the fork line start() ran (sys/fork.h): a child forked after
  // it has the parent's sockets and eventfds but not its threads.
  uint64_t fork_generation = 0;
  bool in_forked_child() const noexcept { return started && detail::fork_generation() != fork_generation; }
  int listen_fd = -1;
  int stop_fd = -1;
  std::atomic<bool> stopping{false};
  std::thread acceptor;
  std::vector<std::unique_ptr<Dispatcher>> dispatchers;
  std::atomic<uint64_t> next_session_id{1};
  unsigned next_dispatcher = 0;  // acceptor thread only
  // Some op is OpOptions::concurrent and there is more than one dispatcher:
  // idle dispatchers help busy ones (set by start()).
  bool helping = false;

  detail::ServerCounters counters;
  // Lending's cgroup writes (set by start() when opts.lending.enabled); it
  // outlives the dispatchers, which give their grants back before they exit.
  std::unique_ptr<detail::Amplifier> amplifier;

  // A connection accepted whose hello has not arrived yet. The acceptor
  // polls these beside the listening socket, so a peer that says nothing
  // holds only its descriptor, never the door (acceptor thread only).
  struct PendingHello {
    int fd;
    ucred cred;
    std::chrono::steady_clock::time_point deadline;
  };
  std::vector<PendingHello> pending;
  // Each waiting connection holds a descriptor: 256 leave room under the
  // usual limit of 1024 for the sessions (six each) and the rest.
  static constexpr size_t kMaxPending = 256;
  static constexpr size_t kMaxPendingPerUid = 16;

  void accept_loop();
  void accept_one();
  void handshake(int fd, const ucred& cred);
  void refuse(int fd, const Status& why);
  void protocol_error(detail::ServerSession& s, const char* what);
};

namespace detail {
// Runs a handler's release of shared GPU memory; it must not take the server
// down with it.
void run_release(std::function<void()>& release) noexcept {
  if (!release) return;
  try {
    release();
  } catch (...) {
  }
  release = nullptr;
}

// A session's mutex, taken only when other dispatchers may touch the session.
class SessionLock {
 public:
  SessionLock(std::mutex& m, bool shared) : m_(shared ? &m : nullptr) {
    if (m_ != nullptr) m_->lock();
  }
  ~SessionLock() {
    if (m_ != nullptr) m_->unlock();
  }
  SessionLock(const SessionLock&) = delete;
  SessionLock& operator=(const SessionLock&) = delete;

 private:
  std::mutex* m_;
};
}  // namespace detail

detail::ServerSession::~ServerSession() {
  // No request of this session runs any more: the owner destroys it only
  // once every helper has let go of it.
  if (end_hooks != nullptr) {
    for (const auto& hook : *end_hooks) {
      try {
        hook(id);
      } catch (...) {
      }
    }
  }
  // The client is gone or done: its GPU responses' memory goes back to the
  // handlers that shared it.
  for (auto& [offset, release] : gpu_replies) run_release(release);
  gpu_replies.clear();
  if (pidfd >= 0) ::close(pidfd);
  if (sock >= 0) ::close(sock);
  if (wake_fd >= 0) ::close(wake_fd);
  // The GPU must let go of the pools before they are unmapped.
  for (const GpuRegistered* r : {&gpu_client_pool, &gpu_server_pool}) {
    for (std::byte* p : r->starts) gpu_mover->unregister_memory(p);
  }
  const uint64_t mapped = mapped_bytes.load(std::memory_order_relaxed);
  // Unmap before the counters drop, so whoever watches them (tests, `rocket
  // top`) never sees a closed session that still holds memory.
  control = shm::Segment();
  client_pool = shm::Segment();
  server_pool = shm::Segment();
  counters->bytes_mapped.fetch_sub(mapped, std::memory_order_relaxed);
  if (counted_for_uid) counters->drop_session_of(cred.uid);
  counters->sessions_open.fetch_sub(1, std::memory_order_relaxed);
}

// --- the server pool -----------------------------------------------------------

namespace detail {
// Allocates `bytes` in session `s`'s server pool, growing the pool's in-use
// part toward its most where it has no room; the caller holds s.mu where the
// session is shared. Growth takes from the server's memory budget and
// populates the new part here, so that the handler's writes take no faults.
Result<uint64_t> server_pool_allocate(ServerSession& s, uint64_t bytes) {
  Result<uint64_t> r = s.alloc.allocate(bytes);
  if (r.ok() || bytes == 0) return r;
  const uint64_t in_use = s.alloc.capacity(), most = s.server_pool.data_bytes();
  if (bytes > most) {
    return invalid_argument("response of " + std::to_string(bytes) + " bytes exceeds the server pool's most of " +
                            std::to_string(most) +
                            " bytes (the client's ClientOptions::max_server_pool_bytes, at most the server's "
                            "ServerOptions::max_pool_bytes)");
  }
  const uint64_t want = pool_growth_target(in_use, s.alloc.capacity_for(bytes), most);
  if (want == 0) {
    // It would fit the pool's most, but not beside what is held now.
    return resource_exhausted("the server pool has no room for a " + std::to_string(bytes) + "-byte response now (" +
                              std::to_string(s.alloc.bytes_in_use()) + " of " + std::to_string(in_use) +
                              " bytes held, at its most of " + std::to_string(most) +
                              "); the client frees replies as it drops them");
  }
  if (!s.counters->reserve_mapped(want - in_use)) {
    return resource_exhausted("the server pool (" + std::to_string(in_use) + " bytes in use) cannot grow to " +
                              std::to_string(want) + " bytes for a " + std::to_string(bytes) +
                              "-byte response: the server's memory budget for sessions is taken "
                              "(ServerOptions::max_mapped_bytes)");
  }
  if (s.prefault) s.server_pool.populate(in_use, want - in_use, /*writable=*/true);
  s.mapped_bytes.fetch_add(want - in_use, std::memory_order_relaxed);
  s.counters->pool_grows.fetch_add(1, std::memory_order_relaxed);
  s.alloc.grow(want);
  return s.alloc.allocate(bytes);
}
}  // namespace detail

// --- GPU backends -------------------------------------------------------------

namespace detail {
namespace {
// The cuda engine, with `pool` of session `s` registered (once per session).
// A pool that cannot be registered still works, through pageable copies.
Result<Mover*> session_gpu(ServerSession& s, bool server_pool) {
  SessionLock lock(s.mu, s.shared);
  if (s.gpu_mover == nullptr) {
    auto m = shared_mover(MoverKind::kCuda);
    if (!m.ok()) return unavailable("this server has no usable GPU: " + m.status().message());
    s.gpu_mover = *m;
  }
  ServerSession::GpuRegistered& r = server_pool ? s.gpu_server_pool : s.gpu_client_pool;
  const uint64_t in_use = server_pool ? s.alloc.capacity() : s.client_in_use.load(std::memory_order_acquire);
  if (r.bytes < in_use) {
    std::byte* at = (server_pool ? s.server_pool : s.client_pool).data() + r.bytes;
    if (s.gpu_mover->register_memory(at, in_use - r.bytes, /*read_only=*/!server_pool).ok()) {
      r.starts.push_back(at);
      r.bytes = in_use;
    }
  }
  return s.gpu_mover;
}
}  // namespace
}  // namespace detail

Status Request::copy_to_device(void* device) const {
  if (session_ == nullptr) return failed_precondition("copy_to_device outside a handler");
  if (data_.empty()) return ok_status();
  ROCKET_ASSIGN_OR_RETURN(Mover * m, detail::session_gpu(*session_, /*server_pool=*/false));
  CopyOp op{static_cast<std::byte*>(device), data_.data(), data_.size()};
  return m->execute({&op, 1}, Cache::kAuto);
}

Status Response::write_from_device(const void* device, size_t bytes) {
  ROCKET_ASSIGN_OR_RETURN(Mover * m, detail::session_gpu(*session_, /*server_pool=*/true));
  ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(bytes));
  if (bytes == 0) return ok_status();
  CopyOp op{out.data(), static_cast<const std::byte*>(device), bytes};
  Status st = m->execute({&op, 1}, Cache::kAuto);
  if (!st.ok()) release();
  return st;
}

Status Response::share_device(void* device, size_t bytes, std::function<void()> release) {
  ROCKET_ASSIGN_OR_RETURN(detail::GpuRef ref, detail::make_gpu_ref(device, bytes, "share_device"));
  ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> block, alloc(sizeof(ref)));
  std::memcpy(block.data(), &ref, sizeof(ref));
  kind_ = Kind::kGpu;
  device_ = device;
  device_bytes_ = bytes;
  on_release_ = std::move(release);
  return ok_status();
}

Status Response::device_to_pool() {
  const void* device = device_;
  const size_t bytes = device_bytes_;
  std::function<void()> done = std::move(on_release_);
  {
    detail::SessionLock lock(session_->mu, session_->shared);
    session_->alloc.free(offset_).ignore_error();  // the reference's block
  }
  kind_ = Kind::kEmpty;
  offset_ = length_ = 0;
  on_release_ = nullptr;
  Status st = write_from_device(device, bytes);
  detail::run_release(done);
  return st;
}

// --- Response -----------------------------------------------------------------

Result<std::span<std::byte>> Response::alloc(size_t bytes) {
  release();
  if (bytes == 0) return std::span<std::byte>{};
  Result<uint64_t> block = [&] {
    detail::SessionLock lock(session_->mu, session_->shared);
    return detail::server_pool_allocate(*session_, bytes);
  }();
  ROCKET_ASSIGN_OR_RETURN(uint64_t off, std::move(block));
  kind_ = Kind::kPool;
  offset_ = off;
  length_ = bytes;
  return std::span<std::byte>(session_->server_pool.data() + off, bytes);
}

Status Response::write(std::span<const std::byte> bytes) {
  ROCKET_ASSIGN_OR_RETURN(std::span<std::byte> out, alloc(bytes.size()));
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return ok_status();
}

Status Response::reply_in_place(size_t offset, size_t length) {
  if (offset > request_bytes_ || length > request_bytes_ - offset) {
    return invalid_argument("in-place reply range lies outside the request");
  }
  release();
  kind_ = Kind::kInPlace;
  offset_ = offset;
  length_ = length;
  return ok_status();
}

void Response::release() noexcept {
  if ((kind_ == Kind::kPool || kind_ == Kind::kGpu) && !committed_) {
    detail::SessionLock lock(session_->mu, session_->shared);
    session_->alloc.free(offset_).ignore_error();
  }
  if (kind_ == Kind::kGpu && !committed_) detail::run_release(on_release_);
  kind_ = Kind::kEmpty;
  offset_ = length_ = 0;
  on_release_ = nullptr;
}

Response::~Response() { release(); }

// --- Dispatcher -----------------------------------------------------------------

class Server::Impl::Dispatcher {
 public:
  Dispatcher(Impl* server, std::vector<Handler> handlers)
      : server_(server), handlers_(std::move(handlers)) {}
  ~Dispatcher() {
    if (epfd_ >= 0) ::close(epfd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  Status init() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) return errno_status("epoll_create1", errno);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return errno_status("eventfd", errno);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) return errno_status("epoll_ctl", errno);
    return ok_status();
  }

  void start() { thread_ = std::thread([this] { run(); }); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  // Called by the acceptor thread.
  void adopt(std::unique_ptr<detail::ServerSession> s) {
    s->shared = server_->helping;
    {
      std::lock_guard<std::mutex> lock(mu_);
      incoming_.push_back(std::move(s));
    }
    kick();
  }
  // Async-signal-safe.
  void kick() noexcept {
    uint64_t one = 1;
    ssize_t r = ::write(wake_fd_, &one, sizeof(one));
    (void)r;
  }

 private:
  static constexpr int kBatch = 64;  // descriptors per session per pass: fairness
  // How often an idle dispatcher of a helping server wakes to look for
  // requests waiting behind another dispatcher's handler: 1 ms after it last
  // found some, doubling with each look that finds none, up to 16 ms. A
  // steady 1 ms cost ~1% of a core per dispatcher on an idle server, and its
  // wake-ups slowed a backend whose handler keeps both cores busy (xgboost's
  // threads) by ~8%; at 16 ms both are lost in the noise. Help worth having
  // is for handlers far longer than 16 ms.
  static constexpr int kHelpPollMs = 1;
  static constexpr int kHelpPollMaxMs = 16;

  void run();
  void take_incoming();
  bool poll_events(int timeout_ms);
  void grow_client_pool(detail::ServerSession& s, const detail::GrowRequest& g);
  void reap();
  // Runs waiting descriptors of `s`. A helper (`helping`: not the session's
  // own dispatcher) takes only requests to concurrent ops, and frees.
  size_t service(detail::ServerSession& s, bool helping = false);
  // A helping server's idle dispatcher: runs what the other dispatchers'
  // sessions are waiting with.
  size_t help_others();
  // One of this dispatcher's live sessions with descriptors waiting, its
  // borrowers count raised (the caller lowers it when done); null if none.
  detail::ServerSession* lend_waiting_session();
  bool drain_backlog(detail::ServerSession& s);
  bool has_backlog(detail::ServerSession& s);
  void handle_request(detail::ServerSession& s, const detail::SubDesc& d);
  void fail_request(detail::ServerSession& s, uint64_t job, const Status& st);
  bool post(detail::ServerSession& s, const detail::CompDesc& c);
  static void wake_client(detail::ServerSession& s);
  // Copies between this process and the client `pid` (`side` names the
  // client's end). Large copies run on the kernel engine's workers and this
  // thread at once; small ones, or all where the engine is absent, here.
  static Status remote_copy(pid_t pid, RemoteSide side, std::byte* dst, const std::byte* src, size_t n);
  // Moves `millicpus` of the caller's CPU quota and `memory_bytes` of its
  // memory limit to the backend until the grant is given back
  // (ServerOptions::lending); nothing of a resource where it cannot.
  detail::Amplifier::Grant lend(detail::ServerSession& s, uint32_t millicpus, uint64_t memory_bytes);

  Impl* server_;
  std::vector<Handler> handlers_;  // this thread's instances, by op id
  // Remote request payloads (kernel path). Huge-page backed: the kernel pins
  // and maps both sides of a process_vm_readv page by page, and 2 MiB pages
  // make the copy about 3x faster than 4 KiB ones (measured on the CI VM).
  class Scratch {
   public:
    ~Scratch() {
      if (p_ != nullptr) ::munmap(p_, cap_);
    }
    std::byte* reserve(size_t n) {
      if (n <= cap_) return p_;
      constexpr size_t kHuge = size_t{2} << 20;
      size_t cap = (n + kHuge - 1) / kHuge * kHuge;
      void* p = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      ::madvise(p, cap, MADV_HUGEPAGE);  // advisory: fine if THP is off
      if (p_ != nullptr) ::munmap(p_, cap_);
      p_ = static_cast<std::byte*>(p);
      cap_ = cap;
      return p_;
    }

   private:
    std::byte* p_ = nullptr;
    size_t cap_ = 0;
  } scratch_;
  int epfd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::unique_ptr<detail::ServerSession>> incoming_;  // guarded by mu_
  // Changed by this thread only, under lend_mu_, which helpers hold to read it.
  std::vector<std::unique_ptr<detail::ServerSession>> sessions_;
  std::mutex lend_mu_;
  bool closed_ = false;             // guarded by lend_mu_: exiting, lends nothing more
  size_t lend_next_ = 0;            // guarded by lend_mu_: where the next search starts
  size_t unwatched_ = 0;            // sessions_ that are dead and wait for their borrowers
  int help_poll_ms_ = kHelpPollMs;  // this thread only
};

void Server::Impl::Dispatcher::take_incoming() {
  std::vector<std::unique_ptr<detail::ServerSession>> fresh;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(incoming_);
  }
  for (auto& s : fresh) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = &s->sock_tag;
    // Edge-triggered: every client write() is a new edge, so the dispatcher
    // never has to read() the counter back -- one system call less per wake-up.
    // (The counter cannot overflow in practice: 2^64 - 2 writes.)
    epoll_event wev{};
    wev.events = EPOLLIN | EPOLLET;
    wev.data.ptr = &s->wake_tag;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, s->sock, &ev) != 0 ||
        ::epoll_ctl(epfd_, EPOLL_CTL_ADD, s->wake_fd, &wev) != 0) {
      std::fprintf(stderr, "rocket: dispatcher cannot watch session %llu: %s\n",
                   static_cast<unsigned long long>(s->id), std::strerror(errno));
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, s->sock, nullptr);
      continue;  // destroyed here: the client sees the hang-up
    }
    std::lock_guard<std::mutex> lock(lend_mu_);
    sessions_.push_back(std::move(s));
  }
}

bool Server::Impl::Dispatcher::poll_events(int timeout_ms) {
  epoll_event evs[64];
  int n = ::epoll_wait(epfd_, evs, 64, timeout_ms);
  for (int i = 0; i < n; ++i) {
    auto* tag = static_cast<detail::EpollTag*>(evs[i].data.ptr);
    if (tag == nullptr) {
      uint64_t v;
      while (::read(wake_fd_, &v, sizeof(v)) > 0) {
      }
      take_incoming();
      continue;
    }
    detail::ServerSession& s = *tag->session;
    if (!tag->is_socket) continue;  // a wake-up (edge-triggered; nothing to drain)
    if ((evs[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) != 0) {
      s.dead = true;
    } else if ((evs[i].events & EPOLLIN) != 0) {
      // After the handshake a client sends only GrowRequests; anything else
      // (or the end of the stream) closes its session.
      detail::GrowRequest g{};
      ssize_t r = ::recv(s.sock, &g, sizeof(g), MSG_DONTWAIT | MSG_TRUNC);
      if (r == static_cast<ssize_t>(sizeof(g)) && g.magic == detail::kGrowMagic) {
        grow_client_pool(s, g);
      } else if (r >= 0 || (errno != EAGAIN && errno != EINTR)) {
        s.dead = true;
      }
    }
  }
  return n > 0;
}

// A client asks for more of its pool: granted while the pool's most and
// the server's budget allow. The server commits no memory for it (the pages
// are the client's to fault in); it only lets requests reach further.
void Server::Impl::Dispatcher::grow_client_pool(detail::ServerSession& s, const detail::GrowRequest& g) {
  detail::GrowReply reply{};
  reply.magic = detail::kGrowMagic;
  reply.seq = g.seq;
  const uint64_t in_use = s.client_in_use.load(std::memory_order_relaxed), most = s.client_pool.data_bytes();
  Status st;
  if (g.bytes == 0 || g.bytes > most || g.bytes % 4096 != 0) {
    server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    st = invalid_argument("the client pool can grow from " + std::to_string(in_use) + " bytes to at most " +
                          std::to_string(most) + " in whole pages, not to " + std::to_string(g.bytes));
  } else if (g.bytes <= in_use) {
    // Granted before (the client gave up waiting for that answer): say so again.
  } else if (!server_->counters.reserve_mapped(g.bytes - in_use)) {
    st = resource_exhausted("the client pool cannot grow to " + std::to_string(g.bytes) +
                            " bytes: the server's memory budget for sessions is taken "
                            "(ServerOptions::max_mapped_bytes); free buffers and replies, or try again later");
  } else {
    s.mapped_bytes.fetch_add(g.bytes - in_use, std::memory_order_relaxed);
    server_->counters.pool_grows.fetch_add(1, std::memory_order_relaxed);
    // release: a request that reaches the new part is validated after this.
    s.client_in_use.store(g.bytes, std::memory_order_release);
  }
  reply.status_code = static_cast<int32_t>(st.code());
  reply.bytes = s.client_in_use.load(std::memory_order_relaxed);
  detail::set_fixed_string(reply.message, sizeof(reply.message), st.message());
  // Never wait on the client: one that does not read its answers loses its
  // session rather than stall the dispatcher.
  ssize_t n;
  do {
    n = ::send(s.sock, &reply, sizeof(reply), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof(reply))) s.dead = true;
}

void Server::Impl::Dispatcher::reap() {
  for (auto& s : sessions_) {
    if (!s->dead || s->unwatched) continue;
    // The client holds its own reference to the eventfd's file, so closing our
    // descriptor would not drop it from the epoll set: remove it explicitly.
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, s->wake_fd, nullptr);
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, s->sock, nullptr);
    s->unwatched = true;
    ++unwatched_;
  }
  if (unwatched_ == 0) return;
  std::vector<std::unique_ptr<detail::ServerSession>> gone;
  {
    // A helper raises `borrowers` under lend_mu_, so a session seen here with
    // none cannot gain one before it leaves the list.
    std::lock_guard<std::mutex> lock(lend_mu_);
    auto leaving = std::partition(sessions_.begin(), sessions_.end(), [](auto& s) {
      // acquire: pairs with the helper's release when it lets go.
      return !s->unwatched || s->borrowers.load(std::memory_order_acquire) != 0;
    });
    std::move(leaving, sessions_.end(), std::back_inserter(gone));
    sessions_.erase(leaving, sessions_.end());
  }
  unwatched_ -= gone.size();
  // `gone` unmaps and closes here, outside the lock.
}

void Server::Impl::Dispatcher::run() {
  const auto spin = server_->opts.spin;
  const bool helping = server_->helping;
  auto last_work = detail::Clock::now();
  auto last_events = last_work;
  // acquire: pairs with the release store in stop().
  while (!server_->stopping.load(std::memory_order_acquire)) {
    size_t work = 0;
    for (auto& s : sessions_) {
      if (!s->dead) work += service(*s);
    }
    auto now = detail::Clock::now();
    // Hang-ups and new sessions are noticed at least every 2 ms even when busy.
    if (now - last_events > std::chrono::milliseconds(2) || (work == 0 && now - last_events > spin / 4)) {
      poll_events(0);
      last_events = now;
    }
    reap();
    if (work != 0) {
      last_work = now;
      continue;
    }
    if (now - last_work < spin) {
      detail::cpu_relax();
      continue;
    }
    if (helping && help_others() != 0) {
      last_work = detail::Clock::now();
      help_poll_ms_ = kHelpPollMs;
      continue;
    }
    // Going to sleep: advertise it, then look once more so that a request
    // pushed before the client could see the flag is not missed.
    for (auto& s : sessions_) s->cb->server_sleeping.store(1, std::memory_order_relaxed);
    // seq_cst fence: pairs with the client's fence between publishing its ring
    // tail and reading server_sleeping (Dekker): one side sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool pending = false, backlog = false;
    for (auto& s : sessions_) {
      detail::SessionLock lock(s->rx_mu, s->shared);
      if (s->rx.peek() != shm::RingResult::kEmpty) pending = true;
    }
    for (auto& s : sessions_) backlog = backlog || has_backlog(*s);
    // A backlog drains when the client reads its completion ring, which sends
    // no signal: re-check on a short timer then. A helping server's
    // dispatcher also wakes on a timer, to look for requests waiting behind
    // another dispatcher's long handler (their clients see that one awake and
    // send no signal). Look at the stop flag once more first: the busy pass
    // above may have drained the wake-up stop() sent after this iteration last
    // looked, and nothing would wake us again (a server whose wait() hung
    // under ThreadSanitizer in CI).
    int timeout_ms = -1;
    if (helping) {
      timeout_ms = help_poll_ms_;
      help_poll_ms_ = std::min(2 * help_poll_ms_, kHelpPollMaxMs);
    }
    if (backlog) timeout_ms = 1;
    bool woken = false;
    if (!pending && !server_->stopping.load(std::memory_order_acquire)) woken = poll_events(timeout_ms);
    for (auto& s : sessions_) s->cb->server_sleeping.store(0, std::memory_order_relaxed);
    last_work = last_events = detail::Clock::now();
    // A timer that found nothing is not work: sleep again without spinning.
    if (!woken && !pending) last_work -= spin;
    reap();
  }
  {
    std::lock_guard<std::mutex> lock(lend_mu_);
    closed_ = true;
  }
  // Helpers finish the requests they took before their sessions go.
  for (auto& s : sessions_) {
    // acquire: pairs with the helper's release when it lets go.
    while (s->borrowers.load(std::memory_order_acquire) != 0)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  {
    std::lock_guard<std::mutex> lock(lend_mu_);
    sessions_.clear();
  }
  std::lock_guard<std::mutex> lock(mu_);
  incoming_.clear();
}

size_t Server::Impl::Dispatcher::service(detail::ServerSession& s, bool helping) {
  if (!drain_backlog(s)) return 0;
  const auto& ops = server_->ops;
  // What a helper may take: requests to concurrent ops, and frees (which
  // stand in front of such requests when a pipelined client drops replies).
  auto helper_takes = [&ops](const detail::SubDesc& d) {
    switch (static_cast<detail::SubKind>(d.kind)) {
      case detail::SubKind::kFreeReply:
        return true;
      case detail::SubKind::kRequest:
        return d.op_id < ops.size() && ops[d.op_id].options.concurrent;
      default:
        return false;
    }
  };
  size_t n = 0;
  for (; n < kBatch; ++n) {
    detail::SubDesc d;
    shm::RingResult r;
    {
      detail::SessionLock lock(s.rx_mu, s.shared);
      r = helping ? s.rx.try_pop_if(&d, helper_takes) : s.rx.try_pop(&d);
    }
    if (r == shm::RingResult::kEmpty) break;
    if (r == shm::RingResult::kCorrupt) {
      server_->protocol_error(s, "submission ring indices are corrupt");
      return n;
    }
    switch (static_cast<detail::SubKind>(d.kind)) {
      case detail::SubKind::kRequest:
        if (helping) server_->counters.requests_helped.fetch_add(1, std::memory_order_relaxed);
        handle_request(s, d);
        break;
      case detail::SubKind::kFreeReply: {
        std::function<void()> release;
        bool forged = false;
        {
          detail::SessionLock lock(s.mu, s.shared);
          if (!s.alloc.free(d.offset).ok()) {
            forged = true;
          } else if (auto it = s.gpu_replies.find(d.offset); it != s.gpu_replies.end()) {
            release = std::move(it->second);
            s.gpu_replies.erase(it);
          }
        }
        if (forged) server_->protocol_error(s, nullptr);
        detail::run_release(release);
        break;
      }
      default:
        server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        fail_request(s, d.job_id, invalid_argument("unknown descriptor kind " + std::to_string(d.kind)));
        break;
    }
    if (s.dead || has_backlog(s)) return n + 1;
  }
  return n;
}

size_t Server::Impl::Dispatcher::help_others() {
  size_t work = 0;
  for (auto& other : server_->dispatchers) {
    if (other.get() == this) continue;
    detail::ServerSession* s = other->lend_waiting_session();
    if (s == nullptr) continue;
    work += service(*s, /*helping=*/true);
    // release: our work on the session happens before its owner destroys it.
    s->borrowers.fetch_sub(1, std::memory_order_release);
  }
  return work;
}

detail::ServerSession* Server::Impl::Dispatcher::lend_waiting_session() {
  std::lock_guard<std::mutex> lock(lend_mu_);
  if (closed_ || sessions_.empty()) return nullptr;
  // Round-robin start, so that one chatty session does not take all the help.
  const size_t n = sessions_.size();
  for (size_t k = 0; k < n; ++k) {
    detail::ServerSession& s = *sessions_[(lend_next_ + k) % n];
    if (s.dead) continue;
    bool waiting;
    {
      std::lock_guard<std::mutex> rx_lock(s.rx_mu);
      // A corrupt ring counts as waiting: the helper's pop reports it and
      // closes the session without waiting for its owner.
      waiting = s.rx.peek() != shm::RingResult::kEmpty;
    }
    if (!waiting) continue;
    lend_next_ = (lend_next_ + k + 1) % n;
    s.borrowers.fetch_add(1, std::memory_order_relaxed);  // under lend_mu_: reap() cannot miss it
    return &s;
  }
  return nullptr;
}

bool Server::Impl::Dispatcher::has_backlog(detail::ServerSession& s) {
  detail::SessionLock lock(s.mu, s.shared);
  return !s.backlog.empty();
}

// Moves held-back completions into the ring; false while some remain.
bool Server::Impl::Dispatcher::drain_backlog(detail::ServerSession& s) {
  bool moved = false, drained = true;
  {
    detail::SessionLock lock(s.mu, s.shared);
    while (!s.backlog.empty()) {
      shm::RingResult r = s.tx.try_push(s.backlog.front());
      if (r == shm::RingResult::kCorrupt) {
        server_->protocol_error(s, "completion ring indices are corrupt");
        return false;
      }
      if (r == shm::RingResult::kFull) {
        drained = false;
        break;
      }
      s.backlog.pop_front();
      moved = true;
    }
  }
  if (moved) wake_client(s);
  return drained;
}

void Server::Impl::Dispatcher::handle_request(detail::ServerSession& s, const detail::SubDesc& d) {
  server_->counters.requests.fetch_add(1, std::memory_order_relaxed);
  if (d.op_id >= handlers_.size()) {
    server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail_request(s, d.job_id, invalid_argument("unknown op id " + std::to_string(d.op_id)));
    return;
  }
  // The client pool's most bounds a remote payload; its part in use now
  // bounds a pooled one (acquire: pairs with the grant's release store).
  const uint64_t cap = s.client_pool.data_bytes();
  const uint64_t in_use = s.client_in_use.load(std::memory_order_acquire);
  const bool remote_req = (d.flags & detail::kSubRemoteRequest) != 0;
  const bool remote_resp = (d.flags & detail::kSubRemoteResponse) != 0;
  const bool gpu_req = (d.flags & detail::kSubGpuRequest) != 0;
  if (s.denied_ops.test(d.op_id)) {
    fail_request(s, d.job_id,
                 permission_denied("uid " + std::to_string(s.cred.uid) + " may not call op '" +
                                   server_->ops[d.op_id].name + "' (its access list)"));
    return;
  }
  if ((d.flags & ~detail::kSubKnownFlags) != 0 || (gpu_req && remote_req)) {
    server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail_request(s, d.job_id, invalid_argument("unknown request flags " + std::to_string(d.flags)));
    return;
  }
  const uint64_t lend_hint = d.reserved[2];         // millicpus the caller lends for this request
  const uint64_t lend_memory_hint = d.reserved[3];  // and bytes of memory
  if (lend_hint > kMaxLendMillicpus || lend_memory_hint > kMaxLendMemoryBytes) {
    server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail_request(s, d.job_id,
                 invalid_argument("a request lends at most " + std::to_string(kMaxLendMillicpus) + " millicpus and " +
                                  std::to_string(kMaxLendMemoryBytes) + " bytes, not " + std::to_string(lend_hint) +
                                  " and " + std::to_string(lend_memory_hint)));
    return;
  }
  if ((remote_req || remote_resp) && !s.kernel_copy) {
    fail_request(s, d.job_id, permission_denied("this session has no kernel copy path (the handshake probe failed)"));
    return;
  }
  if ((remote_req || remote_resp) && detail::pidfd_exited(s.pidfd)) {
    s.dead = true;  // the client is gone; its pid must not be touched again
    return;
  }
  std::span<const std::byte> payload;
  if (remote_req) {
    // A remote payload is bounded like a pooled one: no larger than the pool
    // the client would otherwise have needed.
    if (d.length > cap) {
      fail_request(s, d.job_id, invalid_argument("remote request of " + std::to_string(d.length) +
                                                 " bytes exceeds the session's limit of " + std::to_string(cap)));
      return;
    }
    std::byte* buf = scratch_.reserve(std::max<uint64_t>(d.length, 1));
    if (buf == nullptr) {
      fail_request(s, d.job_id, resource_exhausted("server cannot map a buffer for the remote request"));
      return;
    }
    Status st = remote_copy(s.cred.pid, RemoteSide::kSrc, buf, reinterpret_cast<const std::byte*>(d.offset), d.length);
    if (!st.ok()) {
      fail_request(s, d.job_id, st);
      return;
    }
    payload = {buf, d.length};
  } else {
    if (d.offset > in_use || d.length > in_use - d.offset) {
      server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail_request(s, d.job_id,
                   invalid_argument("request range [" + std::to_string(d.offset) + ", +" + std::to_string(d.length) +
                                    ") lies outside the client pool of " + std::to_string(in_use) + " bytes"));
      return;
    }
    payload = {s.client_pool.data() + d.offset, d.length};
  }
  detail::GpuView gpu;  // held through the handler
  if (gpu_req) {
    if (payload.size() != sizeof(detail::GpuRef)) {
      server_->counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail_request(s, d.job_id, invalid_argument("a GPU request carries one " + std::to_string(sizeof(detail::GpuRef)) +
                                                 "-byte reference, not " + std::to_string(payload.size()) + " bytes"));
      return;
    }
    detail::GpuRef ref;
    std::memcpy(&ref, payload.data(), sizeof(ref));  // once: the client may rewrite the pool under us
    Result<detail::GpuView> dev = [&] {
      detail::SessionLock lock(s.mu, s.shared);
      if (!s.gpu) s.gpu = std::make_unique<detail::GpuHandleCache>();
      const uint64_t before = s.gpu->opened();
      auto view = s.gpu->resolve(ref, "GPU payload");
      server_->counters.gpu_handles_opened.fetch_add(s.gpu->opened() - before, std::memory_order_relaxed);
      return view;
    }();
    if (!dev.ok()) {
      fail_request(s, d.job_id, dev.status());
      return;
    }
    gpu = std::move(*dev);
    payload = {};
  }
  Request req;
  req.op_ = server_->ops[d.op_id].name;
  req.data_ = payload;
  req.tenant_ = s.tenant;
  req.uid_ = s.cred.uid;
  req.pid_ = s.cred.pid;
  req.job_id_ = d.job_id;
  req.session_id_ = s.id;
  req.gpu_data_ = gpu.data;
  req.gpu_size_ = gpu.size;
  req.session_ = &s;
  // The loan lasts exactly as long as the handler (or until the caller dies).
  const detail::Amplifier::Grant grant = lend_hint != 0 || lend_memory_hint != 0
                                             ? lend(s, static_cast<uint32_t>(lend_hint), lend_memory_hint)
                                             : detail::Amplifier::Grant{};
  req.lent_millicpus_ = grant.millicpus;
  req.lent_memory_bytes_ = grant.memory_bytes;
  Response resp(&s, payload.size());
  auto t0 = detail::Clock::now();
  Status st;
  try {
    st = handlers_[d.op_id](req, resp);
  } catch (const std::exception& e) {
    st = internal_error(std::string("handler threw: ") + e.what());
  } catch (...) {
    st = internal_error("handler threw a non-standard exception");
  }
  auto service_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(detail::Clock::now() - t0);
  if (grant.id != 0) server_->amplifier->give_back(grant.id);
  if (!st.ok()) {
    fail_request(s, d.job_id, st);
    return;
  }
  if (resp.kind_ == Response::Kind::kGpu && (remote_resp || (d.flags & detail::kSubAcceptGpuResponse) == 0)) {
    // The caller takes host bytes: copy the GPU response into the pool.
    Status copied = resp.device_to_pool();
    if (!copied.ok()) {
      fail_request(s, d.job_id, copied);
      return;
    }
    server_->counters.gpu_responses_copied.fetch_add(1, std::memory_order_relaxed);
  }
  detail::CompDesc c{};
  c.job_id = d.job_id;
  c.status = 0;
  c.service_ns = static_cast<uint64_t>(service_ns.count());
  c.reserved[0] = grant.millicpus;
  c.reserved[1] = grant.memory_bytes;
  if (remote_resp) {
    // Push the response straight into the caller's buffer; the pool block,
    // if any, is freed with `resp`.
    std::span<const std::byte> out;
    if (resp.kind_ == Response::Kind::kPool) out = {s.server_pool.data() + resp.offset_, resp.length_};
    if (resp.kind_ == Response::Kind::kInPlace) out = payload.subspan(resp.offset_, resp.length_);
    const uint64_t dst = d.reserved[0], dst_cap = d.reserved[1];
    if (out.size() > dst_cap) {
      fail_request(s, d.job_id, Status(StatusCode::kOutOfRange, "response of " + std::to_string(out.size()) +
                                                                    " bytes does not fit the caller's " +
                                                                    std::to_string(dst_cap) + "-byte buffer"));
      return;
    }
    Status pushed = remote_copy(s.cred.pid, RemoteSide::kDst, reinterpret_cast<std::byte*>(dst), out.data(), out.size());
    if (!pushed.ok()) {
      fail_request(s, d.job_id, pushed);
      return;
    }
    c.pool = static_cast<uint16_t>(detail::PayloadPool::kNone);
    c.flags = detail::kCompWrittenRemote;
    c.length = out.size();
    post(s, c);
    return;
  }
  if (remote_req && resp.kind_ == Response::Kind::kInPlace) {
    // The request bytes live in our scratch, which the client cannot see:
    // the response goes to the server pool instead.
    auto in_place = payload.subspan(resp.offset_, resp.length_);
    Status copied = resp.write(in_place);
    if (!copied.ok()) {
      fail_request(s, d.job_id, copied);
      return;
    }
  }
  switch (resp.kind_) {
    case Response::Kind::kEmpty:
      c.pool = static_cast<uint16_t>(detail::PayloadPool::kNone);
      break;
    case Response::Kind::kPool:
      c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
      c.offset = resp.offset_;
      c.length = resp.length_;
      resp.committed_ = true;  // the client owns it now and frees it by message
      break;
    case Response::Kind::kInPlace:
      c.pool = static_cast<uint16_t>(detail::PayloadPool::kClient);
      c.offset = d.offset + resp.offset_;
      c.length = resp.length_;
      break;
    case Response::Kind::kGpu:
      c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
      c.flags = detail::kCompGpuResponse;
      c.offset = resp.offset_;
      c.length = resp.length_;
      resp.committed_ = true;  // the reference's block, freed by the client's message
      if (resp.on_release_) {
        detail::SessionLock lock(s.mu, s.shared);
        s.gpu_replies[resp.offset_] = std::move(resp.on_release_);
      }
      server_->counters.gpu_responses_shared.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  post(s, c);
}

detail::Amplifier::Grant Server::Impl::Dispatcher::lend(detail::ServerSession& s, uint32_t millicpus,
                                                        uint64_t memory_bytes) {
  if (!server_->amplifier) {  // the hint is ignored: the reply says nothing was lent
    server_->counters.lends_refused.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
  std::string why;  // filled where a resource is refused
  const detail::Amplifier::Grant grant = server_->amplifier->lend(s.lender, millicpus, memory_bytes, s.pidfd, &why);
  if (grant.id != 0) server_->counters.lends.fetch_add(1, std::memory_order_relaxed);
  server_->counters.memory_lent_bytes.fetch_add(grant.memory_bytes, std::memory_order_relaxed);
  if ((millicpus != 0 && grant.millicpus == 0) || (memory_bytes != 0 && grant.memory_bytes == 0)) {
    server_->counters.lends_refused.fetch_add(1, std::memory_order_relaxed);
    // An operator who turned lending on wants to know why it does not happen.
    if (!s.lend_refusal_logged.exchange(true, std::memory_order_relaxed)) {
      std::fprintf(stderr, "rocket: session %llu (tenant '%s', pid %d) cannot lend: %s\n",
                   static_cast<unsigned long long>(s.id), s.tenant.c_str(), static_cast<int>(s.cred.pid), why.c_str());
    }
  }
  return grant;
}

Status Server::Impl::Dispatcher::remote_copy(pid_t pid, RemoteSide side, std::byte* dst, const std::byte* src,
                                              size_t n) {
  constexpr size_t kParallelFrom = size_t{1} << 20;  // below this a hand-off costs more than it saves
  if (n >= kParallelFrom) {
    if (auto m = shared_mover(MoverKind::kKernel); m.ok()) {
      CopyOp op{.dst = dst, .src = src, .size = n, .remote = side, .pid = pid};
      return (*m)->execute({&op, 1}, Cache::kAuto);
    }
  }
  return side == RemoteSide::kSrc ? detail::kernel_read(pid, dst, src, n) : detail::kernel_write(pid, dst, src, n);
}

void Server::Impl::Dispatcher::fail_request(detail::ServerSession& s, uint64_t job, const Status& st) {
  server_->counters.request_errors.fetch_add(1, std::memory_order_relaxed);
  detail::CompDesc c{};
  c.job_id = job;
  c.status = static_cast<int32_t>(st.code() == StatusCode::kOk ? StatusCode::kUnknown : st.code());
  // The text travels in the server pool; if that is full the code goes alone.
  size_t len = std::min(st.message().size(), detail::kMaxErrorMessage);
  if (len > 0) {
    Result<uint64_t> off = [&] {
      detail::SessionLock lock(s.mu, s.shared);
      return detail::server_pool_allocate(s, len);
    }();
    if (off.ok()) {
      std::memcpy(s.server_pool.data() + *off, st.message().data(), len);
      c.pool = static_cast<uint16_t>(detail::PayloadPool::kServer);
      c.offset = *off;
      c.length = len;
    }
  }
  post(s, c);
}

bool Server::Impl::Dispatcher::post(detail::ServerSession& s, const detail::CompDesc& c) {
  {
    detail::SessionLock lock(s.mu, s.shared);
    // Behind a backlog, a completion waits its turn.
    shm::RingResult r = s.backlog.empty() ? s.tx.try_push(c) : shm::RingResult::kFull;
    if (r == shm::RingResult::kFull) {
      s.backlog.push_back(c);  // nobody takes this session's requests until it drains
      return false;
    }
    if (r == shm::RingResult::kCorrupt) {
      server_->protocol_error(s, "completion ring indices are corrupt");
      return false;
    }
  }
  wake_client(s);
  return true;
}

void Server::Impl::Dispatcher::wake_client(detail::ServerSession& s) {
  // seq_cst fence: pairs with the client's fence between incrementing
  // client_waiters and re-checking the ring before it sleeps.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (s.cb->client_waiters.load(std::memory_order_relaxed) != 0) {
    s.cb->comp_futex.fetch_add(1, std::memory_order_relaxed);
    detail::futex_wake_all(&s.cb->comp_futex);
  }
}

// --- Impl ---------------------------------------------------------------------

void Server::Impl::protocol_error(detail::ServerSession& s, const char* what) {
  counters.protocol_errors.fetch_add(1, std::memory_order_relaxed);
  if (what != nullptr) {
    std::fprintf(stderr, "rocket: session %llu (tenant '%s', pid %d): %s; closing it\n",
                 static_cast<unsigned long long>(s.id), s.tenant.c_str(), static_cast<int>(s.cred.pid), what);
    s.dead = true;
  }
}

void Server::Impl::refuse(int fd, const Status& why) {
  counters.sessions_refused.fetch_add(1, std::memory_order_relaxed);
  auto w = std::make_unique<detail::Welcome>();
  std::memset(w.get(), 0, sizeof(*w));
  w->magic = detail::kProtocolMagic;
  w->version = detail::kProtocolVersion;
  w->status_code = static_cast<int32_t>(why.code());
  detail::set_fixed_string(w->message, sizeof(w->message), why.message());
  detail::send_message(fd, w.get(), detail::kWelcomeHeaderBytes, {}).ignore_error();
  // Closing with the peer's hello unread would reset the connection, and the
  // peer would read that instead of the reason: take what it has sent (and
  // close any descriptors in it) first.
  char sink[sizeof(detail::Hello)];
  for (int i = 0; i < 4; ++i) {
    auto n = detail::recv_message(fd, sink, sizeof(sink), nullptr, 0, std::chrono::milliseconds(0));
    if (!n.ok() || *n == 0) break;
  }
  ::close(fd);
}

// Called once the peer's hello is readable (or the peer hung up): takes it
// without waiting.
void Server::Impl::handshake(int fd, const ucred& cred) {
  detail::Hello hello{};
  auto n = detail::recv_message(fd, &hello, sizeof(hello), nullptr, 0, std::chrono::milliseconds(0));
  if (!n.ok()) return refuse(fd, n.status());
  // Magic and version lead the hello in every protocol version: a client of
  // another version is told so, whatever the size of its hello.
  if (*n < offsetof(detail::Hello, tenant) || hello.magic != detail::kProtocolMagic) {
    return refuse(fd, invalid_argument("not a Rocket handshake"));
  }
  if (hello.version != detail::kProtocolVersion) {
    return refuse(fd, failed_precondition("protocol version " + std::to_string(hello.version) +
                                          " not supported; server speaks " +
                                          std::to_string(detail::kProtocolVersion)));
  }
  if (*n != sizeof(hello)) return refuse(fd, invalid_argument("not a Rocket handshake"));
  bool allowed = cred.uid == ::geteuid() ||
                 std::find(opts.allowed_uids.begin(), opts.allowed_uids.end(), cred.uid) != opts.allowed_uids.end() ||
                 std::find(opts.allowed_gids.begin(), opts.allowed_gids.end(), cred.gid) != opts.allowed_gids.end();
  if (!allowed) {
    return refuse(fd, permission_denied("uid " + std::to_string(cred.uid) + " is not in the server's access list"));
  }
  std::string_view tenant = detail::fixed_string(hello.tenant, sizeof(hello.tenant));
  if (tenant.empty() || !std::all_of(tenant.begin(), tenant.end(), [](char c) { return c > ' ' && c < 127; })) {
    return refuse(fd, invalid_argument("tenant name must be 1..63 printable characters"));
  }
  // Each pool starts at its size and may grow to its most: both are the
  // client's ask or the server's defaults, within max_pool_bytes.
  const uint64_t cp_asked = hello.client_pool_bytes != 0 ? hello.client_pool_bytes : opts.default_client_pool_bytes;
  const uint64_t sp_asked = hello.server_pool_bytes != 0 ? hello.server_pool_bytes : opts.default_server_pool_bytes;
  if (cp_asked > opts.max_pool_bytes || sp_asked > opts.max_pool_bytes) {
    return refuse(fd, resource_exhausted("requested pool exceeds the server's limit of " +
                                         std::to_string(opts.max_pool_bytes) + " bytes"));
  }
  // In whole pages, as the segments hold them: the part in use from the start.
  const uint64_t cp = shm::segment_total_bytes(cp_asked) - shm::kSegmentDataOffset;
  const uint64_t sp = shm::segment_total_bytes(sp_asked) - shm::kSegmentDataOffset;
  auto most = [&](uint64_t asked, uint64_t start) {
    return std::max(asked == 0 ? uint64_t{opts.max_pool_bytes} : std::min<uint64_t>(asked, opts.max_pool_bytes), start);
  };
  const uint64_t cp_max = most(hello.client_pool_max_bytes, cp), sp_max = most(hello.server_pool_max_bytes, sp);
  uint32_t sub_n = hello.sub_ring_entries != 0 ? hello.sub_ring_entries : opts.default_ring_entries;
  uint32_t comp_n = hello.comp_ring_entries != 0 ? hello.comp_ring_entries : opts.default_ring_entries;
  if (!shm::valid_ring_capacity(sub_n) || !shm::valid_ring_capacity(comp_n) ||
      sub_n > detail::kMaxRingEntries || comp_n > detail::kMaxRingEntries) {
    return refuse(fd, invalid_argument("ring entries must be a power of two in [2, 65536]"));
  }
  if (counters.sessions_open.load(std::memory_order_relaxed) >= opts.max_sessions) {
    return refuse(fd, unavailable("server has its maximum of " + std::to_string(opts.max_sessions) + " sessions"));
  }
  if (opts.max_sessions_per_uid != 0 && counters.sessions_of(cred.uid) >= opts.max_sessions_per_uid) {
    return refuse(fd, unavailable("uid " + std::to_string(cred.uid) + " has its maximum of " +
                                  std::to_string(opts.max_sessions_per_uid) +
                                  " sessions on this server (ServerOptions::max_sessions_per_uid)"));
  }
  // What the session takes from the budget: the control segment and each
  // pool's header page and starting size (segment_total_bytes); growth
  // reserves more as it comes.
  const uint64_t need = shm::segment_total_bytes(detail::control_data_bytes(sub_n, comp_n)) +
                        shm::segment_total_bytes(cp) + shm::segment_total_bytes(sp);
  if (!counters.reserve_mapped(need)) {
    auto mib = [](uint64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20); };
    return refuse(fd, resource_exhausted("this session's pools (" + mib(need) +
                                         " MiB) would take the server past its memory budget for sessions (" +
                                         mib(counters.bytes_mapped.load(std::memory_order_relaxed)) + " of " +
                                         mib(counters.mapped_budget) +
                                         " MiB in use; ServerOptions::max_mapped_bytes): ask for smaller pools "
                                         "or try again when sessions close"));
  }
  // Given back on every refusal below; handed to the session on success.
  struct Reserved {
    detail::ServerCounters& c;
    uint64_t bytes;
    ~Reserved() { c.bytes_mapped.fetch_sub(bytes, std::memory_order_relaxed); }
  } reserved{counters, need};

  // Kernel copy path: read the client's token to learn whether we may.
  bool kernel_copy = false;
  struct PidFd {  // closed on every refusal below; handed to the session on success
    int fd = -1;
    ~PidFd() {
      if (fd >= 0) ::close(fd);
    }
  } pidfd;
  if (hello.probe_addr != 0 || amplifier) {
    pidfd.fd = detail::open_pidfd(cred.pid);
  }
  if (hello.probe_addr != 0) {
    uint64_t token = 0;
    kernel_copy = pidfd.fd >= 0 &&
                  detail::kernel_read(cred.pid, &token, reinterpret_cast<const void*>(hello.probe_addr), 8).ok() &&
                  token == hello.probe_value;
  }
  const uint64_t sid = next_session_id.fetch_add(1, std::memory_order_relaxed);
  shm::SegmentOptions so{.prefault = opts.prefault, .lock = false, .writable = true};
  shm::SegmentOptions pool_so = so;
  pool_so.huge_pages = opts.huge_pages ? shm::HugePages::kAsk : shm::HugePages::kRefuse;
  auto control = shm::Segment::create("rocket-control", shm::SegmentKind::kControl,
                                      detail::control_data_bytes(sub_n, comp_n), sid, so);
  if (!control.ok()) return refuse(fd, control.status());
  // Each pool is mapped at its most and populated as far as it starts.
  pool_so.prefault_data_bytes = cp;
  auto cpool = shm::Segment::create("rocket-client-pool", shm::SegmentKind::kClientPool, cp_max, sid, pool_so);
  if (!cpool.ok()) return refuse(fd, cpool.status());
  pool_so.prefault_data_bytes = sp;
  auto spool = shm::Segment::create("rocket-server-pool", shm::SegmentKind::kServerPool, sp_max, sid, pool_so);
  if (!spool.ok()) return refuse(fd, spool.status());
  int wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake < 0) return refuse(fd, errno_status("eventfd", errno));

  counters.sessions_open.fetch_add(1, std::memory_order_relaxed);
  counters.sessions_total.fetch_add(1, std::memory_order_relaxed);
  auto s = std::make_unique<detail::ServerSession>(&counters, sid);
  s->sock = fd;
  s->wake_fd = wake;
  s->tenant = std::string(tenant);
  s->cred = cred;
  counters.add_session_of(cred.uid);
  s->counted_for_uid = true;
  s->kernel_copy = kernel_copy;
  if (amplifier) s->lender = amplifier->lender_of(cred.pid, pidfd.fd);
  for (size_t i = 0; i < ops.size(); ++i) {
    const OpOptions& oo = ops[i].options;
    if (oo.allowed_uids.empty() && oo.allowed_gids.empty()) continue;
    const bool listed = std::find(oo.allowed_uids.begin(), oo.allowed_uids.end(), cred.uid) != oo.allowed_uids.end() ||
                        std::find(oo.allowed_gids.begin(), oo.allowed_gids.end(), cred.gid) != oo.allowed_gids.end();
    s->denied_ops.set(i, !listed);
  }
  s->pidfd = std::exchange(pidfd.fd, -1);
  s->end_hooks = &session_end_hooks;
  s->control = std::move(*control);
  s->client_pool = std::move(*cpool);
  s->server_pool = std::move(*spool);
  s->mapped_bytes.store(std::exchange(reserved.bytes, 0), std::memory_order_relaxed);
  s->prefault = opts.prefault;
  s->client_in_use.store(cp, std::memory_order_relaxed);
  auto view = detail::control_view(s->control.data(), sub_n);
  s->cb = new (view.block) detail::ControlBlock();  // the memfd is zeroed; this starts the atomics' lifetime
  s->rx = shm::RingConsumer<detail::SubDesc>(&s->cb->sub, view.sub_slots, sub_n);
  s->tx = shm::RingProducer<detail::CompDesc>(&s->cb->comp, view.comp_slots, comp_n);
  s->alloc = shm::PoolAllocator(sp);

  auto w = std::make_unique<detail::Welcome>();
  std::memset(w.get(), 0, sizeof(*w));
  w->magic = detail::kProtocolMagic;
  w->version = detail::kProtocolVersion;
  w->session_id = sid;
  w->client_pool_bytes = s->client_in_use.load(std::memory_order_relaxed);
  w->server_pool_bytes = s->alloc.capacity();
  w->client_pool_max_bytes = s->client_pool.data_bytes();
  w->server_pool_max_bytes = s->server_pool.data_bytes();
  w->sub_ring_entries = sub_n;
  w->comp_ring_entries = comp_n;
  w->op_count = static_cast<uint32_t>(ops.size());
  w->flags = kernel_copy ? uint32_t{detail::kWelcomeKernelCopy} : 0u;
  for (size_t i = 0; i < ops.size(); ++i) {
    w->ops[i].id = static_cast<uint32_t>(i);
    detail::set_fixed_string(w->ops[i].name, sizeof(w->ops[i].name), ops[i].name);
  }
  int fds[detail::kHandshakeFds] = {s->control.fd(), s->client_pool.fd(), s->server_pool.fd(), s->wake_fd};
  Status sent = detail::send_message(fd, w.get(), detail::kWelcomeHeaderBytes + ops.size() * sizeof(detail::OpEntry),
                                     fds);
  if (!sent.ok()) return;  // `s` closes the socket and unmaps
  Dispatcher& d = *dispatchers[next_dispatcher++ % dispatchers.size()];
  d.adopt(std::move(s));
}

// Accepts a connection and queues it for its hello. Bounds: a peer may keep
// at most kMaxPendingPerUid connections waiting with nothing said, all peers
// together kMaxPending; past either the new one is refused at once.
void Server::Impl::accept_one() {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) return;
    if (errno == EMFILE || errno == ENFILE) {  // back off instead of spinning
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return;
    }
    std::fprintf(stderr, "rocket: accept: %s\n", std::strerror(errno));
    return;
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return refuse(fd, errno_status("SO_PEERCRED", errno));
  }
  const auto same_uid =
      std::count_if(pending.begin(), pending.end(), [&](const PendingHello& h) { return h.cred.uid == cred.uid; });
  if (pending.size() >= kMaxPending || same_uid >= static_cast<long>(kMaxPendingPerUid)) {
    return refuse(fd, unavailable("too many connections from uid " + std::to_string(cred.uid) +
                                  " have not said hello yet; try again"));
  }
  pending.push_back({fd, cred, std::chrono::steady_clock::now() + opts.handshake_timeout});
}

void Server::Impl::accept_loop() {
  std::vector<pollfd> p;
  // acquire: pairs with the release store in stop().
  while (!stopping.load(std::memory_order_acquire)) {
    p.assign({{listen_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}});
    int wait_ms = -1;
    const auto now = std::chrono::steady_clock::now();
    for (const PendingHello& h : pending) {
      p.push_back({h.fd, POLLIN, 0});
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(h.deadline - now).count();
      const int ms = static_cast<int>(std::clamp<decltype(left)>(left, 0, INT32_MAX));
      wait_ms = wait_ms < 0 ? ms : std::min(wait_ms, ms);
    }
    int r = ::poll(p.data(), p.size(), wait_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "rocket: accept loop: poll: %s\n", std::strerror(errno));
      break;
    }
    if ((p[1].revents & POLLIN) != 0) break;
    // Hellos that arrived (or peers that hung up) in the order they
    // connected; then those out of time. p[2 + i] is pending[i] as polled.
    const auto after = std::chrono::steady_clock::now();
    std::vector<PendingHello> ready, late, waiting;
    for (size_t i = 0; i < pending.size(); ++i) {
      auto& to = p[2 + i].revents != 0 ? ready : pending[i].deadline <= after ? late : waiting;
      to.push_back(pending[i]);
    }
    pending = std::move(waiting);
    for (const PendingHello& h : ready) handshake(h.fd, h.cred);
    for (const PendingHello& h : late) {
      refuse(h.fd,
             deadline_exceeded("peer sent nothing within " + std::to_string(opts.handshake_timeout.count()) + " ms"));
    }
    if ((p[0].revents & POLLIN) != 0) accept_one();
  }
  for (const PendingHello& h : pending) ::close(h.fd);
  pending.clear();
}

// --- Server -----------------------------------------------------------------------

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::Server(std::string socket_path, ServerOptions options) : Server([&] {
    options.socket_path = std::move(socket_path);
    return std::move(options);
  }()) {}

Server::~Server() {
  if (impl_->in_forked_child()) {
    // The threads are the parent's (destroying them would end the child),
    // and the sessions' sockets and memory too: let it all go unrun.
    (void)impl_.release();
    return;
  }
  stop();
  wait();
}

namespace {
Status check_op_name(std::string_view op, const std::vector<detail::OpSpec>& ops) {
  if (op.empty() || op.size() >= detail::kOpNameBytes) {
    return invalid_argument("op name must be 1.." + std::to_string(detail::kOpNameBytes - 1) + " bytes");
  }
  if (op.find('\0') != std::string_view::npos) return invalid_argument("op name contains NUL");
  if (ops.size() >= detail::kMaxOps) return resource_exhausted("at most 256 ops per server");
  for (const auto& o : ops) {
    if (o.name == op) return invalid_argument("op '" + std::string(op) + "' is already registered");
  }
  return ok_status();
}
}  // namespace

Status Server::handle(std::string_view op, Handler handler, OpOptions options) {
  if (impl_->started) return failed_precondition("handle() after start()");
  if (!handler) return invalid_argument("empty handler");
  ROCKET_RETURN_IF_ERROR(check_op_name(op, impl_->ops));
  impl_->ops.push_back({std::string(op), std::move(handler), nullptr, options});
  return ok_status();
}

Status Server::handle_per_thread(std::string_view op, std::function<Handler()> factory, OpOptions options) {
  if (impl_->started) return failed_precondition("handle_per_thread() after start()");
  if (!factory) return invalid_argument("empty handler factory");
  ROCKET_RETURN_IF_ERROR(check_op_name(op, impl_->ops));
  impl_->ops.push_back({std::string(op), nullptr, std::move(factory), options});
  return ok_status();
}

Status Server::on_session_end(std::function<void(uint64_t)> hook) {
  if (impl_->started) return failed_precondition("on_session_end() after start()");
  if (!hook) return invalid_argument("empty session-end hook");
  impl_->session_end_hooks.push_back(std::move(hook));
  return ok_status();
}

namespace {
// Half of the memory this process may use: the machine's, or its memory
// cgroup's limit where that is lower. Sessions' pools are the server's to
// hold, and the other half is left to the work it does.
uint64_t default_mapped_budget() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  uint64_t room = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
  if (auto cg = detail::memory_cgroup_of(0); cg.ok()) {
    if (auto limit = detail::read_memory_limit(*cg); limit.ok() && *limit > 0) {
      room = room == 0 ? static_cast<uint64_t>(*limit) : std::min(room, static_cast<uint64_t>(*limit));
    }
  }
  return room == 0 ? UINT64_MAX : room / 2;  // nothing to go by: no budget
}
}  // namespace

Status Server::start() {
  Impl& m = *impl_;
  if (m.started) return failed_precondition("server already started");
  if (m.opts.dispatchers == 0) return invalid_argument("at least one dispatcher thread");
  if (!shm::valid_ring_capacity(m.opts.default_ring_entries) || m.opts.default_ring_entries > detail::kMaxRingEntries) {
    return invalid_argument("default_ring_entries must be a power of two in [2, 65536]");
  }
  std::vector<std::unique_ptr<Impl::Dispatcher>> dispatchers;
  for (unsigned i = 0; i < m.opts.dispatchers; ++i) {
    std::vector<Handler> handlers;
    for (const auto& op : m.ops) {
      if (op.shared) {
        handlers.push_back(op.shared);
        continue;
      }
      Handler h;
      try {
        h = op.factory();
      } catch (const std::exception& e) {
        return internal_error("handler factory for '" + op.name + "' threw: " + e.what());
      }
      if (!h) return invalid_argument("handler factory for '" + op.name + "' returned an empty handler");
      handlers.push_back(std::move(h));
    }
    auto d = std::make_unique<Impl::Dispatcher>(&m, std::move(handlers));
    ROCKET_RETURN_IF_ERROR(d->init());
    dispatchers.push_back(std::move(d));
  }
  m.counters.mapped_budget = m.opts.max_mapped_bytes != 0 ? m.opts.max_mapped_bytes : default_mapped_budget();
  std::unique_ptr<detail::Amplifier> amplifier;
  if (m.opts.lending.memory.enabled && !m.opts.lending.enabled) {
    return invalid_argument("lending.memory.enabled needs lending.enabled (memory is lent beside the CPU)");
  }
  if (m.opts.lending.enabled) {
    ROCKET_ASSIGN_OR_RETURN(amplifier, detail::Amplifier::create(m.opts.lending));
  }
  int stop_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd < 0) return errno_status("eventfd", errno);
  // The access list decides who gets in (SO_PEERCRED at the handshake); the
  // socket file's mode must not keep out the accounts it names.
  const bool listed = !m.opts.allowed_uids.empty() || !m.opts.allowed_gids.empty();
  auto lfd = detail::listen_unix(m.opts.socket_path, 128, listed ? 0666 : 0);
  if (!lfd.ok()) {
    ::close(stop_fd);
    return lfd.status();
  }
  m.listen_fd = *lfd;
  m.stop_fd = stop_fd;
  m.helping = m.opts.dispatchers > 1 &&
              std::any_of(m.ops.begin(), m.ops.end(), [](const detail::OpSpec& op) { return op.options.concurrent; });
  m.dispatchers = std::move(dispatchers);
  m.amplifier = std::move(amplifier);
  m.fork_generation = detail::fork_generation();
  m.started = true;
  for (auto& d : m.dispatchers) d->start();
  m.acceptor = std::thread([&m] { m.accept_loop(); });
  return ok_status();
}

Status Server::run() {
  ROCKET_RETURN_IF_ERROR(start());
  impl_->acceptor.join();
  wait();
  return ok_status();
}

void Server::stop() noexcept {
  Impl& m = *impl_;
  // A forked child's copy: its stop_fd and the dispatchers' eventfds are the
  // parent's, and writing them would stop the parent's server.
  if (m.in_forked_child()) return;
  // release: pairs with the acquire loads in the thread loops.
  m.stopping.store(true, std::memory_order_release);
  if (!m.started) return;
  uint64_t one = 1;
  ssize_t r = ::write(m.stop_fd, &one, sizeof(one));
  (void)r;
  for (auto& d : m.dispatchers) d->kick();
}

void Server::wait() {
  Impl& m = *impl_;
  // A forked child has no threads to join, and the socket file is the
  // parent's.
  if (!m.started || m.joined || m.in_forked_child()) return;
  // Returns once stop() woke the acceptor; run() may have joined it already.
  if (m.acceptor.joinable()) m.acceptor.join();
  for (auto& d : m.dispatchers) d->join();
  m.dispatchers.clear();
  m.joined = true;
  ::close(m.listen_fd);
  ::close(m.stop_fd);
  ::unlink(m.opts.socket_path.c_str());
}

ServerStats Server::stats() const {
  const Impl& m = *impl_;
  ServerStats s;
  s.sessions_open = m.counters.sessions_open.load(std::memory_order_relaxed);
  s.sessions_total = m.counters.sessions_total.load(std::memory_order_relaxed);
  s.sessions_refused = m.counters.sessions_refused.load(std::memory_order_relaxed);
  s.requests = m.counters.requests.load(std::memory_order_relaxed);
  s.request_errors = m.counters.request_errors.load(std::memory_order_relaxed);
  s.protocol_errors = m.counters.protocol_errors.load(std::memory_order_relaxed);
  s.bytes_mapped = m.counters.bytes_mapped.load(std::memory_order_relaxed);
  s.mapped_budget_bytes = m.counters.mapped_budget;
  s.pool_grows = m.counters.pool_grows.load(std::memory_order_relaxed);
  s.gpu_handles_opened = m.counters.gpu_handles_opened.load(std::memory_order_relaxed);
  s.gpu_responses_shared = m.counters.gpu_responses_shared.load(std::memory_order_relaxed);
  s.gpu_responses_copied = m.counters.gpu_responses_copied.load(std::memory_order_relaxed);
  s.requests_helped = m.counters.requests_helped.load(std::memory_order_relaxed);
  s.lends = m.counters.lends.load(std::memory_order_relaxed);
  s.lends_refused = m.counters.lends_refused.load(std::memory_order_relaxed);
  s.lends_returned_on_exit = m.amplifier ? m.amplifier->returned_on_exit() : 0;
  s.memory_lent_bytes = m.counters.memory_lent_bytes.load(std::memory_order_relaxed);
  s.memory_held_over_bytes = m.amplifier ? m.amplifier->memory_held_over() : 0;
  return s;
}

const ServerOptions& Server::options() const noexcept { return impl_->opts; }

}  // namespace rocket
