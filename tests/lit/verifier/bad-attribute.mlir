// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: attributes the op does not have, of the wrong kind, with a bad
// value, or missing.

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0 = "mj.softmax": unknown attribute 'axis'
func.func @unknown(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.softmax"(%x) {axis = 1 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0 = "mj.matmul": attribute 'transpose_a': expected bool, found int
func.func @kind(%a: tensor<4x8xf32>, %b: tensor<8x3xf32>) -> (tensor<4x3xf32>) {
  %0 = "mj.matmul"(%a, %b) {transpose_a = 1 : i64, transpose_b = false} : (tensor<4x8xf32>, tensor<8x3xf32>) -> tensor<4x3xf32>
  return %0 : tensor<4x3xf32>
}

// -----

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0:2 = "moe.gate": attribute 'top_k': expected 1 <= top_k <= 4 (the experts), found 9
func.func @top_k(%logits: tensor<4x4xf32>) -> (tensor<4x9xf32>) {
  %0:2 = "moe.gate"(%logits) {normalize = false, order = "softmax_then_topk", score = "softmax", top_k = 9 : i64} : (tensor<4x4xf32>) -> (tensor<4x9xf32>, tensor<4x9xi32>)
  return %0#0 : tensor<4x9xf32>
}

// -----

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0:2 = "moe.gate": attribute 'score': expected one of "softmax", "sigmoid", found "relu"
func.func @score(%logits: tensor<4x4xf32>) -> (tensor<4x2xf32>) {
  %0:2 = "moe.gate"(%logits) {normalize = false, order = "softmax_then_topk", score = "relu", top_k = 2 : i64} : (tensor<4x4xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)
  return %0#0 : tensor<4x2xf32>
}

// -----

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0 = "mj.dropout": attribute 'p': expected 0 <= p < 1, found 1.5
func.func @dropout(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "mj.dropout"(%x) {offset = 0 : i64, p = 1.5 : f64, seed = 1 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: bad-attribute.mlir:[[@LINE+2]]:3: error: %0 = "mj.transpose": missing attribute 'perm' (ints)
func.func @missing(%x: tensor<2x3xf32>) -> (tensor<3x2xf32>) {
  %0 = "mj.transpose"(%x) : (tensor<2x3xf32>) -> tensor<3x2xf32>
  return %0 : tensor<3x2xf32>
}

// -----

// A malformed attribute value is a parse error at the value.
// CHECK: bad-attribute.mlir:[[@LINE+2]]:29: error: expected an attribute value (true, false, a number, a string, an integer array or a dtype), found 'maybe'
func.func @value(%x: tensor<2x3xf32>) -> (tensor<f32>) {
  %0 = "mj.sum"(%x) {axes = maybe, keepdims = false} : (tensor<2x3xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}
