// RUN: moejit opt %s --split-input-file --passes=cse | FileCheck %s

// Equal ops merge, transitively: the second add and the exp of it go.
// CHECK-LABEL: func.func @chain(
// CHECK-NEXT:    %[[A:[0-9]+]] = "mj.add"(%x, %x)
// CHECK-NEXT:    %[[E:[0-9]+]] = "mj.exp"(%[[A]])
// CHECK-NEXT:    %[[M:[0-9]+]] = "mj.mul"(%[[E]], %[[E]])
// CHECK-NEXT:    return %[[M]]
func.func @chain(%x: tensor<2x3xf32>) -> (tensor<2x3xf32> {mj.name = "y"}) {
  %0 = "mj.add"(%x, %x) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  %1 = "mj.exp"(%0) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  %2 = "mj.add"(%x, %x) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  %3 = "mj.exp"(%2) : (tensor<2x3xf32>) -> tensor<2x3xf32>
  %4 = "mj.mul"(%1, %3) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  return %4 : tensor<2x3xf32>
}

// -----

// Attributes must be equal too; random ops with the same seed and offset are
// the same numbers (counter-based Philox), so they merge.
// CHECK-LABEL: func.func @attributes(
// CHECK-NEXT:    %[[S0:[0-9]+]] = "mj.sum"(%x) {axes = [0], keepdims = false}
// CHECK-NEXT:    %[[S1:[0-9]+]] = "mj.sum"(%x) {axes = [1], keepdims = false}
// CHECK-NEXT:    %[[R7:[0-9]+]] = "mj.random_normal"() {dtype = f32, offset = 0 : i64, seed = 7 : i64, shape = [4]}
// CHECK-NEXT:    %[[R8:[0-9]+]] = "mj.random_normal"() {dtype = f32, offset = 0 : i64, seed = 8 : i64, shape = [4]}
// CHECK-NEXT:    return %[[S0]], %[[S1]], %[[S0]], %[[R7]], %[[R7]], %[[R8]] :
func.func @attributes(%x: tensor<3x4xf32>) -> (tensor<4xf32> {mj.name = "s0"}, tensor<3xf32> {mj.name = "s1"}, tensor<4xf32> {mj.name = "s0_again"}, tensor<4xf32> {mj.name = "r7"}, tensor<4xf32> {mj.name = "r7_again"}, tensor<4xf32> {mj.name = "r8"}) {
  %0 = "mj.sum"(%x) {axes = [0], keepdims = false} : (tensor<3x4xf32>) -> tensor<4xf32>
  %1 = "mj.sum"(%x) {axes = [1], keepdims = false} : (tensor<3x4xf32>) -> tensor<3xf32>
  %2 = "mj.sum"(%x) {axes = [0], keepdims = false} : (tensor<3x4xf32>) -> tensor<4xf32>
  %3 = "mj.random_normal"() {dtype = f32, offset = 0 : i64, seed = 7 : i64, shape = [4]} : () -> tensor<4xf32>
  %4 = "mj.random_normal"() {dtype = f32, offset = 0 : i64, seed = 7 : i64, shape = [4]} : () -> tensor<4xf32>
  %5 = "mj.random_normal"() {dtype = f32, offset = 0 : i64, seed = 8 : i64, shape = [4]} : () -> tensor<4xf32>
  return %0, %1, %2, %3, %4, %5 : tensor<4xf32>, tensor<3xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
}

// -----

// Multi-result ops merge as a whole; outputs that update state keep their own op.
// CHECK-LABEL: func.func @state(
// CHECK-NEXT:    %[[G:[0-9]+]]:2 = "moe.gate"(%logits)
// CHECK-NEXT:    %[[H1:[0-9]+]] = "mj.mul"(%w, %w)
// CHECK-NEXT:    %[[H2:[0-9]+]] = "mj.mul"(%w, %w)
// CHECK-NEXT:    return %[[G]]#0, %[[G]]#1, %[[H1]], %[[H2]] :
func.func @state(%logits: tensor<4x3xf32>, %w: tensor<2xf32> {mj.role = "param"}) -> (tensor<4x2xf32> {mj.name = "weights"}, tensor<4x2xi32> {mj.name = "experts"}, tensor<2xf32> {mj.name = "w.new", mj.updates = "w"}, tensor<2xf32> {mj.name = "w.sq"}) {
  %0:2 = "moe.gate"(%logits) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<4x3xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)
  %1:2 = "moe.gate"(%logits) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<4x3xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)
  %2 = "mj.mul"(%w, %w) : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  %3 = "mj.mul"(%w, %w) : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
  return %0#0, %1#1, %2, %3 : tensor<4x2xf32>, tensor<4x2xi32>, tensor<2xf32>, tensor<2xf32>
}
