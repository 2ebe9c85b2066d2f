// Gradient rules of the communication ops (comm.*), one per op marked Diff in
// ir/ops.def. Each is the collective that moves the gradient back the way the
// values came:
//   all_reduce (sum) -> all_reduce of dy: every rank's x feeds every rank's y.
//   all_gather       -> reduce_scatter of dy: rank r's rows of every rank's
//                       dy are summed into rank r's dx (comm.reduce_scatter,
//                       a backward helper, rather than all_reduce + a slice at
//                       the rank, so the graph needs no rank and moves 1/N of
//                       the bytes of an all_reduce's output).
//   all_to_all       -> the reverse all_to_all: dy's rows go back to the ranks
//                       they came from, so the counts sent are the ones
//                       received (result #1), into x's rows (recv_rows = x's
//                       rows); send_counts get no gradient.
#include "passes/autodiff.h"

namespace moejit::grad {

namespace {

Tensor result_grad(GradContext& ctx) {
  if (ctx.result_grads[0]) return *ctx.result_grads[0];
  return ctx.b.full_like(ctx.results[0], 0.0);
}

AttrList same_world(const GradContext& ctx) { return {{"world_size", ctx.op.attrs.get_int("world_size")}}; }

}  // namespace

GradResult rule_AllReduce(GradContext& ctx) { return {ctx.b.op1(OpKind::AllReduce, {result_grad(ctx)}, same_world(ctx))}; }

GradResult rule_AllGather(GradContext& ctx) {
  return {ctx.b.op1(OpKind::ReduceScatter, {result_grad(ctx)}, same_world(ctx))};
}

GradResult rule_AllToAll(GradContext& ctx) {
  Tensor dy = result_grad(ctx);
  Tensor recv_counts = ctx.results[1];
  AttrList attrs = same_world(ctx);
  if (dy.dim(0) != ctx.operands[0].dim(0)) attrs.set("recv_rows", ctx.operands[0].dim(0));
  std::vector<Tensor> back = ctx.b.op(OpKind::AllToAll, {dy, recv_counts}, attrs);
  return {back[0], std::nullopt};
}

}  // namespace moejit::grad
