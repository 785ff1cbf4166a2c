#!/usr/bin/env bash
# The README's first command: install, build, then start a backend, talk to it
# from a separate frontend process, and run the echo benchmark against a Unix
# socket. Pass --full for the full sweep (64 B .. 256 MiB, 1 and 2 clients).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
R=./build/release/rocket
sock=/tmp/rocket-demo-$$.sock

echo "== rocket doctor"
$R doctor
echo
echo "== a backend and a frontend in separate processes"
$R serve --socket "$sock" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
$R call --socket "$sock" --op echo --data "hello from a frontend"
$R call --socket "$sock" --op checksum --size $((64 << 20))
./build/release/examples/rocket_hello "$sock"
kill $server; wait $server 2>/dev/null || true
trap - EXIT
echo
echo "== rocket bench movers (every usable data mover against memcpy)"
$R bench movers --sizes 1M,16M,128M --budget-ms 60 2>/dev/null
echo
echo "== rocket bench echo (Rocket vs a Unix domain socket vs two memcpys)"
if [ "${1:-}" = "--full" ]; then
  $R bench echo
else
  $R bench echo --sizes 64,64K,1M,16M,128M --clients 1
fi
