#!/usr/bin/env bash
# Builds moejit from scratch in build/ and runs every test (unit, lit, fuzz,
# install). Installs missing Debian packages first. GPU tests report
# SKIPPED on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
moejit_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2
ctest --test-dir build -j2 --output-on-failure
