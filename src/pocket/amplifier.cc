#include "pocket/amplifier.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mover/kernel_copy.h"

namespace rocket::detail {

// --- the journal ----------------------------------------------------------------

// A file of fixed slots, mapped shared: a slot is filled before a cgroup's
// limit is first changed and cleared after its base is written back, so what
// is in the file when a server starts is what a crashed predecessor left
// lent. Stores to the mapping reach the page cache at once, so they survive
// the process (not the machine; a reboot resets cgroups anyway).
class Amplifier::Journal {
 public:
  static Result<std::unique_ptr<Journal>> open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return errno_status("open lending journal " + path, errno);
    auto j = std::unique_ptr<Journal>(new Journal());
    j->fd_ = fd;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      return failed_precondition("lending journal " + path + " is in use by another server");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno_status("stat " + path, errno);
    const bool fresh = st.st_size == 0;
    if (!fresh && st.st_size != static_cast<off_t>(kBytes)) {
      return invalid_argument(path + " is not a Rocket lending journal (size " + std::to_string(st.st_size) + ")");
    }
    if (fresh && ::ftruncate(fd, kBytes) != 0) return errno_status("size lending journal " + path, errno);
    void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return errno_status("map lending journal " + path, errno);
    j->slots_ = static_cast<Slot*>(p);
    Slot& header = j->slots_[0];
    if (fresh) {
      header.v2 = kVersion;
      std::atomic_ref<uint32_t>(header.state).store(kHeaderMagic, std::memory_order_release);
    } else if (std::atomic_ref<uint32_t>(header.state).load(std::memory_order_acquire) != kHeaderMagic ||
               (header.v2 != kVersion && header.v2 != 1)) {
      return invalid_argument(path + " is not a Rocket lending journal (bad header)");
    }
    header.v2 = kVersion;  // version 1 had CPU slots only, which read the same
    return j;
  }

  ~Journal() {
    if (slots_ != nullptr) ::munmap(slots_, kBytes);
    if (fd_ >= 0) ::close(fd_);  // drops the lock
  }

  // Writes back the base limits a previous server recorded, saying so on stderr.
  void restore_all() {
    for (size_t i = 1; i < kSlots; ++i) {
      Slot& s = slots_[i];
      if (std::atomic_ref<uint32_t>(s.state).load(std::memory_order_acquire) != kInUse) continue;
      s.dir[sizeof(s.dir) - 1] = '\0';
      if ((s.v2 & kMemorySlot) != 0) {
        restore_memory(s);
        clear(static_cast<int>(i));
        continue;
      }
      auto cg = cpu_cgroup_at(s.dir);
      if (cg.ok() && cg->v2 == ((s.v2 & kV2Slot) != 0)) {
        Status st = write_cpu_quota(*cg, s.quota_us, s.period_us);
        if (st.ok()) {
          std::fprintf(stderr,
                       "rocket: put back the CPU limit of %s (%lld µs per %lld µs) that a previous server "
                       "had lent\n",
                       s.dir, static_cast<long long>(s.quota_us), static_cast<long long>(s.period_us));
        } else {
          std::fprintf(stderr, "rocket: could not put back the CPU limit of %s: %s\n", s.dir, st.to_string().c_str());
        }
      }
      clear(static_cast<int>(i));
    }
  }

  // The slot recording `cg`'s base, or -1 when the journal is full or the
  // directory too long for a slot.
  int record(const CpuCgroup& cg, const CpuLimit& base) { return record(cg, false, base.quota_us, base.period_us); }
  int record_memory(const MemoryCgroup& cg, int64_t base) { return record(cg, true, base, 0); }

  void clear(int slot) {
    if (slot <= 0 || static_cast<size_t>(slot) >= kSlots) return;
    std::atomic_ref<uint32_t>(slots_[slot].state).store(kFree, std::memory_order_release);
  }

 private:
  struct Slot {
    // Slot 0, the header, holds kHeaderMagic in `state` and kVersion in `v2`.
    alignas(8) uint32_t state;
    uint32_t v2;        // kV2Slot | kMemorySlot
    int64_t quota_us;   // a memory slot: the limit in bytes (kNoMemoryLimit: none)
    int64_t period_us;  // a memory slot: 0
    char dir[488];
  };
  static_assert(sizeof(Slot) == 512);
  static constexpr size_t kSlots = 64;  // slot 0 is the header
  static constexpr size_t kBytes = kSlots * sizeof(Slot);
  static constexpr uint32_t kHeaderMagic = 0x4a4c4b52;  // "RKLJ"
  static constexpr uint32_t kVersion = 2;               // 2: memory slots
  static constexpr uint32_t kFree = 0, kInUse = 1;
  static constexpr uint32_t kV2Slot = 1, kMemorySlot = 2;

  // A memory limit is put back only where that cannot kill: on v2 not below
  // what the cgroup uses now (v1 reclaims or refuses).
  static void restore_memory(const Slot& s) {
    auto cg = memory_cgroup_at(s.dir);
    if (!cg.ok() || cg->v2 != ((s.v2 & kV2Slot) != 0)) return;
    auto usage = read_memory_usage(*cg);
    Status st = cg->v2 && s.quota_us != kNoMemoryLimit && (!usage.ok() || *usage > s.quota_us)
                    ? failed_precondition("it uses " + (usage.ok() ? std::to_string(*usage) : std::string("?")) +
                                          " bytes, more than that")
                    : write_memory_limit(*cg, s.quota_us);
    if (st.ok()) {
      std::fprintf(stderr, "rocket: put back the memory limit of %s (%lld bytes) that a previous server had lent\n",
                   s.dir, static_cast<long long>(s.quota_us));
    } else {
      std::fprintf(stderr, "rocket: could not put back the memory limit of %s (%lld bytes): %s\n", s.dir,
                   static_cast<long long>(s.quota_us), st.to_string().c_str());
    }
  }

  int record(const Cgroup& cg, bool memory, int64_t a, int64_t b) {
    if (cg.dir.size() >= sizeof(Slot::dir)) return -1;
    for (size_t i = 1; i < kSlots; ++i) {
      Slot& s = slots_[i];
      if (std::atomic_ref<uint32_t>(s.state).load(std::memory_order_relaxed) != kFree) continue;
      std::memset(s.dir, 0, sizeof(s.dir));
      std::memcpy(s.dir, cg.dir.data(), cg.dir.size());
      s.v2 = (cg.v2 ? kV2Slot : 0) | (memory ? kMemorySlot : 0);
      s.quota_us = a;
      s.period_us = b;
      // release: the fields above are complete before the slot reads as in use.
      std::atomic_ref<uint32_t>(s.state).store(kInUse, std::memory_order_release);
      return static_cast<int>(i);
    }
    return -1;
  }

  Journal() = default;
  int fd_ = -1;
  Slot* slots_ = nullptr;
};

// --- the amplifier -----------------------------------------------------------------

Amplifier::Amplifier(const LendingOptions& options) : opts_(options) {}

Result<std::unique_ptr<Amplifier>> Amplifier::create(const LendingOptions& options) {
  if (!(options.default_factor >= 0) || !std::isfinite(options.default_factor)) {
    return invalid_argument("lending: default_factor must be a finite number >= 0");
  }
  for (const auto& [path, f] : options.factors) {
    if (!(f >= 0) || !std::isfinite(f)) return invalid_argument("lending: the factor of " + path + " must be >= 0");
  }
  auto amp = std::unique_ptr<Amplifier>(new Amplifier(options));
  if (!options.journal_path.empty()) {
    ROCKET_ASSIGN_OR_RETURN(amp->journal_, Journal::open(options.journal_path));
    amp->journal_->restore_all();
  }
  auto backend = options.backend_cgroup.empty() ? cpu_cgroup_of(0) : cpu_cgroup_at(options.backend_cgroup);
  if (!backend.ok()) return failed_precondition("lending: the backend's cgroup: " + backend.status().message());
  amp->backend_ = std::move(*backend);
  ROCKET_ASSIGN_OR_RETURN(CpuLimit lim, read_cpu_limit(amp->backend_));
  if (lim.quota_us < 0) {
    return failed_precondition("lending: the backend's cgroup " + amp->backend_.dir +
                               " has no CPU limit, so lending could give it nothing");
  }
  // Writing the limit it has proves we may write it, before any caller lends.
  if (Status st = write_cpu_quota(amp->backend_, lim.quota_us, lim.period_us); !st.ok()) {
    return failed_precondition("lending: the backend's cgroup is not writable here: " + st.message());
  }
  if (options.memory.enabled) {
    auto mem =
        options.memory.backend_cgroup.empty() ? memory_cgroup_of(0) : memory_cgroup_at(options.memory.backend_cgroup);
    if (!mem.ok()) return failed_precondition("lending: the backend's memory cgroup: " + mem.status().message());
    amp->backend_memory_ = std::move(*mem);
    ROCKET_ASSIGN_OR_RETURN(int64_t limit, read_memory_limit(amp->backend_memory_));
    if (limit == kNoMemoryLimit) {
      return failed_precondition("lending: the backend's memory cgroup " + amp->backend_memory_.dir +
                                 " has no memory limit, so lending could give it nothing");
    }
    if (Status st = write_memory_limit(amp->backend_memory_, limit); !st.ok()) {
      return failed_precondition("lending: the backend's memory cgroup is not writable here: " + st.message());
    }
  }
  amp->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (amp->epoll_fd_ < 0) return errno_status("epoll_create1", errno);
  amp->stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (amp->stop_fd_ < 0) return errno_status("eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // grant ids start at 1
  if (::epoll_ctl(amp->epoll_fd_, EPOLL_CTL_ADD, amp->stop_fd_, &ev) != 0) return errno_status("epoll_ctl", errno);
  amp->kick_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (amp->kick_fd_ < 0) return errno_status("eventfd", errno);
  ev.data.u64 = kKick;
  if (::epoll_ctl(amp->epoll_fd_, EPOLL_CTL_ADD, amp->kick_fd_, &ev) != 0) return errno_status("epoll_ctl", errno);
  amp->watcher_ = std::thread([a = amp.get()] { a->watch(); });
  return amp;
}

Amplifier::~Amplifier() {
  if (watcher_.joinable()) {
    uint64_t one = 1;
    ssize_t r = ::write(stop_fd_, &one, sizeof(one));
    (void)r;
    watcher_.join();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<uint64_t> ids;
    for (const auto& [id, o] : out_) ids.push_back(id);
    for (uint64_t id : ids) give_back_locked(id);
    auto b = mem_held_.find(backend_memory_.dir);
    if (b != mem_held_.end() && b->second.written != b->second.owed()) {
      // The journal keeps the base, for the next server to put back.
      std::fprintf(stderr,
                   "rocket: lending: the backend's memory limit stays at %lld bytes (%lld before the loans): it "
                   "still uses the memory\n",
                   static_cast<long long>(b->second.written), static_cast<long long>(b->second.base));
    }
  }
  if (kick_fd_ >= 0) ::close(kick_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

Amplifier::Lender Amplifier::lender_of(pid_t pid, int pidfd) const {
  Lender l;
  auto cg = cpu_cgroup_of(pid);
  // Read first, then check that the pid still names the caller.
  if (pidfd < 0 || pidfd_exited(pidfd)) {
    l.why_not = "the caller's process cannot be watched (no pidfd), or has exited";
    return l;
  }
  if (!cg.ok()) {
    l.why_not = "the caller's cgroup: " + cg.status().message();
    return l;
  }
  l.cgroup = std::move(*cg);
  if (l.cgroup.dir == backend_.dir) {
    l.why_not = "the caller is in the backend's own cgroup " + l.cgroup.path;
    return l;
  }
  auto it = opts_.factors.find(l.cgroup.path);
  l.factor = it != opts_.factors.end() ? it->second : opts_.default_factor;
  if (l.factor <= 0) l.why_not = "lending is off for cgroup " + l.cgroup.path + " (factor 0)";
  if (!opts_.memory.enabled) {
    l.memory_why_not = "this server does not take memory loans";
  } else if (!l.why_not.empty()) {
    l.memory_why_not = l.why_not;
  } else if (auto mem = memory_cgroup_of(pid); !mem.ok() || pidfd_exited(pidfd)) {
    l.memory_why_not = "the caller's memory cgroup: " + (mem.ok() ? "the caller has exited" : mem.status().message());
  } else if (mem->dir == backend_memory_.dir) {
    l.memory_why_not = "the caller is in the backend's own memory cgroup " + mem->path;
  } else {
    l.memory = std::move(*mem);
  }
  return l;
}

namespace {
// The books of `cg` in `held` (made, with its limit files opened, if it has
// none), with its limit as `read` reads it through them now in `*limit`. A
// cgroup removed since the files were opened, perhaps made anew under the
// same name, is opened once more; where that fails too, the books are dropped.
template <typename Entry, typename Limit, typename Read>
Result<Entry*> open_and_read(std::map<std::string, Entry>& held, const Cgroup& cg, Read read, Limit* limit) {
  using Files = decltype(Entry::files);
  auto it = held.find(cg.dir);
  if (it == held.end()) {
    ROCKET_ASSIGN_OR_RETURN(Files files, Files::open(cg));
    Entry fresh;
    fresh.cgroup = cg;
    fresh.files = std::move(files);
    it = held.emplace(cg.dir, std::move(fresh)).first;
  }
  Entry& e = it->second;
  Result<Limit> now = read(e.files);
  if (!now.ok()) {
    auto files = Files::open(cg);
    if (files.ok()) {
      e.files = std::move(*files);
      now = read(e.files);
    }
    if (!now.ok()) {
      held.erase(it);
      return now.status();
    }
  }
  *limit = *now;
  return &e;
}
}  // namespace

Result<Amplifier::Held*> Amplifier::hold(const CpuCgroup& cg) {
  auto it = held_.find(cg.dir);
  if (it != held_.end() && it->second.grants > 0) return &it->second;
  CpuLimit base;
  ROCKET_ASSIGN_OR_RETURN(Held * held, open_and_read(
                                           held_, cg, [](const CpuLimitFiles& f) { return f.read(); }, &base));
  Held& h = *held;
  h.base = base;
  h.delta_us = 0;
  if (journal_) {
    h.journal_slot = journal_->record(cg, h.base);
    if (h.journal_slot < 0) return resource_exhausted("the lending journal has no room for " + cg.dir);
  }
  return &h;
}

void Amplifier::release_hold(const std::string& dir) {
  auto it = held_.find(dir);
  if (it == held_.end() || it->second.grants != 0) return;
  if (journal_) journal_->clear(it->second.journal_slot);
  it->second.journal_slot = -1;
}

namespace {
// Why the kernel may refuse to grow a cgroup v1 quota: no child may have
// more than its parent. Read only when a write has failed.
std::string parent_limit_note(const CpuCgroup& cg, int64_t wanted_us) {
  if (cg.v2) return "";
  const size_t slash = cg.dir.rfind('/');
  if (slash == std::string::npos || slash == 0) return "";
  auto parent = cpu_cgroup_at(cg.dir.substr(0, slash));
  if (!parent.ok()) return "";
  auto lim = read_cpu_limit(*parent);
  if (!lim.ok() || lim->quota_us < 0 || lim->quota_us >= wanted_us) return "";
  return " (on cgroup v1 no cgroup may have a larger quota than its parent, and " + parent->dir + " has " +
         std::to_string(lim->quota_us) + " µs against the " + std::to_string(wanted_us) + " µs the loan needs)";
}
}  // namespace

Amplifier::Grant Amplifier::lend(const Lender& lender, uint32_t millicpus, uint64_t memory_bytes, int pidfd,
                                 std::string* why) {
  auto refuse = [why](std::string w) {
    if (why != nullptr) *why = std::move(w);
    return Grant{};
  };
  if (millicpus == 0 && memory_bytes == 0) return refuse("nothing to lend");
  const int watch_fd = pidfd >= 0 ? ::fcntl(pidfd, F_DUPFD_CLOEXEC, 0) : -1;
  if (watch_fd < 0) return refuse("cannot watch the caller: " + std::string(std::strerror(errno)));
  std::lock_guard<std::mutex> lock(mu_);
  if (held_.size() >= kMaxCachedCgroups) {  // callers' cgroups come and go; keep the open files bounded
    std::erase_if(held_, [](const auto& e) { return e.second.grants == 0; });
  }
  if (mem_held_.size() >= kMaxCachedCgroups) {
    std::erase_if(mem_held_, [](const auto& e) { return !e.second.busy(); });
  }
  Out out;
  std::string cpu_why, memory_why;
  const uint32_t lent = millicpus != 0 ? lend_cpu_locked(lender, millicpus, out, &cpu_why) : 0;
  const uint64_t lent_memory = memory_bytes != 0 ? lend_memory_locked(lender, memory_bytes, out, &memory_why) : 0;
  if (why != nullptr) {
    *why = cpu_why.empty() || memory_why.empty() ? cpu_why + memory_why : cpu_why + "; " + memory_why;
  }
  if (lent == 0 && lent_memory == 0) {
    ::close(watch_fd);
    return Grant{};
  }
  const uint64_t id = next_id_++;
  out.pidfd = watch_fd;
  out_.emplace(id, std::move(out));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, watch_fd, &ev) != 0) {
    const int err = errno;
    give_back_locked(id);  // unwatched, a dying caller would keep it
    return refuse("cannot watch the caller: " + std::string(std::strerror(err)));
  }
  return Grant{id, lent, lent_memory};
}

uint32_t Amplifier::lend_cpu_locked(const Lender& lender, uint32_t millicpus, Out& out, std::string* why) {
  auto fail = [&](std::string w) {
    release_hold(lender.cgroup.dir);
    release_hold(backend_.dir);
    *why = std::move(w);
    return 0u;
  };
  if (!lender.why_not.empty()) return fail(lender.why_not);
  millicpus = std::min(millicpus, opts_.max_lend_millicpus);
  if (millicpus == 0) return fail("no CPU loans here (max_lend_millicpus 0)");
  auto lh = hold(lender.cgroup);
  if (!lh.ok()) return fail(lh.status().message());
  auto bh = hold(backend_);
  if (!bh.ok()) return fail(bh.status().message());
  Held& l = **lh;
  Held& b = **bh;
  if (l.base.quota_us < 0) return fail("the caller's cgroup " + lender.cgroup.path + " has no CPU limit to lend from");
  const int64_t l_now = l.base.quota_us + l.delta_us;
  const int64_t b_now = b.base.quota_us + b.delta_us;
  const int64_t spare = std::max<int64_t>(0, (l_now - kMinCpuQuotaUs) * 1000 / l.base.period_us);
  const auto lent = static_cast<uint32_t>(std::min<int64_t>(millicpus, spare));
  if (lent == 0) {
    return fail("the caller's cgroup " + lender.cgroup.path + " has no quota to spare (" + std::to_string(l_now) +
                " µs per " + std::to_string(l.base.period_us) + " µs)");
  }
  const int64_t take = static_cast<int64_t>(lent) * l.base.period_us / 1000;
  const auto add =
      static_cast<int64_t>(std::llround(lent * lender.factor * static_cast<double>(b.base.period_us) / 1000));
  // The caller shrinks first, so the two never hold more than the factor allows.
  if (Status st = l.files.write_quota(l_now - take, l.base.period_us); !st.ok()) return fail(st.message());
  if (add > 0) {
    if (Status st = b.files.write_quota(b_now + add, b.base.period_us); !st.ok()) {
      Status undo = l.files.write_quota(l_now, l.base.period_us);
      (void)undo;  // best effort; the base goes back when the last grant ends
      return fail(st.message() + parent_limit_note(b.cgroup, b_now + add));
    }
  }
  l.delta_us -= take;
  b.delta_us += add;
  ++l.grants;
  ++b.grants;
  out.lender_dir = lender.cgroup.dir;
  out.taken_us = take;
  out.added_us = add;
  return lent;
}

Result<Amplifier::MemHeld*> Amplifier::hold_memory(const MemoryCgroup& cg) {
  auto it = mem_held_.find(cg.dir);
  if (it != mem_held_.end() && it->second.busy()) return &it->second;
  int64_t base = 0;
  ROCKET_ASSIGN_OR_RETURN(MemHeld * held, open_and_read(
                                              mem_held_, cg, [](const MemoryFiles& f) { return f.limit(); }, &base));
  MemHeld& h = *held;
  h.base = h.written = base;
  h.delta = 0;
  if (journal_) {
    h.journal_slot = journal_->record_memory(cg, h.base);
    if (h.journal_slot < 0) return resource_exhausted("the lending journal has no room for " + cg.dir);
  }
  return &h;
}

void Amplifier::release_memory_hold(const std::string& dir) {
  auto it = mem_held_.find(dir);
  if (it == mem_held_.end() || it->second.busy()) return;
  if (journal_) journal_->clear(it->second.journal_slot);
  it->second.journal_slot = -1;
}

uint64_t Amplifier::lend_memory_locked(const Lender& lender, uint64_t bytes, Out& out, std::string* why) {
  auto fail = [&](std::string w) {
    release_memory_hold(lender.memory.dir);
    release_memory_hold(backend_memory_.dir);
    *why = std::move(w);
    return uint64_t{0};
  };
  if (!lender.memory_why_not.empty()) return fail(lender.memory_why_not);
  if (lender.memory.dir.empty())
    return fail(lender.why_not.empty() ? "the caller's memory cgroup is unknown" : lender.why_not);
  constexpr int64_t kPage = 4096;
  bytes = std::min(bytes, opts_.memory.max_lend_bytes);
  auto lh = hold_memory(lender.memory);
  if (!lh.ok()) return fail(lh.status().message());
  auto bh = hold_memory(backend_memory_);
  if (!bh.ok()) return fail(bh.status().message());
  MemHeld& l = **lh;
  MemHeld& b = **bh;
  if (l.base == kNoMemoryLimit) {
    return fail("the caller's memory cgroup " + lender.memory.path + " has no memory limit to lend from");
  }
  if (b.base == kNoMemoryLimit) return fail("the backend's memory cgroup has no memory limit any more");
  auto usage = l.files.usage();
  if (!usage.ok()) return fail(usage.status().message());
  const int64_t l_now = l.owed();
  // Only headroom: the caller's new limit stays above its usage and the reserve.
  const int64_t spare = l_now - *usage - static_cast<int64_t>(opts_.memory.reserve_bytes);
  const int64_t lent = std::min<int64_t>(static_cast<int64_t>(bytes), std::max<int64_t>(spare, 0)) / kPage * kPage;
  if (lent == 0) {
    return fail("the caller's memory cgroup " + lender.memory.path + " has no memory to spare (limit " +
                std::to_string(l_now) + ", usage " + std::to_string(*usage) + ", reserve " +
                std::to_string(opts_.memory.reserve_bytes) + " bytes)");
  }
  const int64_t add = std::llround(static_cast<double>(lent) * lender.factor) / kPage * kPage;
  // The caller shrinks first, as with the CPU.
  if (Status st = l.files.set_limit(l_now - lent); !st.ok()) return fail(st.message());
  const int64_t b_owed = b.base + b.delta + add;
  if (b_owed > b.written) {
    if (Status st = b.files.set_limit(b_owed); !st.ok()) {
      Status undo = l.files.set_limit(l_now);
      (void)undo;  // best effort; the base goes back when the last grant ends
      return fail(st.message());
    }
    b.written = b_owed;
  }
  l.delta -= lent;
  l.written = l_now - lent;
  b.delta += add;
  ++l.grants;
  ++b.grants;
  out.memory_lender_dir = lender.memory.dir;
  out.memory_taken = lent;
  out.memory_added = add;
  return static_cast<uint64_t>(lent);
}

bool Amplifier::settle_backend_memory() {
  auto it = mem_held_.find(backend_memory_.dir);
  if (it == mem_held_.end()) return true;
  MemHeld& b = it->second;
  const int64_t owed = b.owed();
  if (b.written != owed) {
    bool try_write = owed > b.written;
    if (!try_write) {
      // Down: where it uses no more than it is owed, at once. Above that, v2
      // would kill a member, so it waits; v1 may reclaim (the page cache the
      // loan filled), at most once a second, and refuses what it cannot.
      auto usage = b.files.usage();
      const auto now = std::chrono::steady_clock::now();
      try_write = usage.ok() && *usage <= owed;
      if (!try_write && !b.files.v2() && now >= next_reclaim_) {
        try_write = true;
        next_reclaim_ = now + std::chrono::seconds(1);
      }
    }
    if (try_write && b.files.set_limit(owed).ok()) b.written = owed;
  }
  release_memory_hold(backend_memory_.dir);
  return b.written == owed;
}

uint64_t Amplifier::memory_held_over() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = mem_held_.find(backend_memory_.dir);
  if (it == mem_held_.end()) return 0;
  return static_cast<uint64_t>(std::max<int64_t>(0, it->second.written - it->second.owed()));
}

void Amplifier::give_back(uint64_t id) noexcept {
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  give_back_locked(id);
}

void Amplifier::give_back_locked(uint64_t id) noexcept {
  auto it = out_.find(id);
  if (it == out_.end()) return;
  Out o = std::move(it->second);
  out_.erase(it);
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, o.pidfd, nullptr);
  ::close(o.pidfd);
  // The backend shrinks first, the reverse of lend().
  auto put = [](Held& h, int64_t change) {
    h.delta_us += change;
    --h.grants;
    const int64_t quota = h.grants == 0 ? h.base.quota_us : h.base.quota_us + h.delta_us;
    Status st = h.files.write_quota(quota, h.base.period_us);
    // A caller's cgroup may be gone with the caller; nothing to put back then.
    if (!st.ok() && ::access(h.cgroup.dir.c_str(), F_OK) == 0) {
      std::fprintf(stderr, "rocket: lending: could not put back the CPU limit of %s: %s\n", h.cgroup.dir.c_str(),
                   st.to_string().c_str());
    }
  };
  if (!o.lender_dir.empty()) {
    auto b = held_.find(backend_.dir);
    if (b != held_.end()) put(b->second, -o.added_us);
    auto l = held_.find(o.lender_dir);
    if (l != held_.end()) put(l->second, o.taken_us);
    release_hold(backend_.dir);
    release_hold(o.lender_dir);
  }
  if (!o.memory_lender_dir.empty()) {
    // The caller is paid back at once; the backend comes down to what it is
    // owed once it lets go of the memory (settle_backend_memory).
    auto b = mem_held_.find(backend_memory_.dir);
    if (b != mem_held_.end()) {
      b->second.delta -= o.memory_added;
      --b->second.grants;
    }
    auto l = mem_held_.find(o.memory_lender_dir);
    if (l != mem_held_.end()) {
      MemHeld& h = l->second;
      h.delta += o.memory_taken;
      --h.grants;
      Status st = h.files.set_limit(h.owed());
      if (!st.ok() && ::access(h.cgroup.dir.c_str(), F_OK) == 0) {
        std::fprintf(stderr, "rocket: lending: could not put back the memory limit of %s: %s\n", h.cgroup.dir.c_str(),
                     st.to_string().c_str());
      }
      h.written = h.owed();  // written, or gone, or beyond repair: the books close anyway
      release_memory_hold(o.memory_lender_dir);
    }
    if (!settle_backend_memory() && kick_fd_ >= 0) {
      uint64_t one = 1;  // the watcher retries from now on
      ssize_t r = ::write(kick_fd_, &one, sizeof(one));
      (void)r;
    }
  }
}

uint64_t Amplifier::grants_out() const {
  std::lock_guard<std::mutex> lock(mu_);
  return out_.size();
}

void Amplifier::watch() {
  epoll_event ev[16];
  bool held_over = false;
  for (;;) {
    // While the backend holds memory over, come back every 100 ms to take it.
    int n = ::epoll_wait(epoll_fd_, ev, 16, held_over ? 100 : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "rocket: lending watcher: epoll_wait: %s\n", std::strerror(errno));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      held_over = !settle_backend_memory();
    }
    for (int i = 0; i < n; ++i) {
      if (ev[i].data.u64 == 0) return;  // stop_fd_
      if (ev[i].data.u64 == kKick) {
        uint64_t count;
        ssize_t r = ::read(kick_fd_, &count, sizeof(count));
        (void)r;
        held_over = true;  // settled above, or retried in 100 ms
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (out_.count(ev[i].data.u64) != 0) {
        give_back_locked(ev[i].data.u64);
        returned_on_exit_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
}

}  // namespace rocket::detail
