// Per-request policy: which engine moves the bytes and where they should land.
#pragma once

#include <chrono>
#include <cstdint>

#include "rocket/mover/mover.h"
#include "rocket/pocket/lending.h"

namespace rocket {

struct Policy {
  MoverKind mover = MoverKind::kAuto;
  Cache cache = Cache::kAuto;
  // Pocket's resource hint: CPU this call lends the backend while it works on
  // the request, in thousandths of a CPU (1000: one CPU), taken from this
  // process's cgroup quota (rocket/pocket/lending.h). A server that does not
  // lend, or cannot, runs the request all the same; Reply::lent_millicpus()
  // says what was lent. At most kMaxLendMillicpus.
  uint32_t lend_millicpus = 0;
  // Memory likewise, in bytes, from this process's memory cgroup limit: only
  // headroom it does not use is lent (LendingOptions::memory).
  // Reply::lent_memory_bytes() says what was. At most kMaxLendMemoryBytes.
  uint64_t lend_memory_bytes = 0;
};

struct CallOptions {
  Policy policy;
  // How long call()/query() wait for the response; zero waits until the
  // response arrives or the server goes away.
  std::chrono::milliseconds timeout{0};
  // Accept a response that a GPU backend shares from its device memory
  // (Response::share_device) by reference: Reply::on_gpu(), no copy; this
  // process needs a GPU. Off: such a response arrives copied into the server
  // pool on the server's copy engines.
  bool gpu_response = false;
};

}  // namespace rocket
