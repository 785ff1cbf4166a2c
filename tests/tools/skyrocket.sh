#!/usr/bin/env bash
# SkyRocket end to end with the rocket tool: profile (quick) -> train ->
# bench policy with its decision log -> retrain on profile plus log; and the
# clear errors for a malformed trace and model, which the runtime ignores
# (saying so) rather than failing calls.
#
#   bash tests/tools/skyrocket.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
dir=$(mktemp -d /tmp/rocket-sky-test.XXXXXX)
srv=
cleanup() {
  [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# Nothing here may read or write the user's own model or traces: HOME is
# the scratch directory, so the defaults land in $dir/.cache/rocket (which
# does not exist yet: a fresh machine's first run).
export HOME=$dir ROCKET_MODEL=$dir/.cache/rocket/model.json

# An output that cannot be written fails at once: no sweep starts (its
# header line names the situations) and no row is measured.
if "$rocket" profile --quick --out /proc/nope/t.csv >"$dir/nope.out" 2>&1; then fail "profile wrote into /proc"; fi
grep -q "/proc/nope/t.csv" "$dir/nope.out" || fail "unwritable output: $(cat "$dir/nope.out")"
if grep -q "situations x\|p50 us" "$dir/nope.out"; then fail "profile swept before finding its output unwritable"; fi

# Defaults throughout: traces.csv and model.json beside each other.
"$rocket" profile --quick --concurrency 1 >"$dir/profile.out" 2>&1 || fail "profile: $(tail -5 "$dir/profile.out")"
trace=$dir/.cache/rocket/traces.csv
[[ -f $trace ]] || fail "no trace at the default path: $(tail -3 "$dir/profile.out")"
cp "$trace" "$dir/t.csv"
rows=$(($(wc -l <"$dir/t.csv") - 1))
[[ $rows -ge 100 ]] || fail "profile wrote $rows rows"
head -1 "$dir/t.csv" | grep -q '^situation,size_log2,' || fail "trace header: $(head -1 "$dir/t.csv")"

"$rocket" train --json >"$dir/train.json" 2>&1 || fail "train: $(cat "$dir/train.json")"
grep -q '"situations": [1-9]' "$dir/train.json" || fail "no cross-validated situations: $(cat "$dir/train.json")"
grep -q '"mode_hint"' "$dir/train.json" || fail "no mode hint: $(cat "$dir/train.json")"
[[ -f $ROCKET_MODEL ]] || fail "no model at the default path"
cp "$ROCKET_MODEL" "$dir/m.json"
grep -q '"format":"rocket-skyrocket-model"' "$dir/m.json" || fail "model file: $(head -c 200 "$dir/m.json")"

"$rocket" bench policy --quick --clients 1 --model "$dir/m.json" --log "$dir/log.csv" --json >"$dir/bench.json" 2>"$dir/bench.err" ||
  fail "bench policy: $(cat "$dir/bench.err")"
grep -q '"auto (learned)"' "$dir/bench.json" || fail "no learned arm: $(cat "$dir/bench.json")"
grep -q '"cached_decide_ns"' "$dir/bench.json" || fail "no decision cost: $(cat "$dir/bench.json")"
logged=$(($(wc -l <"$dir/log.csv") - 1))
[[ $logged -ge 1 ]] || fail "the learned arm logged $logged decisions"
grep -q '^online,' "$dir/log.csv" || fail "log rows: $(head -3 "$dir/log.csv")"
# Feedback: the log is a trace like any other.
"$rocket" train --traces "$dir/t.csv,$dir/log.csv" --out "$dir/m2.json" >"$dir/train2.out" 2>&1 ||
  fail "retrain with the log: $(cat "$dir/train2.out")"

# The model in use shows in doctor.
ROCKET_MODEL=$dir/m.json "$rocket" doctor | grep -q "learned policy (SkyRocket): $dir/m.json" ||
  fail "doctor: $(ROCKET_MODEL=$dir/m.json "$rocket" doctor | grep -i learned)"

# A malformed trace: the file and line.
cp "$dir/t.csv" "$dir/bad.csv"
echo "s,20,48,48,0,0,0,1,warp,auto,5" >>"$dir/bad.csv"
if "$rocket" train --traces "$dir/bad.csv" --out "$dir/m3.json" >"$dir/bad.out" 2>&1; then fail "a bad trace trained"; fi
grep -q "bad.csv:$((rows + 2)):.*warp" "$dir/bad.out" || fail "bad trace error: $(cat "$dir/bad.out")"

# A malformed model: refused by the tools with the reason; ignored by the
# runtime, which says so and still answers calls.
printf '{"format": "rocket-skyrocket-model", "version": 1, "trees": [[[0, 1, 0, 0]]]}' >"$dir/bad.json"
if "$rocket" bench policy --quick --model "$dir/bad.json" >"$dir/badm.out" 2>&1; then fail "a bad model benched"; fi
grep -q "SkyRocket model" "$dir/badm.out" || fail "bad model error: $(cat "$dir/badm.out")"
sock=$dir/s.sock
"$rocket" serve --socket "$sock" --client-pool-mib 8 --server-pool-mib 8 >"$dir/serve.out" 2>&1 &
srv=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || fail "server did not start"
ROCKET_MODEL=$dir/bad.json "$rocket" call --socket "$sock" --op echo_copy --size 1048576 >"$dir/call.out" 2>&1 ||
  fail "a call with a bad model installed failed: $(cat "$dir/call.out")"
grep -q "ignoring SkyRocket model" "$dir/call.out" || fail "no word of the ignored model: $(cat "$dir/call.out")"
echo "skyrocket: profile ($rows rows), train, bench policy ($logged decisions logged), retrain, errors: ok"
