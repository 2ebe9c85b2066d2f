// RUN: moejit opt %s --split-input-file --passes=dce | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes=dce --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS

// A dead chain goes; unused arguments stay.
// CHECK-LABEL: func.func @dead_chain(%x: tensor<2x4xf32>, %unused: tensor<3xf32>)
// CHECK-NOT:     "mj.log"
// CHECK-NOT:     "mj.exp"
// CHECK-NOT:     "mj.sum"
// CHECK:         %[[T:[0-9]+]] = "mj.tanh"(%x)
// CHECK-NEXT:    return %[[T]], %x :
// STATS:       dce
// STATS-NEXT:    ops-erased 3
func.func @dead_chain(%x: tensor<2x4xf32>, %unused: tensor<3xf32>) -> (tensor<2x4xf32> {mj.name = "y"}, tensor<2x4xf32> {mj.name = "x_again"}) {
  %0 = "mj.log"(%x) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %1 = "mj.exp"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %2 = "mj.tanh"(%x) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %3 = "mj.sum"(%1) {axes = [0], keepdims = false} : (tensor<2x4xf32>) -> tensor<4xf32>
  return %2, %x : tensor<2x4xf32>, tensor<2x4xf32>
}

// -----

// A multi-result op lives while any of its results is used; the ops that
// only fed its unused result's consumers go.
// CHECK-LABEL: func.func @multi_result(
// CHECK-NEXT:    %[[G:[0-9]+]]:2 = "moe.gate"(%logits)
// CHECK-NEXT:    return %[[G]]#1 :
// STATS:       dce
// STATS-NEXT:    ops-erased 1
func.func @multi_result(%logits: tensor<4x3xf32>) -> (tensor<4x2xi32> {mj.name = "experts"}) {
  %0:2 = "moe.gate"(%logits) {normalize = false, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<4x3xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)
  %1 = "mj.exp"(%0#0) : (tensor<4x2xf32>) -> tensor<4x2xf32>
  return %0#1 : tensor<4x2xi32>
}

// -----

// With no outputs, everything goes.
// CHECK-LABEL: func.func @no_outputs(%x: tensor<2xf32>)
// CHECK-NEXT:    return
// CHECK-NEXT:  }
func.func @no_outputs(%x: tensor<2xf32>) {
  %0 = "mj.exp"(%x) : (tensor<2xf32>) -> tensor<2xf32>
  return
}
