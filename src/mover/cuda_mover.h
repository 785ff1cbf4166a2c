// The `cuda` engine: the GPU's copy engines and copy kernels as a mover.
// Loads librocket_cuda.so at run time (see cuda/cuda_api.h); where the module
// or a GPU is missing, open() says why and the engine is not offered.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
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
  double wait_scale(size_t bytes) const noexcept;

 private:
  struct Pending {
    std::vector<void*> ops;
    size_t bytes = 0;
    std::chrono::nanoseconds predicted{0};
    std::chrono::steady_clock::time_point started;
    CopyCallback on_done;  // detached submissions
  };

  static constexpr int kH2HAuto = -1;
  CudaMover(const RocketCudaApi* api, int h2h);
  Status wait_pending(Pending& p);
  // For submissions whose copies poll() found all done: releases them.
  Status release_pending(Pending& p);
  void completer_loop();
  Status api_error(const char* what) const;

  // Learns actual/predicted per power-of-two size class from each wait.
  void learn(const Pending& p, double scale, bool slept, bool done_at_first_look,
             std::chrono::nanoseconds elapsed) noexcept;

  const RocketCudaApi* api_;
  int h2h_;  // ROCKET_CUDA_H2H_* or kH2HAuto
  std::array<std::atomic<double>, 48> wait_scale_;  // by floor(log2(bytes)); approximate under races
  MoverCapabilities caps_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_id_ = 1;                         // guarded by mu_
  std::unordered_map<uint64_t, Pending> tickets_;  // guarded by mu_
  std::deque<Pending> detached_;                 // guarded by mu_
  bool stopping_ = false;                        // guarded by mu_
  std::thread completer_;                        // runs detached submissions' callbacks
};

}  // namespace rocket::detail
