#!/usr/bin/env bash
# `rocket serve`'s session limits from the command line: --max-mapped-mib
# shows in the stats op and refuses a session past it with the reason,
# --max-sessions-per-uid refuses this uid's second session while `rocket top`
# holds its first, and a budget past the cap is refused at start.
#
#   bash tests/tools/serve_limits.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
dir=$(mktemp -d /tmp/rocket-serve-limits.XXXXXX)
srv=
top=
cleanup() {
  [[ -n $top ]] && kill "$top" 2>/dev/null && wait "$top" 2>/dev/null
  [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
start() {  # start SOCKET ARGS...: a server, waited for
  local sock=$1
  shift
  "$rocket" serve --socket "$sock" --client-pool-mib 4 --server-pool-mib 4 "$@" >"$dir/serve.out" 2>&1 &
  srv=$!
  for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
  [[ -S $sock ]] || fail "server did not start: $(cat "$dir/serve.out")"
}
stop() { kill "$srv" && wait "$srv" 2>/dev/null || true; srv=; }

# A 20 MiB budget: the stats op says so; a session of 4+4 MiB fits, one
# asking for more than the budget does not.
start "$dir/a.sock" --max-mapped-mib 20
"$rocket" call --socket "$dir/a.sock" --op stats --out "$dir/stats.json" >/dev/null || fail "stats call failed"
stats=$(cat "$dir/stats.json")
grep -q "\"mapped_budget_bytes\": *$((20 << 20))" <<<"$stats" || fail "budget not in stats: $stats"
stop
start "$dir/b.sock" --max-mapped-mib 6
set +e
"$rocket" call --socket "$dir/b.sock" --op echo --data hi >"$dir/out" 2>"$dir/err"
rc=$?
set -e
[[ $rc != 0 ]] && grep -q "RESOURCE_EXHAUSTED.*memory budget" "$dir/err" ||
  fail "a session past the budget: exit $rc, $(cat "$dir/err")"
stop

# One session per uid: `rocket top` holds one, so a call is refused.
start "$dir/c.sock" --max-sessions-per-uid 1
"$rocket" top --socket "$dir/c.sock" --count 400 --interval-ms 50 --json >"$dir/top.json" 2>&1 &
top=$!
for _ in $(seq 200); do [[ -s $dir/top.json ]] && break; sleep 0.05; done
[[ -s $dir/top.json ]] || fail "rocket top took no sample"
set +e
"$rocket" call --socket "$dir/c.sock" --op echo --data hi >"$dir/out" 2>"$dir/err"
rc=$?
set -e
[[ $rc != 0 ]] && grep -q "max_sessions_per_uid" "$dir/err" || fail "second session of one uid: exit $rc, $(cat "$dir/err")"
kill "$top" && wait "$top" 2>/dev/null || true
top=
stop

set +e
"$rocket" serve --socket "$dir/d.sock" --max-mapped-mib $((1 << 41)) >"$dir/out" 2>"$dir/err"
rc=$?
set -e
[[ $rc == 2 ]] && grep -q "at most" "$dir/err" || fail "an overflowing budget: exit $rc, $(cat "$dir/err")"
echo "rocket serve limits: checks passed"
