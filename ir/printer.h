// The text form: MLIR's generic operation syntax inside a func.func, so
// mlir-opt-16 --allow-unregistered-dialect parses every dump. Round trips
// exactly with ir/parser.h.
//
//   func.func @layer(%x: tensor<16x32xf32>, %w: tensor<32x8xf32> {mj.role = "param"})
//       -> (tensor<16x8xf32> {mj.name = "y"}) {
//     %0 = "mj.matmul"(%x, %w) {transpose_a = false, transpose_b = false}
//          : (tensor<16x32xf32>, tensor<32x8xf32>) -> tensor<16x8xf32>
//     return %0 : tensor<16x8xf32>
//   }
//
// Arguments keep their names; op results are numbered by op index (%7, and
// %7#1 for the second result of a multi-result op). The function name is
// bare when it is an identifier, else a string (@"tricky graph").
#pragma once
#include <string>

#include "ir/graph.h"

namespace moejit {

std::string print_graph(const Graph& graph);
// The text of one value as the printer names it ("%x", "%7", "%7#1").
std::string value_ref(const Graph& graph, ValueId value);

}  // namespace moejit
