#!/usr/bin/env bash
# Pocket's CPU lending on the demo's real workloads: the backends run in a
# cgroup capped at BACKEND_CPU, the frontend in one capped at FRONTEND_CPU,
# and ab.sh alternates a frontend that lends LEND millicpus per call with one
# that lends nothing (same backend flags; rounds reversed).
#
#   sudo BACKEND_CPU=1 FRONTEND_CPU=1 LEND=900 bash bench/experiments/lend_ab.sh [BUILD_DIR] [WORKLOADS] [REQUESTS] [ROUNDS]
#
# Needs root and the cgroup v1 `cpu` controller (as on the CI VM);
# `rocket bench lend` does the synthetic version on v1 and v2.
set -euo pipefail
bin=$(realpath "${1:-build/release}")
workloads=${2:-xgboost,mobilenetv2,vector_search,pagerank}
requests=${3:-8}
rounds=${4:-2}
backend_cpu=${BACKEND_CPU:-1}
frontend_cpu=${FRONTEND_CPU:-1}
lend=${LEND:-900}
[[ $(id -u) == 0 ]] || { echo "lend_ab.sh: needs root to make cgroups" >&2; exit 2; }
mount=$(grep -E ' - cgroup cgroup [^ ]*\bcpu\b' /proc/self/mountinfo | awk '{print $5}' | head -1)
self=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup)
[[ -n $mount && -n $self ]] || { echo "lend_ab.sh: no cgroup v1 cpu hierarchy here" >&2; exit 2; }
root="$mount${self%/}/rocket-lend-ab-$$"
wrap=$(mktemp -d /tmp/rocket-lend-ab.XXXXXX)
cleanup() {  # ab.sh stops its own processes; their cgroups empty a moment later
  sleep 0.5
  for cg in "$root/backend" "$root/frontend" "$root"; do rmdir "$cg" 2>/dev/null || true; done
  rm -rf "$wrap"
}
trap cleanup EXIT
mkdir -p "$root/backend" "$root/frontend"
quota() { awk -v c="$1" 'BEGIN { printf "%d", c * 100000 }'; }
echo "$(quota "$backend_cpu")" >"$root/backend/cpu.cfs_quota_us"
echo "$(quota "$frontend_cpu")" >"$root/frontend/cpu.cfs_quota_us"
# ab.sh runs "$BUILD_DIR/rocket-workloads": this one joins the role's cgroup first.
cat >"$wrap/rocket-workloads" <<WRAP
#!/usr/bin/env bash
case "\$1" in
  backend) echo \$\$ >"$root/backend/cgroup.procs" ;;
  frontend) echo \$\$ >"$root/frontend/cgroup.procs" ;;
esac
exec "$bin/rocket-workloads" "\$@"
WRAP
chmod +x "$wrap/rocket-workloads"
echo "backends capped at $backend_cpu CPU, the frontend at $frontend_cpu CPU; the lending frontend lends $lend millicpus per call"
ARM_A="no-loan|--lend|" ARM_B="lend|--lend|--lend $lend" \
  bash "$(dirname "$0")/ab.sh" "$wrap" "$workloads" "$requests" "$rounds" baseline
