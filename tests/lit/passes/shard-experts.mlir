// RUN: moejit opt %s --passes="shard-experts{rank=1 world_size=2}" | FileCheck %s --check-prefix=N2
// RUN: moejit opt %s --passes="shard-experts{rank=3 world_size=4}" | FileCheck %s --check-prefix=N4
// RUN: moejit opt %s --passes="shard-experts{rank=0 world_size=1}" | FileCheck %s --check-prefix=N1
// shard-experts on one MoE layer of 4 experts (top-2, dropless: C = 16 rows).
// Each rank keeps E/N experts: w_up/w_down become [E/N, ...], read through N
// copies; the per-expert counts are exchanged first (as f32 rows [N, E/N]),
// their prefix sums are the offsets of the received rows, the rows go out
// into N*C rows (recv_rows: what a rank may receive), the expert outputs come
// back by the reverse exchange into C rows and feed moe.combine. The graph
// text is the same for every rank.

// N2-LABEL: func.func @moe(
// N2-SAME: %w_up: tensor<2x4x8xf32> {mj.role = "param"}, %w_down: tensor<2x8x4xf32> {mj.role = "param"}
// N2: %[[D:[0-9]+]]:4 = "moe.dispatch"
// N2: %[[C:[0-9]+]] = "mj.cast"(%[[D]]#3) {dtype = f32} : (tensor<4xi32>) -> tensor<4xf32>
// N2: %[[PR:[0-9]+]] = "mj.reshape"(%[[C]]) {shape = [2, 2]} : (tensor<4xf32>) -> tensor<2x2xf32>
// N2: %[[SUM:[0-9]+]] = "mj.sum"(%[[PR]]) {axes = [1], keepdims = false} : (tensor<2x2xf32>) -> tensor<2xf32>
// N2: %[[SEND:[0-9]+]] = "mj.cast"(%[[SUM]]) {dtype = i32} : (tensor<2xf32>) -> tensor<2xi32>
// N2: "comm.all_to_all"(%[[PR]], %{{[0-9]+}}) {world_size = 2 : i64} : (tensor<2x2xf32>, tensor<2xi32>) -> (tensor<2x2xf32>, tensor<2xi32>)
// N2: %[[OFF:[0-9]+]] = "mj.cast"(%{{[0-9]+}}) {dtype = i32} : (tensor<5xf32>) -> tensor<5xi32>
// N2: %[[XS:[0-9]+]] = "moe.permute"
// N2: %[[RX:[0-9]+]]:2 = "comm.all_to_all"(%[[XS]], %[[SEND]]) {recv_rows = 32 : i64, world_size = 2 : i64} : (tensor<16x4xf32>, tensor<2xi32>) -> (tensor<32x4xf32>, tensor<2xi32>)
// N2: %[[WUP:[0-9]+]] = "mj.concat"(%w_up, %w_up) {axis = 0 : i64} : (tensor<2x4x8xf32>, tensor<2x4x8xf32>) -> tensor<4x4x8xf32>
// N2: "moe.grouped_matmul"(%[[RX]]#0, %[[WUP]], %[[OFF]]) {transpose_w = false} : (tensor<32x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<32x8xf32>
// N2: %[[WDN:[0-9]+]] = "mj.concat"(%w_down, %w_down) {axis = 0 : i64}
// N2: %[[YS:[0-9]+]] = "moe.grouped_matmul"(%{{[0-9]+}}, %[[WDN]], %[[OFF]])
// N2: %[[BACK:[0-9]+]]:2 = "comm.all_to_all"(%[[YS]], %[[RX]]#1) {recv_rows = 16 : i64, world_size = 2 : i64} : (tensor<32x4xf32>, tensor<2xi32>) -> (tensor<16x4xf32>, tensor<2xi32>)
// N2: "moe.combine"(%[[BACK]]#0, %{{[0-9]+}}#0, %[[D]]#2)

// N4-LABEL: func.func @moe(
// N4-SAME: %w_up: tensor<1x4x8xf32> {mj.role = "param"}, %w_down: tensor<1x8x4xf32> {mj.role = "param"}
// N4: "mj.reshape"(%{{[0-9]+}}) {shape = [4, 1]} : (tensor<4xf32>) -> tensor<4x1xf32>
// N4: "comm.all_to_all"(%{{[0-9]+}}, %{{[0-9]+}}) {world_size = 4 : i64} : (tensor<4x1xf32>, tensor<4xi32>) -> (tensor<4x1xf32>, tensor<4xi32>)
// N4: "comm.all_to_all"(%{{[0-9]+}}, %{{[0-9]+}}) {recv_rows = 64 : i64, world_size = 4 : i64} : (tensor<16x4xf32>, tensor<4xi32>) -> (tensor<64x4xf32>, tensor<4xi32>)
// N4: "mj.concat"(%w_up, %w_up, %w_up, %w_up) {axis = 0 : i64} : (tensor<1x4x8xf32>, tensor<1x4x8xf32>, tensor<1x4x8xf32>, tensor<1x4x8xf32>) -> tensor<4x4x8xf32>
// N4: %[[BACK4:[0-9]+]]:2 = "comm.all_to_all"(%{{[0-9]+}}, %{{[0-9]+}}#1) {recv_rows = 16 : i64, world_size = 4 : i64} : (tensor<64x4xf32>, tensor<4xi32>) -> (tensor<16x4xf32>, tensor<4xi32>)
// N4: "moe.combine"(%[[BACK4]]#0

// At world_size 1 nothing changes.
// N1-LABEL: func.func @moe(
// N1-SAME: %w_up: tensor<4x4x8xf32> {mj.role = "param"}
// N1-NOT: comm.
// N1: "moe.grouped_matmul"(%{{[0-9]+}}, %w_up, %{{[0-9]+}}#1)
// N1-NOT: comm.

func.func @moe(%x: tensor<8x4xf32>, %logits: tensor<8x4xf32>, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0:2 = "moe.gate"(%logits) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %1:4 = "moe.dispatch"(%0#1) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %2 = "moe.permute"(%x, %1#0) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
  %3 = "moe.grouped_matmul"(%2, %w_up, %1#1) {transpose_w = false} : (tensor<16x4xf32>, tensor<4x4x8xf32>, tensor<5xi32>) -> tensor<16x8xf32>
  %4 = "mj.gelu"(%3) : (tensor<16x8xf32>) -> tensor<16x8xf32>
  %5 = "moe.grouped_matmul"(%4, %w_down, %1#1) {transpose_w = false} : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>) -> tensor<16x4xf32>
  %6 = "moe.combine"(%5, %0#0, %1#2) : (tensor<16x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>) -> tensor<8x4xf32>
  return %6 : tensor<8x4xf32>
}
