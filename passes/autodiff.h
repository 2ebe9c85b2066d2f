// autodiff: appends the backward graph of a scalar loss to the graph, built
// from one vector-Jacobian rule per op (passes/grad_*.cpp), and adds one
// output "grad.<name>" per differentiated argument.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "ir/builder.h"

namespace moejit {

struct AutodiffOptions {
  std::string loss = "loss";       // name of the scalar output to differentiate
  std::vector<std::string> wrt;    // argument names; empty = every param
};

// Returns, per name in wrt, the value of its gradient (also added as outputs
// "grad.<name>", in wrt order). The backward ops are appended after the
// forward ops; only ops on a path from a wrt argument to the loss are
// differentiated, and a value used several times gets the sum (mj.add) of
// its gradients. An argument with no path to the loss gets a zero gradient
// (an mj.constant). Throws moejit::Error when the loss is not a scalar float
// output, a name is not a float argument, or an op on such a path is NotDiff
// (the message names the op: "not differentiable").
std::vector<ValueId> append_backward(Graph& graph, const AutodiffOptions& options);

// What a gradient rule sees: the forward op, Tensors for its operands and
// results, and the incoming gradient of each result (nullopt when nothing
// downstream needs it; a rule treats it as zero). The rule returns one entry
// per operand: its gradient, or nullopt when the operand is not
// differentiable (integer ids) or gets none.
struct GradContext {
  Builder& b;
  const Op& op;
  std::vector<Tensor> operands;
  std::vector<Tensor> results;
  std::vector<std::optional<Tensor>> result_grads;
};
using GradResult = std::vector<std::optional<Tensor>>;

namespace grad {
// Declares grad::rule_<Kind> for every op marked Diff in ir/ops.def; a
// missing rule is a link error.
#define MOEJIT_GRAD_Diff(kind) GradResult rule_##kind(GradContext& ctx);
#define MOEJIT_GRAD_NotDiff(kind)
#define MOEJIT_OP(kind, name, operands, results, attrs, diff, infer) MOEJIT_GRAD_##diff(kind)
#include "ir/ops.def"
#undef MOEJIT_OP
#undef MOEJIT_GRAD_Diff
#undef MOEJIT_GRAD_NotDiff
}  // namespace grad

}  // namespace moejit
