// RUN: moejit opt %s --split-input-file --passes=moe-tiling | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes="moe-tiling{pad-dispatch=false}" | FileCheck %s --check-prefix=NOPAD

// T*K/E = 8*2/4 = 4 rows per expert -> tile_m 16 (the floor); the layout stays
// inside (only combine's output leaves), so the dispatch is padded to block
// 16: N = 16 + 4*15 -> 80, every [N, ...] type follows. tile_k/tile_n from
// the widths: d 4 -> 16, f 8 -> 16 (up), then d 8, f 4. Tiles the pass
// chose carry mj.tiled_by = "moe-tiling" (a tuning database entry replaces
// them; tiles the input already had, as matmul_combine's below, do not).
// CHECK-LABEL: func.func @pad(
// CHECK-NEXT:    "moe.dispatch"{{.*}}{block = 16 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64}
// CHECK-SAME:    -> (tensor<80xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
// CHECK-NEXT:    "moe.permute"{{.*}} -> tensor<80x4xf32>
// CHECK-NEXT:    "moe.grouped_matmul"{{.*}}{mj.tiled_by = "moe-tiling", tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false}
// CHECK-SAME:    -> tensor<80x8xf32>
// CHECK-NEXT:    "moe.grouped_matmul"{{.*}}{mj.tiled_by = "moe-tiling", tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false}
// CHECK-NEXT:    "moe.combine"{{.*}} -> tensor<8x4xf32>
// NOPAD-LABEL: func.func @pad(
// NOPAD-NEXT:    "moe.dispatch"{{.*}}{block = 1 : i64
// NOPAD:         "moe.grouped_matmul"{{.*}}{mj.tiled_by = "moe-tiling", tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false}
// NOPAD-SAME:    -> tensor<16x8xf32>
func.func @pad(%x: tensor<8x4xf32>, %weights: tensor<8x2xf32>, %experts: tensor<8x2xi32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0:4 = "moe.dispatch"(%experts) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %1 = "moe.permute"(%x, %0#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %2 = "moe.grouped_matmul"(%1, %w_up, %0#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  %3 = "moe.grouped_matmul"(%2, %w_down, %0#1) {transpose_w = false} : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<16x4xf32>
  %4 = "moe.combine"(%3, %weights, %0#2) : (tensor<16x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<8x4xf32>
  return %4 : tensor<8x4xf32>
}

// -----

// The positions are an output: padding would change them, so the block stays 1.
// CHECK-LABEL: func.func @layout_is_output(
// CHECK-NEXT:    "moe.dispatch"{{.*}}{block = 1 : i64
// CHECK-NEXT:    "moe.permute"
// CHECK-NEXT:    "moe.grouped_matmul"{{.*}}{mj.tiled_by = "moe-tiling", tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false}
// CHECK-SAME:    -> tensor<16x8xf32>
func.func @layout_is_output(%x: tensor<8x4xf32>, %experts: tensor<8x2xi32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}) -> (tensor<16x8xf32> {mj.name = "h"}, tensor<8x2xi32> {mj.name = "positions"}) {
  %0:4 = "moe.dispatch"(%experts) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %1 = "moe.permute"(%x, %0#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %2 = "moe.grouped_matmul"(%1, %w_up, %0#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  return %2, %0#2 : tensor<16x8xf32>, tensor<8x2xi32>
}

// -----

// A block the user chose is kept and becomes tile_m; large widths clamp
// (tile_n <= 128, tile_k <= 64); fused ops are tiled too; tiles already set stay.
// CHECK-LABEL: func.func @user_block(
// CHECK-NEXT:    "moe.route"{{.*}}{block = 32 : i64
// CHECK-NEXT:    "moe.gather_matmul"{{.*}}{mj.tiled_by = "moe-tiling", tile_k = 64 : i64, tile_m = 32 : i64, tile_n = 128 : i64, top_k = 1 : i64}
// CHECK-NEXT:    "moe.matmul_combine"{{.*}}{tile_k = 8 : i64, tile_m = 8 : i64, tile_n = 8 : i64}
func.func @user_block(%x: tensor<64x96xf32>, %w_router: tensor<96x2xf32> {mj.role = "param"}, %w_up: tensor<2x96x256xf32> {mj.role = "param"}, %w_down: tensor<2x256x96xf32> {mj.role = "param"}) -> (tensor<64x96xf32> {mj.name = "y"}) {
  %0:8 = "moe.route"(%x, %w_router) {block = 32 : i64, capacity_factor = 0.0 : f64, normalize = false, num_experts = 2 : i64, order = "softmax_then_topk", score = "softmax", top_k = 1 : i64} : (tensor<64x96xf32>, tensor<96x2xf32>) -> (tensor<64x2xf32>, tensor<64x1xf32>, tensor<64x1xi32>, tensor<128xi32>, tensor<3xi32>, tensor<64x1xi32>, tensor<2xi32>, tensor<128x96xf32>)
  %1 = "moe.gather_matmul"(%x, %w_up, %0#3, %0#4, %0#5) {top_k = 1 : i64} : (tensor<64x96xf32>, tensor<2x96x256xf32>, tensor<128xi32>, tensor<3xi32>, tensor<64x1xi32>) -> tensor<128x256xf32>
  %2:2 = "moe.matmul_combine"(%1, %w_down, %0#4, %0#1, %0#5) {tile_k = 8 : i64, tile_m = 8 : i64, tile_n = 8 : i64} : (tensor<128x256xf32>, tensor<2x256x96xf32>, tensor<3xi32>, tensor<64x1xf32>, tensor<64x1xi32>) -> (tensor<64x96xf32>, tensor<128x96xf32>)
  return %2#0 : tensor<64x96xf32>
}
