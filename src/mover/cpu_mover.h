// The `cpu` engine: memcpy on the calling thread. The baseline every other
// engine is measured against.
#pragma once

#include "rocket/mover/mover.h"

namespace rocket::detail {

// Thread safety: stateless; safe from any number of threads.
class CpuMover final : public Mover {
 public:
  MoverKind kind() const noexcept override { return MoverKind::kCpu; }
  const MoverCapabilities& capabilities() const noexcept override;
  CostModel cost() const noexcept override;
  Result<Ticket> submit(std::span<const CopyOp> ops, Cache cache) override;
  Result<bool> poll(Ticket ticket) override;
  Status wait(Ticket ticket) override;
};

}  // namespace rocket::detail
