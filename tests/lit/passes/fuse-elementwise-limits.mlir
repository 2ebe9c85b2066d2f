// RUN: moejit opt %s --passes=fuse-elementwise | FileCheck %s

// A chain of 25 scalar adds reads 26 values from outside: one kernel takes at
// most 24 (codegen/kernels/elementwise.cuh), so the chain becomes two groups,
// the first with 23 adds (24 inputs), the second with the last 2.
// CHECK-LABEL: func.func @long_sum(
// CHECK-NEXT: %0 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %1 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %2 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %3 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %4 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %5 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %6 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %7 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %8 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %9 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %10 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %11 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %12 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %13 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %14 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %15 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %16 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %17 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %18 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %19 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %20 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %21 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %22 = "mj.add"({{.*}}) {mj.fusion_group = 0 : i64}
// CHECK-NEXT: %23 = "mj.add"({{.*}}) {mj.fusion_group = 1 : i64}
// CHECK-NEXT: %24 = "mj.add"({{.*}}) {mj.fusion_group = 1 : i64}
func.func @long_sum(%a0: tensor<f32>, %a1: tensor<f32>, %a2: tensor<f32>, %a3: tensor<f32>, %a4: tensor<f32>, %a5: tensor<f32>, %a6: tensor<f32>, %a7: tensor<f32>, %a8: tensor<f32>, %a9: tensor<f32>, %a10: tensor<f32>, %a11: tensor<f32>, %a12: tensor<f32>, %a13: tensor<f32>, %a14: tensor<f32>, %a15: tensor<f32>, %a16: tensor<f32>, %a17: tensor<f32>, %a18: tensor<f32>, %a19: tensor<f32>, %a20: tensor<f32>, %a21: tensor<f32>, %a22: tensor<f32>, %a23: tensor<f32>, %a24: tensor<f32>, %a25: tensor<f32>) -> (tensor<f32> {mj.name = "total"}) {
  %0 = "mj.add"(%a0, %a1) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %1 = "mj.add"(%0, %a2) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %2 = "mj.add"(%1, %a3) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %3 = "mj.add"(%2, %a4) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %4 = "mj.add"(%3, %a5) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %5 = "mj.add"(%4, %a6) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %6 = "mj.add"(%5, %a7) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %7 = "mj.add"(%6, %a8) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %8 = "mj.add"(%7, %a9) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %9 = "mj.add"(%8, %a10) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %10 = "mj.add"(%9, %a11) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %11 = "mj.add"(%10, %a12) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %12 = "mj.add"(%11, %a13) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %13 = "mj.add"(%12, %a14) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %14 = "mj.add"(%13, %a15) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %15 = "mj.add"(%14, %a16) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %16 = "mj.add"(%15, %a17) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %17 = "mj.add"(%16, %a18) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %18 = "mj.add"(%17, %a19) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %19 = "mj.add"(%18, %a20) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %20 = "mj.add"(%19, %a21) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %21 = "mj.add"(%20, %a22) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %22 = "mj.add"(%21, %a23) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %23 = "mj.add"(%22, %a24) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %24 = "mj.add"(%23, %a25) : (tensor<f32>, tensor<f32>) -> tensor<f32>
  return %24 : tensor<f32>
}
