// RUN: moejit opt %s --passes=cuda-pipeline | FileCheck %s
// RUN: moejit opt %s --passes=cuda-pipeline --print-ir-after-all --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=DUMP
// RUN: not moejit opt %s --passes="cuda-pipeline{x=1}" 2>&1 | FileCheck %s --check-prefix=OPTION

// The CUDA backend's pipeline, by name (what runtime/cuda/executor.cpp runs):
// an unfused MoE feed-forward with nn::linear's router layout becomes
// moe.route, moe.gather_matmul and moe.matmul_combine with tiles chosen.
// CHECK-LABEL: func.func @moe_ffn(
// CHECK-NEXT:    %[[T:[0-9]+]] = "mj.transpose"(%w_router)
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %[[T]])
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.gather_matmul"(%x, %w_up, %[[R]]#3, %[[R]]#4, %[[R]]#5) {mj.tiled_by = "moe-tiling", tile_k = {{[0-9]+}} : i64, tile_m = {{[0-9]+}} : i64, tile_n = {{[0-9]+}} : i64, top_k = 2 : i64}
// CHECK-NEXT:    %[[A:[0-9]+]] = "mj.gelu"(%[[H]])
// CHECK-NEXT:    %[[Y:[0-9]+]]:2 = "moe.matmul_combine"(%[[A]], %w_down, %[[R]]#4, %[[R]]#1, %[[R]]#5) {mj.tiled_by = "moe-tiling", tile_k
// CHECK-NEXT:    return %[[Y]]#0

// DUMP: // -----// IR Dump After fuse-router-permute //----- //
// DUMP: // -----// IR Dump After fuse-expert-gather-scatter //----- //
// DUMP: // -----// IR Dump After moe-tiling //----- //
// DUMP: // -----// IR Dump After fuse-gemm-epilogue //----- //
// DUMP: // -----// IR Dump After fuse-elementwise //----- //
// DUMP: // -----// Pass statistics //----- //
// DUMP: fuse-router-permute
// DUMP-NEXT: routers-transposed 1
// DUMP-NEXT: routes-formed 1

// OPTION: pipeline 'cuda-pipeline' takes no options, found cuda-pipeline{x=1}
func.func @moe_ffn(%x: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0 = "mj.matmul"(%x, %w_router) {transpose_a = false, transpose_b = true} : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %1:2 = "moe.gate"(%0) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %2:4 = "moe.dispatch"(%1#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %3 = "moe.permute"(%x, %2#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %4 = "moe.grouped_matmul"(%3, %w_up, %2#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  %5 = "mj.gelu"(%4) : (tensor<16x8xf32>) -> tensor<16x8xf32>
  %6 = "moe.grouped_matmul"(%5, %w_down, %2#1) {transpose_w = false} : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<16x4xf32>
  %7 = "moe.combine"(%6, %1#0, %2#2) : (tensor<16x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<8x4xf32>
  return %7 : tensor<8x4xf32>
}
