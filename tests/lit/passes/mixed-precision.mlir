// RUN: moejit opt %s --split-input-file --passes=mixed-precision | FileCheck %s

// A fused MoE feed-forward: the router (moe.route) stays f32; x, the expert
// weights and the gate weights are cast to bf16 where a bf16 op first reads
// them; the gelu between the expert matmuls stays bf16; the combined output
// is cast back to f32 for the residual add.
// CHECK-LABEL: func.func @moe_ffn(
// CHECK-NEXT:    %[[R:[0-9]+]]:8 = "moe.route"(%x, %w_router) {{.*}} -> (tensor<8x4xf32>, tensor<8x2xf32>,
// CHECK-NEXT:    %[[XB:[0-9]+]] = "mj.cast"(%x) {dtype = bf16} : (tensor<8x4xf32>) -> tensor<8x4xbf16>
// CHECK-NEXT:    %[[UB:[0-9]+]] = "mj.cast"(%w_up) {dtype = bf16}
// CHECK-NEXT:    %[[H:[0-9]+]] = "moe.gather_matmul"(%[[XB]], %[[UB]], %[[R]]#3, %[[R]]#4, %[[R]]#5) {{.*}} -> tensor<16x8xbf16>
// CHECK-NEXT:    %[[A:[0-9]+]] = "mj.gelu"(%[[H]]) : (tensor<16x8xbf16>) -> tensor<16x8xbf16>
// CHECK-NEXT:    %[[DB:[0-9]+]] = "mj.cast"(%w_down) {dtype = bf16}
// CHECK-NEXT:    %[[WB:[0-9]+]] = "mj.cast"(%[[R]]#1) {dtype = bf16}
// CHECK-NEXT:    %[[Y:[0-9]+]]:2 = "moe.matmul_combine"(%[[A]], %[[DB]], %[[R]]#4, %[[WB]], %[[R]]#5) {{.*}} -> (tensor<8x4xbf16>, tensor<16x4xbf16>)
// CHECK-NEXT:    %[[YF:[0-9]+]] = "mj.cast"(%[[Y]]#0) {dtype = f32} : (tensor<8x4xbf16>) -> tensor<8x4xf32>
// CHECK-NEXT:    %[[S:[0-9]+]] = "mj.add"(%x, %[[YF]]) : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
// CHECK-NEXT:    return %[[S]]
func.func @moe_ffn(%x: tensor<8x4xf32>, %w_router: tensor<4x4xf32> {mj.role = "param"}, %w_up: tensor<4x4x8xf32> {mj.role = "param"}, %w_down: tensor<4x8x4xf32> {mj.role = "param"}) -> (tensor<8x4xf32> {mj.name = "y"}) {
  %0:8 = "moe.route"(%x, %w_router) {block = 1 : i64, capacity_factor = 0.0 : f64, normalize = true, num_experts = 4 : i64, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>, tensor<4x4xf32>) -> (tensor<8x4xf32>, tensor<8x2xf32>, tensor<8x2xi32>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>, tensor<16x4xf32>)
  %1 = "moe.gather_matmul"(%x, %w_up, %0#3, %0#4, %0#5) {top_k = 2 : i64} : (tensor<8x4xf32>, tensor<4x4x8xf32>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>) -> tensor<16x8xf32>
  %2 = "mj.gelu"(%1) : (tensor<16x8xf32>) -> tensor<16x8xf32>
  %3:2 = "moe.matmul_combine"(%2, %w_down, %0#4, %0#1, %0#5) : (tensor<16x8xf32>, tensor<4x8x4xf32>, tensor<5xi32>, tensor<8x2xf32>, tensor<8x2xi32>) -> (tensor<8x4xf32>, tensor<16x4xf32>)
  %4 = "mj.add"(%x, %3#0) : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  return %4 : tensor<8x4xf32>
}

// -----

// An unfused router (a matmul feeding moe.gate) keeps f32 logits; another
// matmul of the same x runs in bf16 and its output is cast back to f32.
// CHECK-LABEL: func.func @router(
// CHECK-NEXT:    "mj.matmul"(%x, %w) {{.*}} -> tensor<8x4xf32>
// CHECK-NEXT:    %[[G:[0-9]+]]:2 = "moe.gate"
// CHECK-NEXT:    "mj.cast"(%x) {dtype = bf16}
// CHECK-NEXT:    "mj.cast"(%w2) {dtype = bf16}
// CHECK-NEXT:    %[[M:[0-9]+]] = "mj.matmul"({{.*}}) -> tensor<8x6xbf16>
// CHECK-NEXT:    %[[F:[0-9]+]] = "mj.cast"(%[[M]]) {dtype = f32}
// CHECK-NEXT:    return %[[G]]#0, %[[F]] : tensor<8x2xf32>, tensor<8x6xf32>
func.func @router(%x: tensor<8x4xf32>, %w: tensor<4x4xf32> {mj.role = "param"}, %w2: tensor<4x6xf32> {mj.role = "param"}) -> (tensor<8x2xf32> {mj.name = "weights"}, tensor<8x6xf32> {mj.name = "head"}) {
  %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = false} : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %1:2 = "moe.gate"(%0) {normalize = true, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<8x4xf32>) -> (tensor<8x2xf32>, tensor<8x2xi32>)
  %2 = "mj.matmul"(%x, %w2) {transpose_a = false, transpose_b = false} : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
  return %1#0, %2 : tensor<8x2xf32>, tensor<8x6xf32>
}
