// The GPU tests (the cuda engine's conformance, tests/mover/cuda_test.cc) run
// against the CUDA module's TEST DOUBLE, so the core's GPU paths are exercised
// on machines without a GPU. The double is chosen here, before any test (or
// test peer process, which inherits the environment) loads the module.
#include <cstdlib>

#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::setenv("ROCKET_CUDA_MODULE", ROCKET_CUDA_DOUBLE, 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
