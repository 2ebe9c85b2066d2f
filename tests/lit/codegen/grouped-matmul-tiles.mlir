// RUN: moejit opt %s --split-input-file --emit=cuda | FileCheck %s

// A grouped matmul's tile attributes (set by moe-tiling, or by hand) become
// the template arguments <T, tile_m, tile_n, tile_k, threads> of its
// instantiation and shape its launch grid: x over F / tile_n, y over the
// rows / tile_m, z over experts. Without attributes the heuristic chooses.

// 16 x 16 x 16: threads = 16*16/16 clamped up to 32; grid (128/16, 256/16, 4).
// CHECK-LABEL: CUDA module @tiles_16
// CHECK:       step 0: %0 = "moe.grouped_matmul"
// CHECK-NEXT:    memset 0, 131072 bytes
// CHECK-NEXT:    mj::grouped_matmul_kernel<float, 16, 16, 16, 32>
// CHECK-NEXT:      grid (8, 16, 4) block (32, 1, 1) smem 0 cluster (1, 1, 1); tile 16x16x16 stages 1 threads 32 (attribute)
func.func @tiles_16(%xs: tensor<256x64xf32>, %w: tensor<4x64x128xf32>, %offsets: tensor<5xi32>) -> (tensor<256x128xf32> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false} : (tensor<256x64xf32>, tensor<4x64x128xf32>, tensor<5xi32>) -> tensor<256x128xf32>
  return %0 : tensor<256x128xf32>
}

// -----

// The same op with 32 x 128 x 32: other template arguments, another grid.
// CHECK-LABEL: CUDA module @tiles_32x128
// CHECK:         mj::grouped_matmul_kernel<float, 32, 128, 32, 256>
// CHECK-NEXT:      grid (1, 8, 4) block (256, 1, 1) smem 0 cluster (1, 1, 1); tile 32x128x32 stages 1 threads 256 (attribute)
func.func @tiles_32x128(%xs: tensor<256x64xf32>, %w: tensor<4x64x128xf32>, %offsets: tensor<5xi32>) -> (tensor<256x128xf32> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 32 : i64, tile_m = 32 : i64, tile_n = 128 : i64, transpose_w = false} : (tensor<256x64xf32>, tensor<4x64x128xf32>, tensor<5xi32>) -> tensor<256x128xf32>
  return %0 : tensor<256x128xf32>
}

// -----

// No attributes: the heuristic's 64 x 64 x 16.
// CHECK-LABEL: CUDA module @heuristic
// CHECK:         mj::grouped_matmul_kernel<float, 64, 64, 16, 256>
// CHECK-NEXT:      grid (2, 4, 4) block (256, 1, 1) smem 0 cluster (1, 1, 1); tile 64x64x16 stages 1 threads 256 (heuristic)
func.func @heuristic(%xs: tensor<256x64xf32>, %w: tensor<4x64x128xf32>, %offsets: tensor<5xi32>) -> (tensor<256x128xf32> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {transpose_w = false} : (tensor<256x64xf32>, tensor<4x64x128xf32>, tensor<5xi32>) -> tensor<256x128xf32>
  return %0 : tensor<256x128xf32>
}

// -----

// The SIMT family keeps at most 64 x 64 outputs per block (16 per thread):
// a tensor-core-sized tile halves its larger side, and says so.
// CHECK-LABEL: CUDA module @big_tile
// CHECK:         mj::grouped_matmul_kernel<float, 64, 64, 64, 256>
// CHECK-NEXT:      grid (2, 4, 4) {{.*}}; tile 64x64x64 stages 1 threads 256 (attribute) [tile 128x128 -> 64x64: at most 16 outputs per thread]
func.func @big_tile(%xs: tensor<256x64xf32>, %w: tensor<4x64x128xf32>, %offsets: tensor<5xi32>) -> (tensor<256x128xf32> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 64 : i64, tile_m = 128 : i64, tile_n = 128 : i64, transpose_w = false} : (tensor<256x64xf32>, tensor<4x64x128xf32>, tensor<5xi32>) -> tensor<256x128xf32>
  return %0 : tensor<256x128xf32>
}

// -----

// Staged slices that would pass 48 KiB of shared memory (f64) halve tile_k.
// CHECK-LABEL: CUDA module @f64_tile
// CHECK:         mj::grouped_matmul_kernel<double, 64, 64, 32, 256>
// CHECK-NEXT:      grid (2, 4, 4) {{.*}}; tile 64x64x32 stages 1 threads 256 (attribute) [tile_k 64 -> 32 to fit 48 KiB of shared memory]
func.func @f64_tile(%xs: tensor<256x64xf64>, %w: tensor<4x64x128xf64>, %offsets: tensor<5xi32>) -> (tensor<256x128xf64> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 64 : i64, tile_m = 64 : i64, tile_n = 64 : i64, transpose_w = false} : (tensor<256x64xf64>, tensor<4x64x128xf64>, tensor<5xi32>) -> tensor<256x128xf64>
  return %0 : tensor<256x128xf64>
}
