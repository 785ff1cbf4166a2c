#include "rocket/shm/segment.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shm/os.h"

namespace rocket::shm {
namespace {

int dup_fd(const Segment& s) { return ::fcntl(s.fd(), F_DUPFD_CLOEXEC, 0); }

TEST(Segment, CreateThenAttachSeesTheSameBytes) {
  auto a = Segment::create("t", SegmentKind::kClientPool, 1 << 20, 7, {});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->header().magic, kSegmentMagic);
  EXPECT_EQ(a->header().session_id, 7u);
  EXPECT_EQ(a->data_bytes(), 1u << 20);
  auto b = Segment::attach(dup_fd(*a), SegmentKind::kClientPool, 1 << 20, {});
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  std::memcpy(a->data(), "hello", 5);
  EXPECT_EQ(std::memcmp(b->data(), "hello", 5), 0);
}

TEST(Segment, PrefaultFaultsInEveryPage) {
  // Large enough to be populated in slices on several threads, and an odd
  // number of pages: every page of every slice is in memory on return.
  const size_t bytes = (size_t{100} << 20) + 3 * 4096;
  auto a = Segment::create("t", SegmentKind::kClientPool, bytes, 1, {.prefault = true});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  const size_t pages = a->total_bytes() / 4096;
  std::vector<unsigned char> resident(pages);
  ASSERT_EQ(::mincore(a->data() - kSegmentDataOffset, a->total_bytes(), resident.data()), 0);
  size_t missing = 0;
  for (unsigned char r : resident) missing += (r & 1) == 0;
  EXPECT_EQ(missing, 0u) << "of " << pages << " pages";
}

size_t resident_pages(const Segment& s, size_t from, size_t to) {
  std::vector<unsigned char> resident(s.total_bytes() / 4096);
  if (::mincore(s.base(), s.total_bytes(), resident.data()) != 0) return SIZE_MAX;
  size_t n = 0;
  for (size_t i = from; i < to; ++i) n += resident[i] & 1;
  return n;
}

TEST(Segment, PrefaultCanStopShortAndPopulateLater) {
  // A pool mapped at its most, in use for its first 1 MiB: only the header
  // page and that 1 MiB are in memory; populate() brings in more on demand.
  const size_t bytes = size_t{64} << 20, used = size_t{1} << 20;
  auto a = Segment::create("t", SegmentKind::kClientPool, bytes, 1, {.prefault = true, .prefault_data_bytes = used});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  const size_t head = kSegmentDataOffset / 4096, used_pages = used / 4096, all = a->total_bytes() / 4096;
  EXPECT_EQ(resident_pages(*a, 0, head + used_pages), head + used_pages);
  EXPECT_EQ(resident_pages(*a, head + used_pages, all), 0u);
  a->populate(used + 100, 4 * 4096, /*writable=*/true);  // pages 1 MiB .. 1 MiB + 5 pages
  EXPECT_EQ(resident_pages(*a, head + used_pages, head + used_pages + 5), 5u);
  EXPECT_EQ(resident_pages(*a, head + used_pages + 5, all), 0u);
  a->populate(bytes - 10, 1000, true);  // cut at the end: the last page
  EXPECT_EQ(resident_pages(*a, all - 1, all), 1u);
  a->populate(bytes, 4096, true);  // past the end: nothing
  EXPECT_EQ(resident_pages(*a, head + used_pages + 5, all), 1u);
}

// kB of a mapping mapped with 2 MiB page-table entries, from /proc/self/smaps;
// -1 where the mapping is not found.
long pmd_mapped_kb(const void* addr) {
  FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f == nullptr) return -1;
  char line[512];
  bool in_it = false;
  long kb = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's first line; no field name parses so
      in_it = reinterpret_cast<uintptr_t>(addr) == lo;
      continue;
    }
    if (in_it && std::sscanf(line, "ShmemPmdMapped: %ld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb;
}

TEST(Segment, HugePagesBackAPoolWhereTheSystemAllowsThem) {
  const std::string setting = shmem_huge_pages();
  if (!shmem_huge_pages_granted(setting)) {
    GTEST_SKIP() << "shared-memory huge pages are '" << setting << "' here (shmem_enabled)";
  }
  const size_t bytes = size_t{16} << 20;
  auto a = Segment::create("t", SegmentKind::kClientPool, bytes, 1, {.huge_pages = HugePages::kAsk});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto b =
      Segment::attach(dup_fd(*a), SegmentKind::kClientPool, bytes, {.writable = false, .huge_pages = HugePages::kAsk});
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  // The first 2 MiB hold the header page; from there on, whole 2 MiB pages
  // in both mappings.
  EXPECT_GE(pmd_mapped_kb(a->base()), 14 * 1024);
  EXPECT_GE(pmd_mapped_kb(b->base()), 14 * 1024);
  std::memcpy(a->data() + bytes - 5, "hello", 5);
  EXPECT_EQ(std::memcmp(b->data() + bytes - 5, "hello", 5), 0);
}

TEST(Segment, RefusedHugePagesStayAtSmallPages) {
  if (shmem_huge_pages() == "force") GTEST_SKIP() << "shmem_enabled is 'force': every mapping gets huge pages";
  auto a = Segment::create("t", SegmentKind::kClientPool, size_t{16} << 20, 1, {.huge_pages = HugePages::kRefuse});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(pmd_mapped_kb(a->base()), 0);
}

TEST(Segment, HugePageSettingsThatGrantAnAskingMapping) {
  for (const char* yes : {"advise", "within_size", "always", "force"})
    EXPECT_TRUE(shmem_huge_pages_granted(yes)) << yes;
  for (const char* no : {"never", "deny", "", "[advise]"}) EXPECT_FALSE(shmem_huge_pages_granted(no)) << no;
  const std::string here = shmem_huge_pages();
  for (char c : here) EXPECT_TRUE(c == '_' || (c >= 'a' && c <= 'z')) << "'" << here << "'";
}

TEST(Segment, IsSealedAgainstResizing) {
  auto a = Segment::create("t", SegmentKind::kClientPool, 1 << 16, 1, {});
  ASSERT_TRUE(a.ok());
  EXPECT_NE(::ftruncate(a->fd(), 4096), 0);  // a peer cannot shrink it into SIGBUS
  EXPECT_EQ(errno, EPERM);
}

TEST(Segment, AttachRejectsUnsealedMemfd) {
  int fd = ::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(segment_total_bytes(4096))), 0);
  auto b = Segment::attach(fd, SegmentKind::kClientPool, 4096, {});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss);
}

TEST(Segment, AttachRejectsWrongSize) {
  auto a = Segment::create("t", SegmentKind::kClientPool, 1 << 16, 1, {});
  ASSERT_TRUE(a.ok());
  auto b = Segment::attach(dup_fd(*a), SegmentKind::kClientPool, 1 << 20, {});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss);
}

TEST(Segment, AttachRejectsBadHeader) {
  auto a = Segment::create("t", SegmentKind::kClientPool, 1 << 16, 1, {});
  ASSERT_TRUE(a.ok());
  auto* h = reinterpret_cast<SegmentHeader*>(a->base());
  h->magic ^= 1;
  EXPECT_EQ(Segment::attach(dup_fd(*a), SegmentKind::kClientPool, 1 << 16, {}).status().code(),
            StatusCode::kDataLoss);
  h->magic ^= 1;
  h->layout_version = 99;
  EXPECT_EQ(Segment::attach(dup_fd(*a), SegmentKind::kClientPool, 1 << 16, {}).status().code(),
            StatusCode::kFailedPrecondition);
  h->layout_version = kLayoutVersion;
  EXPECT_EQ(Segment::attach(dup_fd(*a), SegmentKind::kServerPool, 1 << 16, {}).status().code(),
            StatusCode::kDataLoss);
  EXPECT_TRUE(Segment::attach(dup_fd(*a), SegmentKind::kClientPool, 1 << 16, {}).ok());
}

TEST(Segment, ReadOnlyAttachCannotWrite) {
  auto a = Segment::create("t", SegmentKind::kServerPool, 4096, 1, {});
  ASSERT_TRUE(a.ok());
  auto b = Segment::attach(dup_fd(*a), SegmentKind::kServerPool, 4096, {.prefault = true, .lock = false, .writable = false});
  ASSERT_TRUE(b.ok());
  EXPECT_DEATH({ b->data()[0] = std::byte{1}; }, "");
}

// Fault injection through the OS seam (test double).
class FailingOs : public detail::OsCalls {
 public:
  int memfd_calls = 0;
  bool fail_memfd = false, fail_mmap = false;
  int memfd_create(const char* name, unsigned flags) override {
    ++memfd_calls;
    if (fail_memfd) {
      errno = EMFILE;
      return -1;
    }
    return OsCalls::memfd_create(name, flags);
  }
  void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) override {
    if (fail_mmap) {
      errno = ENOMEM;
      return MAP_FAILED;
    }
    return OsCalls::mmap(addr, len, prot, flags, fd, off);
  }
};

TEST(Segment, OsFailuresBecomeStatusesWithoutLeaks) {
  FailingOs os;
  detail::set_os_for_testing(&os);
  os.fail_memfd = true;
  auto a = Segment::create("t", SegmentKind::kControl, 4096, 1, {});
  EXPECT_EQ(a.status().code(), StatusCode::kResourceExhausted);
  os.fail_memfd = false;
  os.fail_mmap = true;
  int before = ::fcntl(0, F_DUPFD_CLOEXEC, 0);  // lowest free descriptor
  ::close(before);
  auto b = Segment::create("t", SegmentKind::kControl, 4096, 1, {});
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  int after = ::fcntl(0, F_DUPFD_CLOEXEC, 0);
  ::close(after);
  EXPECT_EQ(before, after);  // the memfd was closed on the failure path
  detail::set_os_for_testing(nullptr);
  EXPECT_TRUE(Segment::create("t", SegmentKind::kControl, 4096, 1, {}).ok());
}

}  // namespace
}  // namespace rocket::shm
