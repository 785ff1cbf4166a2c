// The mobilenetv2 workload's network and images, exposed for tests.
#pragma once

#include <cstdint>
#include <memory>

#include "workload.h"

namespace rocket::workloads {

uint64_t mobilenet_batch(const Scale& s);
uint64_t mobilenet_classes();
// `n` pre-processed images (3x224x224 fp32, CHW) from `seed`.
void mobilenet_images(uint64_t seed, uint64_t n, float* out);

// MobileNetV2 with weights drawn from `seed`, in inference mode.
class MobilenetNet {
 public:
  explicit MobilenetNet(uint64_t seed);
  ~MobilenetNet();
  // logits: n x 1000. Thread-safe.
  Status forward(const float* images, uint64_t n, float* logits) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rocket::workloads
