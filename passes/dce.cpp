// dce: dead code elimination. Erases every op none of whose results reaches a
// graph output.
//
// Why: autodiff, canonicalize and the fusion passes leave ops behind whose
// values nothing needs any more; every later pass, the memory planner and
// each backend would otherwise pay for them.
//
// Algorithm: moejit ops have no side effects (an optimizer update takes
// effect only through an output marked `updates`), so liveness is plain
// reachability. One reverse sweep over the ops, which are in topological
// order: the outputs' values are live; an op with a live result is live and
// makes its operands live. Ops that stay dead are erased, keeping the order of
// the rest. Arguments and outputs are never touched, used or not.
//
// Statistics: ops-erased.
#include <memory>

#include "passes/passes.h"

namespace moejit {

int erase_ops_not_reaching_outputs(Graph& graph) {
  auto& ops = graph.mutable_ops();
  std::vector<bool> live_value(static_cast<std::size_t>(graph.num_values()), false);
  for (const auto& out : graph.outputs()) live_value[static_cast<std::size_t>(out.value)] = true;
  std::vector<bool> live_op(ops.size(), false);
  for (std::size_t i = ops.size(); i-- > 0;) {
    for (auto r : ops[i].results) live_op[i] = live_op[i] || live_value[static_cast<std::size_t>(r)];
    if (live_op[i])
      for (auto v : ops[i].operands) live_value[static_cast<std::size_t>(v)] = true;
  }
  return erase_ops_unless(graph, live_op);
}

int erase_ops_unless(Graph& graph, const std::vector<bool>& keep) {
  auto& ops = graph.mutable_ops();
  std::size_t kept = 0;
  for (std::size_t i = 0; i < ops.size(); ++i)
    if (keep[i]) {
      if (kept != i) ops[kept] = std::move(ops[i]);
      ++kept;
    }
  const int erased = static_cast<int>(ops.size() - kept);
  ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(kept), ops.end());
  return erased;
}

namespace {

class DcePass final : public Pass {
 public:
  std::string_view name() const override { return "dce"; }
  void run(Graph& graph) override { count("ops-erased", erase_ops_not_reaching_outputs(graph)); }
};

}  // namespace

std::unique_ptr<Pass> create_dce_pass(const PassOptions&) { return std::make_unique<DcePass>(); }

}  // namespace moejit
