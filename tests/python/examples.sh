#!/usr/bin/env bash
# Runs examples/python: the backend in the background, the frontend against it.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
python=$1
"$python" -c "import numpy" 2>/dev/null || { echo "SKIP: the examples need python3-numpy"; exit 77; }
dir=$(mktemp -d)
sock=$dir/features.sock
trap 'kill "$backend" 2>/dev/null || true; wait "$backend" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$python" "$here/examples/python/backend.py" "$sock" > "$dir/backend.log" 2>&1 &
backend=$!
for _ in $(seq 1 300); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$dir/backend.log"; echo "backend did not start"; exit 1; }
out=$("$python" "$here/examples/python/frontend.py" "$sock")
echo "$out"
grep -q "zero-copy path: ok" <<< "$out"
grep -q "pipelined: 8 jobs ok" <<< "$out"
grep -q "bad request refused: expected rows of 32" <<< "$out"
kill -TERM "$backend"
wait "$backend"   # exits 0: its SIGTERM handler stops the server
echo "examples: ok"
