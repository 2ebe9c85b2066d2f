#!/usr/bin/env bash
# Kept in the tree so that docs/perf.md's numbers of that call can be reproduced.
# moegemm run 1 (~140 s): GPU tests of the GEMM epilogues, the sm90 probe (epilogue checks, plain vs
# GELU vs GELU-backward store), the MoE layer before (MOEJIT_OP_GROUPS=0 MOEJIT_GEMM_EPILOGUES=0: main's
# code path) and after, torch._grouped_mm in the same call, D1536 E128 profile, SASS HGMMA counts.
set -u
B=build-gpu-bundle; R=${RESULT:-/tmp/moegemm-result}; mkdir -p $R
export MOEJIT_CACHE_DIR=/tmp/moegemm-cache
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
S3="16384,384,1536,8,2;16384,768,3072,8,2;24576,1536,256,128,8"
el tests
timeout 40 $B/moejit_cuda_tests "[epilogue]" > $R/tests.log 2>&1; echo "exit $?" >> $R/tests.log
tail -3 $R/tests.log
el probe
timeout 20 $B/gemm_sm90_probe > $R/probe.log 2>&1; echo "exit $?" >> $R/probe.log
grep -E "gelu|checks failed|^epilogue|exit" $R/probe.log
el "layer after"
timeout 40 $B/moe_layer_bench --check-tokens 128 --warmup 2 --runs 10 --shapes "$S3" --json $R/layer_after.json > $R/layer_after.log 2>&1; echo "exit $?" >> $R/layer_after.log
grep -E "fwd|exit" $R/layer_after.log | grep -v "^T.*|" | head -8
el "layer before"
MOEJIT_OP_GROUPS=0 MOEJIT_GEMM_EPILOGUES=0 timeout 20 $B/moe_layer_bench --check-tokens 0 --warmup 2 --runs 10 --shapes "$S3" \
  --json $R/layer_before.json > $R/layer_before.log 2>&1; echo "exit $?" >> $R/layer_before.log
grep -E "fwd|exit" $R/layer_before.log | grep -v "^T.*|" | head -8
el torch
PYTHONUNBUFFERED=1 timeout 25 python3 bench/torch_moe_layer.py --iters 10 --variants grouped_mm --shapes "$S3" --json $R/torch.json > $R/torch.log 2>&1
python3 bench/compare_moe_layer.py $R/layer_before.json $R/torch.json > $R/compare_before.log 2>&1
python3 bench/compare_moe_layer.py $R/layer_after.json $R/torch.json > $R/compare_after.log 2>&1
cat $R/compare_before.log $R/compare_after.log
el profile
MOEJIT_PROFILE=1 timeout 12 $B/moe_layer_bench --check-tokens 0 --warmup 2 --runs 5 --shapes "24576,1536,256,128,8" > $R/profile.log 2>&1
el sass
timeout 10 cuobjdump --dump-sass $B/gemm_sm90_probe 2>/dev/null | awk '/Function :/{f=$3} /HGMMA/{c[f]++} END{for(k in c) print c[k], k}' | c++filt > $R/hgmma.txt 2>&1
grep -c . $R/hgmma.txt
el "D4096 (no CPU check: the same kernels are checked at D384/D768 above)"
timeout 15 $B/moe_layer_bench --check-tokens 0 --warmup 2 --runs 10 --shapes "8192,4096,14336,8,2" --json $R/layer_d4096.json > $R/layer_d4096.log 2>&1; echo "exit $?" >> $R/layer_d4096.log
grep -E "fwd|exit" $R/layer_d4096.log | grep -v "^T.*|" | head -3
PYTHONUNBUFFERED=1 timeout 12 python3 bench/torch_moe_layer.py --iters 10 --variants grouped_mm,dense --shapes "8192,4096,14336,8,2" --json $R/torch_d4096.json > $R/torch_d4096.log 2>&1
tail -4 $R/torch_d4096.log
el done
