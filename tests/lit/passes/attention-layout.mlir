// RUN: moejit opt %s --split-input-file --passes=attention-layout | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes=attention-layout --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS
// RUN: moejit opt %s --split-input-file --passes=cuda-pipeline | FileCheck %s --check-prefix=PIPE

// attention-layout: nn::causal_self_attention's head split (reshape to
// [B, T, H, Dh], transpose (0, 2, 1, 3)) around mj.attention, and the
// transposes autodiff put around mj.attention_grad, fold into
// layout = "bthd": the kernels read the reshaped projections in place.
// B 2, T 3, H 2, Dh 8; the input is this forward after autodiff{loss=loss}.

// CHECK-LABEL: func.func @heads(
// CHECK:         %[[Q:[0-9]+]] = "mj.reshape"(%1) {shape = [2, 3, 2, 8]}
// CHECK-NEXT:    %[[K:[0-9]+]] = "mj.reshape"(%2) {shape = [2, 3, 2, 8]}
// CHECK-NEXT:    %[[V:[0-9]+]] = "mj.reshape"(%3) {shape = [2, 3, 2, 8]}
// CHECK-NEXT:    %[[A:[0-9]+]]:2 = "mj.attention"(%[[Q]], %[[K]], %[[V]]) {layout = "bthd", scale = 0.0 : f64} : (tensor<2x3x2x8xf32>, tensor<2x3x2x8xf32>, tensor<2x3x2x8xf32>) -> (tensor<2x3x2x8xf32>, tensor<2x2x3xf32>)
// CHECK-NEXT:    "mj.reshape"(%[[A]]#0) {shape = [6, 16]}
// CHECK:         %[[DO:[0-9]+]] = "mj.reshape"(%{{[0-9]+}}) {shape = [2, 3, 2, 8]}
// CHECK-NEXT:    %[[G:[0-9]+]]:3 = "mj.attention_grad"(%[[Q]], %[[K]], %[[V]], %[[A]]#0, %[[A]]#1, %[[DO]]) {layout = "bthd", scale = 0.0 : f64}
// CHECK-NEXT:    "mj.reshape"(%[[G]]#2) {shape = [6, 16]}
// CHECK-NEXT:    "mj.reshape"(%[[G]]#1) {shape = [6, 16]}
// CHECK-NEXT:    "mj.reshape"(%[[G]]#0) {shape = [6, 16]}
// CHECK-NOT:     "mj.transpose"
// CHECK:         return
// STATS:       attention-layout
// STATS-NEXT:    attentions-relaid 2
// STATS-NEXT:    transposes-removed 8
// PIPE-LABEL: func.func @heads(
// PIPE-NOT:    "mj.transpose"
// PIPE:        "mj.attention"({{.*}}) {layout = "bthd"
// PIPE-NOT:    "mj.transpose"
// PIPE:        "mj.attention_grad"({{.*}}) {layout = "bthd"
// PIPE-NOT:    "mj.transpose"
// PIPE:        return
func.func @heads(%x: tensor<6x48xf32>, %w: tensor<48x48xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}, tensor<48x48xf32> {mj.name = "grad.w"}) {
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
  %15 = "mj.constant"() {dtype = f32, shape = [], value = 1.0 : f64} : () -> tensor<f32>
  %16 = "mj.broadcast"(%15) {shape = [6, 16]} : (tensor<f32>) -> tensor<6x16xf32>
  %17 = "mj.constant"() {dtype = f32, shape = [6, 16], value = 1.0 : f64} : () -> tensor<6x16xf32>
  %18 = "mj.mul"(%13, %13) : (tensor<6x16xf32>, tensor<6x16xf32>) -> tensor<6x16xf32>
  %19 = "mj.sub"(%17, %18) : (tensor<6x16xf32>, tensor<6x16xf32>) -> tensor<6x16xf32>
  %20 = "mj.mul"(%16, %19) : (tensor<6x16xf32>, tensor<6x16xf32>) -> tensor<6x16xf32>
  %21 = "mj.reshape"(%20) {shape = [2, 3, 2, 8]} : (tensor<6x16xf32>) -> tensor<2x3x2x8xf32>
  %22 = "mj.transpose"(%21) {perm = [0, 2, 1, 3]} : (tensor<2x3x2x8xf32>) -> tensor<2x2x3x8xf32>
  %23:3 = "mj.attention_grad"(%7, %8, %9, %10#0, %10#1, %22) {scale = 0.0 : f64} : (tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>, tensor<2x2x3xf32>, tensor<2x2x3x8xf32>) -> (tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>, tensor<2x2x3x8xf32>)
  %24 = "mj.transpose"(%23#2) {perm = [0, 2, 1, 3]} : (tensor<2x2x3x8xf32>) -> tensor<2x3x2x8xf32>
  %25 = "mj.transpose"(%23#1) {perm = [0, 2, 1, 3]} : (tensor<2x2x3x8xf32>) -> tensor<2x3x2x8xf32>
  %26 = "mj.transpose"(%23#0) {perm = [0, 2, 1, 3]} : (tensor<2x2x3x8xf32>) -> tensor<2x3x2x8xf32>
  %27 = "mj.reshape"(%24) {shape = [6, 16]} : (tensor<2x3x2x8xf32>) -> tensor<6x16xf32>
  %28 = "mj.reshape"(%25) {shape = [6, 16]} : (tensor<2x3x2x8xf32>) -> tensor<6x16xf32>
  %29 = "mj.reshape"(%26) {shape = [6, 16]} : (tensor<2x3x2x8xf32>) -> tensor<6x16xf32>
  %30 = "mj.pad"(%27) {high = [0, 0], low = [0, 32]} : (tensor<6x16xf32>) -> tensor<6x48xf32>
  %31 = "mj.pad"(%28) {high = [0, 16], low = [0, 16]} : (tensor<6x16xf32>) -> tensor<6x48xf32>
  %32 = "mj.add"(%30, %31) : (tensor<6x48xf32>, tensor<6x48xf32>) -> tensor<6x48xf32>
  %33 = "mj.pad"(%29) {high = [0, 32], low = [0, 0]} : (tensor<6x16xf32>) -> tensor<6x48xf32>
  %34 = "mj.add"(%32, %33) : (tensor<6x48xf32>, tensor<6x48xf32>) -> tensor<6x48xf32>
  %35 = "mj.matmul"(%x, %34) {transpose_a = true, transpose_b = false} : (tensor<6x48xf32>, tensor<6x48xf32>) -> tensor<48x48xf32>
  return %14, %35 : tensor<f32>, tensor<48x48xf32>
}

// -----

// q passes through an op of its own after the head split (as RoPE does):
// k, v and the output still fold, q gets one transpose back to [B, T, H, Dh].
// CHECK-LABEL: func.func @one_operand_in_bhtd(
// CHECK-NEXT:    %[[QT:[0-9]+]] = "mj.transpose"(%q) {perm = [0, 2, 1, 3]}
// CHECK-NEXT:    %[[QN:[0-9]+]] = "mj.neg"(%[[QT]])
// CHECK-NEXT:    %[[QB:[0-9]+]] = "mj.transpose"(%[[QN]]) {perm = [0, 2, 1, 3]} : (tensor<1x2x4x8xf32>) -> tensor<1x4x2x8xf32>
// CHECK-NEXT:    %[[A:[0-9]+]]:2 = "mj.attention"(%[[QB]], %k, %v) {layout = "bthd", scale = 0.0 : f64}
// CHECK-NEXT:    return %[[A]]#0
// STATS:       attention-layout
// STATS-NEXT:    attentions-relaid 1
// STATS-NEXT:    transposes-removed 2
func.func @one_operand_in_bhtd(%q: tensor<1x4x2x8xf32>, %k: tensor<1x4x2x8xf32>, %v: tensor<1x4x2x8xf32>) -> (tensor<1x4x2x8xf32> {mj.name = "y"}) {
  %0 = "mj.transpose"(%q) {perm = [0, 2, 1, 3]} : (tensor<1x4x2x8xf32>) -> tensor<1x2x4x8xf32>
  %1 = "mj.neg"(%0) : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %2 = "mj.transpose"(%k) {perm = [0, 2, 1, 3]} : (tensor<1x4x2x8xf32>) -> tensor<1x2x4x8xf32>
  %3 = "mj.transpose"(%v) {perm = [0, 2, 1, 3]} : (tensor<1x4x2x8xf32>) -> tensor<1x2x4x8xf32>
  %4:2 = "mj.attention"(%1, %2, %3) {scale = 0.0 : f64} : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> (tensor<1x2x4x8xf32>, tensor<1x2x4xf32>)
  %5 = "mj.transpose"(%4#0) {perm = [0, 2, 1, 3]} : (tensor<1x2x4x8xf32>) -> tensor<1x4x2x8xf32>
  return %5 : tensor<1x4x2x8xf32>
}

// -----

// Nothing to gain: q and k are computed in [B, H, T, Dh] and the output is
// returned as it is; the op keeps its layout.
// CHECK-LABEL: func.func @no_gain(
// CHECK:         "mj.transpose"(%v)
// CHECK-NEXT:    "mj.attention"({{.*}}) {scale = 0.0 : f64}
// STATS:       attention-layout
// STATS-NEXT:    transposes-removed 0
func.func @no_gain(%q: tensor<1x2x4x8xf32>, %v: tensor<1x4x2x8xf32>) -> (tensor<1x2x4x8xf32> {mj.name = "y"}) {
  %0 = "mj.neg"(%q) : (tensor<1x2x4x8xf32>) -> tensor<1x2x4x8xf32>
  %1 = "mj.transpose"(%v) {perm = [0, 2, 1, 3]} : (tensor<1x4x2x8xf32>) -> tensor<1x2x4x8xf32>
  %2:2 = "mj.attention"(%q, %0, %1) {scale = 0.0 : f64} : (tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>) -> (tensor<1x2x4x8xf32>, tensor<1x2x4xf32>)
  return %2#0 : tensor<1x2x4x8xf32>
}
