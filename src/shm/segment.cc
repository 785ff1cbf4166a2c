#include "rocket/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shm/os.h"

namespace rocket::shm {
namespace {
constexpr size_t kPage = 4096;
constexpr size_t kPagesPerHuge = (size_t{2} << 20) / kPage;
constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

// Pre-faults a fresh mapping so the data path takes no page faults.
// MAP_POPULATE alone is not enough for a shared writable mapping: it faults
// pages in for reading, and the first write to each page still faults
// (measured: 86 ms to fill 64 MiB, against 5 ms once populated for writing).
// MADV_POPULATE_WRITE (Linux 5.14) populates writable entries; older kernels
// fall back to MAP_POPULATE.
bool populate_now(void* p, size_t n, bool writable) noexcept {
  return ::madvise(p, n, writable ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0;
}

// Touches every page of a mapping the way it will be used. Populated page
// tables are not the whole story under a hypervisor: the first access to each
// page through each mapping still costs ~1.5 us (measured on the CI VM, 64 MiB:
// first write 21 ms and first read 28 ms without this, 1.7 ms and 4.0 ms
// with it). The write is an atomic add of zero: it changes nothing, even with
// the peer already writing the segment.
void touch_pages(void* p, size_t total, bool writable) noexcept {
  auto* bytes = static_cast<uint8_t*>(p);
  if (writable) {
    for (size_t off = 0; off < total; off += kPage) __atomic_fetch_add(bytes + off, 0, __ATOMIC_RELAXED);
  } else {
    uint8_t sink = 0;
    for (size_t off = 0; off < total; off += kPage) sink ^= __atomic_load_n(bytes + off, __ATOMIC_RELAXED);
    (void)sink;
  }
}

// Populates and touches [p, p + total) on up to `threads` threads, in
// page-aligned slices; false if the kernel refused MADV_POPULATE_*. Faulting
// in pages is the whole cost of a session's setup (two 192 MiB pools: ~0.6 s
// on one core of the CI VM) and it scales with cores: the faults take the
// mapping's lock shared.
// Slices hold whole 2 MiB units, so that no two threads fault in the same
// huge page.
bool populate_parallel(void* p, size_t total, bool writable, unsigned threads) noexcept {
  auto* base = static_cast<uint8_t*>(p);
  const size_t pages = total / kPage;
  const size_t units = (pages + kPagesPerHuge - 1) / kPagesPerHuge;
  std::atomic<bool> ok{true};
  auto slice = [&](unsigned i) {
    const size_t first = std::min(pages, units * i / threads * kPagesPerHuge);
    const size_t last = std::min(pages, units * (i + 1) / threads * kPagesPerHuge);
    if (last == first) return;
    if (!populate_now(base + first * kPage, (last - first) * kPage, writable)) {
      ok.store(false, std::memory_order_relaxed);
      return;
    }
    touch_pages(base + first * kPage, (last - first) * kPage, writable);
  };
  std::vector<std::thread> helpers;
  try {
    for (unsigned i = 1; i < threads; ++i) helpers.emplace_back(slice, i);
  } catch (...) {
    // No thread to be had: this one does the rest.
    for (unsigned i = static_cast<unsigned>(helpers.size()) + 1; i < threads; ++i) slice(i);
  }
  slice(0);
  for (auto& t : helpers) t.join();
  return ok.load(std::memory_order_relaxed);
}

// One thread per 32 MiB, at most one per core and at most 8.
unsigned populate_threads(size_t total) noexcept {
  const size_t by_size = total / (size_t{32} << 20);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<unsigned>(std::clamp<size_t>(by_size, 1, std::min(cores, 8u)));
}

// Maps `fd` with the huge-page advice asked for, pre-faulted for the access
// it will get. The advice comes before the faults: they decide the page size.
void* map_populated(size_t total, int prot, int fd, const SegmentOptions& opts) noexcept {
  const bool writable = (prot & PROT_WRITE) != 0;
  void* p = detail::os().mmap(nullptr, total, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return p;
  // Advisory: a kernel without THP refuses it, and the mapping works as is.
  if (opts.huge_pages == HugePages::kAsk) ::madvise(p, total, MADV_HUGEPAGE);
  if (opts.huge_pages == HugePages::kRefuse) ::madvise(p, total, MADV_NOHUGEPAGE);
  if (!opts.prefault) return p;
  // The header page and the data bytes asked for, in whole pages.
  const size_t want = opts.prefault_data_bytes >= total - kSegmentDataOffset
                          ? total
                          : kSegmentDataOffset + (opts.prefault_data_bytes + kPage - 1) / kPage * kPage;
  if (populate_parallel(p, want, writable, populate_threads(want))) return p;
  // Old kernel: remap, with MAP_POPULATE (read-populates; better than
  // nothing) only where the whole mapping is wanted, since it takes no range;
  // then touching faults in the part asked for.
  ::munmap(p, total);
  p = detail::os().mmap(nullptr, total, prot, MAP_SHARED | (want == total ? MAP_POPULATE : 0), fd, 0);
  if (p == MAP_FAILED) return p;
  touch_pages(p, want, writable);
  return p;
}
}  // namespace

std::string shmem_huge_pages() {
  FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
  if (f == nullptr) return "";
  char line[256] = {};
  const bool read = std::fgets(line, sizeof(line), f) != nullptr;
  std::fclose(f);
  if (!read) return "";
  const char* open = std::strchr(line, '[');
  const char* close = open != nullptr ? std::strchr(open, ']') : nullptr;
  if (close == nullptr) return "";
  return std::string(open + 1, close);
}

bool shmem_huge_pages_granted(const std::string& setting) noexcept {
  return setting == "advise" || setting == "within_size" || setting == "always" || setting == "force";
}

size_t segment_total_bytes(size_t data_bytes) noexcept {
  return kSegmentDataOffset + ((data_bytes + kPage - 1) / kPage) * kPage;
}

Result<Segment> Segment::create(const char* debug_name, SegmentKind kind, size_t data_bytes,
                                uint64_t session_id, const SegmentOptions& opts) {
  if (data_bytes == 0) return invalid_argument("segment size must be positive");
  const size_t total = segment_total_bytes(data_bytes);
  int fd = detail::os().memfd_create(debug_name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return errno_status("memfd_create", errno);
  if (::ftruncate(fd, static_cast<off_t>(total)) != 0) {
    int err = errno;
    ::close(fd);
    return errno_status("ftruncate(memfd)", err);
  }
  if (::fcntl(fd, F_ADD_SEALS, kRequiredSeals) != 0) {
    int err = errno;
    ::close(fd);
    return errno_status("fcntl(F_ADD_SEALS)", err);
  }
  void* p = map_populated(total, PROT_READ | PROT_WRITE, fd, opts);
  if (p == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    return errno_status("mmap(segment)", err);
  }
  if (opts.lock && ::mlock(p, total) != 0) {
    int err = errno;
    ::munmap(p, total);
    ::close(fd);
    return errno_status("mlock(segment)", err);
  }
  auto* h = static_cast<SegmentHeader*>(p);
  std::memset(h, 0, sizeof(*h));
  h->magic = kSegmentMagic;
  h->layout_version = kLayoutVersion;
  h->kind = static_cast<uint32_t>(kind);
  h->total_bytes = total;
  h->data_offset = kSegmentDataOffset;
  h->data_bytes = total - kSegmentDataOffset;
  h->session_id = session_id;
  return Segment(fd, static_cast<std::byte*>(p), total);
}

Result<Segment> Segment::attach(int fd, SegmentKind kind, size_t data_bytes,
                                const SegmentOptions& opts) {
  const size_t total = segment_total_bytes(data_bytes);
  auto fail = [fd](Status s) -> Result<Segment> {
    ::close(fd);
    return s;
  };
  // Size and seals first: mapping an unsealed or short file lets the peer
  // truncate it later and turn our reads into SIGBUS.
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return fail(data_loss("peer sent a descriptor that is not a sealable memfd"));
  if ((seals & kRequiredSeals) != kRequiredSeals) {
    return fail(data_loss("peer sent a memfd that is not sealed against resizing"));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(errno_status("fstat(segment)", errno));
  if (static_cast<uint64_t>(st.st_size) != total) {
    return fail(data_loss("segment size " + std::to_string(st.st_size) + " != expected " +
                         std::to_string(total)));
  }
  int prot = PROT_READ | (opts.writable ? PROT_WRITE : 0);
  void* p = map_populated(total, prot, fd, opts);
  if (p == MAP_FAILED) return fail(errno_status("mmap(segment)", errno));
  Segment seg(fd, static_cast<std::byte*>(p), total);
  SegmentHeader h;
  std::memcpy(&h, p, sizeof(h));  // one read: the peer may still be writing
  if (h.magic != kSegmentMagic) return data_loss("segment header has a bad magic number");
  if (h.layout_version != kLayoutVersion) {
    return failed_precondition("segment layout version " + std::to_string(h.layout_version) +
                              ", this build speaks " + std::to_string(kLayoutVersion));
  }
  if (h.kind != static_cast<uint32_t>(kind)) return data_loss("segment header names the wrong kind");
  if (h.total_bytes != total || h.data_offset != kSegmentDataOffset ||
      h.data_bytes != total - kSegmentDataOffset) {
    return data_loss("segment header sizes disagree with the handshake");
  }
  if (opts.lock && ::mlock(p, total) != 0) return errno_status("mlock(segment)", errno);
  return seg;
}

void Segment::populate(size_t offset, size_t bytes, bool writable) const noexcept {
  const size_t data = data_bytes();
  if (base_ == nullptr || offset >= data || bytes == 0) return;
  const size_t first = kSegmentDataOffset + offset / kPage * kPage;
  const size_t last =
      kSegmentDataOffset + std::min(data, (offset + std::min(bytes, data - offset) + kPage - 1) / kPage * kPage);
  void* p = base_ + first;
  if (!populate_parallel(p, last - first, writable, populate_threads(last - first))) {
    // No MADV_POPULATE_*: touching faults the pages in one by one.
    touch_pages(p, last - first, writable);
  }
}

Segment::Segment(Segment&& o) noexcept : fd_(o.fd_), base_(o.base_), total_(o.total_) {
  o.fd_ = -1;
  o.base_ = nullptr;
  o.total_ = 0;
}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.fd_;
    base_ = o.base_;
    total_ = o.total_;
    o.fd_ = -1;
    o.base_ = nullptr;
    o.total_ = 0;
  }
  return *this;
}

Segment::~Segment() { reset(); }

void Segment::reset() noexcept {
  if (base_ != nullptr) ::munmap(base_, total_);
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  fd_ = -1;
  total_ = 0;
}

}  // namespace rocket::shm
