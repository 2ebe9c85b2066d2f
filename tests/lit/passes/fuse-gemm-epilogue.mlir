// RUN: moejit opt %s --split-input-file --passes=fuse-gemm-epilogue,fuse-elementwise | FileCheck %s
// RUN: env MOEJIT_GEMM_EPILOGUES=all moejit opt %s --split-input-file --passes=fuse-gemm-epilogue,fuse-elementwise | FileCheck %s --check-prefix=ALL
// RUN: moejit opt %s --split-input-file --passes=fuse-gemm-epilogue --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS
// RUN: env MOEJIT_GEMM_EPILOGUES=0 moejit opt %s --split-input-file --passes=fuse-gemm-epilogue,fuse-elementwise | FileCheck %s --check-prefix=OFF
// RUN: not env MOEJIT_GEMM_EPILOGUES=yes moejit opt %s --split-input-file --passes=fuse-gemm-epilogue 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: %if cuda-backend %{ moejit opt %s --split-input-file --passes=fuse-gemm-epilogue,fuse-elementwise --emit=cuda --arch=sm_90a | FileCheck %s --check-prefix=CUDA %}
// RUN: %if cuda-backend %{ env MOEJIT_GEMM_EPILOGUES=all moejit opt %s --split-input-file --passes=fuse-gemm-epilogue,fuse-elementwise --emit=cuda --arch=sm_90a | FileCheck %s --check-prefix=CUDA-ALL %}

// A bf16 MLP and its backward: the forward's gelu folds into x w1 (whose
// product the backward's gelu_grad still reads, so it is kept). The folded
// gelu joins no elementwise chain (the mul after it would otherwise take
// it). With MOEJIT_GEMM_EPILOGUES=all the backward's gelu_grad folds into
// dy w2^T too (read only there).
// CHECK-LABEL: func.func @mlp(
// CHECK-NEXT:    %[[P:[0-9]+]] = "mj.matmul"(%x, %w1) {mj.epilogue = "gelu", transpose_a = false, transpose_b = false}
// CHECK-NEXT:    %[[H:[0-9]+]] = "mj.gelu"(%[[P]]) {mj.gemm_epilogue = true}
// CHECK-NEXT:    "mj.mul"(%[[H]], %s) :
// CHECK-NEXT:    %[[D:[0-9]+]] = "mj.matmul"(%dy, %w2) {transpose_a = false, transpose_b = true}
// CHECK-NEXT:    "mj.gelu_grad"(%[[P]], %[[D]]) :
// ALL-LABEL: func.func @mlp(
// ALL-NEXT:    %[[P:[0-9]+]] = "mj.matmul"(%x, %w1) {mj.epilogue = "gelu", transpose_a = false, transpose_b = false}
// ALL-NEXT:    %[[H:[0-9]+]] = "mj.gelu"(%[[P]]) {mj.gemm_epilogue = true}
// ALL-NEXT:    "mj.mul"(%[[H]], %s) :
// ALL-NEXT:    %[[D:[0-9]+]] = "mj.matmul"(%dy, %w2) {mj.epilogue = "gelu_grad", transpose_a = false, transpose_b = true}
// ALL-NEXT:    "mj.gelu_grad"(%[[P]], %[[D]]) {mj.gemm_epilogue = true}
// OFF-LABEL: func.func @mlp(
// OFF-NEXT:    "mj.matmul"(%x, %w1) {transpose_a = false
// OFF-NEXT:    "mj.gelu"(%{{[0-9]+}}) {mj.fusion_group = 0 : i64}
// OFF-NEXT:    "mj.mul"
// OFF-NEXT:    "mj.matmul"(%dy, %w2) {transpose_a = false
// OFF-NEXT:    "mj.gelu_grad"(%{{[0-9]+}}, %{{[0-9]+}}) :
// BAD: MOEJIT_GEMM_EPILOGUES: expected 0, 1 or all, found 'yes'
// The module: the sm90 GEMM with the GELU epilogue (the TMA-store form:
// rows of 16-byte multiples), no standalone gelu kernel; gelu_grad alone
// by default, in the second GEMM's epilogue with =all.
// CUDA-LABEL: CUDA module @mlp
// CUDA-NOT:   chain_gelu_bf16
// CUDA:       gemm_sm90_kernel<128, {{[0-9]+}}, 64, {{[0-9]+}}, true, false, moejit::sm90::StoreGeluBf16<true>>
// CUDA-NOT:   chain_gelu_bf16
// CUDA:       gemm_sm90_kernel<128, {{[0-9]+}}, 64, {{[0-9]+}}, true, true, moejit::sm90::StoreBf16>
// CUDA:       elementwise_kernel<mj::chain_gelu_grad_bf16_t
// CUDA-LABEL: CUDA module @f32
// CUDA-ALL-LABEL: CUDA module @mlp
// CUDA-ALL-NOT:   chain_gelu
// CUDA-ALL:       gemm_sm90_kernel<128, {{[0-9]+}}, 64, {{[0-9]+}}, true, false, moejit::sm90::StoreGeluBf16<true>>
// CUDA-ALL-NOT:   chain_gelu
// CUDA-ALL:       gemm_sm90_kernel<128, {{[0-9]+}}, 64, {{[0-9]+}}, true, true, moejit::sm90::StoreGeluGradBf16<true>>
// CUDA-ALL-NOT:   chain_gelu
// CUDA-ALL-LABEL: CUDA module @f32
func.func @mlp(%x: tensor<200x64xbf16>, %w1: tensor<64x128xbf16> {mj.role = "param"}, %s: tensor<200x128xbf16>, %dy: tensor<200x64xbf16>, %w2: tensor<128x64xbf16> {mj.role = "param"}) -> (tensor<200x128xbf16> {mj.name = "h"}, tensor<200x128xbf16> {mj.name = "dp"}) {
  %0 = "mj.matmul"(%x, %w1) {transpose_a = false, transpose_b = false} : (tensor<200x64xbf16>, tensor<64x128xbf16>) -> tensor<200x128xbf16>
  %1 = "mj.gelu"(%0) : (tensor<200x128xbf16>) -> tensor<200x128xbf16>
  %2 = "mj.mul"(%1, %s) : (tensor<200x128xbf16>, tensor<200x128xbf16>) -> tensor<200x128xbf16>
  %3 = "mj.matmul"(%dy, %w2) {transpose_a = false, transpose_b = true} : (tensor<200x64xbf16>, tensor<128x64xbf16>) -> tensor<200x128xbf16>
  %4 = "mj.gelu_grad"(%0, %3) : (tensor<200x128xbf16>, tensor<200x128xbf16>) -> tensor<200x128xbf16>
  return %2, %4 : tensor<200x128xbf16>, tensor<200x128xbf16>
}

// -----

// f32 products (the SIMT family has no epilogues) and a gelu_grad whose dy
// is read twice (it would have to be stored anyway) stay as they are.
// CHECK-LABEL: func.func @f32(
// CHECK-NOT:     mj.epilogue
// ALL-LABEL: func.func @dy_twice(
// ALL-NEXT:    %[[D:[0-9]+]] = "mj.matmul"(%dy, %w2) {transpose_a = false, transpose_b = true}
// ALL-NEXT:    "mj.gelu_grad"(%p, %[[D]]) :
// CHECK-LABEL: func.func @dy_twice(
// CHECK-NEXT:    %[[D:[0-9]+]] = "mj.matmul"(%dy, %w2) {transpose_a = false, transpose_b = true}
// CHECK-NEXT:    "mj.gelu_grad"(%p, %[[D]]) :
func.func @f32(%x: tensor<8x16xf32>, %w1: tensor<16x32xf32> {mj.role = "param"}) -> (tensor<8x32xf32> {mj.name = "h"}) {
  %0 = "mj.matmul"(%x, %w1) {transpose_a = false, transpose_b = false} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
  %1 = "mj.gelu"(%0) : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return %1 : tensor<8x32xf32>
}

// -----

func.func @dy_twice(%p: tensor<8x32xbf16>, %dy: tensor<8x16xbf16>, %w2: tensor<32x16xbf16> {mj.role = "param"}) -> (tensor<8x32xbf16> {mj.name = "dp"}, tensor<8x32xbf16> {mj.name = "d"}) {
  %0 = "mj.matmul"(%dy, %w2) {transpose_a = false, transpose_b = true} : (tensor<8x16xbf16>, tensor<32x16xbf16>) -> tensor<8x32xbf16>
  %1 = "mj.gelu_grad"(%p, %0) : (tensor<8x32xbf16>, tensor<8x32xbf16>) -> tensor<8x32xbf16>
  return %1, %0 : tensor<8x32xbf16>, tensor<8x32xbf16>
}

// -----

// The MoE layer after the MoE fusions: moe.gather_matmul's gelu folds.
// CHECK-LABEL: func.func @moe(
// CHECK:         "moe.gather_matmul"{{.*}}mj.epilogue = "gelu"
// CHECK-NEXT:    "mj.gelu"{{.*}}{mj.gemm_epilogue = true}
func.func @moe(%x: tensor<8x16xbf16>, %weights: tensor<8x2xbf16>, %experts: tensor<8x2xi32>, %w_up: tensor<4x16x32xbf16> {mj.role = "param"}, %w_down: tensor<4x32x16xbf16> {mj.role = "param"}) -> (tensor<8x16xbf16> {mj.name = "y"}) {
  %0:4 = "moe.dispatch"(%experts) {block = 1 : i64, capacity_factor = 0.0 : f64, num_experts = 4 : i64} : (tensor<8x2xi32>) -> (tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>, tensor<4xi32>)
  %1 = "moe.gather_matmul"(%x, %w_up, %0#0, %0#1, %0#2) {top_k = 2 : i64} : (tensor<8x16xbf16>, tensor<4x16x32xbf16>, tensor<16xi32>, tensor<5xi32>, tensor<8x2xi32>) -> tensor<16x32xbf16>
  %2 = "mj.gelu"(%1) : (tensor<16x32xbf16>) -> tensor<16x32xbf16>
  %3:2 = "moe.matmul_combine"(%2, %w_down, %0#1, %weights, %0#2) : (tensor<16x32xbf16>, tensor<4x32x16xbf16>, tensor<5xi32>, tensor<8x2xbf16>, tensor<8x2xi32>) -> (tensor<8x16xbf16>, tensor<16x16xbf16>)
  return %3#0 : tensor<8x16xbf16>
}

// STATS: fuse-gemm-epilogue
// STATS-NEXT: gelu-folded       1
// STATS-NEXT: gelu-grad-folded  0
// STATS: fuse-gemm-epilogue
// STATS-NEXT: gelu-folded       0
// STATS-NEXT: gelu-grad-folded  0
