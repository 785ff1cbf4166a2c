// The `cuda` engine: the GPU's copy engines and copy kernels as a mover.
// Loads librocket_cuda.so at run time (see cuda/cuda_api.h); where the module
// or a GPU is missing, open() says why and the engine is not offered.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "mover/cuda/cuda_api.h"
#include "rocket/mover/mover.h"

namespace rocket::detail {

// Loads the module and initialises `device`; the reason on failure.
Result<const RocketCudaApi*> load_cuda_module(int device);

// Thread safety: all public methods are safe from any thread.
class CudaMover final : public Mover {
 public:
  static Result<std::unique_ptr<Mover>> open(const MoverConfig& config);
  ~CudaMover() override;

  MoverKind kind() const noexcept override { return MoverKind::kCuda; }
  const MoverCapabilities& capabilities() const noexcept override { return caps_; }
  Result<Ticket> submit(std::span<const CopyOp> ops, const SubmitOptions& options) override;
  Result<bool> poll(Ticket ticket) override;
  Status wait(Ticket ticket) override;
  // Synchronous: the caller would only wait, so for copies between
  // registered host buffers it copies a share itself (the tail) while the GPU
  // copies the rest, sized so both finish together (caller_share()).
  Status execute(std::span<const CopyOp> ops, Cache cache) override;
  Status register_memory(void* p, size_t n, bool read_only) override;
  void unregister_memory(void* p) noexcept override;

 protected:
  CostModel default_cost(Cache cache) const noexcept override;
  // "kernel" or "staged" for a fixed method; empty for "auto".
  std::string_view cost_variant() const noexcept override;

 public:
  // The host-to-host method for a copy of `bytes` (ROCKET_CUDA_H2H_*): the
  // configured one, or under "auto" the cheaper by the variants' cost models.
  int h2h_for(size_t bytes) const noexcept;

  // What this engine has learned of its copies' real duration against the
  // cost model's prediction, for a submission of `bytes` (1.0 at first).
  // Waits sleep through the prediction times this.
  // `device`: a copy to or from GPU memory, else host-to-host.
  double wait_scale(size_t bytes, bool device = false) const noexcept;

  // The share of a synchronous host-to-host copy of `bytes` the caller
  // copies itself: from the cost models at first, then from the speeds each
  // execute() measured on both sides.
  double caller_share(size_t bytes) const noexcept;

 private:
  struct Pending {
    std::vector<void*> ops;
    size_t bytes = 0;
    std::chrono::nanoseconds predicted{0};
    std::chrono::steady_clock::time_point started;
    int path = 0;          // kPath* of its largest copy: what the wait learns about
    CopyCallback on_done;  // detached submissions
  };
  // How a copy runs, for learning: each has its own speed.
  static constexpr int kPathKernel = 0, kPathStaged = 1, kPathDevice = 2, kPaths = 3;
  // A copy with its sides' kinds (RocketCudaPtrKind), asked of the driver once.
  struct Classified {
    CopyOp op;
    int dk, sk;
  };
  static constexpr int kH2HAuto = -1;
  CudaMover(const RocketCudaApi* api, int h2h);
  // Checks and queues the copies on the GPU (pageable host copies run here).
  Status enqueue(std::span<const Classified> ops, Cache cache, Pending& p);
  Status classify(std::span<const CopyOp> ops, std::vector<Classified>& out);
  // The kind of [p, p + n): known for ranges this engine registered, else
  // the driver's answer for p.
  int pointer_kind(const void* p, size_t n) const;
  Status wait_pending(Pending& p);
  // For submissions whose copies are all done (found by poll(), or waited
  // for by execute()): releases them, with the first copy error.
  Status release_pending(Pending& p);
  void submitter_loop();
  void completer_loop();
  Status api_error(const char* what) const;

  // Learns actual/predicted per path and power-of-two size class from each
  // wait.
  void learn(const Pending& p, double ratio, bool slept, bool done_at_first_look,
             std::chrono::nanoseconds elapsed) noexcept;
  // The GPU's expected time for `gpu_bytes` of host-to-host copy, with what
  // the wait has learned of the model's error.
  double gpu_h2h_us(size_t gpu_bytes) const noexcept;
  // One core's copy speed and the GPU's, for an execute() of `bytes`.
  double cpu_us_per_mib(size_t bytes) const noexcept;
  double gpu_us_per_mib(size_t bytes) const noexcept;
  // What the wait has learned of the cost model's error for a path and a
  // size: actual / predicted.
  std::atomic<double>& learned(int path, size_t bytes) noexcept;
  const std::atomic<double>& learned(int path, size_t bytes) const noexcept;

  const RocketCudaApi* api_;
  int h2h_;  // ROCKET_CUDA_H2H_* or kH2HAuto
  // By path and floor(log2(bytes)); approximate under races, which only
  // cost a less apt guess.
  std::array<std::array<std::atomic<double>, 48>, kPaths> learned_;
  // What execute() learns per size class of a host-to-host copy: the
  // caller's share and its copy speed, the GPU's speed on the rest
  // (negative: not yet seen). Approximate under races like learned_.
  struct Split {
    std::atomic<double> share{-1.0};
    std::atomic<double> cpu_us_per_mib{-1.0};
    std::atomic<double> gpu_us_per_mib{-1.0};
  };
  std::array<Split, 48> split_;
  // The caller's time to queue the GPU's share (us, EWMA): it copies nothing
  // meanwhile.
  std::atomic<double> enqueue_us_{10.0};
  MoverCapabilities caps_;
  // Host ranges this engine registered with the GPU (base -> bytes), so a
  // copy between them needs no driver query: two such queries cost 5-16 us
  // of the caller's CPU on the H100 machine when it has just touched the
  // data (the driver's own structures are out of its cache). A range that
  // was registered already when we were asked is not ours to vouch for.
  mutable std::shared_mutex ranges_mu_;
  std::map<uintptr_t, size_t> ranges_;  // guarded by ranges_mu_
  std::mutex mu_;
  std::condition_variable cv_;         // completer: detached_ or stopping_
  std::condition_variable submit_cv_;  // submitter: deferred_ or stopping_submit_
  uint64_t next_id_ = 1;                         // guarded by mu_
  std::unordered_map<uint64_t, Pending> tickets_;  // guarded by mu_
  // A detached submission the caller only queues: the submitter thread makes
  // the driver calls.
  struct Deferred {
    std::vector<Classified> ops;
    Cache cache;
    CopyCallback on_done;
  };
  std::deque<Deferred> deferred_;  // guarded by mu_
  std::deque<Pending> detached_;   // guarded by mu_
  bool stopping_submit_ = false;   // guarded by mu_
  bool stopping_ = false;          // guarded by mu_
  std::thread submitter_;          // queues detached submissions on the GPU
  std::thread completer_;          // waits for them and runs their callbacks
};

}  // namespace rocket::detail
