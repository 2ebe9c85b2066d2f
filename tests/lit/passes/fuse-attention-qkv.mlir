// RUN: moejit opt %s --passes=fuse-attention-qkv | FileCheck %s
// RUN: moejit opt %s --passes=fuse-attention-qkv --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS
// RUN: moejit opt %s --passes="fuse-attention-qkv,autodiff{loss=loss wrt=w}" | FileCheck %s --check-prefix=GRAD

// fuse-attention-qkv: nn::causal_self_attention's split of the qkv
// projection (three column slices, reshape to [B, T, H, Dh], head
// transpose) into mj.attention becomes mj.attention_qkv reading the
// projection packed as [B, T, 3, H, Dh]; the transpose after it folds
// into its [B, T, H, Dh] out, and autodiff then builds one
// mj.attention_qkv_grad writing d_qkv, with no mj.pad. B 2, T 3, H 2, Dh 8.

// CHECK-LABEL: func.func @heads(
// CHECK:         %[[P:[0-9]+]] = "mj.matmul"(%x, %w)
// CHECK-NEXT:    %[[R:[0-9]+]] = "mj.reshape"(%[[P]]) {shape = [2, 3, 3, 2, 8]} : (tensor<6x48xf32>) -> tensor<2x3x3x2x8xf32>
// CHECK-NEXT:    %[[A:[0-9]+]]:2 = "mj.attention_qkv"(%[[R]]) {scale = 0.0 : f64} : (tensor<2x3x3x2x8xf32>) -> (tensor<2x3x2x8xf32>, tensor<2x2x3xf32>)
// CHECK-NEXT:    "mj.reshape"(%[[A]]#0) {shape = [6, 16]}
// CHECK-NOT:     "mj.slice"
// CHECK-NOT:     "mj.transpose"
// CHECK:         return
// STATS:       fuse-attention-qkv
// STATS-NEXT:    attentions-packed 1
// GRAD-LABEL: func.func @heads(
// GRAD-NOT:    "mj.pad"
// GRAD:        %[[D:[0-9]+]] = "mj.attention_qkv_grad"
// GRAD-SAME:   -> tensor<2x3x3x2x8xf32>
// GRAD-NEXT:   "mj.reshape"(%[[D]]) {shape = [6, 48]}
// GRAD-NOT:    "mj.pad"
// GRAD:        return
func.func @heads(%x: tensor<6x48xf32>, %w: tensor<48x48xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}) {
  %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = false} : (tensor<6x48xf32>, tensor<48x48xf32>) -> tensor<6x48xf32>
  %1 = "mj.slice"(%0) {limit = [6, 16], start = [0, 0]} : (tensor<6x48xf32>) -> tensor<6x16xf32>
  %2 = "mj.slice"(%0) {limit = [6, 32], start = [0, 16]} : (tensor<6x48xf32>) -> tensor<6x16xf32>
  %3 = "mj.slice"(%0) {limit = [6, 48], start = [0, 32]} : (tensor<6x48xf32>) -> tensor<6x16xf32>
  %4 = "mj.reshape"(%1) {shape = [2, 3, 2, 8]} : (tensor<6x16xf32>) -> tensor<2x3x2x8xf32>
  %5 = "mj.reshape"(%2) {shape = [2, 3, 2, 8]} : (tensor<6x16xf32>) -> tensor<2x3x2x8xf32>
  %6 = "mj.reshape"(%3) {shape = [2, 3, 2, 8]} : (tensor<6x16xf32>) -> tensor<2x3x2x8xf32>
  %7 = "mj.transpose"(%4) {perm = [0, 2, 1, 3]} : (tensor<2x3x2x8xf32>) -> tensor<2x2x3x8xf32>
  %8 = "mj.transpose"(%5) {perm = [0, 2, 1, 3]} : (tensor<2x3x2x8xf32>) -> tensor<2x2x3x8xf32>
  %9 = "mj.transpose"(%6) {perm = [0, 2, 1, 3]} : (tensor<2x3x2x8xf32>) -> tensor<2x2x3x8xf32>
  %10:2 = "mj.attention"(%7, %8, %9) {scale = 0.0 : f64} : (tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>) -> (tensor<2x2x3x8xf32>, tensor<2x2x3xf32>)
  %11 = "mj.transpose"(%10#0) {perm = [0, 2, 1, 3]} : (tensor<2x2x3x8xf32>) -> tensor<2x3x2x8xf32>
  %12 = "mj.reshape"(%11) {shape = [6, 16]} : (tensor<2x3x2x8xf32>) -> tensor<6x16xf32>
  %13 = "mj.tanh"(%12) : (tensor<6x16xf32>) -> tensor<6x16xf32>
  %14 = "mj.sum"(%13) {axes = [0, 1], keepdims = false} : (tensor<6x16xf32>) -> tensor<f32>
  return %14 : tensor<f32>
}
