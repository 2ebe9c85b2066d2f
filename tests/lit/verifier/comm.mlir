// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: the shape rules of the communication ops (comm.*).
// world_size in 1..2^20; all_gather multiplies dim 0 by world_size and
// reduce_scatter divides it (a multiple); all_to_all takes one i32 count per
// rank and returns x's type and the counts' type; float data only.

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.all_reduce": attribute 'world_size': expected 1 <= world_size <= 1048576, found 0
func.func @zero_ranks(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "comm.all_reduce"(%x) {world_size = 0 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.all_reduce": operand #0 (x): expected a float tensor, found tensor<2x3xi32>
func.func @int_all_reduce(%x: tensor<2x3xi32>) -> (tensor<2x3xi32>) {
  %0 = "comm.all_reduce"(%x) {world_size = 2 : i64} : (tensor<2x3xi32>) -> tensor<2x3xi32>
  return %0 : tensor<2x3xi32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.all_reduce": unknown attribute 'rank'
func.func @rank_attribute(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "comm.all_reduce"(%x) {rank = 0 : i64, world_size = 2 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// all_gather of [2, 3] over 4 ranks is [8, 3], not [2, 3].
// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.all_gather": result #0: expected type tensor<8x3xf32>, found tensor<2x3xf32>
func.func @gather_shape(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>) {
  %0 = "comm.all_gather"(%x) {world_size = 4 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.all_gather": operand #0 (x): expected rank >= 1 (rows are split between ranks), found tensor<f32>
func.func @gather_scalar(%x: tensor<f32>) -> (tensor<2xf32>) {
  %0 = "comm.all_gather"(%x) {world_size = 2 : i64} : (tensor<f32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0 = "comm.reduce_scatter": operand #0 (x): expected dim 0 a multiple of world_size 4, found tensor<6x3xf32>
func.func @scatter_uneven(%x: tensor<6x3xf32>) -> (tensor<1x3xf32>) {
  %0 = "comm.reduce_scatter"(%x) {world_size = 4 : i64} : (tensor<6x3xf32>) -> tensor<1x3xf32>
  return %0 : tensor<1x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0:2 = "comm.all_to_all": operand #1 (send_counts): expected [4] (one count per rank, world_size), found tensor<2xi32>
func.func @counts_per_rank(%x: tensor<8x3xf32>, %c: tensor<2xi32>) -> (tensor<8x3xf32>) {
  %0:2 = "comm.all_to_all"(%x, %c) {world_size = 4 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
  return %0#0 : tensor<8x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0:2 = "comm.all_to_all": operand #1 (send_counts): expected dtype i32, found tensor<2xi64>
func.func @counts_dtype(%x: tensor<8x3xf32>, %c: tensor<2xi64>) -> (tensor<8x3xf32>) {
  %0:2 = "comm.all_to_all"(%x, %c) {world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi64>) -> (tensor<8x3xf32>, tensor<2xi64>)
  return %0#0 : tensor<8x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0:2 = "comm.all_to_all": operand #1 (send_counts): expected rank 1, found tensor<2x1xi32>
func.func @counts_rank(%x: tensor<8x3xf32>, %c: tensor<2x1xi32>) -> (tensor<8x3xf32>) {
  %0:2 = "comm.all_to_all"(%x, %c) {world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2x1xi32>) -> (tensor<8x3xf32>, tensor<2x1xi32>)
  return %0#0 : tensor<8x3xf32>
}

// -----

// recv_rows sets y's rows (a rank may receive more rows than it sends); it must be positive.
// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0:2 = "comm.all_to_all": attribute 'recv_rows': expected 1 <= recv_rows <= 2^40, found 0
func.func @recv_rows_positive(%x: tensor<8x3xf32>, %c: tensor<2xi32>) -> (tensor<8x3xf32>) {
  %0:2 = "comm.all_to_all"(%x, %c) {recv_rows = 0 : i64, world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
  return %0#0 : tensor<8x3xf32>
}

// -----

// CHECK: comm.mlir:[[@LINE+2]]:3: error: %0:2 = "comm.all_to_all": result #0: expected type tensor<16x3xf32>, found tensor<8x3xf32>
func.func @recv_rows_type(%x: tensor<8x3xf32>, %c: tensor<2xi32>) -> (tensor<8x3xf32>) {
  %0:2 = "comm.all_to_all"(%x, %c) {recv_rows = 16 : i64, world_size = 2 : i64} : (tensor<8x3xf32>, tensor<2xi32>) -> (tensor<8x3xf32>, tensor<2xi32>)
  return %0#0 : tensor<8x3xf32>
}
