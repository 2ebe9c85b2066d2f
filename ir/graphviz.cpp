// Graphviz export (see ir/graphviz.h).
#include "ir/graphviz.h"

#include <fmt/format.h>

namespace moejit {

namespace {

// A DOT string literal: quotes and backslashes escaped, newlines as "\n".
std::string dot_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20)
      out += ' ';
    else
      out += c;
  }
  return out + "\"";
}

// The attributes worth seeing on a node: all of them, values shortened.
std::string attr_lines(const AttrList& attrs) {
  std::string out;
  for (const auto& a : attrs.items()) {
    std::string value = attr_value_str(a.value);
    if (auto colon = value.find(" : "); colon != std::string::npos) value.resize(colon);  // "2 : i64" -> "2"
    if (value.size() > 40) value = value.substr(0, 37) + "...";
    out += fmt::format("\n{}={}", a.name, value);
  }
  return out;
}

}  // namespace

std::string graph_to_dot(const Graph& graph) {
  std::string out = fmt::format("digraph {} {{\n", dot_string(graph.name()));
  out += "  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n  edge [fontname=\"monospace\", fontsize=9];\n";
  // Where each value comes from: the node and, for multi-result ops, "#r".
  std::vector<std::string> source(static_cast<std::size_t>(graph.num_values()));
  std::vector<std::string> suffix(static_cast<std::size_t>(graph.num_values()));
  for (std::size_t i = 0; i < graph.args().size(); ++i) {
    const Arg& arg = graph.args()[i];
    std::string node = fmt::format("arg{}", i);
    source[static_cast<std::size_t>(arg.value)] = node;
    const char* fill = arg.role == ArgRole::param ? "lightblue" : arg.role == ArgRole::state ? "lightgrey" : "white";
    out += fmt::format("  {} [shape=ellipse, style=filled, fillcolor={}, label={}];\n", node, fill,
                       dot_string(fmt::format("%{}\n{}", graph.value(arg.value).name, arg_role_name(arg.role))));
  }
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    std::string node = fmt::format("op{}", i);
    out += fmt::format("  {} [shape=box, label={}];\n", node,
                       dot_string(fmt::format("%{} = {}{}", i, op_name(op.kind), attr_lines(op.attrs))));
    for (std::size_t r = 0; r < op.results.size(); ++r) {
      source[static_cast<std::size_t>(op.results[r])] = node;
      if (op.results.size() > 1) suffix[static_cast<std::size_t>(op.results[r])] = fmt::format("#{} ", r);
    }
  }
  auto edge = [&](ValueId v, const std::string& to, const std::string& extra) {
    auto index = static_cast<std::size_t>(v);
    if (v < 0 || index >= source.size() || source[index].empty())  // an invalid graph: still draw it
      return fmt::format("  undefined -> {} [label={}];\n", to, dot_string("undefined value" + extra));
    return fmt::format("  {} -> {} [label={}];\n", source[index], to, dot_string(suffix[index] + graph.type(v).str() + extra));
  };
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    for (std::size_t j = 0; j < op.operands.size(); ++j)
      out += edge(op.operands[j], fmt::format("op{}", i), op.operands.size() > 1 ? fmt::format(" (#{})", j) : "");
  }
  for (std::size_t i = 0; i < graph.outputs().size(); ++i) {
    const Output& o = graph.outputs()[i];
    std::string node = fmt::format("out{}", i);
    std::string label = o.name.empty() ? fmt::format("output {}", i) : o.name;
    if (!o.updates.empty()) label += fmt::format("\nupdates %{}", o.updates);
    out += fmt::format("  {} [shape=note, style=filled, fillcolor=lightyellow, label={}];\n", node, dot_string(label));
    out += edge(o.value, node, "");
  }
  out += "}\n";
  return out;
}

}  // namespace moejit
