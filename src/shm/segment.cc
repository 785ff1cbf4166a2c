#include "rocket/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shm/os.h"

namespace rocket::shm {
namespace {
constexpr size_t kPage = 4096;
constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
}  // namespace

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
  int flags = MAP_SHARED | (opts.prefault ? MAP_POPULATE : 0);
  void* p = detail::os().mmap(nullptr, total, PROT_READ | PROT_WRITE, flags, fd, 0);
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
  int flags = MAP_SHARED | (opts.prefault ? MAP_POPULATE : 0);
  void* p = detail::os().mmap(nullptr, total, prot, flags, fd, 0);
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
