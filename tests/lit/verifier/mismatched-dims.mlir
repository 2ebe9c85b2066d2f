// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: operands whose dimensions do not fit together, and a declared
// result type that disagrees with the shape rule.

// CHECK: mismatched-dims.mlir:[[@LINE+2]]:3: error: %0 = "mj.matmul": operand #1 (b): expected contraction dim 8 (from a tensor<4x8xf32>), found 7 in tensor<7x3xf32>
func.func @matmul(%a: tensor<4x8xf32>, %b: tensor<7x3xf32>) -> (tensor<4x3xf32>) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = false, transpose_b = false} : (tensor<4x8xf32>, tensor<7x3xf32>) -> tensor<4x3xf32>
  return %0 : tensor<4x3xf32>
}

// -----

// Elementwise ops do not broadcast implicitly.
// CHECK: mismatched-dims.mlir:[[@LINE+2]]:3: error: %0 = "mj.add": operand #1 (b): expected tensor<2x3xf32> (the type of operand #0 (a)), found tensor<1x3xf32>
func.func @add(%a: tensor<2x3xf32>, %b: tensor<1x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.add"(%a, %b) : (tensor<2x3xf32>, tensor<1x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// Four experts need five segment offsets.
// CHECK: mismatched-dims.mlir:[[@LINE+2]]:3: error: %0 = "moe.grouped_matmul": operand #2 (offsets): expected tensor<5xi32> (E+1 segment offsets), found tensor<4xi32>
func.func @offsets(%xs: tensor<8x8xf32>, %w: tensor<4x8x6xf32>, %offsets: tensor<4xi32>) -> (tensor<8x6xf32>) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {transpose_w = false} : (tensor<8x8xf32>, tensor<4x8x6xf32>, tensor<4xi32>) -> tensor<8x6xf32>
  return %0 : tensor<8x6xf32>
}

// -----

// CHECK: mismatched-dims.mlir:[[@LINE+2]]:3: error: %0 = "mj.matmul": result #0: expected type tensor<4x3xf32>, found tensor<4x4xf32>
func.func @result(%a: tensor<4x8xf32>, %b: tensor<8x3xf32>) -> (tensor<4x4xf32>) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = false, transpose_b = false} : (tensor<4x8xf32>, tensor<8x3xf32>) -> tensor<4x4xf32>
  return %0 : tensor<4x4xf32>
}
