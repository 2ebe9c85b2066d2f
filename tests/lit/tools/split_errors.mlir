// --split-input-file: a piece that fails reports its error with the line
// number in this file, the other pieces are still processed, the exit code
// is 1, and an -o file is not written.
//
// RUN: not moejit opt %s --split-input-file --passes=canonicalize 2>%t.err | FileCheck %s
// RUN: FileCheck %s --check-prefix=ERR < %t.err
// RUN: rm -f %t.out && not moejit opt %s --split-input-file -o %t.out 2>/dev/null && test ! -e %t.out

// CHECK-LABEL: func.func @good_before(
// CHECK:       // -----
// CHECK-LABEL: func.func @good_after(

// ERR: split_errors.mlir:25:8: error: {{.*}}mj.nosuchop
// ERR-NOT: error:

func.func @good_before(%x: tensor<2xf32>) -> (tensor<2xf32> {mj.name = "y"}) {
  %0 = "mj.exp"(%x) : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}

// -----

func.func @bad(%x: tensor<2xf32>) -> (tensor<2xf32> {mj.name = "y"}) {
  // the op below is line 25
  %0 = "mj.nosuchop"(%x) : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}

// -----

func.func @good_after(%x: tensor<2xf32>) -> (tensor<2xf32> {mj.name = "y"}) {
  return %x : tensor<2xf32>
}
