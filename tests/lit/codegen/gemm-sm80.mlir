// RUN: moejit opt %s --split-input-file --emit=cuda --arch=sm_80 | FileCheck %s --check-prefix=CHECK
// RUN: moejit opt %s --split-input-file --emit=cuda --arch=sm_89 | FileCheck %s --check-prefix=CHECK
// RUN: moejit opt %s --split-input-file --emit=cuda --arch=sm_90a | FileCheck %s --check-prefix=HOPPER

// The sm80 GEMM family (codegen/kernels/gemm_sm80.cuh: mma.sync, ldmatrix,
// cp.async) serves 16-bit products on sm_80 .. sm_89: template arguments
// <T, 128, 128, 32, stages, A K-major, B K-major, 16-byte rows, epilogue>,
// 128 threads, a persistent grid of at most two blocks per SM, 4 stages
// (64 KiB of shared memory: the CHECK's 163 KiB and sm_89's 99 KiB take
// them). On sm_90a the Hopper family takes bf16.

// A row-major bf16 product: A K-major, B N-major; 3 x 2 tiles.
// CHECK-LABEL: CUDA module @dense
// CHECK:       step 0: %0 = "mj.matmul"
// CHECK-NEXT:    moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, true, false, true, moejit::sm80::Store16<mj::bf16_t>>
// CHECK-NEXT:      grid (6, 1, 1) block (128, 1, 1) smem 65536 cluster (1, 1, 1); tile 128x128x32 stages 4 threads 128 (heuristic)
// HOPPER:      moejit::sm90::gemm_sm90_kernel<
func.func @dense(%a: tensor<300x136xbf16>, %b: tensor<136x200xbf16>) -> (tensor<300x200xbf16> {mj.name = "c"}) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = false, transpose_b = false} : (tensor<300x136xbf16>, tensor<136x200xbf16>) -> tensor<300x200xbf16>
  return %0 : tensor<300x200xbf16>
}

// -----

// Both operands transposed (A M-major, B K-major), rows of 301 and 137
// elements: no 16-byte multiple, so the chunks are loaded element by element
// (VEC16 false); on sm_90a TMA cannot address them, so sm80 serves it there too.
// CHECK-LABEL: CUDA module @unaligned
// CHECK:         moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, false, true, false, moejit::sm80::Store16<mj::bf16_t>>
// HOPPER-LABEL: CUDA module @unaligned
// HOPPER:        moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, false, true, false, moejit::sm80::Store16<mj::bf16_t>>
func.func @unaligned(%a: tensor<137x301xbf16>, %b: tensor<203x137xbf16>) -> (tensor<301x203xbf16> {mj.name = "c"}) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = true, transpose_b = true} : (tensor<137x301xbf16>, tensor<203x137xbf16>) -> tensor<301x203xbf16>
  return %0 : tensor<301x203xbf16>
}

// -----

// f16 is the family's on every target from sm_80 (the Hopper family is bf16 only); f32 stays SIMT.
// CHECK-LABEL: CUDA module @f16_and_f32
// CHECK:         moejit::sm80::gemm_sm80_kernel<mj::f16_t, 128, 128, 32, 4, true, false, true, moejit::sm80::Store16<mj::f16_t>>
// CHECK:         mj::matmul_kernel<float, 64, 64, 16, 256>
// HOPPER-LABEL: CUDA module @f16_and_f32
// HOPPER:        moejit::sm80::gemm_sm80_kernel<mj::f16_t, 128, 128, 32, 4, true, false, true, moejit::sm80::Store16<mj::f16_t>>
// HOPPER:        mj::matmul_kernel<float, 64, 64, 16, 256>
func.func @f16_and_f32(%a: tensor<256x64xf16>, %b: tensor<64x128xf16>, %c: tensor<256x64xf32>, %d: tensor<64x128xf32>) -> (tensor<256x128xf16> {mj.name = "h"}, tensor<256x128xf32> {mj.name = "f"}) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = false, transpose_b = false} : (tensor<256x64xf16>, tensor<64x128xf16>) -> tensor<256x128xf16>
  %1 = "mj.matmul"(%c, %d) {transpose_a = false, transpose_b = false} : (tensor<256x64xf32>, tensor<64x128xf32>) -> tensor<256x128xf32>
  return %0, %1 : tensor<256x128xf16>, tensor<256x128xf32>
}

// -----

// Grouped expert matmul with moe-tiling's tensor-core tile (128 x 256 x 64):
// the family's 128 x 128 x 32 with a note; the grid is the persistent one
// (at most (rows / 128 + experts) x column tiles, 2 blocks per SM), shared
// memory holds the stages and the experts' first tiles (4 x 5 bytes).
// CHECK:         step 0: %0 = "moe.grouped_matmul"
// CHECK-NEXT:      memset 0, 262144 bytes
// CHECK-NEXT:      moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, true, false, true, moejit::sm80::Store16<mj::bf16_t>>
// CHECK-NEXT:        grid (16, 1, 1) block (128, 1, 1) smem 65556 cluster (1, 1, 1); tile 128x128x32 stages 4 threads 128 (attribute) [tensor-core tile 128x256x64 as 128x128x32 for the sm80 family]
func.func @grouped(%xs: tensor<512x64xbf16>, %w: tensor<4x64x256xbf16>, %offsets: tensor<5xi32>) -> (tensor<512x256xbf16> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 64 : i64, tile_m = 128 : i64, tile_n = 256 : i64, transpose_w = false} : (tensor<512x64xbf16>, tensor<4x64x256xbf16>, tensor<5xi32>) -> tensor<512x256xbf16>
  return %0 : tensor<512x256xbf16>
}

// -----

// moe.gather_matmul reads x's rows through slots in its loads: no permute
// launch before the product. On sm_90a the producer warpgroup gathers them
// (the last template argument) where the product has at most 2 column tiles.
// CHECK-LABEL: CUDA module @gather
// CHECK:         step 0: %0 = "moe.gather_matmul"
// CHECK-NEXT:      memset 0, 98304 bytes
// CHECK-NEXT:      moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, true, false, true, moejit::sm80::Store16<mj::bf16_t>>
// HOPPER-LABEL: CUDA module @gather
// HOPPER:         step 0: %0 = "moe.gather_matmul"
// HOPPER-NOT:       mj::permute_kernel<
// HOPPER:           moejit::sm90::gemm_sm90_kernel<{{.*}}, true>
// HOPPER-NOT:       mj::permute_kernel<
// HOPPER-LABEL: CUDA module @wgrad
func.func @gather(%x: tensor<100x64xbf16>, %w: tensor<4x64x96xbf16>, %slots: tensor<512xi32>, %offsets: tensor<5xi32>, %positions: tensor<100x2xi32>) -> (tensor<512x96xbf16> {mj.name = "h"}) {
  %0 = "moe.gather_matmul"(%x, %w, %slots, %offsets, %positions) {top_k = 2 : i64} : (tensor<100x64xbf16>, tensor<4x64x96xbf16>, tensor<512xi32>, tensor<5xi32>, tensor<100x2xi32>) -> tensor<512x96xbf16>
  return %0 : tensor<512x96xbf16>
}

// -----

// The weight gradient: K (the rows) split by the offsets, A and B row-major
// activations (M-major and N-major), one 128 x 128 tile per expert here.
// CHECK-LABEL: CUDA module @wgrad
// CHECK:         moejit::sm80::gemm_sm80_kernel<mj::bf16_t, 128, 128, 32, 4, false, false, true, moejit::sm80::Store16<mj::bf16_t>>
// CHECK-NEXT:      grid (4, 1, 1) block (128, 1, 1)
func.func @wgrad(%xs: tensor<512x64xbf16>, %dys: tensor<512x96xbf16>, %offsets: tensor<5xi32>) -> (tensor<4x64x96xbf16> {mj.name = "dw"}) {
  %0 = "moe.grouped_matmul_wgrad"(%xs, %dys, %offsets) : (tensor<512x64xbf16>, tensor<512x96xbf16>, tensor<5xi32>) -> tensor<4x64x96xbf16>
  return %0 : tensor<4x64x96xbf16>
}
