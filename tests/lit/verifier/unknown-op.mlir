// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// An op name that is not in the op table is reported at the name.

// CHECK: unknown-op.mlir:[[@LINE+2]]:8: error: unknown op "mj.foo"
func.func @foo(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.foo"(%x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// Every op name carries its dialect prefix.
// CHECK: unknown-op.mlir:[[@LINE+2]]:8: error: unknown op "add"
func.func @no_prefix(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "add"(%x, %x) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}
