#!/usr/bin/env bash
# Same-run A/B of OpOptions::concurrent on the demo's workloads: a backend
# whose ops are concurrent (idle dispatchers help with a session's waiting
# requests, as `rocket demo` runs it) against one started with --serial-ops
# (a session's requests one at a time, the behaviour before session 6).
#
#   bash bench/experiments/helping_ab.sh [BUILD_DIR] [WORKLOADS] [REQUESTS] [ROUNDS] [CONFIGS]
set -euo pipefail
ARM_A="concurrent||" ARM_B="serial|--serial-ops|" exec bash "$(dirname "$0")/ab.sh" "$@"
