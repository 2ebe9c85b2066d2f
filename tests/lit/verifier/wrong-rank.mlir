// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: an operand of the wrong rank is reported at its op (file:line:col
// of the result name), naming the operand, the rank expected and the type found.

// CHECK: wrong-rank.mlir:[[@LINE+2]]:3: error: %0:2 = "moe.gate": operand #0 (logits): expected rank 2, found tensor<4x4x1xf32>
func.func @gate(%logits: tensor<4x4x1xf32>) -> (tensor<4x2xf32>) {
  %0:2 = "moe.gate"(%logits) {normalize = false, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<4x4x1xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)
  return %0#0 : tensor<4x2xf32>
}

// -----

// CHECK: wrong-rank.mlir:[[@LINE+2]]:3: error: %0 = "mj.cross_entropy": operand #1 (targets): expected rank 1, found tensor<4x1xi32>
func.func @loss(%logits: tensor<4x10xf32>, %targets: tensor<4x1xi32>) -> (tensor<f32>) {
  %0 = "mj.cross_entropy"(%logits, %targets) : (tensor<4x10xf32>, tensor<4x1xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// CHECK: wrong-rank.mlir:[[@LINE+2]]:3: error: %0 = "moe.grouped_matmul": operand #1 (w): expected rank 3, found tensor<8x6xf32>
func.func @experts(%xs: tensor<8x8xf32>, %w: tensor<8x6xf32>, %offsets: tensor<5xi32>) -> (tensor<8x6xf32>) {
  %0 = "moe.grouped_matmul"(%xs, %w, %offsets) {transpose_w = false} : (tensor<8x8xf32>, tensor<8x6xf32>, tensor<5xi32>) -> tensor<8x6xf32>
  return %0 : tensor<8x6xf32>
}
