// mixed-precision{dtype=bf16}: bf16 automatic mixed precision, in the spirit
// of PyTorch AMP (torch.autocast), as a rewrite of an f32 graph.
//
// What runs in bf16 (operands cast to bf16, results bf16; the kernels
// accumulate in f32 and round each result once, to nearest even):
//   - the matmuls: mj.matmul, moe.grouped_matmul, moe.gather_matmul,
//     moe.matmul_combine, and mj.attention / mj.attention_qkv (the softmax
//     runs in f32 inside the kernel);
//   - ops that only move or gate values between them, when every float
//     operand already is bf16: reshape, transpose, slice, broadcast, concat,
//     gelu, silu, relu, mul (so an expert's gelu or a SwiGLU product stays
//     bf16 from one matmul to the next, and q, k, v stay bf16 from the qkv
//     projection to the attention).
// What stays f32: every other op (layer norm and its statistics, softmax,
// residual adds, losses, embeddings, the optimizer), and the router: a
// matmul whose result feeds moe.gate, and moe.route, keep f32 logits and
// gate. Arguments (master weights, AdamW moments) stay f32; a weight is
// cast to bf16 once per graph where a bf16 op reads it. Graph outputs keep
// their types (a bf16 value that is an output is cast back to f32).
//
// Where: on a forward graph, before autodiff (and after the MoE fusions,
// which match mj.matmul/moe.permute chains this pass would interleave with
// casts). The gradient of mj.cast casts back, so every weight gradient is
// f32, the backward matmuls run in bf16 like the forward ones, and the
// gradients of f32 ops (losses, layer norm, the router) are f32.
//
// Algorithm: one walk in order over the ops, rebuilding the graph. Each old
// value has one new value (its dtype may now be bf16); f32 and bf16 views of
// it are made by mj.cast on first need and shared by every later use. Only
// f32 values are lowered: an op with an operand of another float dtype
// (f64, f16, a bf16 the user chose) is left as it is.
//
// Statistics: ops-in-bf16, casts-to-bf16, casts-to-f32.
#include <fmt/format.h>

#include <memory>

#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

bool is_autocast_op(OpKind kind) {
  switch (kind) {
    case OpKind::Matmul:
    case OpKind::GroupedMatmul:
    case OpKind::GatherMatmul:
    case OpKind::MatmulCombine:
    case OpKind::Attention:
    case OpKind::AttentionQkv: return true;
    default: return false;
  }
}

// Ops that compute in the precision of their operands: bf16 in, bf16 out.
bool follows_operands(OpKind kind) {
  switch (kind) {
    case OpKind::Reshape:
    case OpKind::Transpose:
    case OpKind::Slice:
    case OpKind::Broadcast:
    case OpKind::Concat:
    case OpKind::Gelu:
    case OpKind::Silu:
    case OpKind::Relu:
    case OpKind::Mul: return true;
    default: return false;
  }
}

class MixedPrecisionPass final : public Pass {
 public:
  explicit MixedPrecisionPass(DType low) : low_(low) {}
  std::string_view name() const override { return "mixed-precision"; }

  void run(Graph& graph) override {
    Graph out(graph.name());
    now_ = &out;
    old_ = &graph;
    rep_.assign(static_cast<std::size_t>(graph.num_values()), kNoValue);
    low_view_.assign(rep_.size(), kNoValue);
    high_view_.assign(rep_.size(), kNoValue);
    for (const Arg& arg : graph.args())
      rep_[idx(arg.value)] = out.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role);

    // Which results feed a router gate (kept f32: router logits and gate in f32).
    // The selection may reach the gate (or moe.expert_choice) through ops
    // that only reshape, mask or score the logits (SwitchHead's per-head
    // reshape, expert dropout's where, expert choice's softmax/sigmoid);
    // the matmul behind them is a router too.
    std::vector<bool> feeds_gate(rep_.size(), false);
    const auto producers = graph.producers();
    for (const Op& op : graph.ops()) {
      if (op.kind != OpKind::Gate && op.kind != OpKind::ExpertChoice) continue;
      ValueId v = op.operands[0];
      while (true) {
        feeds_gate[idx(v)] = true;
        const int p = producers[idx(v)];
        if (p < 0) break;
        const Op& from = graph.ops()[static_cast<std::size_t>(p)];
        if (from.kind == OpKind::Reshape || from.kind == OpKind::Softmax || from.kind == OpKind::Sigmoid) v = from.operands[0];
        else if (from.kind == OpKind::Where) v = from.operands[1];
        else break;
      }
    }

    for (const Op& op : graph.ops()) {
      bool lowerable = all_float_operands_are(op, DType::f32);
      bool low = false;
      if (is_autocast_op(op.kind) && lowerable) {
        low = !(op.kind == OpKind::Matmul && feeds_gate[idx(op.results[0])]);
      } else if (follows_operands(op.kind) && lowerable) {
        low = any_float_operand(op) && all_float_operands_low(op);
      }
      std::vector<ValueId> operands;
      for (ValueId v : op.operands) operands.push_back(low && graph.type(v).dtype == DType::f32 ? low_view(v) : original_view(v));
      std::vector<TensorType> types;
      for (ValueId v : operands) types.push_back(out.type(v));
      std::string error;
      auto results = infer_op(op.kind, types, op.attrs, &error);
      MOEJIT_ASSERT(results.has_value(), fmt::format("mixed-precision: \"{}\" rejected its new operand types: {}", op_name(op.kind), error));
      std::vector<ValueId> new_results = out.add_op(op.kind, operands, op.attrs, *results);
      for (std::size_t r = 0; r < op.results.size(); ++r) rep_[idx(op.results[r])] = new_results[r];
      if (low) count("ops-in-bf16");
    }
    for (const Output& o : graph.outputs()) out.add_output(original_view(o.value), o.name, o.updates);
    graph = std::move(out);
  }

 private:
  DType low_;
  Graph* now_ = nullptr;
  const Graph* old_ = nullptr;
  std::vector<ValueId> rep_;        // old value -> its new value (maybe bf16)
  std::vector<ValueId> low_view_;   // old value -> a bf16 view, once made
  std::vector<ValueId> high_view_;  // old value -> a view of its original dtype, once made

  bool is_low(ValueId old) const { return now_->type(rep_[idx(old)]).dtype == low_ && old_->type(old).dtype != low_; }

  bool any_float_operand(const Op& op) const {
    for (ValueId v : op.operands)
      if (is_float(old_->type(v).dtype)) return true;
    return false;
  }
  bool all_float_operands_are(const Op& op, DType dtype) const {
    for (ValueId v : op.operands)
      if (is_float(old_->type(v).dtype) && old_->type(v).dtype != dtype) return false;
    return true;
  }
  bool all_float_operands_low(const Op& op) const {
    for (ValueId v : op.operands)
      if (is_float(old_->type(v).dtype) && !is_low(v)) return false;
    return true;
  }

  ValueId cast(ValueId value, DType dtype) {
    TensorType type = now_->type(value);
    type.dtype = dtype;
    count(dtype == low_ ? "casts-to-bf16" : "casts-to-f32");
    return now_->add_op(OpKind::Cast, {value}, {{"dtype", dtype}}, {type})[0];
  }
  ValueId low_view(ValueId old) {
    if (is_low(old)) return rep_[idx(old)];
    if (low_view_[idx(old)] == kNoValue) low_view_[idx(old)] = cast(rep_[idx(old)], low_);
    return low_view_[idx(old)];
  }
  ValueId original_view(ValueId old) {
    if (!is_low(old)) return rep_[idx(old)];
    if (high_view_[idx(old)] == kNoValue) high_view_[idx(old)] = cast(rep_[idx(old)], old_->type(old).dtype);
    return high_view_[idx(old)];
  }
};

}  // namespace

std::unique_ptr<Pass> create_mixed_precision_pass(const PassOptions& options) {
  auto it = options.find("dtype");
  std::string dtype = it == options.end() ? "bf16" : it->second;
  if (dtype != "bf16")
    throw Error(fmt::format("pass 'mixed-precision': option 'dtype': expected bf16 (the low precision type), found '{}'", dtype));
  return std::make_unique<MixedPrecisionPass>(DType::bf16);
}

}  // namespace moejit
