#!/usr/bin/env bash
# Builds and runs the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
moejit_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target moe_layer
./build/bin/moe_layer "$@"
