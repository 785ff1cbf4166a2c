#include "pocket/cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace rocket::detail {
namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_octal(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && s.size() - i >= 4) {
      int v = 0;
      bool octal = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') octal = false;
        v = v * 8 + (c - '0');
      }
      if (octal) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

bool parse_i64(std::string_view s, int64_t* v) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

Result<std::string> read_small_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status("open " + path, errno);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return errno_status("read " + path, e);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (size_t{1} << 20)) break;  // mountinfo of a busy host is large, not this large
  }
  ::close(fd);
  return out;
}

Status write_small_file(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno_status("open " + path, errno);
  ssize_t n;
  do {
    n = ::write(fd, text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  int e = errno;
  ::close(fd);
  if (n < 0) return errno_status("write '" + text + "' to " + path, e);
  if (static_cast<size_t>(n) != text.size()) return internal_error("short write to " + path);
  return ok_status();
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

}  // namespace

Result<std::pair<std::string, bool>> parse_cgroup_path(std::string_view proc_cgroup, std::string_view controller) {
  std::string v2_path;
  bool have_v2 = false;
  for (std::string_view line : split(proc_cgroup, '\n')) {
    if (line.empty()) continue;
    // hierarchy-id:controller-list:path (the path may itself contain ':')
    size_t a = line.find(':');
    size_t b = a == std::string_view::npos ? a : line.find(':', a + 1);
    if (b == std::string_view::npos) return invalid_argument("malformed cgroup line '" + std::string(line) + "'");
    std::string_view id = line.substr(0, a), controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (path.empty() || path.front() != '/') {
      return invalid_argument("malformed cgroup path in '" + std::string(line) + "'");
    }
    if (id == "0" && controllers.empty()) {
      v2_path = std::string(path);
      have_v2 = true;
      continue;
    }
    for (std::string_view c : split(controllers, ',')) {
      if (c == controller) return std::pair<std::string, bool>{std::string(path), false};
    }
  }
  if (have_v2) return std::pair<std::string, bool>{v2_path, true};
  return not_found("the process is in no cgroup with a " + std::string(controller) + " controller");
}

Result<std::string> cgroup_dir_in(std::string_view mountinfo, std::string_view path, bool v2,
                                  std::string_view controller) {
  for (std::string_view line : split(mountinfo, '\n')) {
    if (line.empty()) continue;
    size_t dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    std::vector<std::string_view> pre = split(line.substr(0, dash), ' ');
    std::vector<std::string_view> post = split(line.substr(dash + 3), ' ');
    if (pre.size() < 5 || post.size() < 3) continue;
    std::string_view fstype = post[0];
    if (v2 ? fstype != "cgroup2" : fstype != "cgroup") continue;
    if (!v2) {
      bool has = false;
      for (std::string_view o : split(post[2], ',')) has = has || o == controller;
      if (!has) continue;
    }
    std::string root = unescape_octal(pre[3]);
    std::string mount = unescape_octal(pre[4]);
    std::string rest;
    if (root == "/") {
      rest = std::string(path);
    } else if (path == root) {
      rest = "";
    } else if (path.size() > root.size() && path.substr(0, root.size()) == root && path[root.size()] == '/') {
      rest = std::string(path.substr(root.size()));
    } else {
      continue;  // this mount shows another part of the tree
    }
    if (rest == "/") rest.clear();
    return mount + rest;
  }
  return not_found(std::string("no mounted ") +
                   (v2 ? std::string("cgroup2 hierarchy") : "cgroup v1 `" + std::string(controller) + "` hierarchy") +
                   " shows cgroup " + std::string(path));
}

Result<CpuLimit> parse_cpu_max(std::string_view text) {
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  auto parts = split(text, ' ');
  CpuLimit lim;
  if (parts.size() != 2 || !parse_i64(parts[1], &lim.period_us) || lim.period_us <= 0) {
    return invalid_argument("malformed cpu.max '" + std::string(text) + "'");
  }
  if (parts[0] == "max") {
    lim.quota_us = -1;
  } else if (!parse_i64(parts[0], &lim.quota_us) || lim.quota_us <= 0) {
    return invalid_argument("malformed cpu.max '" + std::string(text) + "'");
  }
  return lim;
}

namespace {
// The cgroup of `pid` in the hierarchy of `controller`; on v2 its directory
// must have `v2_file` (the controller enabled there).
Result<Cgroup> cgroup_of(pid_t pid, const std::string& controller, const std::string& v2_file) {
  const std::string proc = pid == 0 ? std::string("/proc/self") : "/proc/" + std::to_string(pid);
  ROCKET_ASSIGN_OR_RETURN(std::string text, read_small_file(proc + "/cgroup"));
  ROCKET_ASSIGN_OR_RETURN(auto path_v2, parse_cgroup_path(text, controller));
  ROCKET_ASSIGN_OR_RETURN(std::string mountinfo, read_small_file("/proc/self/mountinfo"));
  ROCKET_ASSIGN_OR_RETURN(std::string dir, cgroup_dir_in(mountinfo, path_v2.first, path_v2.second, controller));
  Cgroup cg{std::move(dir), path_v2.first, path_v2.second};
  if (cg.v2 && !exists(cg.dir + "/" + v2_file)) {
    return failed_precondition("cgroup " + cg.path + " (v2) has no " + controller + " controller enabled (no " +
                               v2_file + " in " + cg.dir + ")");
  }
  return cg;
}
}  // namespace

Result<CpuCgroup> cpu_cgroup_of(pid_t pid) { return cgroup_of(pid, "cpu", "cpu.max"); }

Result<CpuCgroup> cpu_cgroup_at(const std::string& dir) {
  if (exists(dir + "/cpu.cfs_quota_us")) return CpuCgroup{dir, dir, false};
  if (exists(dir + "/cpu.max")) return CpuCgroup{dir, dir, true};
  return not_found(dir + " is not a cgroup with a cpu controller (no cpu.cfs_quota_us or cpu.max)");
}

Result<CpuLimitFiles> CpuLimitFiles::open(const CpuCgroup& cg) {
  CpuLimitFiles f;
  f.dir_ = cg.dir;
  f.v2_ = cg.v2;
  const std::string quota = cg.dir + (cg.v2 ? "/cpu.max" : "/cpu.cfs_quota_us");
  f.quota_fd_ = ::open(quota.c_str(), O_RDWR | O_CLOEXEC);
  if (f.quota_fd_ < 0) return errno_status("open " + quota, errno);
  if (!cg.v2) {
    const std::string period = cg.dir + "/cpu.cfs_period_us";
    f.period_fd_ = ::open(period.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.period_fd_ < 0) return errno_status("open " + period, errno);
  }
  return f;
}

CpuLimitFiles::CpuLimitFiles(CpuLimitFiles&& o) noexcept
    : dir_(std::move(o.dir_)),
      v2_(o.v2_),
      quota_fd_(std::exchange(o.quota_fd_, -1)),
      period_fd_(std::exchange(o.period_fd_, -1)) {}

CpuLimitFiles& CpuLimitFiles::operator=(CpuLimitFiles&& o) noexcept {
  if (this != &o) {
    close();
    dir_ = std::move(o.dir_);
    v2_ = o.v2_;
    quota_fd_ = std::exchange(o.quota_fd_, -1);
    period_fd_ = std::exchange(o.period_fd_, -1);
  }
  return *this;
}

CpuLimitFiles::~CpuLimitFiles() { close(); }

void CpuLimitFiles::close() noexcept {
  if (quota_fd_ >= 0) ::close(quota_fd_);
  if (period_fd_ >= 0) ::close(period_fd_);
  quota_fd_ = period_fd_ = -1;
}

namespace {
Result<std::string> pread_all(int fd, const std::string& what) {
  char buf[128];
  ssize_t n;
  do {
    n = ::pread(fd, buf, sizeof(buf), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_status("read " + what, errno);
  return std::string(buf, static_cast<size_t>(n));
}
}  // namespace

Result<CpuLimit> CpuLimitFiles::read() const {
  if (quota_fd_ < 0) return failed_precondition("cpu limit files not open");
  if (v2_) {
    ROCKET_ASSIGN_OR_RETURN(std::string text, pread_all(quota_fd_, dir_ + "/cpu.max"));
    return parse_cpu_max(text);
  }
  ROCKET_ASSIGN_OR_RETURN(std::string quota, pread_all(quota_fd_, dir_ + "/cpu.cfs_quota_us"));
  ROCKET_ASSIGN_OR_RETURN(std::string period, pread_all(period_fd_, dir_ + "/cpu.cfs_period_us"));
  CpuLimit lim;
  if (!parse_i64(quota, &lim.quota_us) || !parse_i64(period, &lim.period_us) || lim.period_us <= 0 ||
      (lim.quota_us <= 0 && lim.quota_us != -1)) {
    return invalid_argument("malformed cpu.cfs_quota_us/cpu.cfs_period_us in " + dir_);
  }
  return lim;
}

Status CpuLimitFiles::write_quota(int64_t quota_us, int64_t period_us) const {
  if (quota_fd_ < 0) return failed_precondition("cpu limit files not open");
  if (quota_us != -1 && quota_us < kMinCpuQuotaUs) {
    return invalid_argument("a CPU quota of " + std::to_string(quota_us) + " µs is below the kernel's minimum");
  }
  const std::string text =
      v2_ ? (quota_us < 0 ? std::string("max") : std::to_string(quota_us)) + " " + std::to_string(period_us)
          : std::to_string(quota_us);
  ssize_t n;
  do {
    n = ::pwrite(quota_fd_, text.data(), text.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_status("set the CPU quota of " + dir_ + " to '" + text + "'", errno);
  if (static_cast<size_t>(n) != text.size()) return internal_error("short write to the CPU quota of " + dir_);
  return ok_status();
}

Result<CpuLimit> read_cpu_limit(const CpuCgroup& cg) {
  ROCKET_ASSIGN_OR_RETURN(CpuLimitFiles f, CpuLimitFiles::open(cg));
  return f.read();
}

Status write_cpu_quota(const CpuCgroup& cg, int64_t quota_us, int64_t period_us) {
  ROCKET_ASSIGN_OR_RETURN(CpuLimitFiles f, CpuLimitFiles::open(cg));
  return f.write_quota(quota_us, period_us);
}

// --- memory ------------------------------------------------------------------

Result<MemoryCgroup> memory_cgroup_of(pid_t pid) { return cgroup_of(pid, "memory", "memory.max"); }

Result<MemoryCgroup> memory_cgroup_at(const std::string& dir) {
  if (exists(dir + "/memory.limit_in_bytes")) return MemoryCgroup{dir, dir, false};
  if (exists(dir + "/memory.max")) return MemoryCgroup{dir, dir, true};
  return not_found(dir + " is not a cgroup with a memory controller (no memory.limit_in_bytes or memory.max)");
}

Result<MemoryFiles> MemoryFiles::open(const MemoryCgroup& cg) {
  MemoryFiles f;
  f.dir_ = cg.dir;
  f.v2_ = cg.v2;
  const std::string limit = cg.dir + (cg.v2 ? "/memory.max" : "/memory.limit_in_bytes");
  f.limit_fd_ = ::open(limit.c_str(), O_RDWR | O_CLOEXEC);
  if (f.limit_fd_ < 0) return errno_status("open " + limit, errno);
  const std::string usage = cg.dir + (cg.v2 ? "/memory.current" : "/memory.usage_in_bytes");
  f.usage_fd_ = ::open(usage.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.usage_fd_ < 0) return errno_status("open " + usage, errno);
  return f;
}

MemoryFiles::MemoryFiles(MemoryFiles&& o) noexcept
    : dir_(std::move(o.dir_)),
      v2_(o.v2_),
      limit_fd_(std::exchange(o.limit_fd_, -1)),
      usage_fd_(std::exchange(o.usage_fd_, -1)) {}

MemoryFiles& MemoryFiles::operator=(MemoryFiles&& o) noexcept {
  if (this != &o) {
    close();
    dir_ = std::move(o.dir_);
    v2_ = o.v2_;
    limit_fd_ = std::exchange(o.limit_fd_, -1);
    usage_fd_ = std::exchange(o.usage_fd_, -1);
  }
  return *this;
}

MemoryFiles::~MemoryFiles() { close(); }

void MemoryFiles::close() noexcept {
  if (limit_fd_ >= 0) ::close(limit_fd_);
  if (usage_fd_ >= 0) ::close(usage_fd_);
  limit_fd_ = usage_fd_ = -1;
}

Result<int64_t> MemoryFiles::limit() const {
  if (limit_fd_ < 0) return failed_precondition("memory files not open");
  const std::string what = dir_ + (v2_ ? "/memory.max" : "/memory.limit_in_bytes");
  ROCKET_ASSIGN_OR_RETURN(std::string text, pread_all(limit_fd_, what));
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (v2_ && text == "max") return kNoMemoryLimit;
  int64_t v = 0;
  if (!parse_i64(text, &v) || v < 0) return invalid_argument("malformed " + what + " '" + text + "'");
  // v1 shows "no limit" as the largest page-aligned counter (2^63 - 4096 on
  // 4 KiB pages); nothing real comes near 2^62 bytes.
  if (!v2_ && v >= (int64_t{1} << 62)) return kNoMemoryLimit;
  return v;
}

Result<int64_t> MemoryFiles::usage() const {
  if (usage_fd_ < 0) return failed_precondition("memory files not open");
  const std::string what = dir_ + (v2_ ? "/memory.current" : "/memory.usage_in_bytes");
  ROCKET_ASSIGN_OR_RETURN(std::string text, pread_all(usage_fd_, what));
  int64_t v = 0;
  if (!parse_i64(text, &v) || v < 0) return invalid_argument("malformed " + what);
  return v;
}

Status MemoryFiles::set_limit(int64_t bytes) const {
  if (limit_fd_ < 0) return failed_precondition("memory files not open");
  if (bytes < 0 && bytes != kNoMemoryLimit) return invalid_argument("a negative memory limit");
  const std::string text = bytes == kNoMemoryLimit ? std::string(v2_ ? "max" : "-1") : std::to_string(bytes);
  ssize_t n;
  do {
    n = ::pwrite(limit_fd_, text.data(), text.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_status("set the memory limit of " + dir_ + " to " + text, errno);
  if (static_cast<size_t>(n) != text.size()) return internal_error("short write to the memory limit of " + dir_);
  return ok_status();
}

Result<int64_t> read_memory_limit(const MemoryCgroup& cg) {
  ROCKET_ASSIGN_OR_RETURN(MemoryFiles f, MemoryFiles::open(cg));
  return f.limit();
}

Result<int64_t> read_memory_usage(const MemoryCgroup& cg) {
  ROCKET_ASSIGN_OR_RETURN(MemoryFiles f, MemoryFiles::open(cg));
  return f.usage();
}

Status write_memory_limit(const MemoryCgroup& cg, int64_t bytes) {
  ROCKET_ASSIGN_OR_RETURN(MemoryFiles f, MemoryFiles::open(cg));
  return f.set_limit(bytes);
}

namespace {
Result<Cgroup> make_cgroup(const Cgroup& parent, const std::string& name, const std::string& controller) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return invalid_argument("bad cgroup name '" + name + "'");
  }
  if (parent.v2) {
    auto sub = read_small_file(parent.dir + "/cgroup.subtree_control");
    bool delegated = false;
    if (sub.ok()) {
      std::string_view text = *sub;
      while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
      for (std::string_view w : split(text, ' ')) delegated = delegated || w == controller;
    }
    if (!delegated) {
      return failed_precondition("the " + controller + " controller is not delegated to " + parent.path +
                                 " (cgroup v2)");
    }
  }
  Cgroup cg{parent.dir + "/" + name, (parent.path == "/" ? "" : parent.path) + "/" + name, parent.v2};
  if (::mkdir(cg.dir.c_str(), 0755) != 0) return errno_status("make cgroup " + cg.dir, errno);
  if (cg.v2) {
    // For its own children; a cgroup with members cannot take this, so try and move on.
    Status st = write_small_file(cg.dir + "/cgroup.subtree_control", "+" + controller);
    (void)st;
  }
  return cg;
}
}  // namespace

Result<CpuCgroup> make_cpu_cgroup(const CpuCgroup& parent, const std::string& name) {
  return make_cgroup(parent, name, "cpu");
}

Result<MemoryCgroup> make_memory_cgroup(const MemoryCgroup& parent, const std::string& name) {
  return make_cgroup(parent, name, "memory");
}

Cgroup scratch_parent(const Cgroup& own) {
  if (!own.v2 || own.path == "/") return own;
  Cgroup parent = own;
  parent.dir.erase(parent.dir.rfind('/'));
  parent.path.erase(parent.path.rfind('/'));
  if (parent.path.empty()) parent.path = "/";
  return parent;
}

Status remove_cgroup(const CpuCgroup& cg, int wait_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  for (;;) {
    if (::rmdir(cg.dir.c_str()) == 0) return ok_status();
    if (errno != EBUSY || std::chrono::steady_clock::now() >= end)
      return errno_status("remove cgroup " + cg.dir, errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status join_cgroup(const CpuCgroup& cg, pid_t pid) {
  return write_small_file(cg.dir + "/cgroup.procs", std::to_string(pid == 0 ? ::getpid() : pid));
}

}  // namespace rocket::detail
