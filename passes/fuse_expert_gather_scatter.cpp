// fuse-expert-gather-scatter: folds the row gather into the first expert
// matmul and the weighted scatter into the last one.
//
//   xs = moe.permute(x, slots)                        -> y = moe.gather_matmul(
//   y  = moe.grouped_matmul(xs, w, offsets)                  x, w, slots, offsets, positions)
//
//   ys  = moe.grouped_matmul(hs, w, offsets)          -> out, ys' = moe.matmul_combine(
//   out = moe.combine(ys, weights, positions)                hs, w, offsets, weights, positions)
//
// (ys' is the same expert outputs: the backward reads them for the gate
// weights' gradient instead of recomputing a grouped matmul; a forward-only
// graph leaves it unused.)
//
// Why: the permuted copy xs [N, D] and the expert outputs ys [N, D] are the
// two largest activations of a MoE layer that nothing else needs; the fused
// kernels read x rows through slots (as ScatterMoE does) and scatter each
// output row, times its gate weight, straight into the token's row.
//
// xs may also be the xs result of a moe.route (fuse-router-permute ran
// first): the gather_matmul then reads x, slots and positions from the route,
// whose xs is left without a use (a backend need not materialize it).
//
// When: the grouped matmul has transpose_w = false; xs (resp. ys) has no use
// but the other op of the pair and is no graph output, so no value anybody
// reads disappears. This is what makes the pass safe after autodiff too:
// there the backward reads xs (weight gradient) and ys (combine_grad), so
// those pairs are left alone. Before autodiff, the fused ops' gradient rules
// read what they need (passes/grad_moe.cpp): matmul_combine's ys result, and
// for gather_matmul one row gather of x (the gather the unfused forward did). gather_matmul takes the
// `positions` that belong to `slots` (the moe.dispatch, moe.expert_choice or moe.route result
// next to them) for its backward; permutes of slots from anywhere else are
// skipped. Tile attributes of the grouped matmul are kept.
//
// Algorithm: two sweeps over the ops in order, gathers first. A fused op
// takes the place of the pair's later op (the grouped matmul, resp. the
// combine), where all of its operands are already defined; the earlier op is
// erased.
//
// Statistics: gather-matmuls-formed, matmul-combines-formed,
// skipped-xs-has-other-uses, skipped-ys-has-other-uses, skipped-transpose-w,
// skipped-no-positions.
#include <algorithm>
#include <memory>

#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

// The positions produced next to `slots` by moe.dispatch or moe.route, if any.
ValueId positions_of(const Graph& graph, const std::vector<int>& producer, ValueId slots) {
  int p = producer[idx(slots)];
  if (p < 0) return kNoValue;
  const Op& op = graph.ops()[static_cast<std::size_t>(p)];
  if (op.kind == OpKind::Dispatch && op.results[0] == slots) return op.results[2];
  if (op.kind == OpKind::ExpertChoice && op.results[0] == slots) return op.results[2];  // same result layout
  if (op.kind == OpKind::Route && op.results[3] == slots) return op.results[5];
  return kNoValue;
}

AttrList tiles_of(const AttrList& attrs) {
  AttrList tiles;
  for (const char* name : {"tile_m", "tile_n", "tile_k"})
    if (attrs.has(name)) tiles.set(name, attrs.get_int(name));
  return tiles;
}

// Replaces ops[later] by a new op of `kind` that computes `replaced`, and erases ops[earlier] (if >= 0).
void rewrite_pair(Graph& graph, int earlier, int later, OpKind kind, std::vector<ValueId> operands, AttrList attrs, ValueId replaced) {
  std::vector<TensorType> operand_types;
  for (auto v : operands) operand_types.push_back(graph.type(v));
  std::string error;
  auto types = infer_op(kind, operand_types, attrs, &error);
  // Result #0 is the pair's result (matmul_combine adds its ys, for the backward).
  MOEJIT_ASSERT(types && !types->empty() && (*types)[0] == graph.type(replaced),
                "fuse-expert-gather-scatter: fused op does not reproduce the pair's result: " + error);
  ValueId fused = graph.add_op(kind, std::move(operands), std::move(attrs), *types)[0];
  graph.replace_uses(replaced, fused);
  auto& ops = graph.mutable_ops();
  Op op = std::move(ops.back());
  ops.pop_back();
  ops[static_cast<std::size_t>(later)] = std::move(op);
  if (earlier >= 0) ops.erase(ops.begin() + earlier);
}

class FuseExpertGatherScatterPass final : public Pass {
 public:
  std::string_view name() const override { return "fuse-expert-gather-scatter"; }

  void run(Graph& graph) override {
    reset_statistics();
    std::int64_t gathers = 0, combines = 0;
    while (fuse_one_gather(graph)) ++gathers;
    while (fuse_one_combine(graph)) ++combines;
    count("gather-matmuls-formed", gathers);
    count("matmul-combines-formed", combines);
    for (const auto& [reason, n] : skipped_) count(reason, n);
    skipped_.clear();
    seen_.clear();
  }

 private:
  std::vector<std::pair<std::string, std::int64_t>> skipped_;
  std::vector<ValueId> seen_;  // pairs already counted as skipped (by the later op's result)

  void skip(ValueId key, const std::string& reason) {
    if (std::find(seen_.begin(), seen_.end(), key) != seen_.end()) return;
    seen_.push_back(key);
    for (auto& [name, n] : skipped_)
      if (name == reason) {
        ++n;
        return;
      }
    skipped_.emplace_back(reason, 1);
  }

  // permute -> grouped_matmul (as its xs) => gather_matmul.
  bool fuse_one_gather(Graph& graph) {
    const auto& ops = graph.ops();
    std::vector<int> producer = graph.producers();
    std::vector<int> uses = graph.use_counts();
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& mm = ops[i];
      if (mm.kind != OpKind::GroupedMatmul) continue;
      ValueId xs = mm.operands[0];
      int p = producer[idx(xs)];
      if (p < 0) continue;
      const Op& gather = ops[static_cast<std::size_t>(p)];
      // xs = moe.permute(x, slots), or the xs result (#7) of a moe.route.
      bool from_permute = gather.kind == OpKind::Permute;
      if (!from_permute && !(gather.kind == OpKind::Route && gather.results[7] == xs)) continue;
      if (mm.attrs.get_bool("transpose_w")) {
        skip(mm.results[0], "skipped-transpose-w");
        continue;
      }
      if (uses[idx(xs)] != 1) {
        skip(mm.results[0], "skipped-xs-has-other-uses");
        continue;
      }
      ValueId x = gather.operands[0], slots = from_permute ? gather.operands[1] : gather.results[3];
      ValueId positions = from_permute ? positions_of(graph, producer, slots) : gather.results[5];
      if (positions == kNoValue) {
        skip(mm.results[0], "skipped-no-positions");
        continue;
      }
      AttrList attrs = tiles_of(mm.attrs);
      attrs.set("top_k", gather.attrs.get_int("top_k"));
      // A permute goes away; a route stays (its other results are needed) with xs unused.
      rewrite_pair(graph, from_permute ? p : -1, static_cast<int>(i), OpKind::GatherMatmul,
                   {x, mm.operands[1], slots, mm.operands[2], positions}, std::move(attrs), mm.results[0]);
      return true;
    }
    return false;
  }

  // grouped_matmul -> combine (as its ys) => matmul_combine.
  bool fuse_one_combine(Graph& graph) {
    const auto& ops = graph.ops();
    std::vector<int> producer = graph.producers();
    std::vector<int> uses = graph.use_counts();
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& combine = ops[i];
      if (combine.kind != OpKind::Combine) continue;
      int p = producer[idx(combine.operands[0])];
      if (p < 0 || ops[static_cast<std::size_t>(p)].kind != OpKind::GroupedMatmul) continue;
      const Op& mm = ops[static_cast<std::size_t>(p)];
      if (mm.attrs.get_bool("transpose_w")) {
        skip(combine.results[0], "skipped-transpose-w");
        continue;
      }
      if (uses[idx(mm.results[0])] != 1) {
        skip(combine.results[0], "skipped-ys-has-other-uses");
        continue;
      }
      rewrite_pair(graph, p, static_cast<int>(i), OpKind::MatmulCombine,
                   {mm.operands[0], mm.operands[1], mm.operands[2], combine.operands[1], combine.operands[2]}, tiles_of(mm.attrs),
                   combine.results[0]);
      return true;
    }
    return false;
  }
};

}  // namespace

std::unique_ptr<Pass> create_fuse_expert_gather_scatter_pass(const PassOptions&) {
  return std::make_unique<FuseExpertGatherScatterPass>();
}

}  // namespace moejit
