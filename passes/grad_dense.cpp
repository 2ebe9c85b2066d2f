// Gradient (vector-Jacobian) rules of the dense ops (mj.*), one per op marked
// Diff in ir/ops.def. Each rule builds the gradient of its operands from the
// gradient dy of its result, with ordinary ops of the Builder; ops whose
// gradient is expensive or subtle to compose (gelu, layer_norm, rms_norm,
// attention, cross_entropy, embedding) use one backward helper op each.
//
// Beware: Tensor::shape() refers into the graph, which every new op may
// reallocate; shapes are copied before building ops.
//
// Conventions: dy has the result's type; a rule returns one entry per
// operand, nullopt for operands with no gradient (integer ids, targets, the
// condition of where). Subgradients at kinks: relu'(0) = 0; maximum and
// minimum send a tie to `a`; max over an axis splits dy evenly between tied
// maxima.
#include <fmt/format.h>

#include <numeric>

#include "ir/error.h"
#include "passes/autodiff.h"

namespace moejit::grad {

namespace {

using I64s = std::vector<std::int64_t>;

// The gradient of result #i, zeros when nothing downstream needs it.
Tensor result_grad(GradContext& ctx, std::size_t i = 0) {
  if (ctx.result_grads[i]) return *ctx.result_grads[i];
  return ctx.b.full_like(ctx.results[i], 0.0);
}

Tensor zeros_like(Builder& b, Tensor t) { return b.full_like(t, 0.0); }

Tensor reshape_to(Builder& b, Tensor x, Shape shape) { return x.shape() == shape ? x : b.reshape(x, shape); }
Tensor broadcast_to(Builder& b, Tensor x, Shape shape) { return x.shape() == shape ? x : b.broadcast(x, shape); }

// Axes of a reduction, normalized to 0..rank-1.
std::vector<bool> reduced_axes(const Op& op, int rank) {
  std::vector<bool> reduced(static_cast<std::size_t>(rank), false);
  for (auto axis : op.attrs.get_ints("axes")) reduced[static_cast<std::size_t>(axis < 0 ? axis + rank : axis)] = true;
  return reduced;
}

// A reduction's result (or its gradient) stretched back to the input shape:
// reshape to the keepdims shape, then broadcast.
Tensor unreduce(Builder& b, const Op& op, Tensor reduced, Shape input_shape) {
  auto axes = reduced_axes(op, static_cast<int>(input_shape.size()));
  Shape kept = input_shape;
  for (std::size_t i = 0; i < kept.size(); ++i)
    if (axes[i]) kept[i] = 1;
  if (reduced.rank() == 0) return broadcast_to(b, reduced, input_shape);  // a scalar broadcasts as it is
  return broadcast_to(b, reshape_to(b, reduced, kept), input_shape);
}

// Sums `g` (shaped like the broadcast result) back to the shape `x_shape`
// it was broadcast from: leading axes, and axes where x has size 1.
Tensor unbroadcast(Builder& b, Tensor g, Shape x_shape) {
  const Shape out = g.shape();
  std::size_t lead = out.size() - x_shape.size();
  I64s axes;
  for (std::size_t i = 0; i < out.size(); ++i)
    if (i < lead || (x_shape[i - lead] == 1 && out[i] != 1)) axes.push_back(static_cast<std::int64_t>(i));
  if (!axes.empty()) g = b.sum(g, axes, false);
  return reshape_to(b, g, x_shape);
}

// Swaps the last two dims.
Tensor transpose_last2(Builder& b, Tensor x) {
  I64s perm(static_cast<std::size_t>(x.rank()));
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[perm.size() - 1], perm[perm.size() - 2]);
  return b.transpose(x, perm);
}

}  // namespace

// ---- elementwise, unary ----

GradResult rule_Neg(GradContext& ctx) { return {ctx.b.neg(result_grad(ctx))}; }

GradResult rule_Exp(GradContext& ctx) {  // d exp(x) = exp(x)
  return {ctx.b.mul(result_grad(ctx), ctx.results[0])};
}

GradResult rule_Log(GradContext& ctx) { return {ctx.b.div(result_grad(ctx), ctx.operands[0])}; }

GradResult rule_Sqrt(GradContext& ctx) {  // d sqrt(x) = 1 / (2 sqrt(x))
  auto& b = ctx.b;
  return {b.div(b.scale(result_grad(ctx), 0.5), ctx.results[0])};
}

GradResult rule_Rsqrt(GradContext& ctx) {  // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx), y = ctx.results[0];
  return {b.scale(b.mul(dy, b.mul(y, b.mul(y, y))), -0.5)};
}

GradResult rule_Tanh(GradContext& ctx) {  // 1 - y^2
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx), y = ctx.results[0];
  Tensor one = b.full_like(y, 1.0);
  return {b.mul(dy, b.sub(one, b.mul(y, y)))};
}

GradResult rule_Relu(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx), x = ctx.operands[0];
  Tensor zeros = zeros_like(b, x);
  return {b.where(b.compare(x, zeros, "gt"), dy, zeros)};
}

GradResult rule_Gelu(GradContext& ctx) { return {ctx.b.op1(OpKind::GeluGrad, {ctx.operands[0], result_grad(ctx)})}; }

GradResult rule_Silu(GradContext& ctx) {  // d x s(x) = s (1 + x (1 - s))
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx), x = ctx.operands[0];
  Tensor s = b.sigmoid(x);
  Tensor one = b.full_like(x, 1.0);
  return {b.mul(dy, b.mul(s, b.add(one, b.mul(x, b.sub(one, s)))))};
}

GradResult rule_Sigmoid(GradContext& ctx) {  // y (1 - y)
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx), y = ctx.results[0];
  return {b.mul(dy, b.mul(y, b.sub(b.full_like(y, 1.0), y)))};
}

GradResult rule_Softplus(GradContext& ctx) {  // d log(1 + e^x) = sigmoid(x)
  Tensor dy = result_grad(ctx);
  return {ctx.b.mul(dy, ctx.b.sigmoid(ctx.operands[0]))};
}

// ---- elementwise, binary ----

GradResult rule_Add(GradContext& ctx) {
  Tensor dy = result_grad(ctx);
  return {dy, dy};
}

GradResult rule_Sub(GradContext& ctx) {
  Tensor dy = result_grad(ctx);
  return {dy, ctx.b.neg(dy)};
}

GradResult rule_Mul(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx);
  return {b.mul(dy, ctx.operands[1]), b.mul(dy, ctx.operands[0])};
}

GradResult rule_Div(GradContext& ctx) {  // y = a / b: da = dy / b, db = -dy y / b
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx);
  Tensor da = b.div(dy, ctx.operands[1]);
  return {da, b.neg(b.mul(da, ctx.results[0]))};
}

namespace {
// maximum/minimum: `a` wins where compare(a, b, predicate) holds (ties to a).
GradResult select_grad(GradContext& ctx, const char* predicate) {
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx);
  Tensor zeros = zeros_like(b, dy);
  Tensor a_wins = b.compare(ctx.operands[0], ctx.operands[1], predicate);
  return {b.where(a_wins, dy, zeros), b.where(a_wins, zeros, dy)};
}
}  // namespace

GradResult rule_Maximum(GradContext& ctx) { return select_grad(ctx, "ge"); }
GradResult rule_Minimum(GradContext& ctx) { return select_grad(ctx, "le"); }

GradResult rule_Where(GradContext& ctx) {
  auto& b = ctx.b;
  Tensor dy = result_grad(ctx);
  Tensor zeros = zeros_like(b, dy);
  Tensor cond = ctx.operands[0];
  return {std::nullopt, b.where(cond, dy, zeros), b.where(cond, zeros, dy)};
}

GradResult rule_Cast(GradContext& ctx) {
  Tensor x = ctx.operands[0];
  if (!is_float(x.dtype())) return {std::nullopt};
  Tensor dy = result_grad(ctx);
  return {dy.dtype() == x.dtype() ? dy : ctx.b.cast(dy, x.dtype())};
}

// ---- reductions and normalizations ----

GradResult rule_Sum(GradContext& ctx) { return {unreduce(ctx.b, ctx.op, result_grad(ctx), ctx.operands[0].shape())}; }

GradResult rule_Mean(GradContext& ctx) {
  Tensor dy = result_grad(ctx), x = ctx.operands[0];
  double count = static_cast<double>(x.type().numel()) / static_cast<double>(ctx.results[0].type().numel());
  return {unreduce(ctx.b, ctx.op, ctx.b.scale(dy, 1.0 / count), x.shape())};
}

GradResult rule_Max(GradContext& ctx) {
  // dx = dy at the maxima of each reduced group, split evenly between ties.
  auto& b = ctx.b;
  Tensor dy = unreduce(b, ctx.op, result_grad(ctx), ctx.operands[0].shape());
  Tensor x = ctx.operands[0];
  Tensor at_max = b.compare(x, unreduce(b, ctx.op, ctx.results[0], x.shape()), "eq");
  Tensor ones = b.full_like(x, 1.0);
  Tensor mask = b.where(at_max, ones, zeros_like(b, x));
  Tensor ties = unreduce(b, ctx.op, b.sum(mask, ctx.op.attrs.get_ints("axes"), ctx.op.attrs.get_bool("keepdims")), x.shape());
  return {b.div(b.mul(dy, mask), ties)};
}

GradResult rule_Softmax(GradContext& ctx) {  // dx = y (dy - sum(y dy))
  auto& b = ctx.b;
  Tensor y = ctx.results[0];
  Tensor dy = result_grad(ctx);
  Tensor dot = broadcast_to(b, b.sum(b.mul(y, dy), {-1}, true), y.shape());
  return {b.mul(y, b.sub(dy, dot))};
}

GradResult rule_LogSoftmax(GradContext& ctx) {  // dx = dy - softmax(x) sum(dy)
  auto& b = ctx.b;
  Tensor y = ctx.results[0];
  Tensor dy = result_grad(ctx);
  Tensor total = broadcast_to(b, b.sum(dy, {-1}, true), y.shape());
  return {b.sub(dy, b.mul(b.exp(y), total))};
}

GradResult rule_LayerNorm(GradContext& ctx) {
  auto r = ctx.b.op(OpKind::LayerNormGrad, {ctx.operands[0], ctx.operands[1], result_grad(ctx)}, ctx.op.attrs);
  return {r[0], r[1], r[2]};
}

GradResult rule_RmsNorm(GradContext& ctx) {
  auto r = ctx.b.op(OpKind::RmsNormGrad, {ctx.operands[0], ctx.operands[1], result_grad(ctx)}, ctx.op.attrs);
  return {r[0], r[1]};
}

// ---- matmul, embedding, layout ----

GradResult rule_Matmul(GradContext& ctx) {
  // With A' = op(a) [..., M, K], B' = op(b) [..., K, N], y = A' B':
  //   dA' = dy B'^T,  dB' = A'^T dy,  and da, db undo the transposes.
  auto& b = ctx.b;
  Tensor a = ctx.operands[0], w = ctx.operands[1];
  bool ta = ctx.op.attrs.get_bool("transpose_a"), tb = ctx.op.attrs.get_bool("transpose_b");
  Tensor dy = result_grad(ctx);

  Tensor da = b.matmul(dy, w, false, !tb);  // [..., M, K]
  if (ta) da = transpose_last2(b, da);

  Tensor db;
  if (w.rank() == 2 && a.rank() > 2) {
    // b is shared by every batch of a: fold the batch into the rows.
    Tensor a_rows = ta ? transpose_last2(b, a) : a;  // [..., M, K]
    a_rows = b.reshape(a_rows, {-1, a_rows.dim(-1)});  // [B*M, K]
    Tensor dy_rows = b.reshape(dy, {-1, dy.dim(-1)});  // [B*M, N]
    db = tb ? b.matmul(dy_rows, a_rows, true, false)   // [N, K]
            : b.matmul(a_rows, dy_rows, true, false);  // [K, N]
  } else {
    db = tb ? b.matmul(dy, a, true, ta)    // dB'^T = dy^T A'
            : b.matmul(a, dy, !ta, false);  // A'^T dy
  }
  return {da, db};
}

GradResult rule_Embedding(GradContext& ctx) {
  Tensor table = ctx.operands[0];
  Tensor dtable = ctx.b.op1(OpKind::EmbeddingGrad, {ctx.operands[1], result_grad(ctx)}, {{"num_embeddings", table.dim(0)}});
  return {dtable, std::nullopt};
}

GradResult rule_Reshape(GradContext& ctx) { return {reshape_to(ctx.b, result_grad(ctx), ctx.operands[0].shape())}; }

GradResult rule_Transpose(GradContext& ctx) {
  const auto& perm = ctx.op.attrs.get_ints("perm");
  I64s inverse(perm.size());
  for (std::size_t i = 0; i < perm.size(); ++i) inverse[static_cast<std::size_t>(perm[i])] = static_cast<std::int64_t>(i);
  return {ctx.b.transpose(result_grad(ctx), inverse)};
}

GradResult rule_Broadcast(GradContext& ctx) { return {unbroadcast(ctx.b, result_grad(ctx), ctx.operands[0].shape())}; }

GradResult rule_Slice(GradContext& ctx) {  // pad dy back with zeros
  const Shape x_shape = ctx.operands[0].shape();
  const auto& start = ctx.op.attrs.get_ints("start");
  const auto& limit = ctx.op.attrs.get_ints("limit");
  I64s high(x_shape.size());
  for (std::size_t i = 0; i < x_shape.size(); ++i) high[i] = x_shape[i] - limit[i];
  return {ctx.b.pad(result_grad(ctx), start, high)};
}

GradResult rule_Pad(GradContext& ctx) {  // the interior of dy
  const Shape x_shape = ctx.operands[0].shape();
  const auto& low = ctx.op.attrs.get_ints("low");
  I64s limit(x_shape.size());
  for (std::size_t i = 0; i < x_shape.size(); ++i) limit[i] = low[i] + x_shape[i];
  return {ctx.b.slice(result_grad(ctx), low, limit)};
}

GradResult rule_Concat(GradContext& ctx) {  // one slice of dy per input
  Tensor dy = result_grad(ctx);
  std::int64_t axis = ctx.op.attrs.get_int("axis");
  if (axis < 0) axis += dy.rank();
  auto a = static_cast<std::size_t>(axis);
  GradResult grads;
  I64s start(static_cast<std::size_t>(dy.rank()), 0);
  I64s limit = dy.shape();
  const Shape dy_shape = dy.shape();
  for (const Tensor& input : ctx.operands) {
    const Shape input_shape = input.shape();
    limit[a] = start[a] + input_shape[a];
    grads.push_back(input_shape == dy_shape ? dy : ctx.b.slice(dy, start, limit));
    start[a] = limit[a];
  }
  return grads;
}

// ---- model-level ops ----

// The backward reads the forward's out and lse (FlashAttention-2's
// scheme: P = exp(scale q k - lse), delta = dout . out), so it never
// recomputes the row statistics. lse is a statistic for the backward, not a
// value to differentiate.
GradResult rule_Attention(GradContext& ctx) {
  if (ctx.result_grads[1])
    throw Error("autodiff: mj.attention: its result #1 (lse) is used by a differentiated value; the gradient through the "
                "log-sum-exp is not implemented (only mj.attention_grad may read it)");
  auto r = ctx.b.op(OpKind::AttentionGrad,
                    {ctx.operands[0], ctx.operands[1], ctx.operands[2], ctx.results[0], ctx.results[1], result_grad(ctx)}, ctx.op.attrs);
  return {r[0], r[1], r[2]};
}

// The packed form: one gradient dqkv [B, T, 3, H, Dh] for the one operand,
// written whole by mj.attention_qkv_grad (no pads, no sum of three parts).
GradResult rule_AttentionQkv(GradContext& ctx) {
  if (ctx.result_grads[1])
    throw Error("autodiff: mj.attention_qkv: its result #1 (lse) is used by a differentiated value; the gradient through the "
                "log-sum-exp is not implemented (only mj.attention_qkv_grad may read it)");
  return {ctx.b.op1(OpKind::AttentionQkvGrad, {ctx.operands[0], ctx.results[0], ctx.results[1], result_grad(ctx)}, ctx.op.attrs)};
}

GradResult rule_CrossEntropy(GradContext& ctx) {
  Tensor dlogits = ctx.b.op1(OpKind::CrossEntropyGrad, {ctx.operands[0], ctx.operands[1], result_grad(ctx)});
  return {dlogits, std::nullopt};
}

// dx = dropout(dy) with the same mask and scale: same seed, offset, p and the
// same step_offset operand; step_offset itself (an integer position) has no
// gradient.
GradResult rule_Dropout(GradContext& ctx) {
  std::vector<Tensor> operands = {result_grad(ctx)};
  if (ctx.operands.size() > 1) operands.push_back(ctx.operands[1]);
  Tensor dx = ctx.b.op1(OpKind::Dropout, std::move(operands), ctx.op.attrs);
  if (ctx.operands.size() > 1) return {dx, std::nullopt};
  return {dx};
}

}  // namespace moejit::grad
