#!/usr/bin/env bash
# The bundled example: trains a small character-level GPT-MoE on the built-in
# corpus (arithmetic, code, prose) on the CPU (or a GPU when one is usable),
# prints samples and the expert report, and writes out-gpt-moe/ckpt.safetensors
# and out-gpt-moe/experts.svg. Installs missing Debian packages first, builds
# only what the example needs. Extra arguments go to `gpt_moe train`
# (e.g. scripts/example.sh --max_iters 200 --device cpu); see docs/gpt_moe.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
moejit_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target gpt_moe
./build/bin/gpt_moe train "$@"
