// RUN: not moejit opt %s --emit=cuda 2>&1 >/dev/null | FileCheck %s --check-prefix=ERR
// RUN: not moejit opt %s --emit=cuda --arch=sm_9x 2>&1 | FileCheck %s --check-prefix=ARCH

// A tile the SIMT family cannot take is an error naming the op and the values.
// ERR: moejit: error: %0 = "moe.grouped_matmul": the CUDA backend (SIMT matmul) takes tile_m and tile_n powers of two in [8, 128] and tile_k a power of two in [4, 64], found tile_m = 24, tile_n = 16, tile_k = 16
// ARCH: moejit: error: unknown GPU architecture 'sm_9x': expected sm_XY or sm_XYa (sm_80, sm_90a) or compute_XY[a]
func.func @bad_tile(%xs: tensor<256x64xf32>, %w: tensor<4x64x128xf32>, %offsets: tensor<5xi32>) -> (tensor<256x128xf32> {mj.name = "ys"}) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {tile_k = 16 : i64, tile_m = 24 : i64, tile_n = 16 : i64, transpose_w = false} : (tensor<256x64xf32>, tensor<4x64x128xf32>, tensor<5xi32>) -> tensor<256x128xf32>
  return %0 : tensor<256x128xf32>
}
