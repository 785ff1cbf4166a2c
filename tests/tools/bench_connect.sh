#!/usr/bin/env bash
# `rocket bench connect`: a JSON point per burst size whose numbers add up;
# the 2 MiB-page arm gets huge pages where the system allows them and is
# refused clearly where it does not; a clear error for bad arguments.
#
#   bash tests/tools/bench_connect.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
err=$(mktemp /tmp/rocket-bench-connect.XXXXXX)
trap 'rm -f "$err"' EXIT
out=$("$rocket" bench connect --clients 1,3 --pool 1M --rounds 2 --pages 4k --json) || fail "bench connect failed: $out"
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
setting=$(grep -o '\[[a-z_]*\]' /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null | tr -d '[]' || true)
case $setting in
  advise | within_size | always | force)
    out=$("$rocket" bench connect --clients 2 --pool 8M --rounds 1 --pages 2m --json) || fail "2m arm failed: $out"
    tr -d ' \n' <<<"$out" | grep -q '"pages":"2m"' || fail "no 2m point: $out"
    huge=$(tr -d ' \n' <<<"$out" | grep -o '"shmem_huge_bytes":[0-9]*' | cut -d: -f2)
    ((huge > 0)) || fail "shmem_enabled is '$setting' but the 2m arm's sessions held no huge pages: $out"
    ;;
  *)
    if "$rocket" bench connect --clients 1 --pool 1M --pages 2m >/dev/null 2>"$err" ||
      ! grep -q "huge pages are '.*' here, so the 2 MiB arm is not run" "$err"; then
      fail "--pages 2m without shared-memory huge pages was not refused clearly: $(cat "$err")"
    fi
    ;;
esac
if "$rocket" bench connect --clients 0 >/dev/null 2>"$err" ||
  ! grep -q "counts from 1 to 256" "$err"; then
  fail "--clients 0 was not refused clearly: $(cat "$err")"
fi
echo ok
