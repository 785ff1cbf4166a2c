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
};

}  // namespace rocket
