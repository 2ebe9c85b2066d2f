// autodiff: reverse-mode differentiation of a scalar loss, appended to the
// same graph (pass name "autodiff", options loss= and wrt=).
//
// Why in the IR: the backward graph is then an ordinary graph that every
// later pass (cse, fusion, memory planning) and every backend sees, and a
// whole training step (forward, backward, optimizer) is one graph.
//
// Algorithm:
//   1. forward sweep: a float value is "varied" when it is a wrt argument or
//      a float result of an op with a varied operand (integer and i1 values
//      never carry gradients, so compare/dispatch results end a path);
//   2. backward sweep: a value is "useful" when it is the loss or a varied
//      operand of an active op; an op is active when one of its varied
//      results is useful. Only active ops are differentiated; an active op
//      marked NotDiff in ir/ops.def is an error ("not differentiable");
//   3. reverse walk over active ops: seed d(loss) = 1, call the op's
//      grad::rule_<Kind> (table built from ir/ops.def) with the gradients of
//      its results, and accumulate operand gradients; a value used several
//      times gets the sum (mj.add) of its contributions;
//   4. outputs "grad.<name>" per wrt argument. An argument with no path to
//      the loss gets a zero gradient (an mj.constant);
//   5. backward ops whose results nothing uses (a rule may compute the
//      gradient of an operand that needs none) are removed again.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <map>

#include "ir/error.h"
#include "ir/printer.h"
#include "passes/autodiff.h"
#include "passes/pass.h"
#include "passes/passes.h"

namespace moejit {

namespace {

using RuleFn = GradResult (*)(GradContext&);

// One entry per OpKind: its rule, or nullptr for NotDiff ops.
constexpr std::array<RuleFn, kNumOps> kRules = {
#define MOEJIT_RULE_Diff(kind) &grad::rule_##kind,
#define MOEJIT_RULE_NotDiff(kind) nullptr,
#define MOEJIT_OP(kind, name, operands, results, attrs, diff, infer) MOEJIT_RULE_##diff(kind)
#include "ir/ops.def"
#undef MOEJIT_OP
#undef MOEJIT_RULE_Diff
#undef MOEJIT_RULE_NotDiff
};

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

// Removes ops at index >= first whose results no op and no output uses,
// repeatedly (only backward ops: the forward graph is left as it was).
void remove_dead_backward_ops(Graph& graph, std::size_t first) {
  auto& ops = graph.mutable_ops();
  std::vector<int> uses = graph.use_counts();
  std::vector<bool> dead(ops.size(), false);
  for (std::size_t i = ops.size(); i-- > first;) {
    bool used = std::any_of(ops[i].results.begin(), ops[i].results.end(), [&](ValueId r) { return uses[idx(r)] > 0; });
    if (used) continue;
    dead[i] = true;
    for (auto operand : ops[i].operands) --uses[idx(operand)];
  }
  std::size_t out = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    if (dead[i]) continue;
    if (out != i) ops[out] = std::move(ops[i]);
    ++out;
  }
  ops.resize(out);
}

}  // namespace

std::vector<ValueId> append_backward(Graph& graph, const AutodiffOptions& options) {
  // ---- the loss and the arguments to differentiate ----
  const Output* loss_output = graph.find_output(options.loss);
  if (!loss_output) throw Error(fmt::format("autodiff: expected an output named '{}' (the loss), found none", options.loss));
  const ValueId loss = loss_output->value;
  const TensorType loss_type = graph.type(loss);
  if (loss_type.rank() != 0 || !is_float(loss_type.dtype))
    throw Error(fmt::format("autodiff: the loss '{}' must be a float scalar, found {}", options.loss, loss_type.str()));

  std::vector<std::string> wrt_names = options.wrt;
  if (wrt_names.empty())
    for (const auto& arg : graph.args())
      if (arg.role == ArgRole::param && is_float(graph.type(arg.value).dtype)) wrt_names.push_back(graph.value(arg.value).name);
  std::vector<ValueId> wrt;
  for (const auto& name : wrt_names) {
    ValueId v = graph.find_arg(name);
    if (v == kNoValue) throw Error(fmt::format("autodiff: wrt names '{}', which is not an argument of @{}", name, graph.name()));
    if (!is_float(graph.type(v).dtype))
      throw Error(fmt::format("autodiff: wrt argument '{}' must be a float tensor, found {}", name, graph.type(v).str()));
    if (graph.find_output("grad." + name))
      throw Error(fmt::format("autodiff: the graph already has an output 'grad.{}'", name));
    if (std::find(wrt.begin(), wrt.end(), v) != wrt.end())
      throw Error(fmt::format("autodiff: wrt: expected each argument once, found '{}' twice", name));
    wrt.push_back(v);
  }

  const std::size_t num_forward_ops = graph.ops().size();
  const std::size_t num_values = static_cast<std::size_t>(graph.num_values());

  // ---- 1. forward sweep: varied values ----
  std::vector<bool> varied(num_values, false);
  for (auto v : wrt) varied[idx(v)] = true;
  for (std::size_t i = 0; i < num_forward_ops; ++i) {
    const Op& op = graph.ops()[i];
    bool any = std::any_of(op.operands.begin(), op.operands.end(), [&](ValueId v) { return varied[idx(v)]; });
    if (!any) continue;
    for (auto r : op.results)
      if (is_float(graph.type(r).dtype)) varied[idx(r)] = true;
  }

  // ---- 2. backward sweep: useful values and active ops ----
  std::vector<bool> useful(num_values, false);
  useful[idx(loss)] = true;
  std::vector<bool> active(num_forward_ops, false);
  for (std::size_t i = num_forward_ops; i-- > 0;) {
    const Op& op = graph.ops()[i];
    bool on_path = std::any_of(op.results.begin(), op.results.end(), [&](ValueId r) { return varied[idx(r)] && useful[idx(r)]; });
    if (!on_path) continue;
    if (!kRules[static_cast<std::size_t>(op.kind)])
      throw Error(fmt::format("autodiff: op #{} \"{}\" (result {}) lies on the path from a wrt argument to the loss '{}' but is "
                              "not differentiable",
                              i, op_name(op.kind), value_ref(graph, op.results[0]), options.loss));
    active[i] = true;
    for (auto v : op.operands)
      if (varied[idx(v)]) useful[idx(v)] = true;
  }

  // ---- 3. reverse walk ----
  Builder b(graph);
  std::map<ValueId, Tensor> grads;
  auto accumulate = [&](ValueId v, Tensor g) {
    auto it = grads.find(v);
    if (it == grads.end())
      grads.emplace(v, g);
    else
      it->second = b.add(it->second, g);
  };
  if (varied[idx(loss)]) grads.emplace(loss, b.constant(1.0, {}, loss_type.dtype));

  for (std::size_t i = num_forward_ops; i-- > 0;) {
    if (!active[i]) continue;
    const Op op = graph.ops()[i];  // a copy: the builder appends to the op list
    GradContext ctx{b, op, {}, {}, {}};
    bool any_grad = false;
    for (auto v : op.operands) ctx.operands.push_back(Tensor{&graph, v});
    for (auto r : op.results) {
      ctx.results.push_back(Tensor{&graph, r});
      auto it = grads.find(r);
      if (it != grads.end()) {
        ctx.result_grads.emplace_back(it->second);
        any_grad = true;
      } else {
        ctx.result_grads.emplace_back(std::nullopt);
      }
    }
    if (!any_grad) continue;
    GradResult operand_grads = kRules[static_cast<std::size_t>(op.kind)](ctx);
    MOEJIT_ASSERT(operand_grads.size() == op.operands.size(),
                  fmt::format("gradient rule of {} returned {} gradients for {} operands", op_name(op.kind), operand_grads.size(),
                              op.operands.size()));
    for (std::size_t k = 0; k < op.operands.size(); ++k) {
      ValueId v = op.operands[k];
      if (!varied[idx(v)] || !operand_grads[k]) continue;
      const Tensor& g = *operand_grads[k];
      MOEJIT_ASSERT(g.type() == graph.type(v), fmt::format("gradient rule of {}: operand #{} has type {} but its gradient {}",
                                                          op_name(op.kind), k, graph.type(v).str(), g.type().str()));
      accumulate(v, g);
    }
  }

  // ---- 4. outputs ----
  std::vector<ValueId> result;
  for (std::size_t k = 0; k < wrt.size(); ++k) {
    auto it = grads.find(wrt[k]);
    Tensor g = it != grads.end() ? it->second : b.full_like(Tensor{&graph, wrt[k]}, 0.0);
    graph.add_output(g.id, "grad." + wrt_names[k]);
    result.push_back(g.id);
  }

  // ---- 5. tidy ----
  remove_dead_backward_ops(graph, num_forward_ops);
  return result;
}

// ---- the pass ----

namespace {

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> names;
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string name = list.substr(start, end - start);
    if (!name.empty()) names.push_back(name);
    start = end + 1;
  }
  return names;
}

class AutodiffPass final : public Pass {
 public:
  explicit AutodiffPass(AutodiffOptions options) : options_(std::move(options)) {}
  std::string_view name() const override { return "autodiff"; }
  void run(Graph& graph) override {
    reset_statistics();
    std::size_t before = graph.ops().size();
    auto grads = append_backward(graph, options_);
    count("gradients", static_cast<std::int64_t>(grads.size()));
    count("backward-ops", static_cast<std::int64_t>(graph.ops().size() - before));
  }

 private:
  AutodiffOptions options_;
};

}  // namespace

// options: loss=<output name> (default "loss"), wrt=<comma list of argument
// names> (default: every float param).
std::unique_ptr<Pass> create_autodiff_pass(const PassOptions& options) {
  AutodiffOptions o;
  for (const auto& [key, value] : options) {
    if (key == "loss")
      o.loss = value;
    else if (key == "wrt") {
      o.wrt = split_commas(value);
      if (o.wrt.empty())
        throw Error(fmt::format("pass 'autodiff': wrt: expected a comma list of argument names, found '{}'", value));
    }
    else
      throw Error(fmt::format("pass 'autodiff': unknown option '{}' (expected loss= or wrt=)", key));
  }
  return std::make_unique<AutodiffPass>(std::move(o));
}

}  // namespace moejit
