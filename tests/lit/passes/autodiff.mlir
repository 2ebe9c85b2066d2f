// RUN: moejit opt %s --split-input-file --passes=autodiff{loss=loss} | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes="autodiff{loss=loss wrt=x,w}" | FileCheck %s --check-prefix=BOTH

// loss = sum(tanh(x @ w)); by default only the param w is differentiated:
// d/dw = x^T (dy * (1 - tanh^2)), with dy = 1 broadcast from the scalar seed.
// d/dx is never built.

// CHECK-LABEL: func.func @mlp(
// CHECK-SAME: -> (tensor<f32> {mj.name = "loss"}, tensor<3x4xf32> {mj.name = "grad.w"})
// CHECK: %[[MM:[0-9]+]] = "mj.matmul"(%x, %w)
// CHECK: %[[TANH:[0-9]+]] = "mj.tanh"(%[[MM]])
// CHECK: %[[LOSS:[0-9]+]] = "mj.sum"(%[[TANH]])
// CHECK: %[[SEED:[0-9]+]] = "mj.constant"() {dtype = f32, shape = [], value = 1.0{{.*}}} : () -> tensor<f32>
// CHECK-NEXT: %[[DY:[0-9]+]] = "mj.broadcast"(%[[SEED]]) {shape = [2, 4]} : (tensor<f32>) -> tensor<2x4xf32>
// CHECK: %[[SQ:[0-9]+]] = "mj.mul"(%[[TANH]], %[[TANH]])
// CHECK: %[[ONE_MINUS:[0-9]+]] = "mj.sub"(%{{[0-9]+}}, %[[SQ]])
// CHECK: %[[DPRE:[0-9]+]] = "mj.mul"(%[[DY]], %[[ONE_MINUS]])
// CHECK-NOT: "mj.matmul"(%[[DPRE]], %w)
// CHECK: %[[DW:[0-9]+]] = "mj.matmul"(%x, %[[DPRE]]) {transpose_a = true, transpose_b = false} : (tensor<2x3xf32>, tensor<2x4xf32>) -> tensor<3x4xf32>
// CHECK-NOT: "mj.matmul"
// CHECK: return %[[LOSS]], %[[DW]] : tensor<f32>, tensor<3x4xf32>

// With wrt=x,w both gradients are built and returned in that order.
// BOTH-LABEL: func.func @mlp(
// BOTH-SAME: {mj.name = "grad.x"}, tensor<3x4xf32> {mj.name = "grad.w"})
// BOTH-DAG: %[[DX:[0-9]+]] = "mj.matmul"(%{{[0-9]+}}, %w) {transpose_a = false, transpose_b = true} : (tensor<2x4xf32>, tensor<3x4xf32>) -> tensor<2x3xf32>
// BOTH-DAG: %[[DW:[0-9]+]] = "mj.matmul"(%x, %{{[0-9]+}}) {transpose_a = true, transpose_b = false}
// BOTH: return %{{[0-9]+}}, %[[DX]], %[[DW]]

func.func @mlp(%x: tensor<2x3xf32>, %w: tensor<3x4xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}) {
  %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = false} : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
  %1 = "mj.tanh"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %2 = "mj.sum"(%1) {axes = [0, 1], keepdims = false} : (tensor<2x4xf32>) -> tensor<f32>
  return %2 : tensor<f32>
}

// -----

// w is used three times (w * w + w): its gradient is the sum of the three
// contributions, accumulated with mj.add in the order the uses are met.

// CHECK-LABEL: func.func @reuse(
// CHECK-SAME: {mj.name = "grad.w"})
// CHECK: %[[SEED:[0-9]+]] = "mj.broadcast"
// CHECK-NEXT: %[[DSUM:[0-9]+]] = "mj.mul"(%[[SEED]], %x)
// CHECK-NEXT: %[[DA:[0-9]+]] = "mj.mul"(%[[DSUM]], %w)
// CHECK-NEXT: %[[DB:[0-9]+]] = "mj.mul"(%[[DSUM]], %w)
// CHECK-NEXT: %[[ACC:[0-9]+]] = "mj.add"(%[[DSUM]], %[[DA]])
// CHECK-NEXT: %[[DW:[0-9]+]] = "mj.add"(%[[ACC]], %[[DB]])
// CHECK-NEXT: return %{{[0-9]+}}, %[[DW]] : tensor<f32>, tensor<3xf32>

func.func @reuse(%x: tensor<3xf32>, %w: tensor<3xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}) {
  %0 = "mj.mul"(%w, %w) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %1 = "mj.add"(%0, %w) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %2 = "mj.mul"(%1, %x) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %3 = "mj.sum"(%2) {axes = [0], keepdims = false} : (tensor<3xf32>) -> tensor<f32>
  return %3 : tensor<f32>
}

// -----

// The attention backward reads the forward's out (%0#0) and lse (%0#1)
// instead of recomputing the row statistics; w is both k and v, so its
// gradient is dk + dv.

// CHECK-LABEL: func.func @attention(
// CHECK: %0:2 = "mj.attention"(%x, %w, %w) {scale = 0.0{{.*}}} : {{.*}} -> (tensor<1x2x5x4xf32>, tensor<1x2x5xf32>)
// CHECK: %[[G:[0-9]+]]:3 = "mj.attention_grad"(%x, %w, %w, %0#0, %0#1, %{{[0-9]+}})
// CHECK: %[[DW:[0-9]+]] = "mj.add"(%[[G]]#1, %[[G]]#2)
// CHECK: return %{{[0-9]+}}, %[[DW]] : tensor<f32>, tensor<1x2x5x4xf32>

func.func @attention(%x: tensor<1x2x5x4xf32>, %w: tensor<1x2x5x4xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}) {
  %0:2 = "mj.attention"(%x, %w, %w) {scale = 0.0} : (tensor<1x2x5x4xf32>, tensor<1x2x5x4xf32>, tensor<1x2x5x4xf32>) -> (tensor<1x2x5x4xf32>, tensor<1x2x5xf32>)
  %1 = "mj.sum"(%0#0) {axes = [0, 1, 2, 3], keepdims = false} : (tensor<1x2x5x4xf32>) -> tensor<f32>
  return %1 : tensor<f32>
}
