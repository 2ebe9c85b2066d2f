// Graphviz export: `dot -Tsvg` of a graph, for looking at IR.
//
// Arguments are ellipses (inputs white, params blue, state grey), ops are
// boxes labelled with the op name and its key attributes, outputs are
// diamonds-less "note" shapes labelled with their names; every tensor is an
// edge labelled with its type (and "#r" for the r-th result of a
// multi-result op). The text depends only on the graph (deterministic).
#pragma once
#include <string>

#include "ir/graph.h"

namespace moejit {

std::string graph_to_dot(const Graph& graph);

}  // namespace moejit
