#!/usr/bin/env bash
# scripts/gpu-check.sh sections by priority within a device-time budget (BUDGET seconds,
# default 470), on the GPU machine from the repository root with the bundle in
# build-gpu-bundle: the GPU tests and the 500-step bf16/f32 loss curves at once (no
# timing is read from either), then the MoE layer, the config B train step, flash
# attention, a MOEJIT_PROFILE=1 train_step of config B, and `moejit tune` of config B
# with what time is left. A section that does not fit the time left is reported
# SKIPPED. Every log is packed into $OUT/final-logs.tgz (the device tool returns at
# most 8 files).
set -u
B=build-gpu-bundle; O=${OUT:-/tmp/out}; mkdir -p $O
T0=$(date +%s); left() { echo $(( ${BUDGET:-470} - ($(date +%s) - T0) )); }
run() {  # run NAME SECONDS env... : one gpu-check instance with its own logs, if the budget allows
  local name=$1 need=$2; shift 2
  if (( $(left) < need )); then echo "SKIPPED $name (budget: $(left) s left, needs $need)"; return; fi
  env GPU_CHECK_LOGS=/tmp/l-$name "$@" bash scripts/gpu-check.sh $B > $O/../log-$name.txt 2>&1
  echo "[$(( $(date +%s) - T0 )) s] $name"; sed -n '/==== gpu-check summary/,$p' $O/../log-$name.txt | grep -vE "\| (val loss \?|nan|$)|example modules|train 20 cuda|compile_bench|step_bench|^device|moe_bench" | grep -v "^$"
}
# Phase 1: the GPU tests and the 500-step loss curves at once (no timing is read from either).
run tests 150 GPU_CHECK_ONLY=tests GPU_CHECK_TESTS_LIMIT=200 & 
run train 150 GPU_CHECK_ONLY=train GPU_CHECK_ITERS=500 &
wait
run layer 130 GPU_CHECK_ONLY=layer GPU_CHECK_BENCH_LIMIT=120
run trainstep 110 GPU_CHECK_ONLY=trainstep GPU_CHECK_TRAINSTEP_CONFIGS=config_b GPU_CHECK_BENCH_LIMIT=90 \
  GPU_CHECK_TRAINSTEP_ARGS="--warmup 3 --runs 10 --rounds 1 --trainer-steps 5" GPU_CHECK_TORCH_TRAIN_ARGS="--variants loop,grouped_mm --warmup 3 --runs 10"
run attention 30 GPU_CHECK_ONLY=attention GPU_CHECK_BENCH_LIMIT=40
if (( $(left) > 25 )); then
  MOEJIT_PROFILE=1 timeout 25 $B/train_step --config examples/gpt_moe/configs/config_b.json --no-check --warmup 1 --runs 3 --rounds 1 \
    --trainer-steps 0 > $O/../log-profile-b.txt 2>&1; echo "[$(( $(date +%s) - T0 )) s] profile"
  grep -A25 "profile of @gpt_moe_train: .*median of [3-9]" $O/../log-profile-b.txt | head -26
fi
run tune 50 GPU_CHECK_ONLY=tune GPU_CHECK_BENCH_LIMIT=$(( $(left) - 5 )) GPU_CHECK_TUNE_ARGS="--budget-s $(( $(left) - 25 ))"
run trainstep-default 40 GPU_CHECK_ONLY=trainstep GPU_CHECK_TRAINSTEP_CONFIGS=default GPU_CHECK_BENCH_LIMIT=30 \
  GPU_CHECK_TRAINSTEP_ARGS="--warmup 3 --runs 10 --rounds 1 --trainer-steps 5" GPU_CHECK_TORCH_TRAIN_ARGS="--variants loop,grouped_mm --warmup 3 --runs 10"
cp /tmp/l-tune/tuned.json $O/ 2>/dev/null
tar czf $O/final-logs.tgz -C /tmp $(cd /tmp && ls -d l-* 2>/dev/null) -C $O/.. $(cd $O/.. && ls log-*.txt) 2>/dev/null
echo "[$(( $(date +%s) - T0 )) s] done"
