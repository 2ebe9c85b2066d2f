// The verifier: every op well-formed (operand count, attributes, shape rule
// agrees with the recorded result types), SSA (each value defined once,
// before its uses), outputs defined, names unique.
#pragma once
#include <string>
#include <vector>

#include "ir/graph.h"

namespace moejit {

struct Diagnostic {
  int op_index = -1;  // -1 for graph-level problems
  std::string message;
};

// All problems found, in op order; empty when the graph is valid.
std::vector<Diagnostic> verify(const Graph& graph);
// Throws moejit::Error with the first diagnostics when the graph is invalid.
void verify_or_throw(const Graph& graph);

// "%12 = \"moe.dispatch\"": how diagnostics name an op. Values are numbered
// as the printer numbers them.
std::string describe_op(const Graph& graph, int op_index);

}  // namespace moejit
