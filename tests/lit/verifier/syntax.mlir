// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Syntax errors say what was expected and what was found, at the token.

// CHECK: syntax.mlir:[[@LINE+2]]:20: error: expected ',' or ')' in operand list, found 'foo'
func.func @operands(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.add"(%x foo) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: syntax.mlir:[[@LINE+2]]:27: error: expected 2 operand types (one per operand), found 1
func.func @types(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.add"(%x, %x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: syntax.mlir:[[@LINE+1]]:21: error: tensor type has more than 2^40 elements, the most moejit supports
func.func @huge(%x: tensor<1048576x1048576x2xf32>) {
  return
}
