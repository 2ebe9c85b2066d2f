// Bad input to `moejit opt` gives a named error and exit code 1, never a
// crash: an empty or binary file, a directory as input or as -o, and
// autodiff pipelines that cannot run on this graph.
//
// RUN: rm -rf %t && mkdir -p %t
// RUN: printf '' > %t/empty.mlir
// RUN: not moejit opt %t/empty.mlir 2>&1 | FileCheck %s --check-prefix=EMPTY
// RUN: printf '\x7fELF\x00\x01\xfe' > %t/binary.mlir
// RUN: not moejit opt %t/binary.mlir 2>&1 | FileCheck %s --check-prefix=BINARY
// RUN: not moejit opt %t 2>&1 | FileCheck %s --check-prefix=INDIR
// RUN: not moejit opt %s -o %t 2>&1 | FileCheck %s --check-prefix=OUTDIR
// RUN: not moejit opt %s -o %t/no/such/dir/out.mlir 2>&1 | FileCheck %s --check-prefix=NOPARENT
// RUN: not moejit opt %s "--passes=autodiff{loss=h}" 2>&1 | FileCheck %s --check-prefix=NONSCALAR
// RUN: not moejit opt %s "--passes=autodiff{loss=nope}" 2>&1 | FileCheck %s --check-prefix=NOLOSS
// RUN: not moejit opt %s "--passes=autodiff{loss=loss wrt=h}" 2>&1 | FileCheck %s --check-prefix=NOTARG
// RUN: not moejit opt %s "--passes=autodiff{loss=loss wrt=x,x}" 2>&1 | FileCheck %s --check-prefix=TWICE
// RUN: not moejit opt %s "--passes=autodiff{loss=loss wrt=,}" 2>&1 | FileCheck %s --check-prefix=NOWRT
// RUN: not moejit opt %s "--passes=a{" 2>&1 | FileCheck %s --check-prefix=OPEN
// RUN: not moejit opt %s "--passes=,," 2>&1 | FileCheck %s --check-prefix=COMMAS
// -o to a pipe writes into it and leaves it a pipe (a temporary renamed over
// it would replace it with a regular file, as it would /dev/null):
// RUN: mkfifo %t/pipe
// RUN: sh -c '(timeout 20 cat %t/pipe > %t/pipe.out &) ; moejit opt %s -o %t/pipe; sleep 0.2; test -p %t/pipe'
// RUN: FileCheck %s --check-prefix=PIPE < %t/pipe.out
// All of these are bad input (1), not a bad command line (2) or a crash:
// RUN: sh -c 'moejit opt %t 2>/dev/null; test $? -eq 1'
// RUN: sh -c 'moejit opt %s "--passes=autodiff{loss=loss wrt=x,x}" >/dev/null 2>&1; test $? -eq 1'

// PIPE: func.func @mlp(
// EMPTY: empty.mlir:1:1: error: expected 'func.func', found end of input
// BINARY: binary.mlir:1:1: error: expected 'func.func', found byte 0x7F
// INDIR: moejit: error: input '{{.*}}': expected an IR file, found a directory
// OUTDIR: moejit: error: output '{{.*}}': expected a file name, found a directory
// NOPARENT: moejit: error: output '{{.*}}out.mlir': cannot create the temporary file
// NONSCALAR: autodiff: the loss 'h' must be a float scalar, found tensor<2x4xf32>
// NOLOSS: autodiff: expected an output named 'nope' (the loss), found none
// NOTARG: autodiff: wrt names 'h', which is not an argument of @mlp
// TWICE: autodiff: wrt: expected each argument once, found 'x' twice
// NOWRT: pass 'autodiff': wrt: expected a comma list of argument names, found ','
// OPEN: the '{' at column 2 is never closed
// COMMAS: expected a pass name at column 1

func.func @mlp(%x: tensor<2x3xf32>, %w: tensor<3x4xf32> {mj.role = "param"}) -> (tensor<f32> {mj.name = "loss"}, tensor<2x4xf32> {mj.name = "h"}) {
  %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = false} : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
  %1 = "mj.tanh"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %2 = "mj.sum"(%1) {axes = [0, 1], keepdims = false} : (tensor<2x4xf32>) -> tensor<f32>
  return %2, %1 : tensor<f32>, tensor<2x4xf32>
}
