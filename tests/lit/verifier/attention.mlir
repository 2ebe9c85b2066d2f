// RUN: not moejit opt %s --split-input-file 2>&1 | FileCheck %s
// Verifier: mj.attention returns out (q's type) and lse [B, H, T] (f32, or
// f64 for f64 q, also for a bf16 attention); mj.attention_grad takes
// q, k, v, out (all q's type), lse (that statistics type) and dout.

// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:2 = "mj.attention": result #1: expected type tensor<1x2x8xf32>, found tensor<1x2x8xbf16>
func.func @bf16_lse(%q: tensor<1x2x8x16xbf16>) -> (tensor<1x2x8x16xbf16>) {
  %0:2 = "mj.attention"(%q, %q, %q) {scale = 0.0} : (tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>) -> (tensor<1x2x8x16xbf16>, tensor<1x2x8xbf16>)
  return %0#0 : tensor<1x2x8x16xbf16>
}

// -----

// CHECK: attention.mlir:[[@LINE+2]]:3: error: "mj.attention" has 2 results, found 1
func.func @one_result(%q: tensor<1x2x8x16xf32>) -> (tensor<1x2x8x16xf32>) {
  %0 = "mj.attention"(%q, %q, %q) {scale = 0.0} : (tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>) -> tensor<1x2x8x16xf32>
  return %0 : tensor<1x2x8x16xf32>
}

// -----

// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:3 = "mj.attention_grad": operand #4 (lse): expected tensor<1x2x8xf32> (the log-sum-exp result of mj.attention), found tensor<1x2x4xf32>
func.func @lse_shape(%q: tensor<1x2x8x16xf32>, %lse: tensor<1x2x4xf32>) -> (tensor<1x2x8x16xf32>) {
  %0:3 = "mj.attention_grad"(%q, %q, %q, %q, %lse, %q) {scale = 0.0} : (tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x4xf32>, tensor<1x2x8x16xf32>) -> (tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x8x16xf32>)
  return %0#0 : tensor<1x2x8x16xf32>
}

// -----

// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:3 = "mj.attention_grad": operand #3 (out): expected tensor<1x2x8x16xbf16> (the type of operand #0 (q)), found tensor<1x2x8x16xf32>
func.func @out_dtype(%q: tensor<1x2x8x16xbf16>, %out: tensor<1x2x8x16xf32>, %lse: tensor<1x2x8xf32>) -> (tensor<1x2x8x16xbf16>) {
  %0:3 = "mj.attention_grad"(%q, %q, %q, %out, %lse, %q) {scale = 0.0} : (tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>, tensor<1x2x8x16xf32>, tensor<1x2x8xf32>, tensor<1x2x8x16xbf16>) -> (tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>, tensor<1x2x8x16xbf16>)
  return %0#0 : tensor<1x2x8x16xbf16>
}

// -----

// The head layout is "bhtd" (the default) or "bthd".
// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:2 = "mj.attention": attribute 'layout': expected one of "bhtd", "bthd", found "bhdt"
func.func @bad_layout(%q: tensor<1x8x2x16xf32>) -> (tensor<1x8x2x16xf32>) {
  %0:2 = "mj.attention"(%q, %q, %q) {layout = "bhdt", scale = 0.0} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>) -> (tensor<1x8x2x16xf32>, tensor<1x2x8xf32>)
  return %0#0 : tensor<1x8x2x16xf32>
}

// -----

// In layout "bthd" q is [B, T, H, Dh] and lse stays [B, H, T].
// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:3 = "mj.attention_grad": operand #4 (lse): expected tensor<1x2x8xf32> (the log-sum-exp result of mj.attention), found tensor<1x8x2xf32>
func.func @bthd_lse(%q: tensor<1x8x2x16xf32>, %lse: tensor<1x8x2xf32>) -> (tensor<1x8x2x16xf32>) {
  %0:3 = "mj.attention_grad"(%q, %q, %q, %q, %lse, %q) {layout = "bthd", scale = 0.0} : (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2xf32>, tensor<1x8x2x16xf32>) -> (tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>)
  return %0#0 : tensor<1x8x2x16xf32>
}

// -----

// mj.attention_qkv reads q, k, v packed along axis 2 of [B, T, 3, H, Dh].
// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0:2 = "mj.attention_qkv": operand #0 (qkv): expected [B, T, 3, H, Dh] (q, k, v packed along axis 2), found tensor<1x8x2x2x16xf32>
func.func @packed_two(%qkv: tensor<1x8x2x2x16xf32>) -> (tensor<1x8x2x16xf32>) {
  %0:2 = "mj.attention_qkv"(%qkv) {scale = 0.0} : (tensor<1x8x2x2x16xf32>) -> (tensor<1x8x2x16xf32>, tensor<1x2x8xf32>)
  return %0#0 : tensor<1x8x2x16xf32>
}

// -----

// Its gradient takes out [B, T, H, Dh] (not the default layout's [B, H, T, Dh]) and returns dqkv like qkv.
// CHECK: attention.mlir:[[@LINE+2]]:3: error: %0 = "mj.attention_qkv_grad": operand #1 (out): expected tensor<1x8x2x16xf32> (from qkv tensor<1x8x3x2x16xf32>), found tensor<1x2x8x16xf32>
func.func @packed_out(%qkv: tensor<1x8x3x2x16xf32>, %out: tensor<1x2x8x16xf32>, %lse: tensor<1x2x8xf32>, %dout: tensor<1x8x2x16xf32>) -> (tensor<1x8x3x2x16xf32>) {
  %0 = "mj.attention_qkv_grad"(%qkv, %out, %lse, %dout) {scale = 0.0} : (tensor<1x8x3x2x16xf32>, tensor<1x2x8x16xf32>, tensor<1x2x8xf32>, tensor<1x8x2x16xf32>) -> tensor<1x8x3x2x16xf32>
  return %0 : tensor<1x8x3x2x16xf32>
}
