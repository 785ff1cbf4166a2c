#!/usr/bin/env bash
# `rocket bench peers` against a test double of rocket-peers whose clients
# print malformed result lines (not JSON; samples that are not numbers, or
# none at all). The bench reads those lines from other processes: it must
# report the points as failed and exit 1, never crash.
#
#   bash tests/tools/peers_malformed_client.sh PATH/TO/rocket
set -euo pipefail
rocket=$1
dir=$(mktemp -d /tmp/rocket-peers-double.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

for line in 'garbage' '{"samples": ["x", 1]}' '{"samples": 5}' '{"samples": []}'; do
  cat >"$dir/double" <<DOUBLE
#!/usr/bin/env bash
case "\$1" in
  server) echo ready; exec sleep 60 ;;
  client) echo '$line' ;;
esac
DOUBLE
  chmod +x "$dir/double"
  set +e
  ROCKET_PEERS="$dir/double" timeout 120 "$rocket" bench peers --transports uds,rocket --sizes 64 --workload "" \
    --budget-ms 10 >"$dir/out" 2>&1
  rc=$?
  set -e
  [[ $rc == 1 ]] || fail "client line '$line': exit $rc, expected 1"
  grep -q "uds echo 64: INTERNAL: malformed client output" "$dir/out" || fail "client line '$line': no message"
done
echo "rocket bench peers reported every malformed client line and exited 1"
