#!/usr/bin/env bash
# `rocket bench connect`: a JSON point per burst size and starting pool size,
# and per pool size a fresh session's first calls, whose numbers add up;
# the 2 MiB-page arm gets huge pages where the system allows them and is
# refused clearly where it does not; a clear error for bad arguments.
#
#   bash tests/tools/bench_connect.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
err=$(mktemp /tmp/rocket-bench-connect.XXXXXX)
trap 'rm -f "$err"' EXIT
out=$("$rocket" bench connect --clients 1,3 --pools 1M,4M --first-call 8M --rounds 2 --pages 4k --json) ||
  fail "bench connect failed: $out"
flat=$(tr -d ' \n' <<<"$out")
[[ $(grep -o '"clients"' <<<"$flat" | wc -l) == 4 ]] || fail "expected four burst points: $out"
# Each burst point: every connect of both rounds, and the slowest no faster than the median.
for pool in 1048576 4194304; do
  for n in 1 3; do
    point=$(grep -o "{[^{}]*\"clients\":$n,[^{}]*}" <<<"$flat" | grep "\"pool_bytes\":$pool,") ||
      fail "no point for $n clients, pools $pool: $out"
    connects=$(grep -o '"connects":[0-9]*' <<<"$point" | cut -d: -f2)
    [[ $connects == $((2 * n)) ]] || fail "$n clients, 2 rounds: $connects connects: $point"
    p50=$(grep -o '"connect_p50_ms":[0-9.e+-]*' <<<"$point" | cut -d: -f2)
    slowest=$(grep -o '"slowest_ms":[0-9.e+-]*' <<<"$point" | cut -d: -f2)
    awk -v a="$p50" -v b="$slowest" 'BEGIN { exit !(a > 0 && b >= a) }' || fail "p50 $p50, slowest $slowest: $point"
  done
  # A fresh session's first two 8 MiB calls, one session a round: the 1 MiB
  # pools grew to carry them.
  point=$(grep -o '{[^{}]*"first_call_bytes":8388608,[^{}]*}' <<<"$flat" | grep "\"pool_bytes\":$pool,") ||
    fail "no first-call point for pools $pool: $out"
  [[ $(grep -o '"sessions":[0-9]*' <<<"$point" | cut -d: -f2) == 2 ]] || fail "expected two sessions: $point"
  for k in connect_p50_ms first_call_p50_ms second_call_p50_ms; do
    v=$(grep -o "\"$k\":[0-9.e+-]*" <<<"$point" | cut -d: -f2)
    awk -v a="$v" 'BEGIN { exit !(a > 0) }' || fail "$k is $v: $point"
  done
done
setting=$(grep -o '\[[a-z_]*\]' /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null | tr -d '[]' || true)
case $setting in
  advise | within_size | always | force)
    out=$("$rocket" bench connect --clients 2 --pools 8M --first-call 0 --rounds 1 --pages 2m --json) || fail "2m arm failed: $out"
    tr -d ' \n' <<<"$out" | grep -q '"pages":"2m"' || fail "no 2m point: $out"
    huge=$(tr -d ' \n' <<<"$out" | grep -o '"shmem_huge_bytes":[0-9]*' | cut -d: -f2)
    ((huge > 0)) || fail "shmem_enabled is '$setting' but the 2m arm's sessions held no huge pages: $out"
    ;;
  *)
    if "$rocket" bench connect --clients 1 --pools 1M --pages 2m >/dev/null 2>"$err" ||
      ! grep -q "huge pages are '.*' here, so the 2 MiB arm is not run" "$err"; then
      fail "--pages 2m without shared-memory huge pages was not refused clearly: $(cat "$err")"
    fi
    ;;
esac
if "$rocket" bench connect --clients 0 >/dev/null 2>"$err" ||
  ! grep -q "counts from 1 to 256" "$err"; then
  fail "--clients 0 was not refused clearly: $(cat "$err")"
fi
if "$rocket" bench connect --pools 1M,3G >/dev/null 2>"$err" ||
  ! grep -q "sizes from 4K to 2G" "$err"; then
  fail "--pools 3G was not refused clearly: $(cat "$err")"
fi
echo ok
