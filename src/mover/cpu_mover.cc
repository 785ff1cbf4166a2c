#include "mover/cpu_mover.h"

#include <cstring>

namespace rocket::detail {

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

// Uncalibrated default: ~18 GB/s, the single-core figure on the CI machine
// (DESIGN.md §3). Calibration replaces it.
CostModel CpuMover::cost() const noexcept { return {.fixed_us = 0.05, .us_per_mib = 58.0}; }

Result<Ticket> CpuMover::submit(std::span<const CopyOp> ops, Cache cache) {
  (void)cache;  // regular stores leave the destination in cache (inject)
  ROCKET_RETURN_IF_ERROR(validate(ops));
  for (const CopyOp& op : ops) {
    if (op.size != 0) std::memcpy(op.dst, op.src, op.size);
  }
  return Ticket{.id = 0, .done = true};
}

Result<bool> CpuMover::poll(Ticket ticket) {
  if (!ticket.done) return invalid_argument("ticket was not issued by the cpu mover");
  return true;
}

Status CpuMover::wait(Ticket ticket) {
  if (!ticket.done) return invalid_argument("ticket was not issued by the cpu mover");
  return ok_status();
}

}  // namespace rocket::detail
