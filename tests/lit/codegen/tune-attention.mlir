// REQUIRES: cuda-backend
// RUN: moejit tune %s --list | FileCheck %s
// RUN: rm -rf %t.cache
// RUN: env MOEJIT_CACHE_DIR=%t.cache moejit tune %s --compile-only --threads 2 | FileCheck %s --check-prefix=COMPILE

// Flash attention as a tunable family (codegen/attention_select.h): one
// problem per attention (its forward and backward kernels together), the
// heuristic's tile shapes first, then the other forward and dq query tiles
// (64, 128: tile_m, tile_k) and dk/dv query steps (32, 64: tile_n);
// --compile-only compiles every
// candidate with NVRTC, no GPU needed.
// CHECK: 1 distinct problems of @tune_attention for sm_90a
// CHECK-NEXT: attention bf16 bhtd B 2 H 3 T 300 Dh 64 uses 1 heuristic tile 64x64x64 8 candidates
// CHECK-NEXT: 8 candidates in all
// CHECK-NEXT: version keys: {{.*}} attention {{[0-9a-f]+}}
// COMPILE: 1 problems, 8 candidates (0 refused), 8 distinct modules (8 compiled by NVRTC {{.*}}, 0 failed)

func.func @tune_attention(%q: tensor<2x3x300x64xbf16>, %k: tensor<2x3x300x64xbf16>, %v: tensor<2x3x300x64xbf16>, %dout: tensor<2x3x300x64xbf16>) -> (tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>) {
  %0:2 = "mj.attention"(%q, %k, %v) {scale = 0.0 : f64} : (tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>) -> (tensor<2x3x300x64xbf16>, tensor<2x3x300xf32>)
  %1:3 = "mj.attention_grad"(%q, %k, %v, %0#0, %0#1, %dout) {scale = 0.0 : f64} : (tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>, tensor<2x3x300xf32>, tensor<2x3x300x64xbf16>) -> (tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>)
  return %0#0, %1#0 : tensor<2x3x300x64xbf16>, tensor<2x3x300x64xbf16>
}
