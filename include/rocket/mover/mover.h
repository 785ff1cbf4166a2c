// Data movers: one interface over every engine that can copy bytes.
//
// An engine declares what it can do (MoverCapabilities) and what it costs
// (CostModel: L = fixed_us + us_per_mib * MiB, fitted by calibration); the
// runtime and the policy layer read both to choose an engine per request.
// Copies are asynchronous by interface even where an engine runs them inline:
//
//   rocket::CopyOp op{dst, src, n};
//   auto t = mover->submit({&op, 1}, rocket::Cache::kAuto);
//   if (!t.ok()) return t.status();
//   overlap_other_work();
//   ROCKET_RETURN_IF_ERROR(mover->wait(*t));
//
// or, synchronously, `mover->execute({&op, 1}, rocket::Cache::kAuto)`.
//
// Thread safety: every Mover is safe for concurrent use from multiple threads.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rocket/status.h"

namespace rocket {

// Which engine moves the bytes. kAuto lets the runtime choose.
enum class MoverKind : uint8_t { kAuto, kCpu, kCpuStream, kThreads, kKernel, kDsa, kCuda };

// Where the destination should end up: in the cache for a consumer that reads
// it next (kInject), or in memory without evicting the cache (kBypass).
enum class Cache : uint8_t { kAuto, kInject, kBypass };

std::string_view mover_kind_name(MoverKind kind) noexcept;
Result<MoverKind> parse_mover_kind(std::string_view name);
std::string_view cache_name(Cache cache) noexcept;
Result<Cache> parse_cache(std::string_view name);

// Which side of a copy lives in another process (the `kernel` engine).
enum class RemoteSide : uint8_t { kNone, kSrc, kDst };

// One contiguous copy. Source and destination must not overlap. With
// `remote` set, that side is an address in process `pid` (only engines whose
// capabilities say cross_process accept such ops).
struct CopyOp {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  size_t size = 0;
  RemoteSide remote = RemoteSide::kNone;
  pid_t pid = 0;
};

struct MoverCapabilities {
  bool async = false;                    // submit() returns before the copy is done
  bool batch = false;                    // several ops in one submission are run together
  bool cache_control = false;            // honours kInject / kBypass
  bool needs_registered_memory = false;  // buffers must be registered/pinned first
  bool cross_process = false;            // can copy from/to another process's private memory
  size_t max_op_bytes = SIZE_MAX;        // larger ops are split by the engine
  size_t alignment = 1;                  // required alignment of src, dst and size
};

// Predicted service time of one submission: fixed_us + us_per_mib * MiB.
struct CostModel {
  double fixed_us = 0;
  double us_per_mib = 0;
  double predict_us(size_t bytes) const noexcept {
    return fixed_us + us_per_mib * static_cast<double>(bytes) / (1024.0 * 1024.0);
  }
};

// Handle of one submission. `done` is set when submit() finished the work
// inline, so poll() and wait() need not ask the engine.
struct Ticket {
  uint64_t id = 0;
  bool done = false;
};

// Runs exactly once when a submission completes: on an engine thread, or
// inline in submit() for synchronous engines. Must not block for long.
using CopyCallback = std::function<void(Status)>;

struct SubmitOptions {
  Cache cache = Cache::kAuto;
  // cancel(owner) drops this submission's work that has not started (a
  // session closing cancels its copies). 0: no owner.
  uint64_t owner = 0;
  // If set, the submission is detached: the callback is its only
  // notification and the returned ticket cannot be polled or waited on.
  CopyCallback on_done;
};

class Mover {
 public:
  virtual ~Mover() = default;

  virtual MoverKind kind() const noexcept = 0;
  std::string_view name() const noexcept { return mover_kind_name(kind()); }
  virtual const MoverCapabilities& capabilities() const noexcept = 0;
  // Predicted cost for `cache`: the calibrated profile if one is loaded
  // (load_cost_profile), else the engine's built-in estimate.
  CostModel cost(Cache cache = Cache::kAuto) const noexcept;
  // Predicted cost of a synchronous execute(), where engines with workers
  // also copy on the calling thread; cost() for the others.
  virtual CostModel execute_cost(Cache cache = Cache::kAuto) const noexcept { return cost(cache); }

  // Starts the copies. The buffers must stay valid until poll() reports done,
  // wait() returns or on_done runs. kInvalidArgument for null or overlapping
  // ranges; kUnavailable when the engine's queue is full (retry).
  virtual Result<Ticket> submit(std::span<const CopyOp> ops, const SubmitOptions& options) = 0;
  Result<Ticket> submit(std::span<const CopyOp> ops, Cache cache) {
    return submit(ops, SubmitOptions{.cache = cache, .owner = 0, .on_done = nullptr});
  }
  // true once the submission is complete (and its status is OK); the error of
  // a failed copy otherwise. A ticket is retired once reported complete.
  virtual Result<bool> poll(Ticket ticket) = 0;
  // Blocks until the submission completes. Asynchronous engines wait the
  // hybrid way: sleep for most of the predicted time, then poll.
  virtual Status wait(Ticket ticket) = 0;
  // Makes [p, p+n) reachable by the engine at full speed (pins and maps it
  // for a GPU); engines that need nothing return OK. Unregister before the
  // memory is unmapped. Sessions register their pools; a caller whose own
  // buffer is copied often registers it with shared_mover(kind) so that
  // copies between it and a pool run on the engine (the cuda engine copies
  // from or to unregistered host memory on the CPU).
  virtual Status register_memory(void* p, size_t n, bool read_only) {
    (void)p;
    (void)n;
    (void)read_only;
    return ok_status();
  }
  virtual void unregister_memory(void* p) noexcept { (void)p; }
  // Drops queued work of `owner`; its submissions complete with kCancelled.
  // Copies already running finish. Synchronous engines have nothing queued.
  virtual void cancel(uint64_t owner) noexcept { (void)owner; }

  // submit() + wait(). Engines with workers may run part of the copy on the
  // calling thread, which would otherwise only wait.
  virtual Status execute(std::span<const CopyOp> ops, Cache cache);

  // Checks what every engine requires of a submission.
  static Status validate(std::span<const CopyOp> ops) noexcept;

 protected:
  // The engine's own estimate, used until a profile is calibrated.
  virtual CostModel default_cost(Cache cache) const noexcept = 0;
  // Which of the engine's ways of copying this instance uses, as named in a
  // profile's variants (CostProfile::Entry::variant); empty: the default.
  virtual std::string_view cost_variant() const noexcept { return {}; }
};

// What `rocket doctor` reports for each engine.
struct MoverInfo {
  MoverKind kind;
  bool usable = false;
  std::string reason;  // why not, or what was found
};

struct MoverConfig {
  // `threads` engine: worker threads (0: one per core but one, at least 1) and the
  // most chunks queued before submit() says kUnavailable.
  unsigned threads = 0;
  size_t queue_chunks = 4096;
  // Copies are split into chunks of at least this size across the workers.
  size_t min_chunk_bytes = size_t{256} << 10;
  // `cuda` engine: how host-to-host copies cross the GPU -- "kernel" (a copy
  // kernel over mapped pinned memory), "staged" (the copy engines through
  // device buffers) or "auto": per copy, the one whose cost model predicts
  // less for its size (calibrated by `rocket calibrate` as the variants
  // "kernel" and "staged"; the built-in estimates, from the H100 machine,
  // take the kernel below ~4 MiB).
  // $ROCKET_CUDA_H2H overrides "auto".
  std::string cuda_h2h = "auto";
  int cuda_device = 0;
};

// Creates an engine of `kind`. kUnavailable, with the reason, where the engine
// cannot run on this machine or is not part of this build.
Result<std::unique_ptr<Mover>> make_mover(MoverKind kind, const MoverConfig& config = {});
// The process-wide instance of engine `kind` (created on first use with the
// default MoverConfig, shared by every session of this process).
Result<Mover*> shared_mover(MoverKind kind);

// Every engine and whether it is usable here.
std::vector<MoverInfo> probe_movers();

// Cost models measured by `rocket calibrate`, one per (engine, cache).
struct CostProfile {
  struct Entry {
    MoverKind kind;
    Cache cache;
    CostModel model;
    // One way of copying of an engine that has several ("kernel" and
    // "staged" for cuda); empty for the engine as configured by default.
    std::string variant;
  };
  std::vector<Entry> entries;
  std::string machine;  // where it was measured
};
// Fits L = fixed_us + us_per_mib * MiB to measured (MiB, microseconds)
// points, as `rocket calibrate` does. One line cannot follow the cache
// hierarchy, so each parameter comes from where it matters: the slope from
// copies of 1 MiB and more (least squares), the fixed cost from the smaller
// ones (median residual). Negative results clamp to zero.
CostModel fit_cost_model(std::span<const std::pair<double, double>> mib_us);

// Makes `profile` the process-wide source of Mover::cost(). Thread-safe.
void set_cost_profile(CostProfile profile);
// The installed profile's model for one variant of an engine, if it has one.
std::optional<CostModel> profiled_cost(MoverKind kind, Cache cache, std::string_view variant);
// Reads a profile written by `rocket calibrate` (JSON) and installs it.
Status load_cost_profile(const std::string& path);
Status save_cost_profile(const CostProfile& profile, const std::string& path);
// $ROCKET_PROFILE, else ~/.cache/rocket/profile.json.
std::string default_profile_path();

}  // namespace rocket
