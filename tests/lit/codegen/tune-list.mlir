// REQUIRES: cuda-backend
// RUN: moejit tune %s --list | FileCheck %s
// RUN: moejit tune %s --list --arch sm_80 | FileCheck %s --check-prefix=SM80
// RUN: not moejit tune 2>&1 | FileCheck %s --check-prefix=NEITHER
// RUN: not moejit tune %s --config %s.missing.json --list 2>&1 | FileCheck %s --check-prefix=MISSING
// RUN: moejit tune %s %s --list | FileCheck %s --check-prefix=TWICE
// RUN: moejit tune --moe-layer 256,64,128,4,2 --moe-layer "256,64,128,4,2;128,64,128,4,2" --list | FileCheck %s --check-prefix=LAYERS

// `moejit tune --list`: the distinct problems of the graph after the CUDA
// pipeline, each with its family, the heuristic's config and the number of
// candidates (no GPU: the --arch named target). The two grouped matmuls of
// the same shape are one problem (uses 2); on sm_90a the bf16 ones go to
// the tensor-core family (tile_n 256 pads 192 columns as little as 128, and
// 256 wins the tie; 4 stages fit 227 KiB), the f32 router product to SIMT.
// CHECK: 3 distinct problems of @tune_list for sm_90a
// CHECK-NEXT: gemm_sm90 bf16 grouped m 1024 n 192 k 128 x4 uses 2 heuristic tile_n 256 stages 4 7 candidates
// CHECK-NEXT: gemm_sm90 bf16 matmul m 128 n 192 k 512 uses 1 heuristic tile_n 256 stages 4 7 candidates
// CHECK-NEXT: matmul_simt f32 matmul m 96 n 48 k 80 uses 1 heuristic tile 64x64x16 22 candidates
// CHECK-NEXT: 36 candidates in all
// On sm_80 the bf16 products are the sm80 family's (codegen/kernels/gemm_sm80.cuh):
// its tile is fixed, its stages (2 to 6 within the shared memory) are the space.
// SM80: 3 distinct problems of @tune_list for sm_80
// SM80-NEXT: gemm_sm80 bf16 grouped m 1024 n 192 k 128 x4 uses 2 heuristic stages 4 5 candidates
// SM80-NEXT: gemm_sm80 bf16 matmul m 128 n 192 k 512 uses 1 heuristic stages 4 5 candidates
// SM80-NEXT: matmul_simt f32 matmul m 96 n 48 k 80 uses 1
// NEITHER: moejit: error: tune: expected an IR file, a --config or --moe-layer shapes, found none
// MISSING: moejit: error: config: cannot open '{{.*}}.missing.json'
// Graphs given together are merged: the same problems twice are tuned once, with their uses added.
// TWICE: 3 distinct problems of @tune_list, @tune_list for sm_90a
// TWICE-NEXT: gemm_sm90 bf16 grouped m 1024 n 192 k 128 x4 uses 4
// --moe-layer repeats, each with one or more ';'-separated shapes (T,D,F,E,K).
// LAYERS: distinct problems of @moe_layer_T256_D64_F128_E4_K2, @moe_layer_T256_D64_F128_E4_K2, @moe_layer_T128_D64_F128_E4_K2 for sm_90a
// LAYERS-NEXT: gemm_sm90 bf16 grouped m 512 n 128 k 64 x4 uses 2
func.func @tune_list(%xs: tensor<1024x128xbf16>, %w: tensor<4x128x192xbf16> {mj.role = "param"}, %offsets: tensor<5xi32>, %a: tensor<128x512xbf16>, %r: tensor<96x80xf32>, %wr: tensor<80x48xf32> {mj.role = "param"}) -> (tensor<1024x192xbf16> {mj.name = "y1"}, tensor<1024x192xbf16> {mj.name = "y2"}, tensor<128x192xbf16> {mj.name = "y3"}, tensor<96x48xf32> {mj.name = "y4"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {transpose_w = false} : (tensor<1024x128xbf16>, tensor<4x128x192xbf16>, tensor<5xi32>) -> tensor<1024x192xbf16>
  %1 = "mj.neg"(%xs) : (tensor<1024x128xbf16>) -> tensor<1024x128xbf16>
  %2 = "moe.grouped_matmul"(%1, %w, %offsets) {transpose_w = false} : (tensor<1024x128xbf16>, tensor<4x128x192xbf16>, tensor<5xi32>) -> tensor<1024x192xbf16>
  %3 = "mj.reshape"(%w) {shape = [512, 192]} : (tensor<4x128x192xbf16>) -> tensor<512x192xbf16>
  %4 = "mj.matmul"(%a, %3) {transpose_a = false, transpose_b = false} : (tensor<128x512xbf16>, tensor<512x192xbf16>) -> tensor<128x192xbf16>
  %5 = "mj.matmul"(%r, %wr) {transpose_a = false, transpose_b = false} : (tensor<96x80xf32>, tensor<80x48xf32>) -> tensor<96x48xf32>
  return %0, %2, %4, %5 : tensor<1024x192xbf16>, tensor<1024x192xbf16>, tensor<128x192xbf16>, tensor<96x48xf32>
}
