#!/usr/bin/env bash
# Kept in the tree: what the final (merged-tree) device call runs for this branch.
# moegemm in the final call (<= 40 s, merged tree, bundle at ./build-gpu-bundle):
#  1. gemm_sm90_probe --pingpong: the opt-in ping-pong consumers' checks, then timings of the plain store vs the
#     GELU / GELU-backward epilogues (split tile and ping-pong) that run 1 lost to a probe bug;
#  2. the MoE layer at D384 and D1536 E128 with the epilogues off (MOEJIT_GEMM_EPILOGUES=0) and with the ping-pong
#     GEMMs (MOEJIT_SM90_PINGPONG=1), to set beside the layer section's default rows of the same call;
#  3. the ping-pong GPU test against the CPU backend.
set -u
B=build-gpu-bundle; R=${RESULT:-/tmp/moegemm-final}; mkdir -p $R
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
L="--check-tokens 0 --warmup 2 --runs 10 --shapes 16384,384,1536,8,2;24576,1536,256,128,8"
el "probe --pingpong"
timeout 12 $B/gemm_sm90_probe --pingpong > $R/probe_pingpong.log 2>&1; echo "exit $?" >> $R/probe_pingpong.log
grep -E "checks failed|^epilogue|^bench 196608|^exit" $R/probe_pingpong.log
el "layer, epilogues off"
MOEJIT_GEMM_EPILOGUES=0 timeout 9 $B/moe_layer_bench $L --json $R/layer_epi0.json > $R/layer_epi0.log 2>&1; echo "exit $?" >> $R/layer_epi0.log
grep -E "fwd|exit" $R/layer_epi0.log | grep -v "|"
el "layer, ping-pong"
MOEJIT_SM90_PINGPONG=1 timeout 9 $B/moe_layer_bench $L --json $R/layer_pingpong.json > $R/layer_pingpong.log 2>&1; echo "exit $?" >> $R/layer_pingpong.log
grep -E "fwd|exit" $R/layer_pingpong.log | grep -v "|"
el "ping-pong GPU test"
timeout 9 $B/moejit_cuda_tests "gpu: the ping-pong*" > $R/tests_pingpong.log 2>&1; echo "exit $?" >> $R/tests_pingpong.log
tail -3 $R/tests_pingpong.log
el done
