#!/usr/bin/env bash
# `rocket top` against a running `rocket serve`: a JSON sample per interval
# whose counters add up, and a clear error where there is no server.
#
#   bash tests/tools/top.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
dir=$(mktemp -d /tmp/rocket-top-test.XXXXXX)
srv=
cleanup() {
  [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

sock=$dir/s.sock
"$rocket" serve --socket "$sock" --client-pool-mib 4 --server-pool-mib 4 >"$dir/serve.out" 2>&1 &
srv=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || fail "server did not start"
for _ in 1 2 3; do "$rocket" call --socket "$sock" --op echo_copy --data hi >/dev/null; done
"$rocket" top --socket "$sock" --count 2 --interval-ms 50 --json >"$dir/top.json"
[[ $(wc -l <"$dir/top.json") == 2 ]] || fail "expected two samples: $(cat "$dir/top.json")"
# Three calls and top's own three samples so far: at least 5 requests by the
# last line, one session (top's), and a rate on each line.
last=$(tail -1 "$dir/top.json")
requests=$(grep -o '"requests":[0-9]*' <<<"$last" | cut -d: -f2)
sessions=$(grep -o '"sessions_open":[0-9]*' <<<"$last" | cut -d: -f2)
[[ -n $requests && $requests -ge 5 ]] || fail "requests in the last sample: '$requests': $last"
[[ $sessions == 1 ]] || fail "sessions in the last sample: '$sessions': $last"
[[ $(grep -c '"requests_per_s":[0-9.e+-]*' "$dir/top.json") == 2 ]] || fail "a sample without a rate: $(cat "$dir/top.json")"
set +e
"$rocket" top --socket "$dir/none.sock" --count 1 2>"$dir/err"
rc=$?
set -e
[[ $rc == 1 ]] && grep -q "UNAVAILABLE" "$dir/err" || fail "no server: exit $rc, $(cat "$dir/err")"
echo "rocket top: checks passed"
