#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: checks and measures the cuda mover.
# Uses an existing release build (build/release, e.g. carried from the CI
# machine: rocket, librocket_cuda.so and tests/) or builds one, then runs
# doctor, the core test suites with the GPU present, and the GPU benchmark
# points of issue 4 (movers incl. host<->device, echo, overlap, the gpu_echo
# backend), plus Rocket against a Unix socket at 16 MiB on this machine's
# cores. Results go to ${OUT:-bench/results/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
if [ ! -x build/release/rocket ] || [ ! -f build/release/librocket_cuda.so ]; then
  cmake --preset release -DROCKET_ENABLE_CUDA=ON -DROCKET_BUILD_WORKLOADS=OFF >/dev/null || exit 1
  cmake --build --preset release -j "$(nproc)" || exit 1
fi
R=build/release/rocket
T=build/release/tests
fails=0
{
  nvidia-smi -L
  nproc
  $R doctor
  # Calibrate first, as the README asks of a user: the benchmarks below then
  # wait on this machine's measured costs, and auto chooses from them.
  echo "== rocket calibrate (cuda variants)"
  timeout 240 $R calibrate --sizes 64K,1M,4M,16M,64M,256M --json || echo "gpu_check: calibrate FAILED"
  $R doctor | grep -E "cost profile|cuda"
  timeout 120 "$T/rocket_unit_test" --gtest_filter='*cuda*:*Cuda*:GpuPayload*' || echo "gpu_check: cuda tests FAILED"
} > "$out/checks.txt" 2>&1
fails=$((fails + $(grep -c "gpu_check: .* FAILED" "$out/checks.txt")))
grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran|GPU|cuda" "$out/checks.txt"
run() {  # name, command...: JSON to $out/name.json, errors to the log
  local name=$1
  shift
  if ! timeout 240 "$@" --json > "$out/$name.json" 2>> "$out/bench.log"; then
    echo "gpu_check: $name FAILED" | tee -a "$out/bench.log"
    fails=$((fails + 1))
  fi
}
run movers $R bench movers --movers cpu,threads,cuda --caches inject --sizes 64K,1M,4M,16M,64M,128M,512M
run echo $R bench echo --sizes 1M,16M,128M --modes sync --paths copy --wake spin --transports rocket,memcpy \
  --movers cpu,threads,cuda --clients 1
run overlap-cuda $R bench overlap --mover cuda
# End-to-end through a GPU backend: the request is copied from the shared pool
# into GPU memory and back into the server pool on the copy engines.
run gpu-echo $R bench echo --op gpu_echo --sizes 1M,16M,128M --modes sync --paths zerocopy,copy --wake spin \
  --transports rocket --clients 1
# The same, answered from GPU memory by reference (gpu_share): a second JSON
# document appended to gpu-echo.json (at most 8 files come back).
if ! timeout 240 $R bench echo --op gpu_share --sizes 1M,16M,128M --modes sync --paths zerocopy,copy --wake spin \
  --transports rocket --clients 1 --json >> "$out/gpu-echo.json" 2>> "$out/bench.log"; then
  echo "gpu_check: gpu-share FAILED" | tee -a "$out/bench.log"
  fails=$((fails + 1))
fi
# Rocket's copy path against a Unix socket on this machine's cores.
run uds-echo $R bench echo --sizes 64,16M --modes sync --paths copy --wake spin --transports rocket,uds \
  --movers cpu,threads,auto --clients 1
# The whole core suite with a GPU present (the workloads suite needs the
# workload libraries, which the GPU machine does not have).
for t in rocket_unit_test rocket_runtime_test rocket_ring_test rocket_stress_test; do
  echo "== $t" >> "$out/tests.txt"
  if ! timeout 300 "$T/$t" --gtest_brief=1 >> "$out/tests.txt" 2>&1; then
    echo "gpu_check: $t FAILED" | tee -a "$out/tests.txt"
    fails=$((fails + 1))
  fi
  tail -n 2 "$out/tests.txt"
done
echo "gpu_check: results in $out, $fails failed step(s)"
exit $((fails > 0))
