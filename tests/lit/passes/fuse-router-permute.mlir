// RUN: moejit opt %s --split-input-file --passes=fuse-router-permute | FileCheck %s

// The whole chain becomes one moe.route; the expert matmul reads its xs and offsets.
// CHECK-LABEL: func.func @chain(
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %w_router) {block = 1 : i64, capacity_factor = 0.0 : f64, normalize = true, num_experts = 4 : i64, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64}
// CHECK-SAME:    -> (tensor<8x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>, tensor<16x4xf32>)
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.grouped_matmul"(%[[R]]#7, %w_up, %[[R]]#4)
// CHECK-NEXT:    return %[[H]]
// CHECK-NOT:     "mj.matmul"
// CHECK-NOT:     "moe.gate"
func.func @chain(%x: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}, %w_up: tensor<4x4x8xf32> {mj.role = "param"}) -> (tensor<16x8xf32> {mj.name = "h"}) {
  %0 = "mj.matmul"(%x, %w_router) {transpose_a = false, transpose_b = false} : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %1:2 = "moe.gate"(%0) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %2:4 = "moe.dispatch"(%1#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %3 = "moe.permute"(%x, %2#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %4 = "moe.grouped_matmul"(%3, %w_up, %2#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  return %4 : tensor<16x8xf32>
}

// -----

// A bias computed after the router matmul, logits used by a softmax between
// the gate and the permute, intermediates returned: the route moves after the
// bias, the softmax after the route, and every output keeps its value
// (capacity and block carry over from the dispatch).
// CHECK-LABEL: func.func @outputs_and_late_bias(
// CHECK-NEXT:    %[[B:[0-9]+]] = "mj.tanh"(%bias_in)
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %w_router, %[[B]]) {block = 2 : i64, capacity_factor = 1.5 : f64, normalize = false, num_experts = 4 : i64, order = "topk_then_softmax", score = "sigmoid", top_k = 2 : i64}
// CHECK-NEXT:    %[[P:[0-9]+]] = "mj.softmax"(%[[R]]#0)
// CHECK-NEXT:    return %[[P]], %[[R]]#1, %[[R]]#3, %[[R]]#6, %[[R]]#7 :
func.func @outputs_and_late_bias(%x: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}, %bias_in: tensor<4xf32>) -> (tensor<8x4xf32> {mj.name = "probs"}, tensor<8x2xf32> {mj.name = "weights"}, tensor<20xi32> {mj.name = "slots"}, tensor<4xi32> {mj.name = "counts"}, tensor<20x4xf32> {mj.name = "xs"}) {
  %0 = "mj.matmul"(%x, %w_router) {transpose_a = false, transpose_b = false} : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %1 = "mj.tanh"(%bias_in) : (tensor<4xf32>) -> tensor<4xf32>
  %2:2 = "moe.gate"(%0, %1) {normalize = false, order = "topk_then_softmax", score = "sigmoid", top_k = 2 : i64} : (tensor<8x4xf32>, tensor<4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %3 = "mj.softmax"(%0) : (tensor<8x4xf32>) -> tensor<8x4xf32>
  %4:4 = "moe.dispatch"(%2#1) {block = 2 : i64, capacity_factor = 1.5 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<20xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %5 = "moe.permute"(%x, %4#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<20xi32>) -> tensor<20x4xf32>
  return %3, %2#0, %4#0, %4#3, %5 : tensor<8x4xf32>, tensor<8x2xf32>, tensor<20xi32>, tensor<4xi32>, tensor<20x4xf32>
}

// -----

// A router stored [E, D] and multiplied transposed (nn::linear's layout)
// fuses too: an mj.transpose of the weight feeds moe.route.
// CHECK-LABEL: func.func @transposed_router(
// CHECK-NEXT:    %[[T:[0-9]+]] = "mj.transpose"(%w) {perm = [1, 0]} : (tensor<3x4xf32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %[[T]])
// CHECK-NEXT:    return %[[R]]#7
// CHECK-NOT:     "mj.matmul"
func.func @transposed_router(%x: tensor<8x4xf32>, %w: tensor<3x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "xs"}) {
  %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = true} : (tensor<8x4xf32>, tensor<3x4xf32>) -> tensor<8x3xf32>
  %1:2 = "moe.gate"(%0) {normalize = false, order = "softmax_then_topk", score = "softmax", top_k = 1 : i64} : (tensor<8x3xf32>) -> (tensor<8x1xf32>, tensor<8x1xi32>)
  %2:4 = "moe.dispatch"(%1#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 3 : i64} : (tensor<8x1xi32>) -> (tensor<8xi32>, tensor<4xi32>, tensor<8x1xi32>, tensor<3xi32>)
  %3 = "moe.permute"(%x, %2#0) {top_k = 1 : i64} : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<8x4xf32>
  return %3 : tensor<8x4xf32>
}

// -----

// A permute of the route's own x through its slots (what moe.gather_matmul's
// gradient rule makes for the weight gradient) is the route's xs: it is
// reused, so the rows are gathered once. A permute of another tensor, or with
// another top_k, stays.
// CHECK-LABEL: func.func @permute_of_route_reused(
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %w_router)
// CHECK-NEXT:    %[[O:[0-9]+]] = "moe.permute"(%y, %[[R]]#3) {top_k = 2 : i64}
// CHECK-NEXT:    return %[[R]]#7, %[[O]] :
func.func @permute_of_route_reused(%x: tensor<8x4xf32>, %y: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}) -> (tensor<16x4xf32> {mj.name = "xs"}, tensor<16x4xf32> {mj.name = "ys"}) {
  %r:8 = "moe.route"(%x, %w_router) {block = 1 : i64, capacity_factor = 0.0 : f64, normalize = true, num_experts = 4 : i64, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>, tensor<4x4xf32>) -> (tensor<8x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>, tensor<16x4xf32>)
  %0 = "moe.permute"(%x, %r#3) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %1 = "moe.permute"(%y, %r#3) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  return %0, %1 : tensor<16x4xf32>, tensor<16x4xf32>
}
