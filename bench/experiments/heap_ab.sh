#!/usr/bin/env bash
# Same-run A/B of retain_freed_memory() on the demo's workloads: backend and
# frontends that keep freed memory for the next request (as `rocket demo`
# runs them) against both started with --default-malloc (glibc's default:
# large blocks unmapped on free, so each request faults its temporaries in).
#
#   bash bench/experiments/heap_ab.sh [BUILD_DIR] [WORKLOADS] [REQUESTS] [ROUNDS] [CONFIGS]
set -euo pipefail
ARM_A="retained||" ARM_B="default|--default-malloc|--default-malloc" exec bash "$(dirname "$0")/ab.sh" "$@"
