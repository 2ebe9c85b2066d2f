// The `moejit opt` command line: output to a file, --print-ir-after-all,
// --emit=dot, --split-input-file diagnostics with the file's line numbers,
// exit codes (1 for bad input, 2 for a bad command line).
//
// RUN: moejit opt %s --split-input-file --passes=cse,dce -o %t.mlir
// RUN: FileCheck %s --check-prefix=OUT < %t.mlir
// RUN: moejit opt %s --split-input-file --passes=cse,dce --print-ir-after-all 2>&1 >/dev/null | FileCheck %s --check-prefix=DUMP
// RUN: moejit opt %s --split-input-file --emit=dot | FileCheck %s --check-prefix=DOT
// RUN: moejit opt %s --split-input-file --passes=cse,dce | moejit opt - --split-input-file | FileCheck %s --check-prefix=OUT
// RUN: not moejit opt %s --passes=cse,nope 2>&1 | FileCheck %s --check-prefix=BADPASS
// RUN: not moejit opt %s --passes="autodiff{los=x}" 2>&1 | FileCheck %s --check-prefix=BADOPTION
// RUN: not moejit opt %s --emit=svg 2>&1 | FileCheck %s --check-prefix=BADFLAG
// RUN: not moejit opt %s 2>&1 | FileCheck %s --check-prefix=NOSPLIT
// RUN: not moejit opt %t.missing.mlir 2>&1 | FileCheck %s --check-prefix=MISSING
// RUN: moejit --version | FileCheck %s --check-prefix=VERSION
// RUN: moejit ops moe. | FileCheck %s --check-prefix=OPS
// RUN: moejit passes | FileCheck %s --check-prefix=PASSES
// Exit code 2 for a bad flag, 1 for bad input:
// RUN: sh -c 'moejit opt %s --emit=svg 2>/dev/null; test $? -eq 2'
// RUN: sh -c 'moejit opt %s --passes=nope 2>/dev/null; test $? -eq 1'
// RUN: sh -c 'moejit opt %s --split-input-file --passes=cse,dce >/dev/null; test $? -eq 0'

// OUT-LABEL: func.func @first(
// OUT-NEXT:    "mj.exp"(%x)
// OUT-NEXT:    return
// OUT:       // -----
// OUT-LABEL: func.func @second(
// OUT-NOT:   // -----

// DUMP:      // -----// IR Dump After cse //----- //
// DUMP-NEXT: func.func @first(
// DUMP:      // -----// IR Dump After dce //----- //
// DUMP-NEXT: func.func @first(
// DUMP:      // -----// IR Dump After cse //----- //
// DUMP-NEXT: func.func @second(

// DOT: digraph "first"
// DOT: digraph "second"

// Without --split-input-file the second func.func is unexpected text.
// NOSPLIT: opt_cli.mlir:{{[0-9]+}}:{{[0-9]+}}: error:
// BADPASS: moejit: error: pass pipeline 'cse,nope': unknown pass 'nope'; known passes: canonicalize, cse, dce
// BADOPTION: pass 'autodiff' has no option 'los' (its options: loss, wrt)
// BADFLAG: --emit: svg not in {ir,dot,cuda}
// MISSING: moejit: error: cannot open input file '{{.*}}missing.mlir'
// VERSION: moejit {{[0-9]+\.[0-9]+\.[0-9]+}}
// OPS: moe.gate {{ *}}(logits, bias?) -> 2 {{ *}}diff {{ *}}{normalize: bool, order: string, score: string, top_k: int}
// OPS-NOT: mj.
// PASSES: autodiff{loss=... wrt=...}

func.func @first(%x: tensor<2xf32>) -> (tensor<2xf32> {mj.name = "y"}) {
  %0 = "mj.exp"(%x) : (tensor<2xf32>) -> tensor<2xf32>
  %1 = "mj.tanh"(%x) : (tensor<2xf32>) -> tensor<2xf32>
  return %0 : tensor<2xf32>
}

// -----

func.func @second(%x: tensor<2xf32>) -> (tensor<2xf32> {mj.name = "y"}) {
  return %x : tensor<2xf32>
}
