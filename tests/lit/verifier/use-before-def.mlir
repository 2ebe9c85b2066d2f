// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// SSA: a value is used only after its definition, and must be defined.

// CHECK: use-before-def.mlir:[[@LINE+2]]:17: error: use of value %1 before its definition (at [[@LINE+3]]:3)
func.func @early(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.neg"(%1) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  %1 = "mj.exp"(%x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: use-before-def.mlir:[[@LINE+2]]:17: error: use of undefined value %y
func.func @undefined(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.neg"(%y) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: use-before-def.mlir:[[@LINE+3]]:3: error: redefinition of %0 (first defined at [[@LINE+2]]:3)
func.func @twice(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.neg"(%x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  %0 = "mj.exp"(%x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: use-before-def.mlir:[[@LINE+2]]:10: error: use of undefined value %9
func.func @returned(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  return %9 : tensor<2x3xf32>
}
