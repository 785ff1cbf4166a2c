// Per-request policy: which engine moves the bytes and where they should land.
#pragma once

#include <chrono>
#include <cstdint>

#include "rocket/mover/mover.h"

namespace rocket {

struct Policy {
  MoverKind mover = MoverKind::kAuto;
  Cache cache = Cache::kAuto;
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
