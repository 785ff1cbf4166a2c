#!/usr/bin/env bash
# `rocket demo` against test doubles of rocket-workloads that print malformed
# lines (a workload list that is not a list; a backend's ready line that is
# not an object; frontend results that are not JSON, lack fields, or claim
# more requests than they have samples). The demo
# reads those lines from other processes: it must report them and exit 1,
# never crash.
#
#   bash tests/tools/demo_malformed_workloads.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
dir=$(mktemp -d /tmp/rocket-demo-double.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# Writes a test double of rocket-workloads: $1 its name, $2 its list line,
# $3 its backend's ready line, $4 its frontends' result line.
double() {
  cat >"$dir/$1" <<DOUBLE
#!/usr/bin/env bash
case "\$1" in
  list) echo '$2' ;;
  backend) echo '$3'; exec sleep 60 ;;
  frontend) echo ready; read -r _; echo '$4' ;;
esac
DOUBLE
  chmod +x "$dir/$1"
}

run_demo() {  # DOUBLE -> output in $dir/out, exit status in $rc
  set +e
  ROCKET_WORKLOADS="$dir/$1" timeout 120 "$rocket" demo --quick --no-plots --out "$dir/report" >"$dir/out" 2>&1
  rc=$?
  set -e
}

list='[{"name":"pagerank","usable":true,"description":"d","reason":""}]'
ready='{"ready": true, "startup_ms": {"pagerank": 1}}'

double not_a_list '{"workloads": []}' "$ready" '{}'
run_demo not_a_list
[[ $rc == 1 ]] || fail "malformed list: exit $rc, expected 1"
grep -q "printed a malformed list" "$dir/out" || fail "malformed list: no message"

double garbage "$list" '["ready"]' 'garbage'
run_demo garbage
[[ $rc == 1 ]] || fail "garbage results: exit $rc, expected 1"
grep -q "baseline .*failed: INTERNAL: malformed frontend result: garbage" "$dir/out" ||
  fail "garbage results: no message"

# Every field but one the summary reads.
double missing "$list" "$ready" '{"call_us": [1], "service_us": [1], "e2e_us": [1], "wall_us": 5, "requests": 1}'
run_demo missing
[[ $rc == 1 ]] || fail "a result without call_cpu_us: exit $rc, expected 1"
grep -q "malformed frontend result" "$dir/out" || fail "a result without call_cpu_us: no message"

double wrong_type "$list" "$ready" \
  '{"call_us": ["x"], "service_us": [1], "e2e_us": [1], "wall_us": 5, "requests": 1, "call_cpu_us": 1, "request_bytes": 1, "response_bytes": 1}'
run_demo wrong_type
[[ $rc == 1 ]] || fail "a string among the samples: exit $rc, expected 1"
grep -q "malformed frontend result" "$dir/out" || fail "a string among the samples: no message"
# Every field, but two requests claimed for one sample each.
double short_samples "$list" "$ready" \
  '{"call_us": [1], "service_us": [1], "e2e_us": [1], "wall_us": 5, "requests": 2, "call_cpu_us": 1, "request_bytes": 1, "response_bytes": 1}'
run_demo short_samples
[[ $rc == 1 ]] || fail "fewer samples than requests: exit $rc, expected 1"
grep -q "malformed frontend result" "$dir/out" || fail "fewer samples than requests: no message"
echo "rocket demo reported every malformed line and exited 1"
