#include "rocket/mover/mover.h"

#include <cstdint>

#include "mover/cpu_mover.h"

namespace rocket {

std::string_view mover_kind_name(MoverKind kind) noexcept {
  switch (kind) {
    case MoverKind::kAuto: return "auto";
    case MoverKind::kCpu: return "cpu";
    case MoverKind::kCpuStream: return "cpu_stream";
    case MoverKind::kThreads: return "threads";
    case MoverKind::kKernel: return "kernel";
    case MoverKind::kDsa: return "dsa";
    case MoverKind::kCuda: return "cuda";
  }
  return "unknown";
}

Result<MoverKind> parse_mover_kind(std::string_view name) {
  for (auto k : {MoverKind::kAuto, MoverKind::kCpu, MoverKind::kCpuStream, MoverKind::kThreads,
                 MoverKind::kKernel, MoverKind::kDsa, MoverKind::kCuda}) {
    if (mover_kind_name(k) == name) return k;
  }
  return invalid_argument("unknown mover '" + std::string(name) +
                          "' (auto, cpu, cpu_stream, threads, kernel, dsa, cuda)");
}

std::string_view cache_name(Cache cache) noexcept {
  switch (cache) {
    case Cache::kAuto: return "auto";
    case Cache::kInject: return "inject";
    case Cache::kBypass: return "bypass";
  }
  return "unknown";
}

Result<Cache> parse_cache(std::string_view name) {
  for (auto c : {Cache::kAuto, Cache::kInject, Cache::kBypass}) {
    if (cache_name(c) == name) return c;
  }
  return invalid_argument("unknown cache policy '" + std::string(name) + "' (auto, inject, bypass)");
}

Status Mover::execute(std::span<const CopyOp> ops, Cache cache) {
  ROCKET_ASSIGN_OR_RETURN(Ticket t, submit(ops, cache));
  if (t.done) return ok_status();
  return wait(t);
}

Status Mover::validate(std::span<const CopyOp> ops) noexcept {
  for (const CopyOp& op : ops) {
    if (op.size == 0) continue;
    if (op.dst == nullptr || op.src == nullptr) return invalid_argument("copy with a null buffer");
    auto d = reinterpret_cast<uintptr_t>(op.dst);
    auto s = reinterpret_cast<uintptr_t>(op.src);
    if (d + op.size < d || s + op.size < s) return invalid_argument("copy range wraps the address space");
    if (d < s + op.size && s < d + op.size) return invalid_argument("source and destination overlap");
  }
  return ok_status();
}

Result<std::unique_ptr<Mover>> make_mover(MoverKind kind, const MoverConfig& config) {
  (void)config;
  switch (kind) {
    case MoverKind::kAuto:
    case MoverKind::kCpu:
      return std::unique_ptr<Mover>(std::make_unique<detail::CpuMover>());
    default:
      break;
  }
  for (const MoverInfo& info : probe_movers()) {
    if (info.kind == kind) {
      return unavailable("mover '" + std::string(mover_kind_name(kind)) + "' is not usable: " + info.reason);
    }
  }
  return invalid_argument("unknown mover kind");
}

std::vector<MoverInfo> probe_movers() {
  std::vector<MoverInfo> out;
  out.push_back({MoverKind::kCpu, true, "memcpy on the calling thread"});
  const char* absent = "engine is not part of this build (see the data-movers issue)";
  for (auto k : {MoverKind::kCpuStream, MoverKind::kThreads, MoverKind::kKernel, MoverKind::kDsa,
                 MoverKind::kCuda}) {
    out.push_back({k, false, absent});
  }
  return out;
}

}  // namespace rocket
