// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: an operand of the wrong element type.

// CHECK: wrong-dtype.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.dispatch": operand #0 (experts): expected dtype i32, found tensor<4x2xf32>
func.func @dispatch(%experts: tensor<4x2xf32>) -> (tensor<8xi32>) {
  %0:4 = "moe.dispatch"(%experts) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<4x2xf32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<4x2xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}

// -----

// CHECK: wrong-dtype.mlir:[[@LINE+2]]:3: error: %0 = "mj.where": operand #0 (cond): expected dtype i1, found tensor<2x3xf32>
func.func @where(%cond: tensor<2x3xf32>, %a: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.where"(%cond, %a, %a) : (tensor<2x3xf32>, tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// A float op on integers.
// CHECK: wrong-dtype.mlir:[[@LINE+2]]:3: error: %0 = "mj.exp": operand #0 (x): expected a float tensor, found tensor<3xi32>
func.func @exp(%ids: tensor<3xi32>) -> (tensor<3xi32>) {
  %0 = "mj.exp"(%ids) : (tensor<3xi32>) -> tensor<3xi32>
  return %0 : tensor<3xi32>
}

// -----

// The step_offset of a random op is a rank-0 i64 tensor.
// CHECK: wrong-dtype.mlir:[[@LINE+2]]:3: error: %0 = "mj.dropout": operand #1 (step_offset): expected a rank-0 i64 tensor (tensor<i64>, added to the attribute 'offset'), found tensor<i32>
func.func @dropout_step_offset(%x: tensor<2x3xf32>, %step: tensor<i32>) -> (tensor<2x3xf32>) {
  %0 = "mj.dropout"(%x, %step) {offset = 0 : i64, p = 0.5 : f64, seed = 1 : i64} : (tensor<2x3xf32>, tensor<i32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: wrong-dtype.mlir:[[@LINE+2]]:3: error: %0 = "mj.random_normal": operand #0 (step_offset): expected a rank-0 i64 tensor (tensor<i64>, added to the attribute 'offset'), found tensor<2xi64>
func.func @normal_step_offset(%step: tensor<2xi64>) -> (tensor<4xf32>) {
  %0 = "mj.random_normal"(%step) {dtype = f32, offset = 0 : i64, seed = 1 : i64, shape = [4]} : (tensor<2xi64>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}
