// RUN: moejit opt %s --passes='memory-plan{print=true}' 2>&1 >/dev/null | FileCheck %s
// RUN: moejit opt %s --passes=memory-plan --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS
// RUN: moejit opt %s --passes=memory-plan | FileCheck %s --check-prefix=IR

// %0 dies after %1 reads it, so %2 reuses its block; %3 reuses the freed top
// block of %1 and grows the arena from there; every block is 256-byte
// aligned; arguments are not in the arena.
// CHECK: memory-plan: %0 tensor<4x4xf32> offset 0 bytes 64
// CHECK-NEXT: memory-plan: %1 tensor<4x4xf32> offset 256 bytes 64
// CHECK-NEXT: memory-plan: %2 tensor<4x4xf32> offset 0 bytes 64
// CHECK-NEXT: memory-plan: %3 tensor<4x100xf32> offset 256 bytes 1600
// CHECK-NEXT: memory-plan: arena 2048 bytes
// STATS: memory-plan
// STATS-NEXT: arena-bytes                  2048
// STATS-NEXT: unshared-bytes               2560
// STATS-NEXT: values-planned               4
// The graph itself is unchanged.
// IR: "mj.exp"(%x) : (tensor<4x4xf32>) -> tensor<4x4xf32>
func.func @plan(%x: tensor<4x4xf32>, %w: tensor<4x100xf32>) -> (tensor<4x100xf32> {mj.name = "y"}) {
  %0 = "mj.exp"(%x) : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %1 = "mj.neg"(%0) : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %2 = "mj.exp"(%1) : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %3 = "mj.matmul"(%2, %w) {transpose_a = false, transpose_b = false} : (tensor<4x4xf32>, tensor<4x100xf32>) -> tensor<4x100xf32>
  return %3 : tensor<4x100xf32>
}
