// Small, valid sample graphs shared by tests, the CLI demo and the CUDA
// compile test.
//
// make_all_ops_graph() uses every op of ir/ops.def at least once (with
// small shapes: tokens 4, d_model 8, experts 4, top_k 2, d_expert 6,
// vocab 10); every result that no op consumes is an output, so nothing is
// dead. make_moe_layer_graph() is one MoE layer as in examples/moe_layer.
#pragma once
#include "ir/graph.h"

namespace moejit {

Graph make_all_ops_graph();
Graph make_moe_layer_graph();

}  // namespace moejit
