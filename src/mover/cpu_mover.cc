#include "mover/cpu_mover.h"

#include <cstring>

#include "mover/copy_kernels.h"

namespace rocket::detail {
Result<bool> InlineMover::poll(Ticket t) {
  if (!t.done) return invalid_argument("ticket was not issued by a synchronous CPU engine");
  return true;
}

Status InlineMover::wait(Ticket t) { return poll(t).status(); }

const MoverCapabilities& CpuMover::capabilities() const noexcept {
  static const MoverCapabilities caps{.async = false,
                                      .batch = false,
                                      .cache_control = false,  // regular stores: always inject
                                      .needs_registered_memory = false,
                                      .cross_process = false,
                                      .max_op_bytes = SIZE_MAX,
                                      .alignment = 1};
  return caps;
}

// Uncalibrated: ~18 GB/s, the single-core figure on the CI machine
// (DESIGN.md §3). `rocket calibrate` replaces it.
CostModel CpuMover::default_cost(Cache) const noexcept { return kCoreCopyCost; }

Result<Ticket> CpuMover::submit(std::span<const CopyOp> ops, const SubmitOptions& options) {
  ROCKET_RETURN_IF_ERROR(validate(ops));
  for (const CopyOp& op : ops) {
    if (op.size != 0) std::memcpy(op.dst, op.src, op.size);
  }
  if (options.on_done) options.on_done(ok_status());
  return Ticket{.id = 0, .done = true};
}

const MoverCapabilities& CpuStreamMover::capabilities() const noexcept {
  static const MoverCapabilities caps{.async = false,
                                      .batch = false,
                                      .cache_control = true,  // inject: regular stores; bypass: streaming
                                      .needs_registered_memory = false,
                                      .cross_process = false,
                                      .max_op_bytes = SIZE_MAX,
                                      .alignment = 1};
  return caps;
}

// Uncalibrated: ~28 GB/s with streaming stores on the CI machine (DESIGN.md §3).
CostModel CpuStreamMover::default_cost(Cache cache) const noexcept {
  if (cache == Cache::kInject) return kCoreCopyCost;  // regular stores
  return {.fixed_us = 0.1, .us_per_mib = 37.0};
}

Result<Ticket> CpuStreamMover::submit(std::span<const CopyOp> ops, const SubmitOptions& options) {
  ROCKET_RETURN_IF_ERROR(validate(ops));
  for (const CopyOp& op : ops) {
    if (op.size == 0) continue;
    // kAuto streams: that is what this engine is for. Tiny copies fall back
    // to regular stores inside copy_stream().
    if (options.cache == Cache::kInject) {
      std::memcpy(op.dst, op.src, op.size);
    } else {
      copy_stream(op.dst, op.src, op.size);
    }
  }
  if (options.on_done) options.on_done(ok_status());
  return Ticket{.id = 0, .done = true};
}

}  // namespace rocket::detail
