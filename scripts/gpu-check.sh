#!/usr/bin/env bash
# GPU check of the CUDA backend, run ON a GPU machine from the repository root
# with a bundle built elsewhere (scripts/gpu-check.sh --bundle makes it here):
#   BUNDLE/moejit_cuda_tests, BUNDLE/gpt_moe, the benchmarks BUNDLE/moe_bench,
#   BUNDLE/moe_layer_bench, BUNDLE/step_bench, BUNDLE/train_step, BUNDLE/compile_bench (optimized,
#   stripped), BUNDLE/moejit (the tuner), BUNDLE/gemm_sm90_probe (and its
#   -DMOEJIT_SM90_TIMING build, gemm_sm90_probe_timing) and
#   BUNDLE/attention_probe (nvcc, when nvcc is here) and
#   BUNDLE/tinyshakespeare.txt; the PyTorch peers are bench/*.py of the tree.
# Sections (GPU_CHECK_ONLY picks some): nvidia-smi; the GPU tests
# ("tests"); the benchmarks (bench/, docs/perf.md): compile_bench cold then
# warm ("compile"), step_bench ("step"), moe_bench ("moe"), the sm90 GEMM
# probe beside torch.matmul ("gemm"), the bf16 MoE layer beside its PyTorch
# peers ("layer"), the whole training step (train_step) beside its PyTorch
# peers (torch_train_step.py) for config B and the example's default
# ("trainstep"), flash attention beside PyTorch's SDPA ("attention"),
# `moejit tune` of config B into $LOGS/tuned.json ("tune"); expert + data
# parallelism on 2 GPUs ("multigpu": skipped, saying so, with fewer than 2;
# docs/scale.md); GPU_CHECK_ITERS (200) training steps of the GPT-MoE
# example on tinyshakespeare on the GPU in bf16 and in f32, a short warm-cache
# run ("train"), and on the CPU ("train-cpu"); then a summary table, printed
# last. Logs and the benchmarks' JSON are packed into $OUT/gpu-check-logs.tgz.
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
  ninja -C "$build" -j2 moejit_cuda_tests gpt_moe moe_bench moe_layer_bench step_bench train_step compile_bench moejit-cli \
    shard_check
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$build"/tests/cuda/moejit_cuda_tests "$build"/bin/{gpt_moe,moe_bench,moe_layer_bench,step_bench,train_step,compile_bench,moejit,shard_check} "$dir"/
  strip "$dir"/{moejit_cuda_tests,gpt_moe,moe_bench,moe_layer_bench,step_bench,train_step,compile_bench,moejit,shard_check}
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    /usr/local/cuda/bin/nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -o "$dir"/gemm_sm90_probe \
      bench/gemm_sm90_probe.cu -lcuda -L/usr/local/cuda/lib64/stubs
    /usr/local/cuda/bin/nvcc -O3 -std=c++17 -DMOEJIT_SM90_TIMING -gencode=arch=compute_90a,code=sm_90a -I. \
      -o "$dir"/gemm_sm90_probe_timing bench/gemm_sm90_probe.cu -lcuda -L/usr/local/cuda/lib64/stubs
    /usr/local/cuda/bin/nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -o "$dir"/attention_probe bench/attention_probe.cu
  fi
  cp ../shared/data/tinyshakespeare.txt "$dir"/
  du -sh "$dir"
  exit 0
fi

BUNDLE=$(realpath "${1:-build-gpu-bundle}")
# Logs go to a folder of their own, packed into $OUT/gpu-check-logs.tgz at the
# end (the device tool returns at most 8 files from $OUT).
# GPU_CHECK_LOGS: another folder, so that two instances can run at once.
LOGS=${GPU_CHECK_LOGS:-/tmp/gpu-check-logs}
rm -rf "$LOGS" && mkdir -p "$LOGS"
# GPU_CHECK_ONLY: a comma list of the sections to run (default all):
# tests, compile, step, moe, gemm, layer, trainstep, attention, tune, multigpu, train, train-cpu.
ONLY=${GPU_CHECK_ONLY:-tests,compile,step,moe,gemm,layer,trainstep,attention,tune,multigpu,train,train-cpu}
want() { [[ ",$ONLY," == *",$1,"* ]]; }
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# NVRTC 12.9+ keeps its own compile cache in the driver's compute cache
# (~/.nv/ComputeCache); off here, so "cold" means NVRTC really compiles and
# only moejit's cache (MOEJIT_CACHE_DIR) is measured.
export CUDA_CACHE_DISABLE=1
ITERS=${GPU_CHECK_ITERS:-200}

echo "==== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)

STEP=; COLD=; WARM=; TESTS_LINE=
F32_RC=-; TESTS_RC=-; COLD_RC=-; WARM_CACHE_RC=-; STEP_RC=-; MOE_RC=-; GEMM_RC=-; LAYER_RC=-; CUDA_RC=-; CPU_RC=-; WARM_RC=-
TRAINSTEP_CONFIGS=${GPU_CHECK_TRAINSTEP_CONFIGS:-"config_b default"}
if want tests; then
  echo "==== GPU tests"
  # GPU_CHECK_TEST_SHARDS=n: the [gpu] cases dealt round-robin to n processes
  # run at once (most of a case's time is its CPU reference, and the GPU
  # machine has 16 cores); the summary gives each shard's result.
  SHARDS=${GPU_CHECK_TEST_SHARDS:-1}
  SPEC=${GPU_CHECK_TEST_SPEC:-[gpu]}  # e.g. "[gpu]~[overlap]"
  if (( SHARDS > 1 )); then
    # One name per line; a comma would split a name into two specs (Catch2), so it is escaped.
    # The cases tagged [slow] (a minute or more on an H200) first, so the round robin gives each
    # shard its share of them instead of whatever the name order puts together.
    "$BUNDLE"/moejit_cuda_tests "$SPEC" --list-test-names-only | grep -v '^$' > "$LOGS/gpu-tests.all"
    "$BUNDLE"/moejit_cuda_tests "[slow]" --list-test-names-only | grep -v '^$' > "$LOGS/gpu-tests.slow"
    { grep -Fxf "$LOGS/gpu-tests.slow" "$LOGS/gpu-tests.all"; grep -vFxf "$LOGS/gpu-tests.slow" "$LOGS/gpu-tests.all"; } |
      sed 's/,/\\,/g' > "$LOGS/gpu-tests.names"
    for ((i = 0; i < SHARDS; ++i)); do
      awk -v n="$SHARDS" -v i="$i" 'NR % n == i' "$LOGS/gpu-tests.names" > "$LOGS/gpu-tests.names.$i"
      timeout "${GPU_CHECK_TESTS_LIMIT:-900}" "$BUNDLE"/moejit_cuda_tests -f "$LOGS/gpu-tests.names.$i" -d yes \
        > "$LOGS/gpu-tests.$i.log" 2>&1 &
    done
    TESTS_RC=0
    for job in $(jobs -p); do wait "$job" || TESTS_RC=$?; done
    cat "$LOGS"/gpu-tests.[0-9]*.log > "$LOGS/gpu-tests.log"
    TESTS_LINE="$(grep -c . "$LOGS/gpu-tests.names") cases in $SHARDS shards: $(for ((i = 0; i < SHARDS; ++i)); do
      grep -hE "^(All tests passed|test cases:)" "$LOGS/gpu-tests.$i.log" | tail -1 || echo "shard $i: no result"; done | paste -sd ';')"
    grep -hE "FAILED|^[^ ]+:[0-9]+: " "$LOGS/gpu-tests.log" | head -20
    # GPU_CHECK_RERUN_S=seconds: a failed shard's cases again, in the same order in one process with
    # nothing else on the GPU (does a failure need the other shards running beside it?).
    if (( TESTS_RC != 0 && ${GPU_CHECK_RERUN_S:-0} > 0 )); then
      for ((i = 0; i < SHARDS; ++i)); do
        grep -q "^All tests passed" "$LOGS/gpu-tests.$i.log" && continue
        timeout "$GPU_CHECK_RERUN_S" "$BUNDLE"/moejit_cuda_tests -f "$LOGS/gpu-tests.names.$i" -d yes > "$LOGS/gpu-tests.rerun.$i.log" 2>&1
        echo "shard $i alone again (exit $?): $(grep -hE "^(All tests passed|test cases:)" "$LOGS/gpu-tests.rerun.$i.log" | tail -1)"
        TESTS_LINE="$TESTS_LINE; shard $i alone: $(grep -hE "^(All tests passed|test cases:)" "$LOGS/gpu-tests.rerun.$i.log" | tail -1)"
      done
    fi
  else
    timeout "${GPU_CHECK_TESTS_LIMIT:-900}" "$BUNDLE"/moejit_cuda_tests "$SPEC" -d yes 2>&1 | tee "$LOGS/gpu-tests.log"
    TESTS_RC=${PIPESTATUS[0]}
    TESTS_LINE=$(grep -E "^(All tests passed|test cases:)" "$LOGS/gpu-tests.log" | tail -1)
  fi
fi

# Each benchmark has a time limit, so one that hangs cannot eat the others' time.
BENCH_LIMIT=${GPU_CHECK_BENCH_LIMIT:-300}
CACHE=$(mktemp -d)

if want compile; then
  echo "==== compile_bench: the example's training module, cold then warm (fresh MOEJIT_CACHE_DIR)"
  timeout "$BENCH_LIMIT" "$BUNDLE"/compile_bench --cache-dir "$CACHE" --expect cold --json "$LOGS/compile-cold.json" \
    > "$LOGS/compile-cold.log" 2>&1
  COLD_RC=$?
  MOEJIT_ASSERT_CACHED=1 timeout "$BENCH_LIMIT" "$BUNDLE"/compile_bench --cache-dir "$CACHE" --expect warm \
    --json "$LOGS/compile-warm.json" > "$LOGS/compile-warm.log" 2>&1
  WARM_CACHE_RC=$?
  cat "$LOGS/compile-cold.log" "$LOGS/compile-warm.log"
  COLD=$(grep -h "^compile-bench:" "$LOGS/compile-cold.log")
  WARM=$(grep -h "^compile-bench:" "$LOGS/compile-warm.log")
fi

if want step; then
  echo "==== step_bench: the example's training step, eager vs CUDA-graph replay"
  # The same cache: the step's module is the one compile_bench just compiled.
  MOEJIT_CACHE_DIR=$CACHE timeout "$BENCH_LIMIT" "$BUNDLE"/step_bench --json "$LOGS/step.json" 2>&1 | tee "$LOGS/step.log"
  STEP_RC=${PIPESTATUS[0]}
  STEP=$(grep -h "^step-bench:" "$LOGS/step.log")
fi

timed() {  # timed LOG command...: runs it, appends "wall <seconds> s" to LOG
  local log=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$log" 2>&1; local rc=$?
  echo "wall $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" >> "$log"
  return $rc
}
if want train; then
  echo "==== training: $ITERS steps on tinyshakespeare on the GPU in bf16 (the default there) and in f32"
  TRAIN=("$BUNDLE/gpt_moe" train --data "$BUNDLE/tinyshakespeare.txt" --eval_interval 100 --eval_iters 20 --no_report
         --num_samples 1 --max_new_tokens 200)
  EX_CACHE=$(mktemp -d)
  # Cold kernel cache (a fresh MOEJIT_CACHE_DIR): every module is compiled.
  MOEJIT_CACHE_DIR=$EX_CACHE MOEJIT_DEBUG=1 timed "$LOGS/train-cuda.log" "${TRAIN[@]}" --max_iters "$ITERS" --device cuda \
    --out_dir "$LOGS/out-cuda"
  CUDA_RC=$?
  cat "$LOGS/train-cuda.log"
  # A short run again with a warm cache: every module must come from disk.
  MOEJIT_CACHE_DIR=$EX_CACHE MOEJIT_ASSERT_CACHED=1 MOEJIT_DEBUG=1 timed "$LOGS/train-cuda-warm.log" "${TRAIN[@]}" \
    --max_iters 20 --device cuda --out_dir "$LOGS/out-cuda-warm"
  WARM_RC=$?
  grep -E "moejit cuda|compiled the training|final train loss|^wall" "$LOGS/train-cuda-warm.log"
  MOEJIT_CACHE_DIR=$EX_CACHE timed "$LOGS/train-cuda-f32.log" "${TRAIN[@]}" --max_iters "$ITERS" --device cuda --dtype f32 \
    --out_dir "$LOGS/out-cuda-f32"
  F32_RC=$?
  grep -E "precision|final train loss|val loss|tok/s|^wall" "$LOGS/train-cuda-f32.log" | tail -4
  if want train-cpu; then
    timed "$LOGS/train-cpu.log" "${TRAIN[@]}" --max_iters "$ITERS" --device cpu --out_dir "$LOGS/out-cpu"
    CPU_RC=$?
    cat "$LOGS/train-cpu.log"
  fi
  rm -f "$LOGS"/out-*/*.safetensors  # large; the logs hold the numbers
fi

if want moe; then
  echo "==== moe_bench: grouped matmul, routing, MoE layer fwd+bwd against their floors"
  timeout "$BENCH_LIMIT" "$BUNDLE"/moe_bench ${GPU_CHECK_MOE_ARGS:-} --json "$LOGS/moe.json" 2>&1 | tee "$LOGS/moe.log"
  MOE_RC=${PIPESTATUS[0]}
fi

if want gemm; then
  echo "==== dense bf16 GEMM: the sm90 family (gemm_sm90_probe) and torch.matmul, same run"
  if [[ -x "$BUNDLE"/gemm_sm90_probe ]]; then
    timeout "$BENCH_LIMIT" "$BUNDLE"/gemm_sm90_probe 2>&1 | tee "$LOGS/gemm.log"
    GEMM_RC=${PIPESTATUS[0]}
  else
    echo "gemm_sm90_probe: not in the bundle (no nvcc where it was made)" | tee "$LOGS/gemm.log"
  fi
  timeout "$BENCH_LIMIT" python3 bench/torch_gemm.py 2>&1 | tee -a "$LOGS/gemm.log"
fi

if want layer; then
  echo "==== MoE layer, bf16: moejit (moe_layer_bench) and PyTorch (torch_moe_layer.py), same run"
  LAYER_SHAPES=${GPU_CHECK_LAYER_SHAPES:-"16384,384,1536,8,2;16384,768,3072,8,2;8192,4096,14336,8,2;24576,1536,256,128,8"}
  # GPU_CHECK_LAYER_CHECK_TOKENS=0 skips the CPU check (D4096's alone outlasts a section: its weights are 0.9G values).
  MOEJIT_CACHE_DIR=$CACHE timeout "$BENCH_LIMIT" "$BUNDLE"/moe_layer_bench --check-tokens "${GPU_CHECK_LAYER_CHECK_TOKENS:-256}" \
    --shapes "$LAYER_SHAPES" \
    --json "$LOGS/moe_layer.json" 2>&1 | tee "$LOGS/moe_layer.log"
  LAYER_RC=${PIPESTATUS[0]}
  PYTHONUNBUFFERED=1 timeout "$BENCH_LIMIT" python3 bench/torch_moe_layer.py --iters 10 --shapes "$LAYER_SHAPES" --json "$LOGS/torch_moe.json" 2>&1 \
    | tee "$LOGS/torch_moe.log"
  python3 bench/compare_moe_layer.py "$LOGS/moe_layer.json" "$LOGS/torch_moe.json" 2>&1 | tee "$LOGS/layer-compare.log"
fi

if want trainstep; then
  echo "==== the training step: moejit (train_step) and PyTorch (torch_train_step.py), same run"
  for cfg in $TRAINSTEP_CONFIGS; do
    # "default": the example's default model; else examples/gpt_moe/configs/<cfg>.json
    path=default
    [[ $cfg == default ]] || path=examples/gpt_moe/configs/$cfg.json
    MOEJIT_CACHE_DIR=$CACHE timeout "$BENCH_LIMIT" "$BUNDLE"/train_step --config "$path" ${GPU_CHECK_TRAINSTEP_ARGS:-} --json "$LOGS/train_step-$cfg.json" 2>&1 \
      | tee "$LOGS/train_step-$cfg.log"
    moejit_rc=${PIPESTATUS[0]}
    PYTHONUNBUFFERED=1 timeout "$BENCH_LIMIT" python3 bench/torch_train_step.py --config "$path" ${GPU_CHECK_TORCH_TRAIN_ARGS:-} \
      --json "$LOGS/torch_train_step-$cfg.json" 2>&1 | tee "$LOGS/torch_train_step-$cfg.log"
    torch_rc=${PIPESTATUS[0]}
    python3 bench/compare_train_step.py "$LOGS/train_step-$cfg.json" "$LOGS/torch_train_step-$cfg.json" 2>&1 \
      | tee "$LOGS/train_step-compare-$cfg.log"
    echo "exit train_step $moejit_rc, torch_train_step.py $torch_rc" >> "$LOGS/train_step-compare-$cfg.log"
  done
fi

ATTN_RC=-; TUNE_RC=-
if want attention; then
  echo "==== flash attention (attention_probe) and PyTorch's SDPA flash backend (torch_attention.py), same run"
  if [[ -x "$BUNDLE"/attention_probe ]]; then
    timeout "$BENCH_LIMIT" "$BUNDLE"/attention_probe 2>&1 | tee "$LOGS/attention.log"
    ATTN_RC=${PIPESTATUS[0]}
  else
    echo "attention_probe: not in the bundle (no nvcc where it was made)" | tee "$LOGS/attention.log"
  fi
  timeout "$BENCH_LIMIT" python3 bench/torch_attention.py 2>&1 | tee -a "$LOGS/attention.log"
fi

if want tune; then
  echo "==== moejit tune: config B's problems on this GPU (GPU_CHECK_TUNE_ARGS: more options)"
  MOEJIT_CACHE_DIR=$CACHE timeout "$BENCH_LIMIT" "$BUNDLE"/moejit tune --config examples/gpt_moe/configs/config_b.json \
    --out "$LOGS/tuned.json" ${GPU_CHECK_TUNE_ARGS:-} 2>&1 | tee "$LOGS/tune.log"
  TUNE_RC=${PIPESTATUS[0]}
fi

final() { grep -oE "val loss [0-9.]+" "$1" | tail -1 | awk '{print $3}'; }
walltime() { grep -oE "^wall [0-9.]+ s" "$1" | tail -1 | awk '{print $2}'; }
tokps() { grep -oE "[0-9,]+ tok/s" "$1" | tail -1; }
MULTI_LINE="not run (not in GPU_CHECK_ONLY)"
if want multigpu; then
  # Expert + data parallelism on 2 GPUs (docs/scale.md, issue 16). What it
  # measures: (1) shard_check: the sharded MoE model over NCCL against the CPU
  # reference, and its failure drill; (2) the GPT-MoE example, config B with
  # 16 experts, GPU_CHECK_ITERS steps on tinyshakespeare with the same global
  # batch on 1 and 2 GPUs (the loss curves, compared); (3) tokens/s with the
  # same batch per GPU on 1 and 2 GPUs (the ratio; the issue asks >= 1.8);
  # (4) the all-to-all: shard_check at config B's layer sizes under
  # MOEJIT_PROFILE=1, whose collective launches give the exchange's time, to
  # set against the cost model's bytes. GPU_CHECK_MULTI_ITERS: steps of (2)/(3).
  NGPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
  if (( NGPU < 2 )); then
    MULTI_LINE="SKIPPED: $NGPU GPU(s) here; expert + data parallelism needs 2 or more (nothing of it was run)"
    echo "==== multigpu: $MULTI_LINE"
  else
    echo "==== multigpu: expert + data parallelism on 2 of $NGPU GPUs"
    MITERS=${GPU_CHECK_MULTI_ITERS:-$ITERS}
    MULTI_CACHE=$(mktemp -d)
    # NCCL: PyTorch's copy when the system has none (MOEJIT_NCCL_LIBRARY, docs/scale.md).
    if [[ -z "${MOEJIT_NCCL_LIBRARY:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2; then
      lib=$(python3 -c "import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], 'lib', 'libnccl.so.2'))" 2>/dev/null)
      [[ -n "$lib" && -f "$lib" ]] && export MOEJIT_NCCL_LIBRARY=$lib
    fi
    timeout "$BENCH_LIMIT" "$BUNDLE"/shard_check --nproc 2 2>&1 | tee "$LOGS/multi-shard-check.log"
    SC_RC=${PIPESTATUS[0]}
    timeout 120 "$BUNDLE"/shard_check --nproc 2 --kill-rank 1 > "$LOGS/multi-kill.log" 2>&1
    KILL_RC=$?
    MOEJIT_PROFILE=1 timeout "$BENCH_LIMIT" "$BUNDLE"/shard_check --nproc 2 --experts 16 --tokens 16384 --d_model 384 \
      --hidden 1536 --no-reference --steps 20 > "$LOGS/multi-a2a.log" 2>&1
    A2A_RC=$?
    MT=("$BUNDLE/gpt_moe" train --config examples/gpt_moe/configs/config_b.json --num_experts 16
        --data "$BUNDLE/tinyshakespeare.txt" --max_iters "$MITERS" --eval_interval 50 --log_interval 10
        --no_report --num_samples 0 --device cuda)
    # (2) the same global batch (64 sequences): one GPU, then 2 x 32
    MOEJIT_CACHE_DIR=$MULTI_CACHE timed "$LOGS/multi-curve-1.log" "${MT[@]}" --out_dir "$LOGS/out-multi-1"
    C1_RC=$?
    MOEJIT_CACHE_DIR=$MULTI_CACHE timed "$LOGS/multi-curve-2.log" "${MT[@]}" --nproc 2 --out_dir "$LOGS/out-multi-2"
    C2_RC=$?
    paste <(grep -E "^step +[0-9]+:" "$LOGS/multi-curve-1.log") <(grep -E "^step +[0-9]+:" "$LOGS/multi-curve-2.log") \
      | tee "$LOGS/multi-curve.txt"
    # (3) the same batch per GPU: 2 x 64 sequences on 2 GPUs against 64 on one (the curve run (2)'s tok/s)
    MOEJIT_CACHE_DIR=$MULTI_CACHE timed "$LOGS/multi-weak-2.log" "${MT[@]}" --nproc 2 --batch_size 128 \
      --out_dir "$LOGS/out-multi-weak"
    W2_RC=$?
    rm -f "$LOGS"/out-multi-*/*.safetensors
    T1=$(tokps "$LOGS/multi-curve-1.log" | tr -d ', tok/s'); T2=$(tokps "$LOGS/multi-weak-2.log" | tr -d ', tok/s')
    RATIO=$(awk -v a="${T1:-0}" -v b="${T2:-0}" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "?" }')
    MULTI_LINE="shard_check exit $SC_RC; kill drill exit $KILL_RC (expect 1); val loss 1 GPU $(final "$LOGS/multi-curve-1.log") (exit $C1_RC), 2 GPUs $(final "$LOGS/multi-curve-2.log") (exit $C2_RC); tok/s 2 GPUs / 1 GPU = $RATIO (exit $W2_RC); a2a profile exit $A2A_RC"
    grep -hE "shard_check|PASS|FAIL|tokens/s|ms/step" "$LOGS"/multi-shard-check.log "$LOGS"/multi-a2a.log | tail -8
    grep -hE "collective|all_to_all|nccl" "$LOGS/multi-a2a.log" | head -20 | tee "$LOGS/multi-a2a-collectives.txt"
    tail -3 "$LOGS/multi-kill.log"
  fi
fi

VAL_CUDA=$(final "$LOGS/train-cuda.log" 2>/dev/null); VAL_CPU=$(final "$LOGS/train-cpu.log" 2>/dev/null)
VAL_F32=$(final "$LOGS/train-cuda-f32.log" 2>/dev/null)
DIFF=$(awk -v a="${VAL_CUDA:-nan}" -v b="${VAL_CPU:-nan}" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4f", d }')
DIFF32=$(awk -v a="${VAL_CUDA:-nan}" -v b="${VAL_F32:-nan}" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.4f", d }')

echo
echo "==== gpu-check summary"
printf "%-26s | %s\n" "device" "${DEVICE:-unknown}"
printf "%-26s | %s (exit %s)\n" "gpu tests [gpu]" "${TESTS_LINE:-none}" "$TESTS_RC"
printf "%-26s | %s (exit %s)\n" "compile_bench cold" "${COLD#compile-bench: }" "$COLD_RC"
printf "%-26s | %s (exit %s)\n" "compile_bench warm" "${WARM#compile-bench: }" "$WARM_CACHE_RC"
printf "%-26s | %s (exit %s)\n" "step_bench" "${STEP#step-bench: }" "$STEP_RC"
# moe_bench: the copy rate it measured, then each case at its largest shape.
python3 - "$LOGS/moe.json" "$MOE_RC" <<'PY' 2>/dev/null || printf "%-26s | exit %s, see %s\n" "moe_bench" "$MOE_RC" "$LOGS/moe.log"
import json, sys
data = json.load(open(sys.argv[1]))
meta = data["meta"]
print("%-26s | exit %s; copy %.0f GB/s (%s); flop rate %.0f GFLOP/s (lead)" % ("moe_bench", sys.argv[2], meta["bytes_per_s"] / 1e9,
      meta["bytes_source"].split(":")[0], meta["flops_per_s"] / 1e9))
largest = {}
for r in data["results"]:
    size = r["tokens"] * r["top_k"] * r["d_model"] * r["d_expert"] or r["flops"]
    if r["case"] not in largest or size > largest[r["case"]][0]:
        largest[r["case"]] = (size, r)
for case, (_, r) in largest.items():
    if not r.get("timed"):
        print("%-26s | %s: check FAILED, not timed" % (case[:26], r["shape"]))
        continue
    pct = r.get("pct_of_floor")
    floor = "%.1f%% of floor (%s-bound)" % (pct, r["bound"]) if pct is not None else "no floor"
    print("%-26s | %s: %.3f ms, %.0f GFLOP/s, %.0f GB/s, %s" % (case[:26], r["shape"], r["median_ms"], r["gflop_per_s"],
          r["gb_per_s"], floor))
PY
if want gemm; then
  grep -hE "^(bench|torch) " "$LOGS/gemm.log" | grep -E "4096x4096x4096|8192x8192x8192" | sed 's/^/gemm                       | /'
  grep -h "^checks failed" "$LOGS/gemm.log" | sed 's/^/gemm                       | /'
fi
if want layer; then
  sed 's/^/moe layer                  | /' "$LOGS/layer-compare.log" 2>/dev/null
  printf "%-26s | exit %s (moe_layer_bench)\n" "moe layer" "$LAYER_RC"
fi
if want trainstep; then
  for cfg in $TRAINSTEP_CONFIGS; do
    line=$(grep -h "^train-step-ratio:" "$LOGS/train_step-compare-$cfg.log" 2>/dev/null | sed 's/^train-step-ratio: //')
    printf "%-26s | %s; %s\n" "trainstep $cfg" "${line:-no ratio (see $LOGS/train_step-$cfg.log)}" \
      "$(tail -1 "$LOGS/train_step-compare-$cfg.log" 2>/dev/null)"
  done
fi
if want attention; then
  grep -hE "^(moejit flash|torch sdpa flash)" "$LOGS/attention.log" | sed 's/^/attention                  | /'
  printf "%-26s | exit %s (attention_probe)\n" "attention" "$ATTN_RC"
fi
if want tune; then
  grep -hE "^wrote " "$LOGS/tune.log" | sed 's/^/tune                       | /'
  printf "%-26s | exit %s (moejit tune)\n" "tune" "$TUNE_RC"
fi
printf "%-26s | %s\n" "multigpu (2 GPUs)" "$MULTI_LINE"
printf "%-26s | val loss %s, wall %s s, %s (exit %s)\n" "train $ITERS steps cuda" "${VAL_CUDA:-?}" "$(walltime "$LOGS/train-cuda.log")" "$(tokps "$LOGS/train-cuda.log")" "$CUDA_RC"
printf "%-26s | val loss %s, wall %s s, %s (exit %s)\n" "train $ITERS steps cpu" "${VAL_CPU:-?}" "$(walltime "$LOGS/train-cpu.log")" "$(tokps "$LOGS/train-cpu.log")" "$CPU_RC"
printf "%-26s | val loss %s, wall %s s, %s (exit %s)\n" "train $ITERS steps cuda f32" "${VAL_F32:-?}" "$(walltime "$LOGS/train-cuda-f32.log" 2>/dev/null)" "$(tokps "$LOGS/train-cuda-f32.log" 2>/dev/null)" "${F32_RC:--}"
printf "%-26s | %s\n" "|val bf16 - val f32| cuda" "$DIFF32"
printf "%-26s | %s\n" "|val cuda - val cpu|" "$DIFF"
printf "%-26s | %s\n" "example modules, cold" "$(grep -oE "@gpt_moe_[a-z]+ .*: compiled by NVRTC in [0-9.]+ s" "$LOGS/train-cuda.log" | sed -E 's/ \(.*\) for sm_[0-9a-z]+: compiled by NVRTC in/:/' | tr '\n' ' ')"
printf "%-26s | %s\n" "example modules, warm" "$(grep -oE "@gpt_moe_[a-z]+ .*: loaded from the disk cache in [0-9.]+ s" "$LOGS/train-cuda-warm.log" | sed -E 's/ \(.*\) for sm_[0-9a-z]+: loaded from the disk cache in/:/' | tr '\n' ' ')"
printf "%-26s | val loss %s, wall %s s, exit %s (MOEJIT_ASSERT_CACHED=1)\n" "train 20 cuda, warm" "$(final "$LOGS/train-cuda-warm.log")" "$(walltime "$LOGS/train-cuda-warm.log")" "$WARM_RC"
tar czf "${OUT:-/tmp}/$(basename "$LOGS").tgz" -C "$LOGS" . 2>/dev/null
