#!/usr/bin/env bash
# Installs the Debian packages Rocket needs to build, test and benchmark.
# Idempotent; run as root (or with sudo) on Debian 12 (bookworm).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config   # toolchain
  libgtest-dev libgmock-dev                      # tests
  libcli11-dev nlohmann-json3-dev                # the rocket tool
  libtorch-dev libxgboost-dev libfaiss-dev        # rocket demo's workloads
  libopenblas0-pthread                           # a fast BLAS for faiss (Debian's default is the reference one)
  libzmq3-dev cppzmq-dev                         # rocket bench peers: ZeroMQ
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev  # ... and gRPC
  gnuplot-nox                                    # the demo's plots
  pybind11-dev python3-dev python3-numpy         # the Python module and its tests
  python3-zmq python3-grpcio                     # ... and bench/python/peers.py's ZeroMQ and gRPC
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
