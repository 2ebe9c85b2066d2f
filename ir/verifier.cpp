#include "ir/verifier.h"

#include <fmt/format.h>

#include <set>

#include "ir/error.h"

namespace moejit {

std::string describe_op(const Graph& graph, int op_index) {
  const Op& op = graph.ops().at(static_cast<std::size_t>(op_index));
  std::string results = op.results.size() == 1 ? fmt::format("%{}", op_index) : fmt::format("%{}:{}", op_index, op.results.size());
  return fmt::format("{} = \"{}\"", results, op_name(op.kind));
}

std::vector<Diagnostic> verify(const Graph& graph) {
  std::vector<Diagnostic> diags;
  std::vector<bool> defined(static_cast<std::size_t>(graph.num_values()), false);
  auto valid = [&](ValueId v) { return v >= 0 && v < graph.num_values(); };
  std::set<std::string> names;
  for (const auto& arg : graph.args()) {
    defined[static_cast<std::size_t>(arg.value)] = true;
    if (!names.insert(graph.value(arg.value).name).second)
      diags.push_back({-1, fmt::format("argument '{}' is declared twice", graph.value(arg.value).name)});
  }
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    int index = static_cast<int>(i);
    auto where = describe_op(graph, index);
    bool operands_ok = true;
    std::vector<TensorType> types;
    for (std::size_t j = 0; j < op.operands.size(); ++j) {
      ValueId v = op.operands[j];
      if (!valid(v) || !defined[static_cast<std::size_t>(v)]) {
        diags.push_back({index, fmt::format("{}: operand #{} is used before it is defined", where, j)});
        operands_ok = false;
      } else {
        types.push_back(graph.type(v));
      }
    }
    if (operands_ok) {
      std::string error;
      auto inferred = infer_op(op.kind, types, op.attrs, &error);
      if (!inferred) {
        diags.push_back({index, fmt::format("{}: {}", where, error)});
      } else if (inferred->size() != op.results.size()) {
        diags.push_back({index, fmt::format("{}: expected {} results, found {}", where, inferred->size(), op.results.size())});
      } else {
        for (std::size_t r = 0; r < op.results.size(); ++r)
          if ((*inferred)[r] != graph.type(op.results[r]))
            diags.push_back({index, fmt::format("{}: result #{}: expected type {}, found {}", where, r, (*inferred)[r].str(),
                                                graph.type(op.results[r]).str())});
      }
    }
    for (auto r : op.results) {
      if (!valid(r) || defined[static_cast<std::size_t>(r)])
        diags.push_back({index, fmt::format("{}: a result is defined twice", where)});
      else
        defined[static_cast<std::size_t>(r)] = true;
    }
  }
  std::set<std::string> output_names;
  for (const auto& out : graph.outputs()) {
    if (!valid(out.value) || !defined[static_cast<std::size_t>(out.value)])
      diags.push_back({-1, fmt::format("output '{}' is not defined", out.name)});
    if (!out.name.empty() && !output_names.insert(out.name).second)
      diags.push_back({-1, fmt::format("output name '{}' is used twice", out.name)});
    if (!out.updates.empty()) {
      ValueId target = graph.find_arg(out.updates);
      if (target == kNoValue)
        diags.push_back({-1, fmt::format("output '{}' updates '{}', which is not an argument", out.name, out.updates)});
      else if (valid(out.value) && graph.type(target) != graph.type(out.value))
        diags.push_back({-1, fmt::format("output '{}' updates '{}': expected type {}, found {}", out.name, out.updates,
                                         graph.type(target).str(), graph.type(out.value).str())});
    }
  }
  return diags;
}

void verify_or_throw(const Graph& graph) {
  auto diags = verify(graph);
  if (diags.empty()) return;
  std::string msg = fmt::format("graph @{} is invalid:", graph.name());
  for (const auto& d : diags) msg += "\n  " + d.message;
  throw Error(msg);
}

}  // namespace moejit
