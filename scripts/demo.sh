#!/usr/bin/env bash
# The README's first command: install, build, then run the main job,
# `rocket demo`: real workloads (MobileNetV2, XGBoost, PageRank, faiss
# search) split into frontends and a shared backend, under every execution
# mode and engine, with a report folder (JSON + PNG plots). Extra arguments go
# to `rocket demo` (e.g. --quick, --workloads pagerank).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
R=./build/release/rocket

echo "== rocket doctor"
$R doctor
echo
echo "== rocket demo $*"
$R demo "$@"
