#!/usr/bin/env bash
# Builds moejit from scratch in build/ and runs every test (unit, lit, fuzz,
# install). Installs missing Debian packages first. GPU tests report
# SKIPPED on machines without a GPU.
#
#   scripts/test.sh            # build/, the CUDA backend on when the CUDA Toolkit is found
#   scripts/test.sh --no-cuda  # build-nocuda/, -DMOEJIT_WITH_CUDA=OFF: proves the CPU-only build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
moejit_install_deps
build=build
cuda_flags=()
if [[ "${1:-}" == "--no-cuda" ]]; then
  build=build-nocuda
  cuda_flags=(-DMOEJIT_WITH_CUDA=OFF)
fi
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" "${cuda_flags[@]}" >/dev/null
cmake --build "$build" -j2
ctest --test-dir "$build" -j2 --output-on-failure
