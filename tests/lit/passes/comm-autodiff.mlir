// RUN: moejit opt %s --passes=autodiff{loss=loss} | FileCheck %s
// The shape rules of the communication ops (a graph for 2 ranks verifies and
// round-trips; it runs on no backend yet) and their gradient rules:
// all_reduce's backward is an all_reduce, all_gather's a reduce_scatter,
// all_to_all's the reverse all_to_all fed with the counts received.

// CHECK-LABEL: func.func @ranks(
// CHECK: %[[AR:[0-9]+]] = "comm.all_reduce"(%w) {world_size = 2 : i64} : (tensor<4x3xf32>) -> tensor<4x3xf32>
// CHECK: %[[AG:[0-9]+]] = "comm.all_gather"(%[[AR]]) {world_size = 2 : i64} : (tensor<4x3xf32>) -> tensor<8x3xf32>
// CHECK: %[[A2A:[0-9]+]]:2 = "comm.all_to_all"(%[[AG]], %counts) {world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
// CHECK: "mj.sum"(%[[A2A]]#0)
// CHECK: %[[BACK:[0-9]+]]:2 = "comm.all_to_all"(%{{[0-9]+}}, %[[A2A]]#1) {world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
// CHECK: %[[RS:[0-9]+]] = "comm.reduce_scatter"(%[[BACK]]#0) {world_size = 2 : i64} : (tensor<8x3xf32>) -> tensor<4x3xf32>
// CHECK: %[[DW:[0-9]+]] = "comm.all_reduce"(%[[RS]]) {world_size = 2 : i64} : (tensor<4x3xf32>) -> tensor<4x3xf32>
// CHECK: return %{{[0-9]+}}, %[[DW]] : tensor<f32>, tensor<4x3xf32>

func.func @ranks(%w: tensor<4x3xf32> {mj.role = "param"}, %counts: tensor<2xi32>) -> (tensor<f32> {mj.name = "loss"}) {
  %0 = "comm.all_reduce"(%w) {world_size = 2 : i64} : (tensor<4x3xf32>) -> tensor<4x3xf32>
  %1 = "comm.all_gather"(%0) {world_size = 2 : i64} : (tensor<4x3xf32>) -> tensor<8x3xf32>
  %2:2 = "comm.all_to_all"(%1, %counts) {world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
  %3 = "mj.sum"(%2#0) {axes = [0, 1], keepdims = false} : (tensor<8x3xf32>) -> tensor<f32>
  return %3 : tensor<f32>
}
