// librocket_cuda.so: the CUDA side of the `cuda` mover (see cuda_api.h).
//
// Host-to-host copies go through the GPU one of two ways:
//   kernel  a grid-stride copy kernel reads and writes mapped pinned memory
//           over PCIe/NVLink-C2C while the CPU does nothing;
//   staged  the copy engines move chunks host -> device buffer -> host, with
//           the two directions overlapped on two streams (4 x 8 MiB buffers;
//           chunk sizes: stage_chunk).
// Host<->device copies use the copy engines (cudaMemcpyAsync) directly.
// Completion is a CUDA event per operation; the core waits for it the hybrid
// way (sleep for most of the predicted time, then query).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "cuda_api.h"

namespace {

thread_local char g_error[256] = "";
std::mutex g_mu;  // guards the staging pipeline and stream selection
int g_device = -1;
cudaStream_t g_copy_stream = nullptr;   // H2D/D2H and copy kernels
cudaStream_t g_stage_in = nullptr;      // staging: host -> device
cudaStream_t g_stage_out = nullptr;     // staging: device -> host
constexpr int kStageBuffers = 4;
constexpr size_t kStageChunk = size_t{8} << 20;
void* g_stage[kStageBuffers] = {};
cudaEvent_t g_stage_free[kStageBuffers] = {};    // recorded after a buffer's D2H
cudaEvent_t g_stage_filled[kStageBuffers] = {};  // recorded after a buffer's H2D
cudaDeviceProp g_prop;
constexpr size_t kSpareEvents = 64;
std::mutex g_spare_mu;                    // not g_mu: a release must not wait behind a staging enqueue
std::vector<cudaEvent_t> g_spare_events;  // completed per-copy events, reused (guarded by g_spare_mu)

int fail(const char* what, cudaError_t e) {
  std::snprintf(g_error, sizeof(g_error), "%s: %s", what, cudaGetErrorString(e));
  return -1;
}

struct Op {
  cudaEvent_t done;
};

__global__ void copy_kernel_16(uint4* __restrict__ dst, const uint4* __restrict__ src, size_t n16) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (; i < n16; i += stride) dst[i] = src[i];
}

__global__ void copy_kernel_1(unsigned char* __restrict__ dst, const unsigned char* __restrict__ src, size_t n) {
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (; i < n; i += stride) dst[i] = src[i];
}

int launch_copy_kernel(void* dst, const void* src, size_t n, cudaStream_t s) {
  // Mapped pinned memory is addressable from the GPU through UVA.
  int blocks = g_prop.multiProcessorCount * 4;
  auto d = reinterpret_cast<uintptr_t>(dst), sp = reinterpret_cast<uintptr_t>(src);
  if (((d | sp) & 15) == 0) {
    size_t n16 = n / 16;
    if (n16 > 0) copy_kernel_16<<<blocks, 512, 0, s>>>(static_cast<uint4*>(dst), static_cast<const uint4*>(src), n16);
    size_t tail = n - n16 * 16;
    if (tail > 0) {
      copy_kernel_1<<<1, 32, 0, s>>>(static_cast<unsigned char*>(dst) + n16 * 16,
                                     static_cast<const unsigned char*>(src) + n16 * 16, tail);
    }
  } else {
    copy_kernel_1<<<blocks, 512, 0, s>>>(static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), n);
  }
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail("copy kernel launch", e);
}

// The staging chunks for an n-byte copy: a quarter of it (64 KiB granules)
// between 256 KiB and the buffer size, halved over the last two chunks down to
// 256 KiB. The copy ends one chunk's device->host after its last
// host->device, so a short last chunk makes a short tail. Each chunk costs the
// caller a few driver calls, hence the floor. (Measured on the H100 machine:
// 16 MiB buffers and a floor of n/128 made 128 MiB copies ~4% slower.)
size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

constexpr size_t kStageFloor = size_t{256} << 10;

size_t stage_chunk(size_t n) {
  size_t c = round_up(n / 4, size_t{64} << 10);
  return c < kStageFloor ? kStageFloor : (c > kStageChunk ? kStageChunk : c);
}

int enqueue_staged(void* dst, const void* src, size_t n) {
  static int next = 0;
  const size_t chunk = stage_chunk(n);
  size_t len = 0;
  for (size_t off = 0; off < n; off += len) {
    const size_t left = n - off, half = round_up(left / 2, 4096);
    len = left <= chunk ? left : chunk;
    if (left < 2 * chunk && half >= kStageFloor) len = half;
    if (left - len < (size_t{64} << 10) && left <= kStageChunk) len = left;  // no sliver of a last chunk
    int b = next;
    next = (next + 1) % kStageBuffers;
    cudaError_t e;
    // The buffer is free once its previous D2H finished.
    if ((e = cudaStreamWaitEvent(g_stage_in, g_stage_free[b], 0)) != cudaSuccess) return fail("wait buffer", e);
    if ((e = cudaMemcpyAsync(g_stage[b], static_cast<const char*>(src) + off, len, cudaMemcpyHostToDevice,
                             g_stage_in)) != cudaSuccess) {
      return fail("staging H2D", e);
    }
    if ((e = cudaEventRecord(g_stage_filled[b], g_stage_in)) != cudaSuccess) return fail("event", e);
    if ((e = cudaStreamWaitEvent(g_stage_out, g_stage_filled[b], 0)) != cudaSuccess) return fail("wait chunk", e);
    if ((e = cudaMemcpyAsync(static_cast<char*>(dst) + off, g_stage[b], len, cudaMemcpyDeviceToHost,
                             g_stage_out)) != cudaSuccess) {
      return fail("staging D2H", e);
    }
    if ((e = cudaEventRecord(g_stage_free[b], g_stage_out)) != cudaSuccess) return fail("event", e);
  }
  return 0;
}

const char* api_last_error() { return g_error; }

int api_init(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_device >= 0) return device == g_device ? 0 : (std::snprintf(g_error, sizeof(g_error), "already on device %d", g_device), -1);
  cudaError_t e;
  if ((e = cudaSetDevice(device)) != cudaSuccess) return fail("cudaSetDevice", e);
  if ((e = cudaGetDeviceProperties(&g_prop, device)) != cudaSuccess) return fail("cudaGetDeviceProperties", e);
  if ((e = cudaStreamCreateWithFlags(&g_copy_stream, cudaStreamNonBlocking)) != cudaSuccess) return fail("stream", e);
  if ((e = cudaStreamCreateWithFlags(&g_stage_in, cudaStreamNonBlocking)) != cudaSuccess) return fail("stream", e);
  if ((e = cudaStreamCreateWithFlags(&g_stage_out, cudaStreamNonBlocking)) != cudaSuccess) return fail("stream", e);
  for (int i = 0; i < kStageBuffers; ++i) {
    if ((e = cudaMalloc(&g_stage[i], kStageChunk)) != cudaSuccess) return fail("staging cudaMalloc", e);
    if ((e = cudaEventCreateWithFlags(&g_stage_free[i], cudaEventDisableTiming)) != cudaSuccess) return fail("event", e);
    if ((e = cudaEventCreateWithFlags(&g_stage_filled[i], cudaEventDisableTiming)) != cudaSuccess) return fail("event", e);
    cudaEventRecord(g_stage_free[i], g_stage_out);
  }
  g_device = device;
  return 0;
}

const char* api_device_name() { return g_device >= 0 ? g_prop.name : ""; }

int api_device_count() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  return e == cudaSuccess ? n : fail("cudaGetDeviceCount", e);
}

int api_host_register(void* p, size_t n, int read_only) {
  unsigned flags = cudaHostRegisterMapped | cudaHostRegisterPortable | (read_only ? cudaHostRegisterReadOnly : 0);
  cudaError_t e = cudaHostRegister(p, n, flags);
  if (e == cudaErrorHostMemoryAlreadyRegistered) {
    cudaGetLastError();
    return 0;
  }
  return e == cudaSuccess ? 0 : fail("cudaHostRegister", e);
}

int api_host_unregister(void* p) {
  cudaError_t e = cudaHostUnregister(p);
  return e == cudaSuccess ? 0 : fail("cudaHostUnregister", e);
}

int api_pointer_kind(const void* p) {
  cudaPointerAttributes a{};
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ROCKET_CUDA_HOST_PAGEABLE;
  }
  switch (a.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged:
      return ROCKET_CUDA_DEVICE;
    case cudaMemoryTypeHost:
      return ROCKET_CUDA_HOST_REGISTERED;
    default:
      return ROCKET_CUDA_HOST_PAGEABLE;
  }
}

int api_device_alloc(void** p, size_t n) {
  cudaError_t e = cudaMalloc(p, n);
  return e == cudaSuccess ? 0 : fail("cudaMalloc", e);
}

int api_device_free(void* p) {
  cudaError_t e = cudaFree(p);
  return e == cudaSuccess ? 0 : fail("cudaFree", e);
}

int api_copy(void* dst, const void* src, size_t n, int dst_kind, int src_kind, int h2h, void** out) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_device < 0) return (std::snprintf(g_error, sizeof(g_error), "module not initialised"), -1);
  auto* op = new (std::nothrow) Op{};
  if (op == nullptr) return (std::snprintf(g_error, sizeof(g_error), "out of memory"), -1);
  cudaError_t e = cudaSuccess;
  {
    std::lock_guard<std::mutex> spare_lock(g_spare_mu);
    if (!g_spare_events.empty()) {
      op->done = g_spare_events.back();
      g_spare_events.pop_back();
    }
  }
  if (op->done == nullptr &&
      (e = cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming | cudaEventBlockingSync)) != cudaSuccess) {
    delete op;
    return fail("cudaEventCreate", e);
  }
  int rc = 0;
  cudaStream_t tail = g_copy_stream;
  const bool dst_host = dst_kind != ROCKET_CUDA_DEVICE, src_host = src_kind != ROCKET_CUDA_DEVICE;
  if (dst_host && src_host) {
    if (dst_kind == ROCKET_CUDA_HOST_REGISTERED && src_kind == ROCKET_CUDA_HOST_REGISTERED && h2h == ROCKET_CUDA_H2H_KERNEL) {
      rc = launch_copy_kernel(dst, src, n, g_copy_stream);
    } else if (src_kind == ROCKET_CUDA_HOST_REGISTERED && dst_kind == ROCKET_CUDA_HOST_REGISTERED) {
      rc = enqueue_staged(dst, src, n);
      tail = g_stage_out;
    } else {
      // Pageable memory cannot be reached asynchronously: the runtime copies
      // through its own pinned bounce buffers, synchronously.
      e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, g_copy_stream);
      rc = e == cudaSuccess ? 0 : fail("cudaMemcpyAsync", e);
    }
  } else {
    e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, g_copy_stream);
    rc = e == cudaSuccess ? 0 : fail("cudaMemcpyAsync", e);
  }
  if (rc == 0 && (e = cudaEventRecord(op->done, tail)) != cudaSuccess) rc = fail("cudaEventRecord", e);
  if (rc != 0) {
    cudaEventDestroy(op->done);
    delete op;
    return rc;
  }
  *out = op;
  return 0;
}

int api_op_query(void* p) {
  cudaError_t e = cudaEventQuery(static_cast<Op*>(p)->done);
  if (e == cudaSuccess) return 1;
  if (e == cudaErrorNotReady) return 0;
  return fail("copy", e);
}

int api_op_wait(void* p) {
  cudaError_t e = cudaEventSynchronize(static_cast<Op*>(p)->done);  // blocking sync: no spinning
  return e == cudaSuccess ? 0 : fail("copy", e);
}

void api_op_release(void* p) {
  auto* op = static_cast<Op*>(p);
  // Completed events are kept for the next copies (creating one per copy
  // costs the caller a driver call); an abandoned one is simply destroyed.
  if (cudaEventQuery(op->done) == cudaSuccess) {
    std::lock_guard<std::mutex> lock(g_spare_mu);
    if (g_spare_events.size() < kSpareEvents) {
      g_spare_events.push_back(op->done);
      op->done = nullptr;
    }
  }
  if (op->done != nullptr) cudaEventDestroy(op->done);
  delete op;
}

int api_ipc_get(void* dev_ptr, void* handle64) {
  static_assert(sizeof(cudaIpcMemHandle_t) == 64, "CUDA IPC handles are 64 bytes");
  cudaIpcMemHandle_t h;
  cudaError_t e = cudaIpcGetMemHandle(&h, dev_ptr);
  if (e != cudaSuccess) return fail("cudaIpcGetMemHandle", e);
  std::memcpy(handle64, &h, 64);
  return 0;
}

int api_ipc_open(const void* handle64, void** dev_ptr) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle64, 64);
  cudaError_t e = cudaIpcOpenMemHandle(dev_ptr, h, cudaIpcMemLazyEnablePeerAccess);
  return e == cudaSuccess ? 0 : fail("cudaIpcOpenMemHandle", e);
}

int api_ipc_close(void* dev_ptr) {
  cudaError_t e = cudaIpcCloseMemHandle(dev_ptr);
  return e == cudaSuccess ? 0 : fail("cudaIpcCloseMemHandle", e);
}

int api_mem_range(const void* p, void** base, size_t* bytes) {
  // cuMemGetAddressRange is a driver API call; fetch it through the runtime
  // so the module needs no link against libcuda.
  using Fn = int (*)(unsigned long long*, size_t*, unsigned long long);
  static Fn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      f = nullptr;
    }
    return reinterpret_cast<Fn>(f);
  }();
  if (fn == nullptr) {
    std::snprintf(g_error, sizeof(g_error), "cuMemGetAddressRange is not available from the driver");
    return -1;
  }
  unsigned long long b = 0;
  size_t n = 0;
  int rc = fn(&b, &n, reinterpret_cast<unsigned long long>(p));
  // A driver call needs a current context, and a thread that has made no
  // runtime call yet (a server's dispatcher, say) has none: bind the module's
  // device's primary context, as the runtime API does implicitly, and retry.
  constexpr int kInvalidContext = 201;  // CUDA_ERROR_INVALID_CONTEXT
  if (rc == kInvalidContext && g_device >= 0 && cudaSetDevice(g_device) == cudaSuccess) {
    rc = fn(&b, &n, reinterpret_cast<unsigned long long>(p));
  }
  if (rc != 0) {
    std::snprintf(g_error, sizeof(g_error), "cuMemGetAddressRange: error %d (not device memory?)", rc);
    return -1;
  }
  *base = reinterpret_cast<void*>(b);
  *bytes = n;
  return 0;
}

const RocketCudaApi g_api = {
    ROCKET_CUDA_ABI, api_last_error, api_init,     api_device_name, api_device_count, api_host_register,
    api_host_unregister, api_pointer_kind, api_device_alloc, api_device_free, api_copy, api_op_query,
    api_op_wait, api_op_release, api_ipc_get, api_ipc_open, api_ipc_close, api_mem_range,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const RocketCudaApi* rocket_cuda_api(void) { return &g_api; }
