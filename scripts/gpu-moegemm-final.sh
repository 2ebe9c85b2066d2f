#!/usr/bin/env bash
# Kept in the tree: what the final (merged-tree) device call ran for this branch.
# moegemm in the final call (<= 40 s, merged tree, bundle at ./build-gpu-bundle): the sm90 probe (epilogue
# checks and plain vs GELU vs GELU-backward store timings, which run 1 lost to a probe bug), and the MoE
# layer with the GEMM epilogues off (MOEJIT_GEMM_EPILOGUES=0) at D384 and D1536 E128, to set beside the
# default (GELU folded) rows of the layer section of the same call; the D1536 E128 profile (default).
set -u
B=build-gpu-bundle; R=${RESULT:-/tmp/moegemm-final}; mkdir -p $R
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
el probe
timeout 20 $B/gemm_sm90_probe > $R/probe.log 2>&1; echo "exit $?" >> $R/probe.log
grep -E "checks failed|^epilogue|^exit" $R/probe.log
el "layer, epilogues off"
MOEJIT_GEMM_EPILOGUES=0 timeout 9 $B/moe_layer_bench --check-tokens 0 --warmup 2 --runs 10 \
  --shapes "16384,384,1536,8,2;24576,1536,256,128,8" --json $R/layer_epi0.json > $R/layer_epi0.log 2>&1; echo "exit $?" >> $R/layer_epi0.log
grep -E "fwd|exit" $R/layer_epi0.log | grep -v "|"
el "profile D1536 E128 (default)"
MOEJIT_PROFILE=1 timeout 8 $B/moe_layer_bench --check-tokens 0 --warmup 2 --runs 5 --shapes "24576,1536,256,128,8" > $R/profile.log 2>&1
grep -E "fwd\+bwd:|gemm_sm90|permute_kernel" $R/profile.log | head -12
el done
