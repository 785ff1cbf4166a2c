// A shared-memory segment: an anonymous, sealed memfd mapped once.
//
// Segments have no global name: a process can map one only if it was handed
// the file descriptor (over the session socket with SCM_RIGHTS). The creator
// seals the size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) so that no peer can
// truncate it and crash the other side with SIGBUS; the attacher verifies the
// seals and the size before it maps anything, and then checks the header.
//
//   auto seg = rocket::shm::Segment::create("rocket-pool", 64 << 20, {.prefault = true});
//   int fd = seg->fd();            // send to the peer
//   auto peer = rocket::shm::Segment::attach(fd, expected_size, {.writable = false});
//
// Thread safety: a Segment is not copyable; const methods may be called from any
// thread. Destruction unmaps and closes the descriptor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "rocket/status.h"

namespace rocket::shm {

inline constexpr uint64_t kSegmentMagic = 0x3130474553544b52ULL;  // "RKTSEG01"
inline constexpr uint32_t kLayoutVersion = 1;

enum class SegmentKind : uint32_t {
  kControl = 1,     // header, futex words, ring indices and ring entries
  kClientPool = 2,  // request payloads; allocated by the client only
  kServerPool = 3,  // response payloads; allocated by the server only
};

// The first 64 bytes of every segment. Written once by the creator before the
// descriptor is sent; read and checked by the attacher.
struct SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t kind;          // SegmentKind
  uint64_t total_bytes;   // size of the whole memfd
  uint64_t data_offset;   // where the usable area begins
  uint64_t data_bytes;    // size of the usable area
  uint64_t session_id;
  uint64_t reserved[2];
};
static_assert(sizeof(SegmentHeader) == 64);

// Usable data begins one page in, so pool payloads are page-aligned.
inline constexpr size_t kSegmentDataOffset = 4096;

// Transparent huge pages for a mapping. Pools ask for them: 2 MiB pages
// make opening a session ~9x faster (one fault per 2 MiB, not per 4 KiB;
// `rocket bench connect`); copies were no faster in our runs, the pages being
// populated at connect either way. Shared memory gets them only where the
// system allows it (/sys/kernel/mm/transparent_hugepage/shmem_enabled:
// "advise" or above; Debian's default is "never"); see shmem_huge_pages().
enum class HugePages : uint8_t {
  kSystem,  // no advice: whatever shmem_enabled says
  kAsk,     // MADV_HUGEPAGE
  kRefuse,  // MADV_NOHUGEPAGE: 4 KiB pages whatever shmem_enabled says
};

struct SegmentOptions {
  // Populate (MADV_POPULATE_WRITE/READ) and touch every page at map time, so
  // the data path takes no first-access costs; costs ~0.5 ms per MiB per
  // mapping on the CI VM, paid once per session.
  bool prefault = true;
  // With `prefault`, how many data bytes (from the start of the data area) to
  // populate; the rest of the mapping faults in on first touch, or when
  // populate() is called. A pool that grows on demand is mapped at its most
  // and populated as far as it is in use (SIZE_MAX: all of it).
  size_t prefault_data_bytes = SIZE_MAX;
  bool lock = false;     // mlock (needs RLIMIT_MEMLOCK)
  bool writable = true;  // PROT_WRITE in this process
  HugePages huge_pages = HugePages::kSystem;
};

// The system's shared-memory huge page setting, the bracketed word of
// /sys/kernel/mm/transparent_hugepage/shmem_enabled ("never", "advise",
// "within_size", "always", "deny", "force"), or "" where there is none.
std::string shmem_huge_pages();
// Whether a mapping that asks (HugePages::kAsk) gets 2 MiB pages here.
bool shmem_huge_pages_granted(const std::string& setting) noexcept;

class Segment {
 public:
  // Creates, sizes, seals and maps a memfd of `data_bytes` usable bytes, and
  // writes its header.
  static Result<Segment> create(const char* debug_name, SegmentKind kind, size_t data_bytes,
                                uint64_t session_id, const SegmentOptions& opts);
  // Maps a descriptor received from a peer after checking that it is a sealed
  // memfd of exactly the expected size and that its header says `kind` with
  // `data_bytes` usable bytes. Takes ownership of `fd` on success and failure.
  static Result<Segment> attach(int fd, SegmentKind kind, size_t data_bytes,
                                const SegmentOptions& opts);

  // An empty segment (maps nothing).
  Segment() noexcept = default;
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  int fd() const noexcept { return fd_; }
  std::byte* base() const noexcept { return base_; }
  size_t total_bytes() const noexcept { return total_; }
  std::byte* data() const noexcept { return base_ + kSegmentDataOffset; }
  size_t data_bytes() const noexcept { return total_ - kSegmentDataOffset; }
  const SegmentHeader& header() const noexcept { return *reinterpret_cast<const SegmentHeader*>(base_); }
  // Populates and touches data bytes [offset, offset + bytes) of this
  // mapping (whole pages around them), for writing where `writable`; a range
  // past the data area is cut at its end. Pages not yet in the memfd are
  // allocated, charged to this process's memory cgroup. `writable` needs a
  // writable mapping.
  void populate(size_t offset, size_t bytes, bool writable) const noexcept;

 private:
  Segment(int fd, std::byte* base, size_t total) noexcept : fd_(fd), base_(base), total_(total) {}
  void reset() noexcept;

  int fd_ = -1;
  std::byte* base_ = nullptr;
  size_t total_ = 0;
};

// Total memfd size for `data_bytes` usable bytes (header page + data rounded to pages).
size_t segment_total_bytes(size_t data_bytes) noexcept;

}  // namespace rocket::shm
