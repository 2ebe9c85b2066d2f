// RUN: moejit opt %s --split-input-file --passes=fuse-expert-gather-scatter | FileCheck %s

// moe.expert_choice's shape rule (C = ceil(1.5 * 8 * 2 / 4) = 6: slots
// [24], positions [8, 4]) and its results read as a dispatch's: the
// permute (top_k = E) -> grouped matmul pair becomes a gather_matmul taking
// the expert choice's positions for its backward, and the grouped matmul ->
// combine pair a matmul_combine.
// CHECK-LABEL: func.func @expert_choice_ffn(
// CHECK-NEXT:    %[[C:[0-9]+]]:4 = "moe.expert_choice"(%scores) {capacity_factor = 1.5 : f64, top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<24xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.gather_matmul"(%x, %w_up, %[[C]]#0, %[[C]]#1, %[[C]]#2) {top_k = 4 : i64}
// CHECK-SAME:    -> tensor<24x8xf32>
// CHECK-NEXT:    %[[A:[0-9]+]] = "mj.relu"(%[[H]])
// CHECK-NEXT:    %[[Y:[0-9]+]]:2 = "moe.matmul_combine"(%[[A]], %w_down, %[[C]]#1, %weights, %[[C]]#2)
// CHECK-SAME:    -> (tensor<8x4xf32>, tensor<24x4xf32>)
// CHECK-NEXT:    return %[[Y]]#0
func.func @expert_choice_ffn(%x: tensor<8x4xf32>, %scores: tensor<8x4xf32>, %weights: tensor<8x4xf32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0:4 = "moe.expert_choice"(%scores) {capacity_factor = 1.5 : f64, top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<24xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  %1 = "moe.permute"(%x, %0#0) {top_k = 4 : i64} : (tensor<8x4xf32>, tensor<24xi32>) -> tensor<24x4xf32>
  %2 = "moe.grouped_matmul"(%1, %w_up, %0#1) {transpose_w = false} : (tensor<24x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<24x8xf32>
  %3 = "mj.relu"(%2) : (tensor<24x8xf32>) -> tensor<24x8xf32>
  %4 = "moe.grouped_matmul"(%3, %w_down, %0#1) {transpose_w = false} : (tensor<24x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<24x4xf32>
  %5 = "moe.combine"(%4, %weights, %0#2) : (tensor<24x4xf32>, tensor<8x4xf32>, tensor<8x4xi32>) -> tensor<8x4xf32>
  return %5 : tensor<8x4xf32>
}
