// RUN: moejit opt %s --split-input-file --passes=fuse-elementwise | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes=fuse-elementwise --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS
// RUN: %if cuda-backend %{ moejit opt %s --split-input-file --passes=fuse-elementwise --emit=cuda | FileCheck %s --check-prefix=CUDA %}

// The CUDA module of @chain: one functor computes the three ops and stores
// only the last value; one launch instantiates the elementwise kernel with it.
// CUDA-LABEL: CUDA module @chain
// CUDA:       #include "codegen/kernels/elementwise.cuh"
// CUDA:       struct [[CHAIN:chain_fused3_[0-9a-f]+]] {
// CUDA:         const float v0 = static_cast<const float*>(a.in[0])[i];
// CUDA:         const float v1 = st<float>(ew_exp(ld(v0)));
// CUDA-NEXT:    const float v3 = st<float>(ew_mul(ld(v1), ld(v2)));
// CUDA-NEXT:    const float v4 = st<float>(ew_relu(ld(v3)));
// CUDA-NEXT:    static_cast<float*>(a.out[0])[i] = v4;
// CUDA-NOT:     a.out[1]
// CUDA:       mj::elementwise_kernel<mj::[[CHAIN]], 256>
// CUDA-LABEL: CUDA module @breaks

// A chain of single-use elementwise ops becomes one group; the ops stay.
// CHECK-LABEL: func.func @chain(
// CHECK-NEXT:    "mj.exp"(%x) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    "mj.mul"(%{{[0-9]+}}, %y) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    "mj.relu"(%{{[0-9]+}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    return
func.func @chain(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>) -> (tensor<4x8xf32> {mj.name = "out"}) {
  %0 = "mj.exp"(%x) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %1 = "mj.mul"(%0, %y) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %2 = "mj.relu"(%1) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %2 : tensor<4x8xf32>
}

// -----

// A value with two uses is stored, so its producer stays out of the group;
// a non-elementwise op (softmax) ends a chain; constants fold into their consumer.
// CHECK-LABEL: func.func @breaks(
// CHECK-NEXT:    %[[E:[0-9]+]] = "mj.exp"(%x) :
// CHECK-NEXT:    "mj.neg"(%[[E]]) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    "mj.add"(%[[E]], %{{[0-9]+}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    %[[S:[0-9]+]] = "mj.softmax"(%{{[0-9]+}}) :
// CHECK-NEXT:    "mj.constant"() {dtype = f32, mj.fusion_group = 1 : i64,
// CHECK-NEXT:    "mj.mul"(%[[S]], %{{[0-9]+}}) {mj.fusion_group = 1 : i64}
// CHECK-NEXT:    return
func.func @breaks(%x: tensor<4x8xf32>) -> (tensor<4x8xf32> {mj.name = "out"}) {
  %0 = "mj.exp"(%x) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %1 = "mj.neg"(%0) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %2 = "mj.add"(%0, %1) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %3 = "mj.softmax"(%2) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %4 = "mj.constant"() {dtype = f32, shape = [4, 8], value = 2.0 : f64} : () -> tensor<4x8xf32>
  %5 = "mj.mul"(%3, %4) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  return %5 : tensor<4x8xf32>
}

// -----

// An op whose result is a graph output and also used by another op is not
// fused with that consumer; a lone elementwise op gets no group.
// CHECK-LABEL: func.func @outputs(
// CHECK-NOT:     mj.fusion_group
// CHECK:         return
func.func @outputs(%x: tensor<4xf32>) -> (tensor<4xf32> {mj.name = "a"}, tensor<4xf32> {mj.name = "b"}) {
  %0 = "mj.exp"(%x) : (tensor<4xf32>) -> tensor<4xf32>
  %1 = "mj.neg"(%0) : (tensor<4xf32>) -> tensor<4xf32>
  return %0, %1 : tensor<4xf32>, tensor<4xf32>
}

// -----

// A cast that two chains read is cloned for the second one, so each chain
// computes it and nothing stores the wide copy; a cast that is also a graph
// output, or that a non-elementwise op reads, stays one stored value.
// CHECK-LABEL: func.func @shared_cast(
// CHECK-NEXT:    %[[C:[0-9]+]] = "mj.cast"(%t) {dtype = f32, mj.fusion_group = 0 : i64}
// CHECK-NEXT:    "mj.mul"(%y, %[[C]]) {mj.fusion_group = 0 : i64}
// CHECK-NEXT:    %[[D:[0-9]+]] = "mj.cast"(%t) {dtype = f32, mj.fusion_group = 1 : i64}
// CHECK-NEXT:    "mj.add"(%y, %[[D]]) {mj.fusion_group = 1 : i64}
// CHECK-NEXT:    %[[O:[0-9]+]] = "mj.cast"(%t) {dtype = f32} :
// CHECK-NEXT:    "mj.neg"(%[[O]]) :
// CHECK-NEXT:    %[[S:[0-9]+]] = "mj.cast"(%t) {dtype = f32} :
// CHECK-NEXT:    "mj.exp"(%[[S]]) :
// CHECK-NEXT:    "mj.softmax"(%[[S]]) :
// CHECK-NEXT:    return
func.func @shared_cast(%t: tensor<4x8xbf16>, %y: tensor<4x8xf32>) -> (tensor<4x8xf32> {mj.name = "a"}, tensor<4x8xf32> {mj.name = "b"},
                                                                        tensor<4x8xf32> {mj.name = "c"}, tensor<4x8xf32> {mj.name = "d"},
                                                                        tensor<4x8xf32> {mj.name = "e"}, tensor<4x8xf32> {mj.name = "f"}) {
  %0 = "mj.cast"(%t) {dtype = f32} : (tensor<4x8xbf16>) -> tensor<4x8xf32>
  %1 = "mj.mul"(%y, %0) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %2 = "mj.add"(%y, %0) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %3 = "mj.cast"(%t) {dtype = f32} : (tensor<4x8xbf16>) -> tensor<4x8xf32>
  %4 = "mj.neg"(%3) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %5 = "mj.cast"(%t) {dtype = f32} : (tensor<4x8xbf16>) -> tensor<4x8xf32>
  %6 = "mj.exp"(%5) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %7 = "mj.softmax"(%5) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %1, %2, %3, %4, %6, %7 : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>
}

// STATS: fuse-elementwise
// STATS-NEXT: groups                       1
// STATS-NEXT: ops-fused                    3
// STATS: fuse-elementwise
// STATS-NEXT: groups                       2
// STATS-NEXT: ops-fused                    4
// STATS: fuse-elementwise
// STATS-NEXT: groups                       0
// STATS-NEXT: ops-fused                    0
// STATS: fuse-elementwise
// STATS-NEXT: groups                       2
// STATS-NEXT: ops-fused                    4
// STATS-NEXT: joins-over-kernel-limits     0
// STATS-NEXT: casts-split                  1
