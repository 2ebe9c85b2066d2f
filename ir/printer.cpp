#include "ir/printer.h"

#include <fmt/format.h>

#include <cctype>

namespace moejit {

namespace {

struct Names {
  std::vector<std::string> names;
  explicit Names(const Graph& graph) : names(static_cast<std::size_t>(graph.num_values())) {
    for (const auto& arg : graph.args()) names[static_cast<std::size_t>(arg.value)] = "%" + graph.value(arg.value).name;
    for (std::size_t i = 0; i < graph.ops().size(); ++i) {
      const auto& results = graph.ops()[i].results;
      for (std::size_t r = 0; r < results.size(); ++r)
        names[static_cast<std::size_t>(results[r])] = results.size() == 1 ? fmt::format("%{}", i) : fmt::format("%{}#{}", i, r);
    }
  }
  const std::string& operator()(ValueId v) const { return names.at(static_cast<std::size_t>(v)); }
};

std::string type_list(const Graph& graph, const std::vector<ValueId>& values, bool parens_if_one) {
  std::vector<std::string> types;
  for (auto v : values) types.push_back(graph.type(v).str());
  std::string joined = fmt::format("{}", fmt::join(types, ", "));
  return (types.size() == 1 && !parens_if_one) ? joined : "(" + joined + ")";
}

std::string escaped(const std::string& s) { return attr_value_str(AttrValue{s}); }

// A symbol name: bare when it is an identifier, else a string literal (@"a b").
std::string symbol(const std::string& s) {
  bool bare = !s.empty() && (std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_');
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '.')) bare = false;
  return "@" + (bare ? s : escaped(s));
}

}  // namespace

std::string value_ref(const Graph& graph, ValueId value) { return Names(graph)(value); }

std::string print_graph(const Graph& graph) {
  Names name(graph);
  std::string out = fmt::format("func.func {}(", symbol(graph.name()));
  for (std::size_t i = 0; i < graph.args().size(); ++i) {
    const auto& arg = graph.args()[i];
    if (i) out += ", ";
    out += fmt::format("{}: {}", name(arg.value), graph.type(arg.value).str());
    if (arg.role != ArgRole::input) out += fmt::format(" {{mj.role = \"{}\"}}", arg_role_name(arg.role));
  }
  out += ")";
  if (!graph.outputs().empty()) {
    out += " -> (";
    for (std::size_t i = 0; i < graph.outputs().size(); ++i) {
      const auto& o = graph.outputs()[i];
      if (i) out += ", ";
      out += graph.type(o.value).str();
      std::vector<std::string> attrs;
      if (!o.name.empty()) attrs.push_back("mj.name = " + escaped(o.name));
      if (!o.updates.empty()) attrs.push_back("mj.updates = " + escaped(o.updates));
      if (!attrs.empty()) out += fmt::format(" {{{}}}", fmt::join(attrs, ", "));
    }
    out += ")";
  }
  out += " {\n";
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    std::string results = op.results.size() == 1 ? fmt::format("%{}", i) : fmt::format("%{}:{}", i, op.results.size());
    std::vector<std::string> operands;
    for (auto v : op.operands) operands.push_back(name(v));
    out += fmt::format("  {} = \"{}\"({})", results, op_name(op.kind), fmt::join(operands, ", "));
    if (!op.attrs.empty()) {
      std::vector<std::string> attrs;
      for (const auto& a : op.attrs.items()) attrs.push_back(fmt::format("{} = {}", a.name, attr_value_str(a.value)));
      out += fmt::format(" {{{}}}", fmt::join(attrs, ", "));
    }
    out += fmt::format(" : {} -> {}\n", type_list(graph, op.operands, true), type_list(graph, op.results, false));
  }
  std::vector<ValueId> outs;
  for (const auto& o : graph.outputs()) outs.push_back(o.value);
  if (outs.empty()) {
    out += "  return\n";
  } else {
    std::vector<std::string> refs, types;
    for (auto v : outs) {
      refs.push_back(name(v));
      types.push_back(graph.type(v).str());
    }
    out += fmt::format("  return {} : {}\n", fmt::join(refs, ", "), fmt::join(types, ", "));
  }
  out += "}\n";
  return out;
}

}  // namespace moejit
