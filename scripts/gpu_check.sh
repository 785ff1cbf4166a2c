#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: checks and measures the cuda mover.
# Uses an existing release build (build/release, e.g. carried from the CI
# machine) or builds one, then runs doctor, the GPU tests, and the GPU
# benchmark points of issue 4 (movers, echo, overlap, the gpu_echo backend); results go to ${OUT:-bench/results/gpu}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
if [ ! -x build/release/rocket ] || [ ! -f build/release/librocket_cuda.so ]; then
  cmake --preset release -DROCKET_ENABLE_CUDA=ON >/dev/null
  cmake --build --preset release -j "$(nproc)"
fi
R=build/release/rocket
nvidia-smi -L || true
$R doctor | tee "$out/doctor.txt"
build/release/tests/rocket_unit_test --gtest_filter='*cuda*:*Cuda*:GpuPayload*' | tee "$out/cuda_tests.txt"
$R bench movers --movers cpu,threads,cuda --caches inject --sizes 64K,1M,16M,128M,512M --json > "$out/movers.json"
$R bench echo --sizes 1M,16M,128M --modes sync --paths copy --wake spin --transports rocket,memcpy \
  --movers cpu,threads,cuda --clients 1 --json > "$out/echo.json"
$R bench overlap --mover cuda --json > "$out/overlap-cuda.json"
# End-to-end through a GPU backend: the request is copied from the shared pool
# into GPU memory and back into the server pool on the copy engines.
$R bench echo --op gpu_echo --sizes 1M,16M,128M --modes sync --paths zerocopy,copy --wake spin \
  --transports rocket --clients 1 --json > "$out/gpu-echo.json"
echo "gpu_check: results in $out"
