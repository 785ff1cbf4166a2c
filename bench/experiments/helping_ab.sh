#!/usr/bin/env bash
# Same-run A/B of OpOptions::concurrent on the demo's workloads: one
# frontend, sync baseline and pipelined, against two backends started side by
# side -- one whose ops are concurrent (idle dispatchers help with a session's
# waiting requests, as `rocket demo` runs it) and one started with
# --serial-ops (a session's requests one at a time, the behaviour before).
# Rounds alternate between the backends so that drift hits both alike.
#
#   bash bench/experiments/helping_ab.sh [BUILD_DIR] [WORKLOADS] [REQUESTS] [ROUNDS] [CONFIGS]
#
# CONFIGS: demo configurations, comma-separated (default baseline,pipelined-cpu).
# Prints one line per point: workload, backend, config, round, req/s.
set -euo pipefail
bin=${1:-build/release}
workloads=${2:-pagerank,xgboost,vector_search,mobilenetv2}
requests=${3:-8}
rounds=${4:-2}
configs=${5:-baseline,pipelined-cpu}
exe="$bin/rocket-workloads"
dir=$(mktemp -d /tmp/rocket-helping-ab.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

scale_of() { [[ $1 == mobilenetv2 ]] && echo 0.05 || echo 1; }  # as `rocket demo`

start_backend() {  # NAME WORKLOAD [FLAGS...]
  local name=$1 w=$2
  shift 2
  "$exe" backend --socket "$dir/$name.sock" --workloads "$w" --scale "$(scale_of "$w")" "$@" >"$dir/$name.out" &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q ready "$dir/$name.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "backend $name did not start" >&2
  return 1
}

point() {  # SOCKET WORKLOAD CONFIG -> req/s
  echo go | "$exe" frontend --socket "$1" --workload "$2" --config "$3" --scale "$(scale_of "$2")" \
    --requests "$requests" | tail -1 |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("%.3f" % (r["requests"] / r["wall_us"] * 1e6))'
}

printf "%-14s %-11s %-14s %5s %8s\n" workload backend config round req/s
for w in ${workloads//,/ }; do
  start_backend concurrent "$w"
  start_backend serial "$w" --serial-ops
  for round in $(seq "$rounds"); do
    for b in concurrent serial; do
      for c in ${configs//,/ }; do
        printf "%-14s %-11s %-14s %5d %8s\n" "$w" "$b" "$c" "$round" "$(point "$dir/$b.sock" "$w" "$c")"
      done
    done
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
