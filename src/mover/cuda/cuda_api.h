// The C interface between the core's `cuda` mover and the CUDA module
// (librocket_cuda.so, built by nvcc when ROCKET_ENABLE_CUDA is on). The core
// never includes a CUDA header and opens the module with dlopen, so one build
// runs on machines with and without a GPU (UCX builds its CUDA transport as a
// loadable module the same way).
//
// Every function returns 0 on success, or a negative value with the reason in
// last_error(). Operation handles stand for CUDA events recorded after the
// copy; they are released with op_release().
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ROCKET_CUDA_ABI 2

enum RocketCudaPtrKind {
  ROCKET_CUDA_HOST_PAGEABLE = 0,
  ROCKET_CUDA_HOST_REGISTERED = 1,  // pinned and mapped: the GPU can reach it
  ROCKET_CUDA_DEVICE = 2,
};

enum RocketCudaH2H {
  ROCKET_CUDA_H2H_KERNEL = 0,  // a copy kernel over mapped pinned memory
  ROCKET_CUDA_H2H_STAGED = 1,  // copy engines: host -> device buffer -> host, chunked
};

struct RocketCudaApi {
  uint32_t abi;
  const char* (*last_error)(void);
  int (*init)(int device);
  const char* (*device_name)(void);
  int (*device_count)(void);
  int (*host_register)(void* p, size_t n, int read_only);
  int (*host_unregister)(void* p);
  int (*pointer_kind)(const void* p);  // RocketCudaPtrKind, or < 0
  int (*device_alloc)(void** p, size_t n);
  int (*device_free)(void* p);
  // Starts an asynchronous copy; *op receives the handle. The kind of each
  // side is the caller's (pointer_kind) classification.
  int (*copy)(void* dst, const void* src, size_t n, int dst_kind, int src_kind, int h2h_method, void** op);
  int (*op_query)(void* op);  // 1 done, 0 pending, < 0 error
  int (*op_wait)(void* op);   // blocks (spin-free) until done
  void (*op_release)(void* op);
  // CUDA IPC: a 64-byte handle for device memory another process can open.
  int (*ipc_get)(void* dev_ptr, void* handle64);
  int (*ipc_open)(const void* handle64, void** dev_ptr);
  int (*ipc_close)(void* dev_ptr);
  // The device allocation that contains `p`: its base and size (bounds
  // checks on memory another process named).
  int (*mem_range)(const void* p, void** base, size_t* bytes);
};

// The module's one export.
const struct RocketCudaApi* rocket_cuda_api(void);

#ifdef __cplusplus
}
#endif
