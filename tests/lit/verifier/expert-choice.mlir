// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: moe.expert_choice's shape rule. Scores must be a float [T, E];
// capacity_factor finite and > 0; 1 <= top_k <= E; the results are
// slots [E*C], offsets [E+1], positions [T, E], counts [E] with
// C = ceil(capacity_factor * T * top_k / E) clamped to 1..T.

// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": operand #0 (scores): expected a float tensor, found tensor<8x4xi32>
func.func @int_scores(%s: tensor<8x4xi32>) -> (tensor<8xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 1.0 : f64, top_k = 1 : i64} : (tensor<8x4xi32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}

// -----

// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": operand #0 (scores): expected rank 2, found tensor<8xf32>
func.func @rank(%s: tensor<8xf32>) -> (tensor<8xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 1.0 : f64, top_k = 1 : i64} : (tensor<8xf32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}

// -----

// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": attribute 'capacity_factor': expected a finite value > 0 (expert choice has no dropless form), found 0
func.func @dropless(%s: tensor<8x4xf32>) -> (tensor<8xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 0.0 : f64, top_k = 1 : i64} : (tensor<8x4xf32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}

// -----

// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": attribute 'top_k': expected 1 <= top_k <= 4 (the experts), found 5
func.func @top_k(%s: tensor<8x4xf32>) -> (tensor<8xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 1.0 : f64, top_k = 5 : i64} : (tensor<8x4xf32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}

// -----

// C = ceil(1.0 * 8 * 1 / 4) = 2, so slots is tensor<8xi32>, not 32 (T*E).
// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": result #0: expected type tensor<8xi32>, found tensor<32xi32>
func.func @slots(%s: tensor<8x4xf32>) -> (tensor<32xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 1.0 : f64, top_k = 1 : i64} : (tensor<8x4xf32>) -> (tensor<32xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<32xi32>
}

// -----

// CHECK: expert-choice.mlir:[[@LINE+2]]:3: error: %0:4 = "moe.expert_choice": missing attribute 'top_k'
func.func @missing(%s: tensor<8x4xf32>) -> (tensor<8xi32>) {
  %0:4 = "moe.expert_choice"(%s) {capacity_factor = 1.0 : f64} : (tensor<8x4xf32>) -> (tensor<8xi32>, tensor<5xi32>, tensor<8x4xi32>, tensor<4xi32>)
  return %0#0 : tensor<8xi32>
}
