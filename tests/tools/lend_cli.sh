#!/usr/bin/env bash
# `rocket serve --lend --lend-memory` and `rocket call --lend-memory` in
# scratch cgroups: a call from a frontend with a memory limit lends what it
# asks, both limits are back after the call, and bad arguments are refused.
# Needs root and cgroup v1 `cpu` and `memory` hierarchies (the C++ tests in
# tests/pocket cover the library on either version); skips otherwise.
#
#   bash tests/tools/lend_cli.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "skip: needs root to make cgroups"; exit 77; }
mount_of() { awk -v c="$1" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) { print $2; exit } }' /proc/mounts; }
cpu_root=$(mount_of cpu)
mem_root=$(mount_of memory)
[[ -n $cpu_root && -n $mem_root ]] || { echo "skip: no cgroup v1 cpu and memory hierarchies here"; exit 77; }

name=rocket-cli-test-$$
dir=$(mktemp -d /tmp/rocket-lend-cli.XXXXXX)
srv=
cleanup() {
  [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
  for d in "$cpu_root/$name/backend" "$cpu_root/$name" "$mem_root/$name/backend" "$mem_root/$name/fe" "$mem_root/$name"; do
    [[ -d $d ]] && for _ in $(seq 100); do rmdir "$d" 2>/dev/null && break; sleep 0.02; done
  done
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$cpu_root/$name/backend" "$mem_root/$name/backend" "$mem_root/$name/fe" ||
  { echo "skip: cannot make cgroups here"; exit 77; }
echo 50000 >"$cpu_root/$name/backend/cpu.cfs_quota_us"
mib=$((1 << 20))
echo $((256 * mib)) >"$mem_root/$name/backend/memory.limit_in_bytes"
echo $((1024 * mib)) >"$mem_root/$name/fe/memory.limit_in_bytes"

# Memory loans go with CPU lending, and sizes are checked.
if "$rocket" serve --socket "$dir/x.sock" --lend-memory >"$dir/bad.out" 2>&1; then fail "--lend-memory alone was taken"; fi
grep -q -- "--lend-memory goes with --lend" "$dir/bad.out" || fail "$(cat "$dir/bad.out")"

sock=$dir/s.sock
"$rocket" serve --socket "$sock" --client-pool-mib 4 --server-pool-mib 4 --lend --lend-cgroup "$cpu_root/$name/backend" \
  --lend-memory --lend-memory-cgroup "$mem_root/$name/backend" --lend-memory-reserve 16M >"$dir/serve.out" 2>&1 &
srv=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || fail "server did not start: $(cat "$dir/serve.out")"
grep -q "takes CPU and memory loans" "$dir/serve.out" || fail "serve line: $(cat "$dir/serve.out")"

# A caller in the frontend's memory cgroup.
out=$( (echo "$BASHPID" >"$mem_root/$name/fe/cgroup.procs" && exec "$rocket" call --socket "$sock" --op echo --data hi \
  --lend-memory 128M --json))
lent=$(grep -o '"lent_memory_bytes":[0-9]*' <<<"$out" | cut -d: -f2)
[[ $lent == $((128 * mib)) ]] || fail "lent '$lent': $out"
[[ $(cat "$mem_root/$name/fe/memory.limit_in_bytes") == $((1024 * mib)) ]] || fail "the frontend's limit is not back"
for _ in $(seq 100); do
  [[ $(cat "$mem_root/$name/backend/memory.limit_in_bytes") == $((256 * mib)) ]] && break
  sleep 0.05
done
[[ $(cat "$mem_root/$name/backend/memory.limit_in_bytes") == $((256 * mib)) ]] || fail "the backend's limit is not back"

# A caller with no memory limit lends nothing, and the call succeeds.
out=$("$rocket" call --socket "$sock" --op echo --data hi --lend-memory 1M)
grep -q "lent the backend 0 of 1048576 bytes of memory asked" <<<"$out" || fail "unlimited caller: $out"
if "$rocket" call --socket "$sock" --op echo --data hi --lend-memory 12Q >"$dir/bad.out" 2>&1; then
  fail "a bad size was taken"
fi
grep -q "bad size" "$dir/bad.out" || fail "$(cat "$dir/bad.out")"
echo "ok"
