// The CPU engines that copy on the calling thread:
//   `cpu`        memcpy -- the baseline every other engine is measured against.
//   `cpu_stream` non-temporal stores (AVX-512/AVX2/SSE2 by CPUID): the CPU's
//                cache-bypass path, for large copies nobody reads soon.
#pragma once

#include "rocket/mover/mover.h"

namespace rocket::detail {

// An engine that finishes every copy inside submit(): its tickets are born
// done, so poll() and wait() only check that.
class InlineMover : public Mover {
 public:
  Result<bool> poll(Ticket ticket) final;
  Status wait(Ticket ticket) final;
};

// One core's memcpy, uncalibrated: the `cpu` engine's built-in estimate, and
// what other engines assume of the calling core when they copy with it.
inline constexpr CostModel kCoreCopyCost{.fixed_us = 0.05, .us_per_mib = 58.0};

// Thread safety: stateless; safe from any number of threads.
class CpuMover final : public InlineMover {
 public:
  MoverKind kind() const noexcept override { return MoverKind::kCpu; }
  const MoverCapabilities& capabilities() const noexcept override;
  Result<Ticket> submit(std::span<const CopyOp> ops, const SubmitOptions& options) override;

 protected:
  CostModel default_cost(Cache cache) const noexcept override;
};

// Thread safety: stateless; safe from any number of threads.
class CpuStreamMover final : public InlineMover {
 public:
  MoverKind kind() const noexcept override { return MoverKind::kCpuStream; }
  const MoverCapabilities& capabilities() const noexcept override;
  Result<Ticket> submit(std::span<const CopyOp> ops, const SubmitOptions& options) override;

 protected:
  CostModel default_cost(Cache cache) const noexcept override;
};

}  // namespace rocket::detail
