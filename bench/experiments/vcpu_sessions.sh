#!/usr/bin/env bash
# Sequential sync sessions of one workload against one backend, with the
# per-request handler times and the steal time the guest saw. Run it under
# `taskset -c N` to pin the backend and its frontends to one CPU and compare
# CPUs: on the CI VM, vCPU 0 ran pagerank's handler 20-40% slower than vCPU 1
# while the guest was otherwise idle (bench/results/vcpu-pagerank-s7.txt).
#
#   taskset -c 0 bash bench/experiments/vcpu_sessions.sh [BUILD_DIR] [WORKLOAD] [SCALE] [SESSIONS]
set -euo pipefail
bin=${1:-build/release}
workload=${2:-pagerank}
scale=${3:-1}
sessions=${4:-3}
exe="$bin/rocket-workloads"
dir=$(mktemp -d /tmp/rocket-vcpu.XXXXXX)
"$exe" backend --socket "$dir/s.sock" --workloads "$workload" --scale "$scale" >"$dir/be.out" 2>"$dir/be.err" &
backend=$!
trap 'kill $backend 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 600); do
  grep -q ready "$dir/be.out" 2>/dev/null && break
  sleep 0.1
done
cpu_line() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }  # steal, total
for s in $(seq "$sessions"); do
  before=$(cpu_line)
  result=$(echo go | "$exe" frontend --socket "$dir/s.sock" --workload "$workload" --config baseline \
    --scale "$scale" --requests 4 --warmup 1 | tail -1)
  after=$(cpu_line)
  python3 - "$result" "$before" "$after" "$s" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
b, a = map(int, sys.argv[2].split()), map(int, sys.argv[3].split())
(sb, tb), (sa, ta) = list(b), list(a)
print("session %s: handler ms %s  steal %.1f%%" % (sys.argv[4], [round(x / 1000) for x in r["service_us"]],
                                                   100 * (sa - sb) / max(1, ta - tb)))
PY
done
