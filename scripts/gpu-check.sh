#!/usr/bin/env bash
# GPU check of the CUDA backend, run ON a GPU machine from the repository root
# with a bundle built elsewhere (scripts/gpu-check.sh --bundle makes it here):
#   BUNDLE/moejit_cuda_tests, BUNDLE/gpt_moe (Release, stripped) and
#   BUNDLE/tinyshakespeare.txt.
# Steps: nvidia-smi; the GPU tests; the kernel cache cold vs warm (two
# processes on one fresh MOEJIT_CACHE_DIR); 200 training steps of the
# GPT-MoE example on tinyshakespeare with --device cuda and, at the same
# time, --device cpu; then a summary table, printed last. Logs go to $OUT
# (or /tmp/gpu-check) as well.
#
#   scripts/gpu-check.sh --bundle [DIR]   # here: build and pack (default build-gpu-bundle)
#   scripts/gpu-check.sh [DIR]            # there: run the checks
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--bundle" ]]; then
  set -e
  dir=${2:-build-gpu-bundle}
  build=${GPU_BUILD_DIR:-build-gpu}  # any optimized build (Release, or RelWithDebInfo: stripped below)
  [[ -f "$build/CMakeCache.txt" ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$build" -j2 moejit_cuda_tests gpt_moe
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$build"/tests/cuda/moejit_cuda_tests "$build"/bin/gpt_moe "$dir"/
  strip "$dir"/moejit_cuda_tests "$dir"/gpt_moe
  cp ../shared/data/tinyshakespeare.txt "$dir"/
  du -sh "$dir"
  exit 0
fi

BUNDLE=$(realpath "${1:-build-gpu-bundle}")
LOGS=${OUT:-/tmp/gpu-check}
mkdir -p "$LOGS"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# NVRTC 12.9+ keeps its own compile cache in the driver's compute cache
# (~/.nv/ComputeCache); off here, so "cold" means NVRTC really compiles and
# only moejit's cache (MOEJIT_CACHE_DIR) is measured.
export CUDA_CACHE_DISABLE=1
ITERS=${GPU_CHECK_ITERS:-200}

echo "==== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)

echo "==== GPU tests"
"$BUNDLE"/moejit_cuda_tests "[gpu]" -d yes 2>&1 | tee "$LOGS/gpu-tests.log"
TESTS_RC=${PIPESTATUS[0]}
TESTS_LINE=$(grep -E "^(All tests passed|test cases:)" "$LOGS/gpu-tests.log" | tail -1)

echo "==== kernel cache: cold then warm (fresh MOEJIT_CACHE_DIR)"
CACHE=$(mktemp -d)
COLD=$(MOEJIT_CACHE_DIR=$CACHE "$BUNDLE"/moejit_cuda_tests "[cache_timing]" 2>&1 | grep cache-timing)
WARM=$(MOEJIT_CACHE_DIR=$CACHE MOEJIT_ASSERT_CACHED=1 "$BUNDLE"/moejit_cuda_tests "[cache_timing]" 2>&1 | grep cache-timing)
echo "cold: $COLD"
echo "warm: $WARM"

echo "==== one training step of the example's model: eager vs CUDA-graph replay"
STEP=$("$BUNDLE"/moejit_cuda_tests "[step_timing]" 2>&1 | grep step-timing)
echo "$STEP"

echo "==== training: $ITERS steps on tinyshakespeare, cuda then cpu"
TRAIN=("$BUNDLE/gpt_moe" train --data "$BUNDLE/tinyshakespeare.txt" --eval_interval 100 --eval_iters 20 --no_report
       --num_samples 1 --max_new_tokens 200)
EX_CACHE=$(mktemp -d)
timed() {  # timed LOG command...: runs it, appends "wall <seconds> s" to LOG
  local log=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$log" 2>&1; local rc=$?
  echo "wall $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >> "$log"
  return $rc
}
# Cold kernel cache (a fresh MOEJIT_CACHE_DIR): every module is compiled.
MOEJIT_CACHE_DIR=$EX_CACHE MOEJIT_DEBUG=1 timed "$LOGS/train-cuda.log" "${TRAIN[@]}" --max_iters "$ITERS" --device cuda \
  --out_dir "$LOGS/out-cuda"
CUDA_RC=$?
cat "$LOGS/train-cuda.log"
# The same run again with a warm cache: every module must come from disk.
MOEJIT_CACHE_DIR=$EX_CACHE MOEJIT_ASSERT_CACHED=1 MOEJIT_DEBUG=1 timed "$LOGS/train-cuda-warm.log" "${TRAIN[@]}" \
  --max_iters "$ITERS" --device cuda --out_dir "$LOGS/out-cuda-warm"
WARM_RC=$?
grep -E "moejit cuda|compiled the training|final train loss|^wall" "$LOGS/train-cuda-warm.log"
timed "$LOGS/train-cpu.log" "${TRAIN[@]}" --max_iters "$ITERS" --device cpu --out_dir "$LOGS/out-cpu"
CPU_RC=$?
cat "$LOGS/train-cpu.log"
rm -f "$LOGS"/out-*/*.safetensors  # large; the logs hold the numbers

final() { grep -oE "val loss [0-9.]+" "$1" | tail -1 | awk '{print $3}'; }
walltime() { grep -oE "^wall [0-9.]+ s" "$1" | tail -1 | awk '{print $2}'; }
tokps() { grep -oE "[0-9,]+ tok/s" "$1" | tail -1; }
VAL_CUDA=$(final "$LOGS/train-cuda.log"); VAL_CPU=$(final "$LOGS/train-cpu.log")
DIFF=$(awk -v a="${VAL_CUDA:-nan}" -v b="${VAL_CPU:-nan}" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4f", d }')

echo
echo "==== gpu-check summary"
printf "%-26s | %s\n" "device" "${DEVICE:-unknown}"
printf "%-26s | %s (exit %s)\n" "gpu tests [gpu]" "${TESTS_LINE:-none}" "$TESTS_RC"
printf "%-26s | %s\n" "cache cold (1st process)" "${COLD#cache-timing: }"
printf "%-26s | %s\n" "cache warm (2nd process)" "${WARM#cache-timing: }"
printf "%-26s | %s\n" "train step (B16 T32)" "${STEP#step-timing: }"
printf "%-26s | val loss %s, wall %s s, %s (exit %s)\n" "train $ITERS steps cuda" "${VAL_CUDA:-?}" "$(walltime "$LOGS/train-cuda.log")" "$(tokps "$LOGS/train-cuda.log")" "$CUDA_RC"
printf "%-26s | val loss %s, wall %s s, %s (exit %s)\n" "train $ITERS steps cpu" "${VAL_CPU:-?}" "$(walltime "$LOGS/train-cpu.log")" "$(tokps "$LOGS/train-cpu.log")" "$CPU_RC"
printf "%-26s | %s\n" "|val cuda - val cpu|" "$DIFF"
printf "%-26s | %s\n" "example modules, cold" "$(grep -oE "@gpt_moe_[a-z]+ .*: compiled by NVRTC in [0-9.]+ s" "$LOGS/train-cuda.log" | sed -E 's/ \(.*\) for sm_[0-9a-z]+: compiled by NVRTC in/:/' | tr '\n' ' ')"
printf "%-26s | %s\n" "example modules, warm" "$(grep -oE "@gpt_moe_[a-z]+ .*: loaded from the disk cache in [0-9.]+ s" "$LOGS/train-cuda-warm.log" | sed -E 's/ \(.*\) for sm_[0-9a-z]+: loaded from the disk cache in/:/' | tr '\n' ' ')"
printf "%-26s | val loss %s, wall %s s, exit %s (MOEJIT_ASSERT_CACHED=1)\n" "train $ITERS cuda, warm" "$(final "$LOGS/train-cuda-warm.log")" "$(walltime "$LOGS/train-cuda-warm.log")" "$WARM_RC"
