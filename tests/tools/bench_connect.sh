#!/usr/bin/env bash
# `rocket bench connect`: a JSON point per burst size whose numbers add up,
# and a clear error for bad arguments.
#
#   bash tests/tools/bench_connect.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
err=$(mktemp /tmp/rocket-bench-connect.XXXXXX)
trap 'rm -f "$err"' EXIT
out=$("$rocket" bench connect --clients 1,3 --pool 1M --rounds 2 --json) || fail "bench connect failed: $out"
[[ $(grep -c '"clients"' <<<"$out") == 2 ]] || fail "expected two points: $out"
# Each point: every connect of both rounds, and the slowest no faster than the median.
for n in 1 3; do
  point=$(tr -d ' \n' <<<"$out" | grep -o "{[^{}]*\"clients\":$n,[^{}]*}") || fail "no point for $n clients: $out"
  connects=$(grep -o '"connects":[0-9]*' <<<"$point" | cut -d: -f2)
  [[ $connects == $((2 * n)) ]] || fail "$n clients, 2 rounds: $connects connects: $point"
  p50=$(grep -o '"connect_p50_ms":[0-9.e+-]*' <<<"$point" | cut -d: -f2)
  slowest=$(grep -o '"slowest_ms":[0-9.e+-]*' <<<"$point" | cut -d: -f2)
  awk -v a="$p50" -v b="$slowest" 'BEGIN { exit !(a > 0 && b >= a) }' || fail "p50 $p50, slowest $slowest: $point"
done
if "$rocket" bench connect --clients 0 >/dev/null 2>"$err" ||
  ! grep -q "counts from 1 to 256" "$err"; then
  fail "--clients 0 was not refused clearly: $(cat "$err")"
fi
echo ok
