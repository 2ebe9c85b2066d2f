// attention-layout: folds the head transposes around mj.attention and
// mj.attention_grad into the ops' "layout" attribute (ir/attention_layout.h).
//
// Why: nn::causal_self_attention and SwitchHead split a [B*T, H*Dh]
// projection into heads as reshape [B, T, H, Dh] + mj.transpose (0, 2, 1, 3)
// -> [B, H, T, Dh], run mj.attention, and transpose the output back;
// autodiff adds the same transposes around mj.attention_grad. Each one is a
// copy of a whole activation (config B: 48 a step, 2.9 ms of its 20 ms on an
// H200, docs/perf.md). With layout "bthd" the kernels read and write the
// [B, T, H, Dh] tensors in place (a row stride of H * Dh), so the copies go.
//
// What it does: an attention op in layout "bhtd" whose layout operands (q,
// k, v; for mj.attention_grad also out and dout) and results (out; dq, dk,
// dv) mostly sit behind such transposes is rewritten into layout "bthd":
//   transpose(x) as an operand                 -> x
//   cast(transpose(x)) as an operand           -> cast(x) (mixed precision
//                                                 casts RoPE's f32 q and k)
//   a result r read through transpose(r)       -> the new result itself
//   or through transpose(cast(r))             -> cast(the new result)
//   any other operand or use                   -> one new transpose (so the
//                                                 rewrite is always exact)
// An op is rewritten when the transposes it saves outnumber those it adds
// (counting per operand and per result, each result's uses as one); lse is
// [B, H, T] in both layouts, so a forward and its gradient may switch
// independently, and a gradient sees its forward's switched out as a
// transpose it saves. The transposes left without uses are erased.
//
// Where: on a graph after autodiff (both directions fold); the CUDA
// backend's pipeline runs it (passes/pipelines.cpp). The CPU backend runs no
// pipeline; both layouts mean the same values there.
//
// Algorithm: one walk in order over the ops, rebuilding the graph. Each old
// value has a new value (rep) and may have a view in the other head layout
// (flip): the operand of a head transpose is its result's flip and the other
// way round; a rewritten op's layout results have only a flip, and their
// original layout is made (one transpose, shared) on first use. Copies of
// the old transposes and casts that end up unread are erased.
//
// Statistics: attentions-relaid (ops switched to bthd), transposes-removed
// (head transposes before minus after).
#include <fmt/format.h>

#include <memory>

#include "ir/attention_layout.h"
#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

const std::vector<std::int64_t> kHeadPerm = {0, 2, 1, 3};

bool is_head_transpose(const Op& op) { return op.kind == OpKind::Transpose && op.attrs.get_ints("perm") == kHeadPerm; }

// The operands and results of an attention op that carry the head layout.
std::vector<int> layout_operands(OpKind kind) {
  return kind == OpKind::Attention ? std::vector<int>{0, 1, 2} : std::vector<int>{0, 1, 2, 3, 5};
}
std::vector<int> layout_results(OpKind kind) { return kind == OpKind::Attention ? std::vector<int>{0} : std::vector<int>{0, 1, 2}; }

int count_head_transposes(const Graph& graph) {
  int n = 0;
  for (const Op& op : graph.ops()) n += is_head_transpose(op) ? 1 : 0;
  return n;
}

class AttentionLayoutPass final : public Pass {
 public:
  std::string_view name() const override { return "attention-layout"; }

  void run(Graph& graph) override {
    const int before = count_head_transposes(graph);
    old_ = &graph;
    old_producers_ = graph.producers();
    // Which values only head transposes read, directly or through casts
    // (graph outputs count as other uses); from the last op, so a cast's
    // result is judged before its operand.
    only_transposed_.assign(idx(graph.num_values()), true);
    for (const Output& o : graph.outputs()) only_transposed_[idx(o.value)] = false;
    for (auto op = graph.ops().rbegin(); op != graph.ops().rend(); ++op) {
      if (is_head_transpose(*op)) continue;
      if (op->kind == OpKind::Cast && only_transposed_[idx(op->results[0])]) continue;
      for (ValueId v : op->operands) only_transposed_[idx(v)] = false;
    }

    Graph out(graph.name());
    now_ = &out;
    rep_.assign(idx(graph.num_values()), kNoValue);
    flip_.assign(rep_.size(), kNoValue);
    erasable_.clear();
    for (const Arg& arg : graph.args())
      rep_[idx(arg.value)] = out.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role);

    for (const Op& op : graph.ops()) {
      if (is_head_transpose(op)) {
        copy_head_transpose(op);
      } else if ((op.kind == OpKind::Attention || op.kind == OpKind::AttentionGrad) && head_layout(op.attrs) == HeadLayout::bhtd &&
                 pays_off(op)) {
        relayout(op);
      } else if (op.kind == OpKind::Cast && rep_[idx(op.operands[0])] == kNoValue) {
        // The operand so far exists only in the other layout (a rewritten
        // op's result): cast that, and keep the result lazy too.
        const ValueId from = flip_[idx(op.operands[0])];
        TensorType type = out.type(from);
        type.dtype = op.attrs.get_dtype("dtype");
        flip_[idx(op.results[0])] = out.add_op(OpKind::Cast, {from}, op.attrs, {type})[0];
        erasable_.push_back(flip_[idx(op.results[0])]);
      } else {
        std::vector<ValueId> operands;
        for (ValueId v : op.operands) operands.push_back(get(v));
        std::vector<TensorType> types;
        for (ValueId r : op.results) types.push_back(graph.type(r));
        std::vector<ValueId> results = out.add_op(op.kind, operands, op.attrs, types);
        for (std::size_t i = 0; i < results.size(); ++i) rep_[idx(op.results[i])] = results[i];
        if (op.kind == OpKind::Cast) erasable_.push_back(results[0]);
      }
    }
    for (const Output& o : graph.outputs()) out.add_output(get(o.value), o.name, o.updates);
    erase_unused_transposes(out);
    graph = std::move(out);
    count("transposes-removed", before - count_head_transposes(graph));
  }

 private:
  const Graph* old_ = nullptr;
  std::vector<int> old_producers_;
  Graph* now_ = nullptr;
  std::vector<bool> only_transposed_;  // old value -> every use is a head transpose (maybe behind casts)
  std::vector<ValueId> rep_;           // old value -> its new value (kNoValue: not made yet, see flip_)
  std::vector<ValueId> flip_;          // old value -> a new value holding it in the other head layout
  std::vector<ValueId> erasable_;      // copies of the old graph's head transposes and casts

  ValueId transpose(ValueId value) {
    TensorType type = now_->type(value);
    std::swap(type.shape[1], type.shape[2]);
    return now_->add_op(OpKind::Transpose, {value}, {{"perm", kHeadPerm}}, {type})[0];
  }
  // The old value in its own layout (made from its flip on first need).
  ValueId get(ValueId old) {
    if (rep_[idx(old)] == kNoValue) {
      MOEJIT_ASSERT(flip_[idx(old)] != kNoValue, "attention-layout: a value with no definition");
      rep_[idx(old)] = transpose(flip_[idx(old)]);
    }
    return rep_[idx(old)];
  }
  // The old cast op producing `old` from a value with a flipped view, or null.
  const Op* cast_of_flipped(ValueId old) const {
    const int p = old_producers_[idx(old)];
    if (p < 0) return nullptr;
    const Op& op = old_->ops()[static_cast<std::size_t>(p)];
    return op.kind == OpKind::Cast && flip_[idx(op.operands[0])] != kNoValue ? &op : nullptr;
  }
  // The old value in the other head layout (a cast commutes with the transpose).
  ValueId flipped(ValueId old) {
    if (flip_[idx(old)] != kNoValue) return flip_[idx(old)];
    if (const Op* cast = cast_of_flipped(old)) {
      const ValueId from = flip_[idx(cast->operands[0])];
      TensorType type = now_->type(from);
      type.dtype = cast->attrs.get_dtype("dtype");
      flip_[idx(old)] = now_->add_op(OpKind::Cast, {from}, cast->attrs, {type})[0];
    } else {
      flip_[idx(old)] = transpose(get(old));
    }
    return flip_[idx(old)];
  }

  void copy_head_transpose(const Op& op) {
    const ValueId x = op.operands[0], y = op.results[0];
    if (flip_[idx(x)] != kNoValue) {  // x already exists in the other layout: that is y
      rep_[idx(y)] = flip_[idx(x)];
      if (rep_[idx(x)] != kNoValue) flip_[idx(y)] = rep_[idx(x)];
      return;
    }
    rep_[idx(y)] = transpose(get(x));
    erasable_.push_back(rep_[idx(y)]);
    flip_[idx(y)] = get(x);
    flip_[idx(x)] = rep_[idx(y)];
  }

  bool pays_off(const Op& op) const {
    int saved = 0, added = 0;
    for (int i : layout_operands(op.kind)) {
      const ValueId v = op.operands[static_cast<std::size_t>(i)];
      (flip_[idx(v)] != kNoValue || cast_of_flipped(v) ? saved : added) += 1;
    }
    for (int i : layout_results(op.kind)) (only_transposed_[idx(op.results[static_cast<std::size_t>(i)])] ? saved : added) += 1;
    return saved > added;
  }

  void relayout(const Op& op) {
    std::vector<ValueId> operands(op.operands.size(), kNoValue);
    for (int i : layout_operands(op.kind)) operands[static_cast<std::size_t>(i)] = flipped(op.operands[static_cast<std::size_t>(i)]);
    for (std::size_t i = 0; i < operands.size(); ++i)
      if (operands[i] == kNoValue) operands[i] = get(op.operands[i]);  // lse
    AttrList attrs = op.attrs;
    set_head_layout(attrs, HeadLayout::bthd);
    std::vector<TensorType> types;
    for (ValueId v : operands) types.push_back(now_->type(v));
    std::string error;
    auto result_types = infer_op(op.kind, types, attrs, &error);
    MOEJIT_ASSERT(result_types.has_value(), fmt::format("attention-layout: \"{}\" in layout bthd: {}", op_name(op.kind), error));
    std::vector<ValueId> results = now_->add_op(op.kind, operands, attrs, *result_types);
    for (std::size_t i = 0; i < results.size(); ++i) rep_[idx(op.results[i])] = results[i];
    for (int i : layout_results(op.kind)) {
      const ValueId r = op.results[static_cast<std::size_t>(i)];
      flip_[idx(r)] = rep_[idx(r)];
      rep_[idx(r)] = kNoValue;  // made by get() if something reads it in bhtd
    }
    count("attentions-relaid");
  }

  // Erases the copies of the old graph's head transposes and casts that
  // nothing reads any more (from the last op, so a transpose that only fed
  // such a cast goes too).
  void erase_unused_transposes(Graph& graph) {
    std::vector<bool> copied(idx(graph.num_values()), false);
    for (ValueId v : erasable_) copied[idx(v)] = true;
    std::vector<int> uses = graph.use_counts();
    auto& ops = graph.mutable_ops();
    std::vector<bool> keep(ops.size(), true);
    for (std::size_t i = ops.size(); i-- > 0;) {
      const Op& op = ops[i];
      if ((op.kind == OpKind::Transpose || op.kind == OpKind::Cast) && copied[idx(op.results[0])] && uses[idx(op.results[0])] == 0) {
        keep[i] = false;
        --uses[idx(op.operands[0])];
      }
    }
    erase_ops_unless(graph, keep);
  }
};

}  // namespace

std::unique_ptr<Pass> create_attention_layout_pass(const PassOptions&) { return std::make_unique<AttentionLayoutPass>(); }

}  // namespace moejit
