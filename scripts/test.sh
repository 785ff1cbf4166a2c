#!/usr/bin/env bash
# The README's test command: installs dependencies, builds the ASan+UBSan and
# TSan configurations, runs the whole suite under ASan+UBSan and the
# concurrency-labelled tests under TSan, then builds the release configuration,
# runs the whole suite once more there (optimised code, and the few tests that
# need glibc's own allocator), a short benchmark smoke test (correctness of the
# bench path, not a timing), `rocket bench lend --quick`, `rocket demo --quick`,
# `rocket bench peers --quick` and a short bench/python/peers.py.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

bash scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== ASan + UBSan: all tests"
cmake --preset asan >/dev/null
cmake --build --preset asan -j "$jobs"
ctest --preset asan -j "$jobs" | tee -a "$log"

echo "== ThreadSanitizer: concurrency tests"
cmake --preset tsan >/dev/null
cmake --build --preset tsan -j "$jobs"
ctest --preset tsan -j "$jobs" | tee -a "$log"

echo "== Release: all tests, then the rocket tool's smoke test"
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
ctest --preset release -j "$jobs" | tee -a "$log"
./build/release/rocket doctor
./build/release/rocket bench echo --sizes 64,1M --modes sync,pipelined --clients 1 --budget-ms 20 --json >/dev/null
echo "smoke: rocket bench echo ran"
echo "== rocket bench lend --quick (Pocket's CPU lending; skips where it cannot make cgroups)"
./build/release/rocket bench lend --quick
echo "== rocket demo --quick (the main job, small sizes)"
./build/release/rocket demo --quick --out build/release/demo-report
echo "== rocket bench peers --quick"
./build/release/rocket bench peers --quick --workload pagerank --scale 0.05
if ls build/release/python/rocket.*.so >/dev/null 2>&1; then
  echo "== bench/python/peers.py (the Python module against a socket, multiprocessing, ZeroMQ and gRPC; short)"
  PYTHONPATH=build/release/python /usr/bin/python3 bench/python/peers.py --sizes 64,1M,16M --budget 0.2
fi

# One summary over the three runs (ctest prints "... N tests failed out of M").
awk '/tests failed out of/ { failed += $(NF-4); total += $NF }
     END { printf "%d passed, %d failed\n", total - failed, failed }' "$log"
