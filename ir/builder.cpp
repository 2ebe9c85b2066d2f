#include "ir/builder.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

using I64s = std::vector<std::int64_t>;

Tensor Builder::input(std::string name, Shape shape, DType dtype) {
  return {graph_, graph_->add_arg(std::move(name), TensorType{dtype, std::move(shape)}, ArgRole::input)};
}
Tensor Builder::param(std::string name, Shape shape, DType dtype) {
  return {graph_, graph_->add_arg(std::move(name), TensorType{dtype, std::move(shape)}, ArgRole::param)};
}
Tensor Builder::state(std::string name, Shape shape, DType dtype) {
  return {graph_, graph_->add_arg(std::move(name), TensorType{dtype, std::move(shape)}, ArgRole::state)};
}
void Builder::output(Tensor value, std::string name, std::string updates) {
  MOEJIT_ASSERT(value.graph == graph_, "output from another graph");
  graph_->add_output(value.id, std::move(name), std::move(updates));
}

std::vector<Tensor> Builder::op(OpKind kind, std::vector<Tensor> operands, AttrList attrs) {
  std::vector<TensorType> types;
  std::vector<ValueId> ids;
  for (const auto& t : operands) {
    MOEJIT_ASSERT(t.graph == graph_, fmt::format("{}: operand from another graph", op_name(kind)));
    types.push_back(t.type());
    ids.push_back(t.id);
  }
  std::string error;
  auto results = infer_op(kind, types, attrs, &error);
  if (!results) throw Error(fmt::format("\"{}\": {}", op_name(kind), error));
  std::vector<Tensor> out;
  for (auto id : graph_->add_op(kind, std::move(ids), std::move(attrs), std::move(*results))) out.push_back({graph_, id});
  return out;
}

Tensor Builder::op1(OpKind kind, std::vector<Tensor> operands, AttrList attrs) {
  auto results = op(kind, std::move(operands), std::move(attrs));
  MOEJIT_ASSERT(results.size() == 1);
  return results[0];
}

Tensor Builder::unary(OpKind kind, Tensor x) { return op1(kind, {x}); }
Tensor Builder::binary(OpKind kind, Tensor a, Tensor b) { return op1(kind, {a, b}); }
Tensor Builder::reduce(OpKind kind, Tensor x, I64s axes, bool keepdims) {
  return op1(kind, {x}, {{"axes", std::move(axes)}, {"keepdims", keepdims}});
}

Tensor Builder::neg(Tensor x) { return unary(OpKind::Neg, x); }
Tensor Builder::exp(Tensor x) { return unary(OpKind::Exp, x); }
Tensor Builder::log(Tensor x) { return unary(OpKind::Log, x); }
Tensor Builder::sqrt(Tensor x) { return unary(OpKind::Sqrt, x); }
Tensor Builder::rsqrt(Tensor x) { return unary(OpKind::Rsqrt, x); }
Tensor Builder::tanh(Tensor x) { return unary(OpKind::Tanh, x); }
Tensor Builder::relu(Tensor x) { return unary(OpKind::Relu, x); }
Tensor Builder::gelu(Tensor x) { return unary(OpKind::Gelu, x); }
Tensor Builder::silu(Tensor x) { return unary(OpKind::Silu, x); }
Tensor Builder::sigmoid(Tensor x) { return unary(OpKind::Sigmoid, x); }
Tensor Builder::softplus(Tensor x) { return unary(OpKind::Softplus, x); }
Tensor Builder::add(Tensor a, Tensor b) { return binary(OpKind::Add, a, b); }
Tensor Builder::sub(Tensor a, Tensor b) { return binary(OpKind::Sub, a, b); }
Tensor Builder::mul(Tensor a, Tensor b) { return binary(OpKind::Mul, a, b); }
Tensor Builder::div(Tensor a, Tensor b) { return binary(OpKind::Div, a, b); }
Tensor Builder::maximum(Tensor a, Tensor b) { return binary(OpKind::Maximum, a, b); }
Tensor Builder::minimum(Tensor a, Tensor b) { return binary(OpKind::Minimum, a, b); }

Tensor Builder::compare(Tensor a, Tensor b, std::string predicate) {
  return op1(OpKind::Compare, {a, b}, {{"predicate", std::move(predicate)}});
}
Tensor Builder::where(Tensor cond, Tensor a, Tensor b) { return op1(OpKind::Where, {cond, a, b}); }
Tensor Builder::cast(Tensor x, DType dtype) { return op1(OpKind::Cast, {x}, {{"dtype", dtype}}); }
Tensor Builder::constant(double value, Shape shape, DType dtype) {
  return op1(OpKind::Constant, {}, {{"dtype", dtype}, {"shape", std::move(shape)}, {"value", value}});
}
Tensor Builder::full_like(Tensor like, double value) { return constant(value, like.shape(), like.dtype()); }
Tensor Builder::scale(Tensor x, double s) { return mul(x, full_like(x, s)); }

Tensor Builder::sum(Tensor x, I64s axes, bool keepdims) { return reduce(OpKind::Sum, x, std::move(axes), keepdims); }
Tensor Builder::mean(Tensor x, I64s axes, bool keepdims) { return reduce(OpKind::Mean, x, std::move(axes), keepdims); }
Tensor Builder::max(Tensor x, I64s axes, bool keepdims) { return reduce(OpKind::Max, x, std::move(axes), keepdims); }
Tensor Builder::softmax(Tensor x) { return unary(OpKind::Softmax, x); }
Tensor Builder::log_softmax(Tensor x) { return unary(OpKind::LogSoftmax, x); }
Tensor Builder::layer_norm(Tensor x, Tensor gamma, Tensor beta, double eps) {
  return op1(OpKind::LayerNorm, {x, gamma, beta}, {{"eps", eps}});
}
Tensor Builder::rms_norm(Tensor x, Tensor gamma, double eps) { return op1(OpKind::RmsNorm, {x, gamma}, {{"eps", eps}}); }

Tensor Builder::matmul(Tensor a, Tensor b, bool transpose_a, bool transpose_b) {
  return op1(OpKind::Matmul, {a, b}, {{"transpose_a", transpose_a}, {"transpose_b", transpose_b}});
}
Tensor Builder::embedding(Tensor table, Tensor ids) { return op1(OpKind::Embedding, {table, ids}); }
Tensor Builder::reshape(Tensor x, Shape shape) { return op1(OpKind::Reshape, {x}, {{"shape", std::move(shape)}}); }
Tensor Builder::transpose(Tensor x, I64s perm) { return op1(OpKind::Transpose, {x}, {{"perm", std::move(perm)}}); }
Tensor Builder::broadcast(Tensor x, Shape shape) { return op1(OpKind::Broadcast, {x}, {{"shape", std::move(shape)}}); }
Tensor Builder::slice(Tensor x, I64s start, I64s limit) {
  return op1(OpKind::Slice, {x}, {{"start", std::move(start)}, {"limit", std::move(limit)}});
}
Tensor Builder::pad(Tensor x, I64s low, I64s high) {
  return op1(OpKind::Pad, {x}, {{"low", std::move(low)}, {"high", std::move(high)}});
}
Tensor Builder::concat(std::vector<Tensor> inputs, std::int64_t axis) {
  return op1(OpKind::Concat, std::move(inputs), {{"axis", axis}});
}

Tensor Builder::attention(Tensor q, Tensor k, Tensor v, double scale, HeadLayout layout) {
  AttrList attrs{{"scale", scale}};
  set_head_layout(attrs, layout);
  return op(OpKind::Attention, {q, k, v}, std::move(attrs))[0];  // result 1 (lse) feeds only the backward
}
Tensor Builder::cross_entropy(Tensor logits, Tensor targets) { return op1(OpKind::CrossEntropy, {logits, targets}); }
Tensor Builder::dropout(Tensor x, double p, std::int64_t seed, std::int64_t offset, Tensor* step_offset) {
  std::vector<Tensor> operands = {x};
  if (step_offset) operands.push_back(*step_offset);
  return op1(OpKind::Dropout, std::move(operands), {{"p", p}, {"seed", seed}, {"offset", offset}});
}
Tensor Builder::random_normal(Shape shape, std::int64_t seed, std::int64_t offset, DType dtype, Tensor* step_offset) {
  std::vector<Tensor> operands;
  if (step_offset) operands.push_back(*step_offset);
  return op1(OpKind::RandomNormal, std::move(operands),
             {{"dtype", dtype}, {"offset", offset}, {"seed", seed}, {"shape", std::move(shape)}});
}
std::array<Tensor, 3> Builder::adamw(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor lr, Tensor step,
                                     const AdamWOptions& o) {
  auto r = op(OpKind::AdamW, {param, grad, m, v, lr, step},
              {{"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps}, {"weight_decay", o.weight_decay}});
  return {r[0], r[1], r[2]};
}

std::array<Tensor, 2> Builder::moe_gate(Tensor logits, const GateOptions& o, Tensor* bias) {
  std::vector<Tensor> operands{logits};
  if (bias) operands.push_back(*bias);
  auto r = op(OpKind::Gate, std::move(operands),
              {{"top_k", o.top_k}, {"score", o.score}, {"order", o.order}, {"normalize", o.normalize}});
  return {r[0], r[1]};
}

std::array<Tensor, 4> Builder::moe_dispatch(Tensor experts, const DispatchOptions& o) {
  auto r = op(OpKind::Dispatch, {experts},
              {{"num_experts", o.num_experts}, {"capacity_factor", o.capacity_factor}, {"block", o.block}});
  return {r[0], r[1], r[2], r[3]};
}

Tensor Builder::moe_permute(Tensor x, Tensor slots, std::int64_t top_k) {
  return op1(OpKind::Permute, {x, slots}, {{"top_k", top_k}});
}
Tensor Builder::moe_grouped_matmul(Tensor xs, Tensor w, Tensor offsets, bool transpose_w) {
  return op1(OpKind::GroupedMatmul, {xs, w, offsets}, {{"transpose_w", transpose_w}});
}
Tensor Builder::moe_combine(Tensor ys, Tensor weights, Tensor positions) {
  return op1(OpKind::Combine, {ys, weights, positions});
}
Tensor Builder::moe_load_balance_loss(Tensor probs, Tensor experts, double coeff) {
  return op1(OpKind::LoadBalanceLoss, {probs, experts}, {{"coeff", coeff}});
}
Tensor Builder::moe_z_loss(Tensor logits, double coeff) { return op1(OpKind::ZLoss, {logits}, {{"coeff", coeff}}); }
Tensor Builder::moe_entropy_reg(Tensor probs, double coeff) { return op1(OpKind::EntropyReg, {probs}, {{"coeff", coeff}}); }

}  // namespace moejit
