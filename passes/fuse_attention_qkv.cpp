// fuse-attention-qkv: an attention whose q, k and v are the three column
// thirds of one projection becomes mj.attention_qkv on that projection,
// read in place (ir/attention_layout.h: AttentionGeometry).
//
// Why: nn::causal_self_attention splits the qkv projection [B*T, 3D] into
// q, k, v with three mj.slice copies (and autodiff turns them into three
// mj.pad of dq, dk, dv into zeros, summed into d_qkv: two more passes over
// d_qkv and a memset for each pad). config B spent 0.89 ms of a 10.8 ms
// step on them (docs/perf.md). mj.attention_qkv reads q, k, v as strided
// views of the packed [B, T, 3, H, Dh] tensor (rows 3D apart), and its
// gradient mj.attention_qkv_grad writes dq, dk, dv into one d_qkv
// directly: no copy on either side.
//
// What it matches (x any [N, 3D] value, N = B*T, D = H*Dh):
//   s_i = mj.slice(x) columns [i*D, (i+1)*D) for i = 0, 1, 2 (q, k, v)
//   r_i = mj.reshape(s_i) [B, T, H, Dh]
//   mj.attention(transpose(r_0), transpose(r_1), transpose(r_2))   (bhtd, perm 0 2 1 3)
//   or mj.attention(r_0, r_1, r_2) {layout = "bthd"}
// and whose lse has no use (a forward graph: autodiff has not yet read it).
// It becomes
//   out', lse = mj.attention_qkv(mj.reshape(x) [B, T, 3, H, Dh])
// with out' [B, T, H, Dh]: a bthd attention's out is out' itself; a bhtd
// one's out is read through its head transposes, which become out' (any
// other reader gets one transpose of out'). The slices, reshapes and
// transposes left without readers are erased.
//
// Where: on a forward graph before autodiff (the trainer's forward pipeline
// runs it first, so the backward is built from mj.attention_qkv's gradient
// rule) and before mixed-precision (which then casts the one packed operand;
// mj.attention_qkv is an autocast op like mj.attention). An attention with
// RoPE (q and k rotated between the slice and the attention), with q, k, v
// from different tensors or slices in another order, or one whose lse is
// already read by its gradient is left as it is.
//
// Statistics: attentions-packed.
#include <fmt/format.h>

#include <memory>
#include <optional>

#include "ir/attention_layout.h"
#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

const std::vector<std::int64_t> kHeadPerm = {0, 2, 1, 3};

bool is_head_transpose(const Op& op) { return op.kind == OpKind::Transpose && op.attrs.get_ints("perm") == kHeadPerm; }

// A matched attention: the projection x it reads and the ops of its three
// operand chains (erased once unread).
struct Match {
  ValueId x = kNoValue;
  Shape packed;  // [B, T, 3, H, Dh]
  std::vector<int> chain_ops;
};

class FuseAttentionQkvPass final : public Pass {
 public:
  std::string_view name() const override { return "fuse-attention-qkv"; }

  void run(Graph& graph) override {
    producers_ = graph.producers();
    uses_ = graph.use_counts();

    std::vector<std::optional<Match>> matches(graph.ops().size());
    bool any = false;
    for (std::size_t i = 0; i < graph.ops().size(); ++i) {
      const Op& op = graph.ops()[i];
      if (op.kind != OpKind::Attention) continue;
      matches[i] = match(graph, op);
      any = any || matches[i].has_value();
    }
    if (!any) return;

    Graph out(graph.name());
    rep_.assign(idx(graph.num_values()), kNoValue);
    packed_out_.assign(rep_.size(), kNoValue);
    std::vector<bool> erasable(rep_.size(), false);  // new values: copies of chain ops
    std::vector<bool> in_chain(graph.ops().size(), false);
    for (const auto& m : matches)
      if (m)
        for (int c : m->chain_ops) in_chain[static_cast<std::size_t>(c)] = true;

    for (const Arg& arg : graph.args()) rep_[idx(arg.value)] = out.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role);
    for (std::size_t i = 0; i < graph.ops().size(); ++i) {
      const Op& op = graph.ops()[i];
      if (matches[i]) {
        const Match& m = *matches[i];
        const TensorType& x = out.type(rep_[idx(m.x)]);
        const ValueId packed = out.add_op(OpKind::Reshape, {rep_[idx(m.x)]}, {{"shape", m.packed}}, {TensorType{x.dtype, m.packed}})[0];
        AttrList attrs{{"scale", op.attrs.get_float("scale")}};
        std::string error;
        const TensorType packed_type = out.type(packed);
        auto types = infer_op(OpKind::AttentionQkv, {&packed_type, 1}, attrs, &error);
        MOEJIT_ASSERT(types.has_value(), fmt::format("fuse-attention-qkv: {}", error));
        std::vector<ValueId> r = out.add_op(OpKind::AttentionQkv, {packed}, attrs, *types);
        rep_[idx(op.results[1])] = r[1];
        if (head_layout(op.attrs) == HeadLayout::bthd) rep_[idx(op.results[0])] = r[0];
        else packed_out_[idx(op.results[0])] = r[0];  // [B, H, T, Dh] made on first need
        count("attentions-packed");
        continue;
      }
      if (is_head_transpose(op) && packed_out_[idx(op.operands[0])] != kNoValue) {
        rep_[idx(op.results[0])] = packed_out_[idx(op.operands[0])];  // transpose(out) is out'
        continue;
      }
      std::vector<ValueId> operands;
      for (ValueId v : op.operands) operands.push_back(get(out, v));
      std::vector<TensorType> types;
      for (ValueId r : op.results) types.push_back(graph.type(r));
      std::vector<ValueId> results = out.add_op(op.kind, operands, op.attrs, types);
      for (std::size_t r = 0; r < results.size(); ++r) {
        rep_[idx(op.results[r])] = results[r];
        if (in_chain[i]) {
          if (erasable.size() <= idx(results[r])) erasable.resize(idx(results[r]) + 1, false);
          erasable[idx(results[r])] = true;
        }
      }
    }
    for (const Output& o : graph.outputs()) out.add_output(get(out, o.value), o.name, o.updates);
    erase_unread(out, erasable);
    graph = std::move(out);
  }

 private:
  std::vector<int> producers_;
  std::vector<int> uses_;          // old value -> readers (graph outputs included)
  std::vector<ValueId> rep_;         // old value -> new value
  std::vector<ValueId> packed_out_;  // old bhtd out -> the new [B, T, H, Dh] out'

  // The old value in the new graph (a bhtd out as one transpose of out').
  ValueId get(Graph& out, ValueId old) {
    if (rep_[idx(old)] == kNoValue) {
      MOEJIT_ASSERT(packed_out_[idx(old)] != kNoValue, "fuse-attention-qkv: a value with no definition");
      const ValueId from = packed_out_[idx(old)];
      TensorType type = out.type(from);
      std::swap(type.shape[1], type.shape[2]);
      rep_[idx(old)] = out.add_op(OpKind::Transpose, {from}, {{"perm", kHeadPerm}}, {type})[0];
    }
    return rep_[idx(old)];
  }

  const Op* producer(const Graph& graph, ValueId v) const {
    const int p = producers_[idx(v)];
    return p < 0 ? nullptr : &graph.ops()[static_cast<std::size_t>(p)];
  }

  std::optional<Match> match(const Graph& graph, const Op& attention) const {
    if (uses_[idx(attention.results[1])] != 0) return std::nullopt;  // lse read: its gradient exists already
    const bool bhtd = head_layout(attention.attrs) == HeadLayout::bhtd;
    Match m;
    for (int part = 0; part < 3; ++part) {
      ValueId v = attention.operands[static_cast<std::size_t>(part)];
      if (bhtd) {
        const Op* t = producer(graph, v);
        if (!t || !is_head_transpose(*t)) return std::nullopt;
        m.chain_ops.push_back(producers_[idx(v)]);
        v = t->operands[0];
      }
      const Op* reshape = producer(graph, v);
      if (!reshape || reshape->kind != OpKind::Reshape) return std::nullopt;
      m.chain_ops.push_back(producers_[idx(v)]);
      const Shape& heads = graph.type(v).shape;  // [B, T, H, Dh]
      const ValueId s = reshape->operands[0];
      const Op* slice = producer(graph, s);
      if (!slice || slice->kind != OpKind::Slice) return std::nullopt;
      m.chain_ops.push_back(producers_[idx(s)]);
      const ValueId x = slice->operands[0];
      const TensorType& xt = graph.type(x);
      if (part == 0) m.x = x;
      else if (x != m.x) return std::nullopt;
      if (xt.rank() != 2 || heads.size() != 4) return std::nullopt;
      const std::int64_t rows = xt.dim(0), width = heads[2] * heads[3];
      if (xt.dim(1) != 3 * width || heads[0] * heads[1] != rows) return std::nullopt;
      const std::vector<std::int64_t> start{0, part * width}, limit{rows, (part + 1) * width};
      if (slice->attrs.get_ints("start") != start || slice->attrs.get_ints("limit") != limit) return std::nullopt;
      if (part == 0) m.packed = {heads[0], heads[1], 3, heads[2], heads[3]};
      else if (m.packed != Shape{heads[0], heads[1], 3, heads[2], heads[3]}) return std::nullopt;
    }
    return m;
  }

  // Erases the copied chain ops nothing reads any more (from the last op,
  // so a reshape that only fed an erased transpose goes too).
  static void erase_unread(Graph& graph, std::vector<bool> erasable) {
    erasable.resize(idx(graph.num_values()), false);
    std::vector<int> uses = graph.use_counts();
    auto& ops = graph.mutable_ops();
    std::vector<bool> keep(ops.size(), true);
    for (std::size_t i = ops.size(); i-- > 0;) {
      const Op& op = ops[i];
      if (op.results.size() == 1 && erasable[idx(op.results[0])] && uses[idx(op.results[0])] == 0) {
        keep[i] = false;
        for (ValueId v : op.operands) --uses[idx(v)];
      }
    }
    erase_ops_unless(graph, keep);
  }
};

}  // namespace

std::unique_ptr<Pass> create_fuse_attention_qkv_pass(const PassOptions&) { return std::make_unique<FuseAttentionQkvPass>(); }

}  // namespace moejit
