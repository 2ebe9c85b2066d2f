// The builder API: one function per op, with the op's shape contract above
// it. Each function checks its operands against the op table's shape rule and
// throws moejit::Error naming the op, the operand, what was expected and what
// was found. Semantics of every op: docs/ir.md.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "ir/attention_layout.h"
#include "ir/graph.h"

namespace moejit {

// A handle to one value of the graph being built. The accessors return
// copies: adding an op may move the graph's value table.
struct Tensor {
  Graph* graph = nullptr;
  ValueId id = kNoValue;

  TensorType type() const { return graph->type(id); }
  Shape shape() const { return type().shape; }
  DType dtype() const { return type().dtype; }
  int rank() const { return type().rank(); }
  std::int64_t dim(int axis) const { return type().dim(axis); }
};

struct GateOptions {
  std::int64_t top_k = 2;
  std::string score = "softmax";            // "softmax" | "sigmoid"
  std::string order = "softmax_then_topk";  // | "topk_then_softmax" (Mixtral)
  bool normalize = false;                   // renormalize the k weights to sum to 1
};

struct DispatchOptions {
  std::int64_t num_experts = 0;
  double capacity_factor = 0.0;  // 0: dropless
  std::int64_t block = 1;        // pad each expert segment to a multiple of this
};

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class Builder {
 public:
  explicit Builder(Graph& graph) : graph_(&graph) {}
  Graph& graph() { return *graph_; }

  // ---- arguments and outputs ----
  Tensor input(std::string name, Shape shape, DType dtype = DType::f32);
  Tensor param(std::string name, Shape shape, DType dtype = DType::f32);
  Tensor state(std::string name, Shape shape, DType dtype = DType::f32);
  void output(Tensor value, std::string name, std::string updates = {});

  // Generic: any op of the table. Infers result types or throws.
  std::vector<Tensor> op(OpKind kind, std::vector<Tensor> operands, AttrList attrs = {});
  Tensor op1(OpKind kind, std::vector<Tensor> operands, AttrList attrs = {});

  // ---- elementwise ----
  // Unary float ops: x [...] f32|f64|bf16|f16 -> same type.
  // gelu is the tanh approximation; softplus(x) = log(1 + exp(x)).
  Tensor neg(Tensor x), exp(Tensor x), log(Tensor x), sqrt(Tensor x), rsqrt(Tensor x), tanh(Tensor x),
      relu(Tensor x), gelu(Tensor x), silu(Tensor x), sigmoid(Tensor x), softplus(Tensor x);
  // Binary: a, b [...] same shape and dtype -> same type (no implicit broadcast:
  // use broadcast()).
  Tensor add(Tensor a, Tensor b), sub(Tensor a, Tensor b), mul(Tensor a, Tensor b), div(Tensor a, Tensor b),
      maximum(Tensor a, Tensor b), minimum(Tensor a, Tensor b);
  // compare: a, b [...] same type -> [...] i1; predicate lt le gt ge eq ne.
  Tensor compare(Tensor a, Tensor b, std::string predicate);
  // where: cond [...] i1, a, b [...] same type -> a where cond else b.
  Tensor where(Tensor cond, Tensor a, Tensor b);
  // cast: x [...] -> [...] dtype (round to nearest even; float->int truncates).
  Tensor cast(Tensor x, DType dtype);
  // constant: -> [shape] dtype, every element `value`.
  Tensor constant(double value, Shape shape, DType dtype = DType::f32);
  // A constant shaped like `like`.
  Tensor full_like(Tensor like, double value);
  // x * s, with s a scalar constant.
  Tensor scale(Tensor x, double s);

  // ---- reductions ----
  // sum/mean/max: x [...] over `axes` (negative counts from the end) ->
  // the axes removed, or kept as size 1 with keepdims.
  Tensor sum(Tensor x, std::vector<std::int64_t> axes, bool keepdims = false);
  Tensor mean(Tensor x, std::vector<std::int64_t> axes, bool keepdims = false);
  Tensor max(Tensor x, std::vector<std::int64_t> axes, bool keepdims = false);
  // softmax/log_softmax: x [..., C] over the last axis -> [..., C].
  Tensor softmax(Tensor x), log_softmax(Tensor x);
  // layer_norm: x [..., C], gamma [C], beta [C] -> [..., C] over the last axis.
  Tensor layer_norm(Tensor x, Tensor gamma, Tensor beta, double eps = 1e-5);
  // rms_norm: x [..., C], gamma [C] -> x / sqrt(mean(x^2) + eps) * gamma.
  Tensor rms_norm(Tensor x, Tensor gamma, double eps = 1e-5);

  // ---- matmul, embedding, layout ----
  // matmul: a [..., M, K], b [..., K, N] -> [..., M, N]; batch dims equal, or
  // b of rank 2 shared by every batch of a. transpose_a/b swap the last two
  // dims of that operand first.
  Tensor matmul(Tensor a, Tensor b, bool transpose_a = false, bool transpose_b = false);
  // embedding: table [V, D], ids [...] i32 in 0..V-1 -> [..., D].
  Tensor embedding(Tensor table, Tensor ids);
  // reshape: same element count; shape may hold one -1, inferred.
  Tensor reshape(Tensor x, Shape shape);
  // transpose: result dim i is x dim perm[i].
  Tensor transpose(Tensor x, std::vector<std::int64_t> perm);
  // broadcast: numpy rule (align at the end, size-1 dims stretch) to `shape`.
  Tensor broadcast(Tensor x, Shape shape);
  // slice: per dim, elements start[i] .. limit[i]-1.
  Tensor slice(Tensor x, std::vector<std::int64_t> start, std::vector<std::int64_t> limit);
  // pad: per dim, low[i] zeros before and high[i] zeros after.
  Tensor pad(Tensor x, std::vector<std::int64_t> low, std::vector<std::int64_t> high);
  // concat: same shape except along axis.
  Tensor concat(std::vector<Tensor> inputs, std::int64_t axis);

  // ---- model-level ops ----
  // attention: q, k, v [B, H, T, Dh] -> [B, H, T, Dh], causal:
  //   out[t] = softmax_{s<=t}(q[t]·k[s] * scale) · v[s]. scale 0 means 1/sqrt(Dh).
  // Layout bthd: q, k, v and out are [B, T, H, Dh] (ir/attention_layout.h).
  // Returns out; the op's second result, lse [B, H, T] (the row log-sum-exp,
  // f32), is what its gradient reads.
  Tensor attention(Tensor q, Tensor k, Tensor v, double scale = 0.0, HeadLayout layout = HeadLayout::bhtd);
  // cross_entropy: logits [N, V] float, targets [N] i32 -> [], the mean over
  // rows of -log_softmax(logits)[n, targets[n]].
  Tensor cross_entropy(Tensor logits, Tensor targets);
  // dropout: x [...] float, step_offset? [] i64 -> x's type. Zeros each element
  //   with probability p and scales the rest by 1/(1-p); element i's mask bit
  //   is Philox-4x32-10 at position base + i with key seed, on every backend,
  //   where base = offset + step_offset (unsigned 64-bit, wrapping; just
  //   `offset` without the operand). The operand is read at run time, so one
  //   compiled graph draws a fresh mask per step when it is fed a new value;
  //   it has no gradient.
  Tensor dropout(Tensor x, double p, std::int64_t seed, std::int64_t offset = 0, Tensor* step_offset = nullptr);
  // random_normal: step_offset? [] i64 -> [shape] dtype, standard normal,
  //   element i = Philox(seed, base + i), base = offset + step_offset as for
  //   dropout (ir/philox.h has the exact mapping).
  Tensor random_normal(Shape shape, std::int64_t seed, std::int64_t offset = 0, DType dtype = DType::f32,
                       Tensor* step_offset = nullptr);
  // adamw: param, grad, m, v [...] f32, lr [] f32, step [] f32 (1-based) ->
  //   (new param, new m, new v) with decoupled weight decay and bias correction.
  std::array<Tensor, 3> adamw(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor lr, Tensor step,
                              const AdamWOptions& options = {});

  // ---- MoE ----
  // moe.gate: logits [T, E] float, bias? [E] -> weights [T, K] (logits' dtype), experts [T, K] i32.
  //   softmax_then_topk: s = softmax(logits) or sigmoid(logits) over all E, the
  //   top_k of s + bias, weights = s of the chosen; topk_then_softmax: the top_k
  //   of logits + bias, weights = softmax over the k chosen logits (or their
  //   sigmoid). normalize divides the k weights by their sum. The bias shifts
  //   selection only; ties to the lower index; experts[t] in descending
  //   selection-key order. Exact rules: docs/moe.md.
  std::array<Tensor, 2> moe_gate(Tensor logits, const GateOptions& options, Tensor* bias = nullptr);
  // moe.dispatch: experts [T, K] i32 -> slots [N] i32, offsets [E+1] i32,
  //   positions [T, K] i32, counts [E] i32. Slot s = t*K + k; slots sorted by
  //   expert, stable; with capacity_factor > 0 each expert keeps its first
  //   C = ceil(cf*T*K/E) slots in slot order; each segment is padded with -1
  //   rows to a multiple of block, rows offsets[E]..N-1 are -1 too;
  //   positions[t,k] is the row of slot t*K+k, or -1 if dropped; counts[e] =
  //   routed slots before dropping. N: ir/moe_shapes.h.
  std::array<Tensor, 4> moe_dispatch(Tensor experts, const DispatchOptions& options);
  // moe.permute: x [T, D], slots [N] i32 -> xs [N, D]; xs[i] = x[slots[i] / K],
  //   zero where slots[i] = -1.
  Tensor moe_permute(Tensor x, Tensor slots, std::int64_t top_k);
  // moe.grouped_matmul: xs [N, D], w [E, D, F] (or [E, F, D] with transpose_w),
  //   offsets [E+1] i32 -> [N, F]; rows offsets[e]..offsets[e+1]-1 use w[e];
  //   rows outside every segment are zero.
  Tensor moe_grouped_matmul(Tensor xs, Tensor w, Tensor offsets, bool transpose_w = false);
  // moe.combine: ys [N, D], weights [T, K] f32, positions [T, K] i32 -> [T, D];
  //   out[t] = sum_k weights[t,k] * ys[positions[t,k]], dropped slots add nothing.
  Tensor moe_combine(Tensor ys, Tensor weights, Tensor positions);
  // moe.load_balance_loss: probs [T, E], experts [T, K] -> [] f32,
  //   coeff * E * sum_e f_e * P_e; f_e = share of the T*K slots routed to e,
  //   P_e = mean over tokens of probs[:, e].
  Tensor moe_load_balance_loss(Tensor probs, Tensor experts, double coeff = 1.0);
  // moe.z_loss: logits [T, E] -> [] f32, coeff * mean_t logsumexp(logits[t])^2.
  Tensor moe_z_loss(Tensor logits, double coeff = 1.0);
  // moe.entropy_reg: probs [T, E] -> [] f32, coeff * sum_e p_e log p_e with
  //   p = mean over tokens of probs (the negative entropy of the mean selection).
  Tensor moe_entropy_reg(Tensor probs, double coeff = 1.0);

 private:
  Tensor unary(OpKind kind, Tensor x);
  Tensor binary(OpKind kind, Tensor a, Tensor b);
  Tensor reduce(OpKind kind, Tensor x, std::vector<std::int64_t> axes, bool keepdims);
  Graph* graph_;
};

}  // namespace moejit
