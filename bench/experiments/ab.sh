#!/usr/bin/env bash
# Same-run A/B of two ways to run the demo's backend and frontends: one
# frontend at a time, against two backends started side by side, rounds
# alternating between them so that drift hits both alike.
#
#   ARM_A="NAME|BACKEND FLAGS|FRONTEND FLAGS" ARM_B="..." \
#     bash bench/experiments/ab.sh [BUILD_DIR] [WORKLOADS] [REQUESTS] [ROUNDS] [CONFIGS]
#
# CONFIGS: demo configurations, comma-separated (default baseline,pipelined-cpu).
# Prints one line per point: workload, arm, config, round, req/s and the median
# service time (the handler's time, from the replies).
# helping_ab.sh and heap_ab.sh are the two comparisons BENCHMARKS.md reports.
set -euo pipefail
bin=${1:-build/release}
workloads=${2:-pagerank,xgboost,vector_search,mobilenetv2}
requests=${3:-8}
rounds=${4:-2}
configs=${5:-baseline,pipelined-cpu}
: "${ARM_A:?ARM_A=NAME|BACKEND FLAGS|FRONTEND FLAGS}" "${ARM_B:?ARM_B=NAME|BACKEND FLAGS|FRONTEND FLAGS}"
exe="$bin/rocket-workloads"
dir=$(mktemp -d /tmp/rocket-ab.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

scale_of() { [[ $1 == mobilenetv2 ]] && echo 0.05 || echo 1; }  # as `rocket demo`
arm_name() { cut -d'|' -f1 <<<"$1"; }
backend_flags() { cut -d'|' -f2 <<<"$1"; }
frontend_flags() { cut -d'|' -f3 <<<"$1"; }

start_backend() {  # NAME WORKLOAD [FLAGS...]
  local name=$1 w=$2
  shift 2
  "$exe" backend --socket "$dir/$name.sock" --workloads "$w" --scale "$(scale_of "$w")" "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q ready "$dir/$name.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "backend $name did not start:" >&2
  cat "$dir/$name.err" >&2
  return 1
}

point() {  # SOCKET WORKLOAD CONFIG [FRONTEND FLAGS...] -> req/s, median service ms
  local sock=$1 w=$2 c=$3
  shift 3
  echo go | "$exe" frontend --socket "$sock" --workload "$w" --config "$c" --scale "$(scale_of "$w")" \
    --requests "$requests" "$@" | tail -1 |
    python3 -c 'import json,statistics,sys; r=json.loads(sys.stdin.read()); s=[x for x in r["service_us"] if x >= 0]
print("%8.3f %10s" % (r["requests"] / r["wall_us"] * 1e6, "%.1f" % (statistics.median(s) / 1000) if s else "-"))'
}

printf "%-14s %-11s %-14s %5s %8s %10s\n" workload arm config round req/s service_ms
for w in ${workloads//,/ }; do
  for arm in "$ARM_A" "$ARM_B"; do
    # shellcheck disable=SC2046  # the flags are words
    start_backend "$(arm_name "$arm")" "$w" $(backend_flags "$arm")
  done
  for round in $(seq "$rounds"); do
    for arm in "$ARM_A" "$ARM_B"; do
      for c in ${configs//,/ }; do
        # shellcheck disable=SC2046
        printf "%-14s %-11s %-14s %5d %s\n" "$w" "$(arm_name "$arm")" "$c" "$round" \
          "$(point "$dir/$(arm_name "$arm").sock" "$w" "$c" $(frontend_flags "$arm"))"
      done
    done
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for arm in "$ARM_A" "$ARM_B"; do sed "s/^/  $(arm_name "$arm"): /" "$dir/$(arm_name "$arm").err"; done
  pids=()
done
