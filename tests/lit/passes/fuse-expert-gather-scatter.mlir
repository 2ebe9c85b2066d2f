// RUN: moejit opt %s --split-input-file --passes=fuse-expert-gather-scatter | FileCheck %s

// permute -> grouped_matmul becomes gather_matmul (reading x through the
// slots, with the dispatch's positions for its backward); grouped_matmul ->
// combine becomes matmul_combine, whose second result keeps the expert
// outputs for a backward. Tile attributes carry over.
// CHECK-LABEL: func.func @expert_ffn(
// CHECK-NEXT:    %[[G:[0-9]+]]:2 = "moe.gate"(%logits)
// CHECK-NEXT:    %[[D:[0-9]+]]:4 = "moe.dispatch"(%[[G]]#1)
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.gather_matmul"(%x, %w_up, %[[D]]#0, %[[D]]#1, %[[D]]#2) {tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, top_k = 2 : i64}
// CHECK-SAME:    -> tensor<16x8xf32>
// CHECK-NEXT:    %[[A:[0-9]+]] = "mj.gelu"(%[[H]])
// CHECK-NEXT:    %[[Y:[0-9]+]]:2 = "moe.matmul_combine"(%[[A]], %w_down, %[[D]]#1, %[[G]]#0, %[[D]]#2)
// CHECK-SAME:    -> (tensor<8x4xf32>, tensor<16x4xf32>)
// CHECK-NEXT:    return %[[Y]]#0
func.func @expert_ffn(%x: tensor<8x4xf32>, %logits: tensor<8x4xf32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0:2 = "moe.gate"(%logits) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %1:4 = "moe.dispatch"(%0#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %2 = "moe.permute"(%x, %1#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %3 = "moe.grouped_matmul"(%2, %w_up, %1#1) {tile_k = 16 : i64, tile_m = 16 : i64, tile_n = 16 : i64, transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  %4 = "mj.gelu"(%3) : (tensor<16x8xf32>) -> tensor<16x8xf32>
  %5 = "moe.grouped_matmul"(%4, %w_down, %1#1) {transpose_w = false} : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<16x4xf32>
  %6 = "moe.combine"(%5, %0#0, %1#2) : (tensor<16x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<8x4xf32>
  return %6 : tensor<8x4xf32>
}

// -----

// xs and ys are returned too (as a backward would read them): both pairs stay.
// CHECK-LABEL: func.func @other_uses(
// CHECK:         "moe.permute"
// CHECK-NEXT:    "moe.grouped_matmul"
// CHECK-NEXT:    "moe.grouped_matmul"
// CHECK-NEXT:    "moe.combine"
// CHECK-NOT:     "moe.gather_matmul"
// CHECK-NOT:     "moe.matmul_combine"
func.func @other_uses(%x: tensor<8x4xf32>, %logits: tensor<8x4xf32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}, tensor<16x4xf32> {mj.name = "xs"}, tensor<16x4xf32> {mj.name = "ys"}) {
  %0:2 = "moe.gate"(%logits) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %1:4 = "moe.dispatch"(%0#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %2 = "moe.permute"(%x, %1#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %3 = "moe.grouped_matmul"(%2, %w_up, %1#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  %4 = "moe.grouped_matmul"(%3, %w_down, %1#1) {transpose_w = false} : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<16x4xf32>
  %5 = "moe.combine"(%4, %0#0, %1#2) : (tensor<16x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<8x4xf32>
  return %5, %2, %4 : tensor<8x4xf32>, tensor<16x4xf32>, tensor<16x4xf32>
}

// -----

// xs from a moe.route (fuse-router-permute ran first): the gather matmul reads
// x, slots and positions of the route, whose xs is left unused.
// CHECK-LABEL: func.func @after_route(
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %w_router)
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.gather_matmul"(%x, %w_up, %[[R]]#3, %[[R]]#4, %[[R]]#5) {top_k = 2 : i64}
// CHECK-NEXT:    return %[[H]]
func.func @after_route(%x: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}, %w_up: tensor<4x4x8xf32> {mj.role = "param"}) -> (tensor<16x8xf32> {mj.name = "h"}) {
  %0:8 = "moe.route"(%x, %w_router) {block = 1 : i64, capacity_factor = 0.0 : f64, normalize = true, num_experts = 4 : i64, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>, tensor<4x4xf32>) -> (tensor<8x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>, tensor<16x4xf32>)
  %1 = "moe.grouped_matmul"(%0#7, %w_up, %0#4) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  return %1 : tensor<16x8xf32>
}
