// TEST DOUBLE of librocket_cuda.so (tests only; never installed or loaded by
// the product unless ROCKET_CUDA_MODULE names it). It implements the module
// interface (src/mover/cuda/cuda_api.h) on a machine without a GPU, so the
// core's GPU paths -- the cuda engine's asynchronous completion and hybrid
// waiting, pool registration, GPU payloads and responses by IPC handle, the
// handle caches -- run in CI and under the sanitizers:
//   * "device memory" is a shared memfd mapping per allocation;
//   * an IPC handle names the allocating process and its descriptor, and
//     opening it maps /proc/PID/fd/FD (refused in the allocating process, as
//     CUDA refuses it);
//   * copies run in order on one worker thread, like a stream, and every
//     device-side range is checked against its allocation, so an
//     out-of-bounds copy is an error here rather than silent corruption.
// What it cannot tell: speed, and anything about real GPU memory semantics
// beyond bounds (scripts/gpu_check.sh covers those on the GPU machine).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cuda_api.h"

namespace {

thread_local char g_error[256] = "";

// What the tests ask of the double through its two extra symbols (below):
// how often the engine asked for a pointer's kind, and how many bytes the
// "GPU" copied.
std::atomic<long> g_pointer_queries{0};
std::atomic<unsigned long long> g_copied_bytes{0};

int fail(const char* fmt, const char* what = "") {
  std::snprintf(g_error, sizeof(g_error), fmt, what);
  return -1;
}

struct Allocation {
  size_t bytes;
  int fd;         // the memfd (own allocations); -1 for opened handles
  bool imported;  // mapped from another process's handle
};

struct Handle {  // the 64 bytes of an IPC handle
  uint32_t magic;
  int32_t pid;
  int32_t fd;
  uint32_t pad;
  uint64_t bytes;
  unsigned char rest[40];
};
static_assert(sizeof(Handle) == 64);
constexpr uint32_t kHandleMagic = 0x44505547;  // "GUPD"

struct Op {
  void* dst;
  const void* src;
  size_t n;
  bool done = false;
};

// Process-lifetime state, never destroyed: the worker thread may still wait
// on it while the process exits.
struct State {
  std::mutex mu;  // guards everything below
  std::condition_variable cv;
  std::map<uintptr_t, Allocation> device;  // by base address
  std::map<uintptr_t, size_t> registered;  // host ranges registered, by base
  std::deque<std::shared_ptr<Op>> queue;
  bool init = false;
};
State& g = *new State;
std::mutex& g_mu = g.mu;
std::condition_variable& g_cv = g.cv;
std::map<uintptr_t, Allocation>& g_device = g.device;
std::map<uintptr_t, size_t>& g_registered = g.registered;
std::deque<std::shared_ptr<Op>>& g_queue = g.queue;
bool& g_init = g.init;

// The allocation containing [p, p + n), or end(). Caller holds g_mu.
std::map<uintptr_t, Allocation>::iterator find_device(const void* p, size_t n) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_device.upper_bound(a);
  if (it == g_device.begin()) return g_device.end();
  --it;
  if (a - it->first >= it->second.bytes || n > it->second.bytes - (a - it->first)) return g_device.end();
  return it;
}

// Whether [p, p + n) lies in one registered host range. Caller holds g_mu.
bool in_registered(const void* p, size_t n = 1) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_registered.upper_bound(a);
  if (it == g_registered.begin()) return false;
  --it;
  return a - it->first < it->second && n <= it->second - (a - it->first);
}

void worker_loop() {
  std::unique_lock<std::mutex> lock(g_mu);
  for (;;) {
    g_cv.wait(lock, [] { return !g_queue.empty(); });
    std::shared_ptr<Op> op = g_queue.front();
    lock.unlock();
    std::memmove(op->dst, op->src, op->n);
    g_copied_bytes.fetch_add(op->n, std::memory_order_relaxed);
    lock.lock();
    g_queue.pop_front();
    op->done = true;
    g_cv.notify_all();
  }
}

const char* api_last_error() { return g_error; }

int api_init(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (device != 0) return fail("test double: only device 0");
  if (!g_init) {
    std::thread(worker_loop).detach();  // lives as long as the process, like a driver thread
    g_init = true;
  }
  return 0;
}

const char* api_device_name() { return "test double (host memory)"; }
int api_device_count() { return 1; }

int api_host_register(void* p, size_t n, int) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (p == nullptr || n == 0) return fail("host_register: empty range");
  g_registered[reinterpret_cast<uintptr_t>(p)] = n;  // again: already registered, fine
  return 0;
}

int api_host_unregister(void* p) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_registered.erase(reinterpret_cast<uintptr_t>(p)) == 0) return fail("host_unregister: not registered");
  return 0;
}

int api_pointer_kind(const void* p) {
  g_pointer_queries.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(g_mu);
  if (find_device(p, 0) != g_device.end()) return ROCKET_CUDA_DEVICE;
  return in_registered(p) ? ROCKET_CUDA_HOST_REGISTERED : ROCKET_CUDA_HOST_PAGEABLE;
}

int api_device_alloc(void** p, size_t n) {
  if (n == 0) n = 1;
  int fd = ::memfd_create("rocket-test-double-device", MFD_CLOEXEC);
  if (fd < 0) return fail("device_alloc: memfd_create failed");
  if (::ftruncate(fd, static_cast<off_t>(n)) != 0) {
    ::close(fd);
    return fail("device_alloc: out of memory");
  }
  void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    ::close(fd);
    return fail("device_alloc: mmap failed");
  }
  std::lock_guard<std::mutex> lock(g_mu);
  g_device[reinterpret_cast<uintptr_t>(m)] = Allocation{n, fd, false};
  *p = m;
  return 0;
}

int api_device_free(void* p) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_device.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_device.end() || it->second.imported) return fail("device_free: not an allocation of this process");
  ::munmap(p, it->second.bytes);
  ::close(it->second.fd);
  g_device.erase(it);
  return 0;
}

int api_copy(void* dst, const void* src, size_t n, int dst_kind, int src_kind, int, void** out) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_init) return fail("module not initialised");
  // The caller's classification must be right, and device ranges in bounds.
  if ((dst_kind == ROCKET_CUDA_DEVICE) != (find_device(dst, 0) != g_device.end()) ||
      (src_kind == ROCKET_CUDA_DEVICE) != (find_device(src, 0) != g_device.end())) {
    return fail("copy: a pointer's kind was misclassified");
  }
  // The GPU reaches only registered host memory: a real one faults on the
  // rest of a range that runs past its registration.
  if ((dst_kind == ROCKET_CUDA_HOST_REGISTERED && !in_registered(dst, n)) ||
      (src_kind == ROCKET_CUDA_HOST_REGISTERED && !in_registered(src, n))) {
    return fail("copy: a host range claimed registered runs past its registration");
  }
  if (dst_kind == ROCKET_CUDA_DEVICE && find_device(dst, n) == g_device.end()) return fail("copy: destination %s", "runs past its device allocation");
  if (src_kind == ROCKET_CUDA_DEVICE && find_device(src, n) == g_device.end()) return fail("copy: source %s", "runs past its device allocation");
  auto op = std::make_shared<Op>(Op{dst, src, n});
  g_queue.push_back(op);
  g_cv.notify_all();
  *out = new std::shared_ptr<Op>(std::move(op));
  return 0;
}

int api_op_query(void* p) {
  std::lock_guard<std::mutex> lock(g_mu);
  return (*static_cast<std::shared_ptr<Op>*>(p))->done ? 1 : 0;
}

int api_op_wait(void* p) {
  std::unique_lock<std::mutex> lock(g_mu);
  auto& op = *static_cast<std::shared_ptr<Op>*>(p);
  g_cv.wait(lock, [&] { return op->done; });
  return 0;
}

void api_op_release(void* p) { delete static_cast<std::shared_ptr<Op>*>(p); }

int api_ipc_get(void* dev_ptr, void* handle64) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_device.find(reinterpret_cast<uintptr_t>(dev_ptr));
  if (it == g_device.end() || it->second.imported) return fail("ipc_get: not the base of an allocation of this process");
  Handle h{};
  h.magic = kHandleMagic;
  h.pid = ::getpid();
  h.fd = it->second.fd;
  h.bytes = it->second.bytes;
  std::memcpy(handle64, &h, sizeof(h));
  return 0;
}

int api_ipc_open(const void* handle64, void** dev_ptr) {
  Handle h;
  std::memcpy(&h, handle64, sizeof(h));
  if (h.magic != kHandleMagic || h.pid <= 0 || h.fd < 0) return fail("ipc_open: invalid handle");
  if (h.pid == ::getpid()) return fail("ipc_open: a handle cannot be opened by the process that made it");
  std::string path = "/proc/" + std::to_string(h.pid) + "/fd/" + std::to_string(h.fd);
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return fail("ipc_open: cannot open %s", path.c_str());
  struct stat st{};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != h.bytes || h.bytes == 0) {
    ::close(fd);
    return fail("ipc_open: the handle's allocation does not match");
  }
  void* m = ::mmap(nullptr, h.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return fail("ipc_open: mmap failed");
  std::lock_guard<std::mutex> lock(g_mu);
  g_device[reinterpret_cast<uintptr_t>(m)] = Allocation{h.bytes, -1, true};
  *dev_ptr = m;
  return 0;
}

int api_ipc_close(void* dev_ptr) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_device.find(reinterpret_cast<uintptr_t>(dev_ptr));
  if (it == g_device.end() || !it->second.imported) return fail("ipc_close: not an opened handle");
  ::munmap(dev_ptr, it->second.bytes);
  g_device.erase(it);
  return 0;
}

int api_mem_range(const void* p, void** base, size_t* bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = find_device(p, 0);
  if (it == g_device.end()) return fail("mem_range: not device memory");
  *base = reinterpret_cast<void*>(it->first);
  *bytes = it->second.bytes;
  return 0;
}

const RocketCudaApi g_api = {
    ROCKET_CUDA_ABI,  api_last_error,  api_init,     api_device_name, api_device_count, api_host_register,
    api_host_unregister, api_pointer_kind, api_device_alloc, api_device_free, api_copy, api_op_query,
    api_op_wait,      api_op_release,  api_ipc_get,  api_ipc_open,    api_ipc_close,    api_mem_range,
};

}  // namespace

// Test-only symbols (not part of the module interface).
extern "C" __attribute__((visibility("default"))) long rocket_cuda_double_pointer_queries(void) {
  return g_pointer_queries.load(std::memory_order_relaxed);
}
extern "C" __attribute__((visibility("default"))) unsigned long long rocket_cuda_double_copied_bytes(void) {
  return g_copied_bytes.load(std::memory_order_relaxed);
}

extern "C" __attribute__((visibility("default"))) const RocketCudaApi* rocket_cuda_api(void) { return &g_api; }
