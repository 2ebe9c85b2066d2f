// Gradient (vector-Jacobian) rules of the MoE ops (moe.*), one per op marked
// Diff in ir/ops.def. docs/moe.md states each rule; here they are wired from
// the MoE backward helper ops (gate_grad, permute_grad, grouped_matmul_wgrad,
// combine_grad, *_loss_grad) and a few dense ops.
//
// What is not differentiable: the choice of experts (moe.gate's selection and
// its bias, which only shifts the selection; moe.dispatch is NotDiff and its
// integer results end every path) and the load-balance loss w.r.t. the
// routing counts f_e. Index operands (slots, offsets, positions, experts) get
// nullopt.
//
// The fused ops (moe.route, moe.gather_matmul, moe.matmul_combine) expand to
// the same backward ops as their unfused pieces, so a fused graph and an
// unfused one have the same gradients, and the fused backward does no more
// work than the unfused one: moe.matmul_combine's backward reads the expert
// outputs ys from the op's second result (the unfused graph stores them the
// same way) instead of recomputing a grouped matmul; moe.gather_matmul's
// backward gathers its rows once for the weight gradient, the gather (one
// read of x, one write of xs) that the unfused forward did and the fused
// forward skipped.
#include <fmt/format.h>

#include "ir/error.h"
#include "ir/printer.h"
#include "passes/autodiff.h"

namespace moejit::grad {

namespace {

// The gradient of result #i, zeros when nothing downstream needs it.
Tensor result_grad(GradContext& ctx, std::size_t i = 0) {
  if (ctx.result_grads[i]) return *ctx.result_grads[i];
  return ctx.b.full_like(ctx.results[i], 0.0);
}

Tensor grouped_matmul(Builder& b, Tensor xs, Tensor w, Tensor offsets, bool transpose_w) {
  return b.op1(OpKind::GroupedMatmul, {xs, w, offsets}, {{"transpose_w", transpose_w}});
}
Tensor wgrad(Builder& b, Tensor xs, Tensor dys, Tensor offsets) {
  return b.op1(OpKind::GroupedMatmulWgrad, {xs, dys, offsets});
}
Tensor permute_grad(Builder& b, Tensor dxs, Tensor positions) { return b.op1(OpKind::PermuteGrad, {dxs, positions}); }

AttrList gate_grad_attrs(const AttrList& attrs) {
  return {{"normalize", attrs.get_bool("normalize")}, {"order", attrs.get_string("order")}, {"score", attrs.get_string("score")}};
}

// moe.permute's backward gathers through `positions`, the inverse of `slots`:
// the result of the moe.dispatch (or moe.route) that made the slots.
Tensor positions_of(GradContext& ctx, Tensor slots) {
  const Graph& graph = ctx.b.graph();
  for (const Op& op : graph.ops()) {
    if (op.kind == OpKind::Dispatch && op.results[0] == slots.id) return Tensor{slots.graph, op.results[2]};
    if (op.kind == OpKind::ExpertChoice && op.results[0] == slots.id) return Tensor{slots.graph, op.results[2]};
    if (op.kind == OpKind::Route && op.results[3] == slots.id) return Tensor{slots.graph, op.results[5]};
  }
  throw Error(fmt::format("autodiff: the gradient of \"moe.permute\" w.r.t. x gathers through the positions made with its slots, "
                          "so slots must be a result of \"moe.dispatch\", \"moe.expert_choice\" or \"moe.route\"; found {} ({})",
                          value_ref(graph, slots.id), graph.arg_of(slots.id) ? "an argument" : "another op's result"));
}

}  // namespace

// moe.gate: dlogits = gate_grad(logits, experts, dweights); the bias gets none.
GradResult rule_Gate(GradContext& ctx) {
  Tensor dlogits = ctx.b.op1(OpKind::GateGrad, {ctx.operands[0], ctx.results[1], result_grad(ctx, 0)}, gate_grad_attrs(ctx.op.attrs));
  GradResult grads(ctx.operands.size());
  grads[0] = dlogits;
  return grads;
}

// moe.permute: dx[t] = sum_k dxs[positions[t, k]].
GradResult rule_Permute(GradContext& ctx) {
  Tensor positions = positions_of(ctx, ctx.operands[1]);
  return {permute_grad(ctx.b, result_grad(ctx), positions), std::nullopt};
}

// moe.grouped_matmul: y = xs · w[e] per segment.
//   dxs = dy · w[e]^T (a grouped matmul with transpose_w flipped),
//   dw[e] = xs^T dy over segment e (or dy^T xs when w is stored [E, F, D]).
GradResult rule_GroupedMatmul(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor xs = ctx.operands[0], w = ctx.operands[1], offsets = ctx.operands[2];
  bool transpose_w = ctx.op.attrs.get_bool("transpose_w");
  Tensor dy = result_grad(ctx);
  Tensor dxs = grouped_matmul(b, dy, w, offsets, !transpose_w);
  Tensor dw = transpose_w ? wgrad(b, dy, xs, offsets) : wgrad(b, xs, dy, offsets);
  return {dxs, dw, std::nullopt};
}

// moe.combine: (dys, dweights) = combine_grad(ys, weights, positions, dout).
GradResult rule_Combine(GradContext& ctx) {
  auto r = ctx.b.op(OpKind::CombineGrad, {ctx.operands[0], ctx.operands[1], ctx.operands[2], result_grad(ctx)});
  return {r[0], r[1], std::nullopt};
}

// moe.load_balance_loss: w.r.t. probs only (the routed shares f_e are counts).
GradResult rule_LoadBalanceLoss(GradContext& ctx) {
  Tensor dprobs = ctx.b.op1(OpKind::LoadBalanceLossGrad, {ctx.operands[0], ctx.operands[1], result_grad(ctx)},
                            {{"coeff", ctx.op.attrs.get_float("coeff")}});
  return {dprobs, std::nullopt};
}

GradResult rule_ZLoss(GradContext& ctx) {
  return {ctx.b.op1(OpKind::ZLossGrad, {ctx.operands[0], result_grad(ctx)}, {{"coeff", ctx.op.attrs.get_float("coeff")}})};
}

GradResult rule_EntropyReg(GradContext& ctx) {
  return {ctx.b.op1(OpKind::EntropyRegGrad, {ctx.operands[0], result_grad(ctx)}, {{"coeff", ctx.op.attrs.get_float("coeff")}})};
}

// moe.route = logits = x · w_router; gate; dispatch; xs = permute(x, slots).
//   dlogits_total = dlogits + gate_grad(logits, experts, dweights)
//   dx = dlogits_total · w_router^T + permute_grad(dxs, positions)
//   dw_router = x^T · dlogits_total
GradResult rule_Route(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor x = ctx.operands[0], w_router = ctx.operands[1];
  const auto& r = ctx.results;  // logits, weights, experts, slots, offsets, positions, counts, xs
  std::optional<Tensor> dlogits = ctx.result_grads[0];
  if (ctx.result_grads[1]) {
    Tensor from_weights = b.op1(OpKind::GateGrad, {r[0], r[2], *ctx.result_grads[1]}, gate_grad_attrs(ctx.op.attrs));
    dlogits = dlogits ? b.add(*dlogits, from_weights) : from_weights;
  }
  std::optional<Tensor> dx, dw_router;
  if (dlogits) {
    dx = b.matmul(*dlogits, w_router, false, true);   // [T, E] · [D, E]^T -> [T, D]
    dw_router = b.matmul(x, *dlogits, true, false);   // [T, D]^T · [T, E] -> [D, E]
  }
  if (ctx.result_grads[7]) {
    Tensor from_rows = permute_grad(b, *ctx.result_grads[7], r[5]);
    dx = dx ? b.add(*dx, from_rows) : from_rows;
  }
  GradResult grads(ctx.operands.size());
  grads[0] = dx;
  grads[1] = dw_router;
  return grads;
}

// moe.gather_matmul = grouped_matmul(permute(x, slots), w, offsets):
//   dx = permute_grad(grouped_matmul(dy, w, offsets, transpose_w), positions)
//   dw = grouped_matmul_wgrad(permute(x, slots), dy, offsets)
GradResult rule_GatherMatmul(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor x = ctx.operands[0], w = ctx.operands[1], slots = ctx.operands[2], offsets = ctx.operands[3], positions = ctx.operands[4];
  Tensor dy = result_grad(ctx);
  Tensor dx = permute_grad(b, grouped_matmul(b, dy, w, offsets, true), positions);
  Tensor xs = b.moe_permute(x, slots, ctx.op.attrs.get_int("top_k"));
  Tensor dw = wgrad(b, xs, dy, offsets);
  return {dx, dw, std::nullopt, std::nullopt, std::nullopt};
}

// moe.matmul_combine: out = combine(ys, weights, positions), ys = grouped_matmul(hs, w, offsets)
// (its second result, saved by the forward):
//   (dys, dweights) = combine_grad(ys, weights, positions, dout)  (+ the gradient of ys, when used)
//   dhs = grouped_matmul(dys, w, offsets, transpose_w), dw = grouped_matmul_wgrad(hs, dys, offsets)
GradResult rule_MatmulCombine(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor hs = ctx.operands[0], w = ctx.operands[1], offsets = ctx.operands[2], weights = ctx.operands[3], positions = ctx.operands[4];
  Tensor ys = ctx.results[1];
  auto r = b.op(OpKind::CombineGrad, {ys, weights, positions, result_grad(ctx, 0)});
  if (ctx.result_grads[1]) r[0] = b.add(r[0], *ctx.result_grads[1]);
  Tensor dhs = grouped_matmul(b, r[0], w, offsets, true);
  Tensor dw = wgrad(b, hs, r[0], offsets);
  return {dhs, dw, std::nullopt, r[1], std::nullopt};
}

}  // namespace moejit::grad
