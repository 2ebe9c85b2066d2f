// Op groups: ops of different kinds that codegen emits as one step, found
// on the graph as the CUDA pipeline leaves it (after fuse-elementwise).
//
//   add_norm     an mj.add whose result is the x of an mj.layer_norm or
//                mj.rms_norm: one kernel writes the sum and the norm (the
//                residual stream still reads the sum). Runs at the add.
//                With (or without) the add, an mj.cast of the norm's f32
//                result to bf16 (what the mixed-precision graph's matmul
//                reads): the kernel writes the bf16 copy too, and the f32
//                result only when something else reads it. The add may be
//                the end of a fused chain {mj.cast to f32 of a bf16 p, add}
//                (the mixed-precision residual x + f32(p)): the kernel reads
//                p and widens it; the f32 copy is never stored.
//   norm_grad_add  an mj.add of the dx of an mj.layer_norm_grad or
//                mj.rms_norm_grad (read only by that add) and another
//                gradient (the residual stream's, in the backward): the row
//                kernel writes the sum, dx is never stored. Runs at the norm
//                backward. With (or without) the add, an mj.cast to bf16 of
//                what the row kernel writes (the sum, or dx): the bf16
//                residual gradient the next matmul backward reads, written
//                by the same kernel. And its dy when that is the fused
//                chain x + f32(bf16 gradient) read only by it: the kernel
//                reads both parts (neither the f32 copy nor the sum is stored).
//   sum_squares  every mj.sum over all elements of an mj.mul(g, g) read only
//                by that sum (the squares of clip_grad_norm,
//                frontends/optim.cpp): two launches per 32 tensors. Runs at
//                the first member; the squares are never stored.
//   adamw        every mj.adamw sharing lr, step and the attributes: one
//                launch per 32 tensors. A gradient that is mj.mul(g, s), s
//                an mj.broadcast of a one-element value (or one-element
//                itself) read only by this mul, and the mul read only by
//                this adamw (the clip's scaling), is absorbed: the kernel
//                reads g and s. Runs at the first member. A new
//                parameter or moment whose only use is the output updating
//                its argument is written into the argument's buffer (no
//                update copy), when nothing later reads the argument.
//   reduce_chain an mj.sum / mj.mean / mj.max whose input is the last value
//                of an elementwise chain (a fuse-elementwise group, or one
//                elementwise op) read by nothing else, no value of the
//                chain read outside it: the reduction kernel computes each
//                element where it reads it (mean(f32(y) * target): no f32
//                product written and read back). Runs at the reduction.
//   combine_add  an mj.add of a moe.permute_grad's result (read only by that
//                add) and another tensor of the same type: the combine
//                kernel adds the other tensor to each sum it writes (the
//                sum is never stored). Runs at the add (the route's backward
//                adds the router's dx, computed after the permute_grad of
//                the expert rows' dx), so the permute_grad moves later; its
//                result has no other reader.
//   weight_casts every standalone mj.cast f32 -> bf16 of an argument (the
//                mixed-precision graph's casts of the weights): one launch
//                per 32 tensors at the first member. With the cast folds
//                (MOEJIT_CAST_FOLDS=0 turns them off).
//   gemm_epilogue  a GEMM (mj.matmul, moe.grouped_matmul, moe.gather_matmul)
//                marked mj.epilogue = "gelu" / "gelu_grad" by
//                fuse-gemm-epilogue and the mj.gelu / mj.gelu_grad it
//                feeds: the GEMM's epilogue writes the op's result (and
//                gelu's pre-activation, when something else reads it;
//                gelu_grad's product is never stored). Formed only when the
//                GEMM family serving the product on the target has the
//                epilogue (gemm_has_epilogue). Runs at the GEMM.
//                Likewise an mj.cast to f32 of a GEMM's 16-bit product
//                (mj.epilogue = "cast"; moe.grouped_matmul_wgrad too): the
//                epilogue stores the rounded product widened to f32 (and
//                the product, when something else reads it).
//                A moe.gather_matmul (with or without a folded op) also
//                takes a later moe.permute of the same rows through the
//                same slots (its gradient rule's, for the weight
//                gradient): the rows it gathers for the GEMM are written
//                into the permute's result instead of scratch, so the
//                backward does not gather them a second time (unless the
//                slots come from a moe.route whose xs something reads, a
//                copy fuse-router-permute already reuses, or the sm80
//                family serves the product: it gathers in its loads, so
//                there is no copy to reuse).
//
// A group runs at its first member, so it is formed only when every value
// its members read from outside the group is ready before that point (an
// argument, or computed by an earlier step); moving work earlier never
// breaks a consumer (one exception: a norm backward whose dy chain joined
// it runs at the norm backward, which alone reads that chain's results).
// Algorithm: one walk over the ops per kind, the
// readiness of each value from the step that computes it (a fused
// elementwise group computes at its last op).
//
// MOEJIT_OP_GROUPS=0 turns the grouping off (every op its own step, as
// before): the unfused run to compare with. MOEJIT_CAST_FOLDS=0 keeps the
// groups but takes no cast into them (passes/fuse_gemm_epilogue.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <tuple>
#include <variant>

#include "codegen/cuda_codegen.h"
#include "codegen/gemm_select.h"
#include "codegen/kernels/elementwise.cuh"
#include "ir/error.h"
#include "passes/passes.h"

namespace moejit::codegen {

namespace {

using B = Buffer;

// What a graph output counts in GroupFinder's use counts: never "one use".
constexpr int kOutputUse = 1 << 20;

class GroupFinder {
 public:
  GroupFinder(const Graph& graph, const std::vector<int>& step_of_op, const Target& target)
      : graph_(graph), ops_(graph.ops()), step_of_op_(step_of_op), target_(target) {
    producer_.assign(static_cast<std::size_t>(graph.num_values()), -1);
    uses_.assign(static_cast<std::size_t>(graph.num_values()), 0);
    for (std::size_t i = 0; i < ops_.size(); ++i) {
      for (ValueId r : ops_[i].results) producer_[static_cast<std::size_t>(r)] = static_cast<int>(i);
      for (ValueId v : ops_[i].operands) ++uses_[static_cast<std::size_t>(v)];
    }
    for (const auto& out : graph.outputs()) uses_[static_cast<std::size_t>(out.value)] += kOutputUse;  // never internal
    taken_.assign(ops_.size(), false);
  }

  std::vector<OpGroup> find() {
    fold_casts_ = cast_folds_enabled();
    std::vector<OpGroup> groups;
    find_add_norms(groups);
    find_norm_grad_adds(groups);
    find_sum_squares(groups);
    find_adamws(groups);
    find_gemm_epilogues(groups);
    if (fold_casts_) find_weight_casts(groups);
    find_reduce_chains(groups);
    find_combine_adds(groups);
    std::sort(groups.begin(), groups.end(), [](const OpGroup& a, const OpGroup& b) { return a.position < b.position; });
    return groups;
  }

 private:
  const Op& op(int i) const { return ops_[static_cast<std::size_t>(i)]; }
  int producer(ValueId v) const { return producer_[static_cast<std::size_t>(v)]; }
  int uses(ValueId v) const { return uses_[static_cast<std::size_t>(v)]; }
  // An op that is its own step (not in a multi-op elementwise group, not taken).
  bool alone(int i) const { return i >= 0 && step_of_op_[static_cast<std::size_t>(i)] == i && !taken_[static_cast<std::size_t>(i)]; }
  // The step at which v is computed (-1: an argument).
  int ready(ValueId v) const {
    int p = producer(v);
    return p < 0 ? -1 : step_of_op_[static_cast<std::size_t>(p)];
  }
  // The ops of the step that runs at `last` (its fused elementwise group, or
  // the op alone), in graph order; empty when one of them is taken.
  std::vector<int> step_members(int last) const {
    std::vector<int> members;
    for (int j = 0; j <= last; ++j)
      if (step_of_op_[static_cast<std::size_t>(j)] == last) {
        if (taken_[static_cast<std::size_t>(j)]) return {};
        members.push_back(j);
      }
    return members;
  }
  // Every value read by `members` from outside them is ready before `position`.
  bool inputs_ready(const std::vector<int>& members, int position) const {
    for (int m : members)
      for (ValueId v : op(m).operands) {
        const int p = producer(v);
        if (std::find(members.begin(), members.end(), p) != members.end()) continue;
        if (ready(v) >= position) return false;
      }
    return true;
  }
  void take(OpGroup& g) {
    std::sort(g.ops.begin(), g.ops.end());
    g.position = g.runs_at_anchor ? g.anchor : g.ops.front();
    if (g.kind != OpGroup::Kind::norm_grad_add) g.anchor = g.ops.back();
    for (int m : g.ops) taken_[static_cast<std::size_t>(m)] = true;
  }

  // A norm with the residual add feeding it and / or an mj.cast of its
  // result to bf16 (the first such cast that is its own step).
  void find_add_norms(std::vector<OpGroup>& groups) {
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& norm = op(i);
      if ((norm.kind != OpKind::LayerNorm && norm.kind != OpKind::RmsNorm) || !alone(i)) continue;
      const int add = producer(norm.operands[0]);
      const int widened = widened_operand(add);
      const bool with_add = (alone(add) || widened >= 0) && norm_takes_residual(graph_, norm, op(add));
      int cast = -1;
      for (int j = i + 1; j < static_cast<int>(ops_.size()) && cast < 0 && fold_casts_; ++j)
        if (alone(j) && norm_takes_cast(graph_, norm, op(j))) cast = j;
      OpGroup g{OpGroup::Kind::add_norm, i, 0, {i}, {}, {}};
      if (cast >= 0) g.ops.push_back(cast);
      // The add only when the group can run at it (an add that ends a fused
      // chain is computed by that chain's kernel: not ready there).
      if (with_add) {
        std::vector<int> with = g.ops;
        with.push_back(add);
        if (widened >= 0) with.push_back(widened);
        if (inputs_ready(with, widened >= 0 ? widened : add)) g.ops = std::move(with);
      }
      if (g.ops.size() == 1 || !inputs_ready(g.ops, *std::min_element(g.ops.begin(), g.ops.end()))) continue;
      take(g);
      g.anchor = i;
      if (cast >= 0 && uses(norm.results[0]) == 1) g.internal.push_back(norm.results[0]);  // read only by the cast
      if (std::find(g.ops.begin(), g.ops.end(), widened) != g.ops.end() && widened >= 0) g.internal.push_back(op(widened).results[0]);
      groups.push_back(std::move(g));
    }
  }

  // The mj.cast of `add`'s two-op fused chain {cast, add}: x + f32(p) with
  // p bf16 and the f32 copy read only by the add (the mixed-precision
  // residual add; add_takes_widened), which the norm's kernel then computes
  // from p itself. -1 when `add` is no such chain's end (or the cast folds
  // are off, MOEJIT_CAST_FOLDS=0).
  int widened_operand(int add) const {
    if (!fold_casts_ || add < 0 || taken_[static_cast<std::size_t>(add)] || step_of_op_[static_cast<std::size_t>(add)] != add) return -1;
    int members = 0, cast = -1;
    for (int j = 0; j <= add; ++j)
      if (step_of_op_[static_cast<std::size_t>(j)] == add) {
        ++members;
        if (j != add) cast = j;
      }
    if (members != 2 || cast < 0 || taken_[static_cast<std::size_t>(cast)]) return -1;
    if (!add_takes_widened(graph_, op(add), op(cast)) || uses(op(cast).results[0]) != 1) return -1;
    return cast;
  }

  // The first op after `after` that is its own step and an mj.cast to bf16
  // that the norm backward `ng` (with `add`, or null) can write (-1: none).
  int norm_grad_cast(int ng, const Op* add, int after) const {
    if (!fold_casts_) return -1;
    for (int j = after + 1; j < static_cast<int>(ops_.size()); ++j)
      if (alone(j) && norm_grad_takes_cast(graph_, op(ng), add, op(j))) return j;
    return -1;
  }

  // A norm backward with the gradient add after it and / or the cast to
  // bf16 of what it writes.
  void find_norm_grad_adds(std::vector<OpGroup>& groups) {
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& add = op(i);
      if (add.kind != OpKind::Add || !alone(i)) continue;
      for (ValueId v : add.operands) {
        const int ng = producer(v);
        if (!alone(ng) || uses(v) != 1 || !norm_grad_takes_addend(graph_, op(ng), add)) continue;
        OpGroup g{OpGroup::Kind::norm_grad_add, ng, ng, {ng, i}, {v}, {}};
        if (!inputs_ready(g.ops, ng)) continue;
        if (const int cast = norm_grad_cast(ng, &add, i); cast >= 0) g.ops.push_back(cast);
        add_widened_dy(g, ng);
        take(g);
        groups.push_back(std::move(g));
        break;
      }
    }
    for (int ng = 0; ng < static_cast<int>(ops_.size()); ++ng) {
      const OpKind kind = op(ng).kind;
      if ((kind != OpKind::LayerNormGrad && kind != OpKind::RmsNormGrad) || !alone(ng)) continue;
      OpGroup g{OpGroup::Kind::norm_grad_add, ng, ng, {ng}, {}, {}};
      if (const int cast = norm_grad_cast(ng, nullptr, ng); cast >= 0) g.ops.push_back(cast);
      add_widened_dy(g, ng);
      if (g.ops.size() == 1) continue;
      take(g);
      groups.push_back(std::move(g));
    }
  }

  // dy of the norm backward `ng` as the fused chain {mj.cast to f32 of a bf16
  // tensor, add} read only by ng (the backward's x + f32(gradient)): both
  // join the group, which the row kernel then computes from the two
  // (widened_operand). Such a group runs at ng, not at its first member:
  // the chain's results are read by ng alone, so computing them later
  // breaks no consumer, and its inputs are ready at ng (the executor's
  // memory plan keeps them alive to the group's step).
  void add_widened_dy(OpGroup& g, int ng) {
    const ValueId dy = op(ng).operands[2];
    const int add = producer(dy);
    const int cast = widened_operand(add);
    if (cast < 0 || uses(dy) != 1 || !norm_grad_takes_widened_dy(graph_, op(ng), op(add), op(cast))) return;
    std::vector<int> with = g.ops;
    with.push_back(add);
    with.push_back(cast);
    if (!inputs_ready(with, ng)) return;
    g.ops = std::move(with);
    g.internal.push_back(dy);
    g.internal.push_back(op(cast).results[0]);
    g.runs_at_anchor = true;
  }


  void find_sum_squares(std::vector<OpGroup>& groups) {
    std::map<DType, std::vector<std::pair<int, int>>> by_dtype;  // (mul, sum)
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& sum = op(i);
      if (sum.kind != OpKind::Sum || graph_.type(sum.results[0]).numel() != 1 || !alone(i)) continue;
      const int mul = producer(sum.operands[0]);
      if (!alone(mul) || op(mul).kind != OpKind::Mul || op(mul).operands[0] != op(mul).operands[1]) continue;
      const DType dtype = graph_.type(sum.operands[0]).dtype;
      if (!is_float(dtype) || uses(sum.operands[0]) != 1) continue;
      by_dtype[dtype].push_back({mul, i});
    }
    for (auto& [dtype, pairs] : by_dtype) {
      OpGroup g{OpGroup::Kind::sum_squares, 0, 0, {}, {}, {}};
      for (auto [mul, sum] : pairs) {
        g.ops.push_back(mul);
        g.ops.push_back(sum);
        g.internal.push_back(op(mul).results[0]);
      }
      // Ready at the first member? Otherwise drop the pairs whose gradient
      // comes later, one at a time from the end (they stay ops of their own).
      while (!g.ops.empty() && !inputs_ready(g.ops, *std::min_element(g.ops.begin(), g.ops.end()))) {
        g.ops.resize(g.ops.size() - 2);
        g.internal.pop_back();
      }
      if (g.ops.size() < 4) continue;  // one pair: the plain ops are as good
      take(g);
      groups.push_back(std::move(g));
    }
  }

  // The g and s of an absorbable clip mul(g, s) feeding adamw `a` (-1: none).
  // The broadcast of s may be its own step or fused into the mul's chain.
  int absorbable_scale(int adamw) const {
    const ValueId grad = op(adamw).operands[1];
    const int mul = producer(grad);
    if (mul < 0 || op(mul).kind != OpKind::Mul || uses(grad) != 1) return -1;
    const ValueId s = op(mul).operands[1];
    if (graph_.type(op(mul).operands[0]) != graph_.type(grad) || graph_.type(s).dtype != DType::f32) return -1;
    const std::vector<int> chain = step_members(mul);
    if (graph_.type(s).numel() == 1) return alone(mul) ? mul : -1;
    const int broadcast = producer(s);
    if (broadcast < 0 || op(broadcast).kind != OpKind::Broadcast || uses(s) != 1) return -1;
    const bool separate = alone(mul) && alone(broadcast), fused = chain == std::vector<int>{broadcast, mul};
    if (!separate && !fused) return -1;
    return graph_.type(op(broadcast).operands[0]).numel() == 1 ? mul : -1;
  }

  void find_adamws(std::vector<OpGroup>& groups) {
    using Key = std::tuple<ValueId, ValueId, double, double, double, double>;
    std::map<Key, std::vector<int>> by_key;
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& a = op(i);
      if (a.kind != OpKind::AdamW || !alone(i)) continue;
      by_key[{a.operands[4], a.operands[5], a.attrs.get_float("beta1"), a.attrs.get_float("beta2"), a.attrs.get_float("eps"),
              a.attrs.get_float("weight_decay")}]
          .push_back(i);
    }
    for (auto& [key, adamws] : by_key) {
      if (adamws.size() < 2) continue;
      OpGroup g{OpGroup::Kind::adamw, 0, 0, {}, {}, {}};
      for (int a : adamws) {
        g.ops.push_back(a);
        const int mul = absorbable_scale(a);
        if (mul < 0) continue;
        g.ops.push_back(mul);
        g.internal.push_back(op(mul).results[0]);
        const int broadcast = producer(op(mul).operands[1]);
        if (broadcast >= 0 && op(broadcast).kind == OpKind::Broadcast) {
          g.ops.push_back(broadcast);
          g.internal.push_back(op(broadcast).results[0]);
        }
      }
      if (!inputs_ready(g.ops, *std::min_element(g.ops.begin(), g.ops.end()))) continue;
      take(g);
      for (int a : adamws) add_in_place(g, a);
      groups.push_back(std::move(g));
    }
  }

  void find_combine_adds(std::vector<OpGroup>& groups) {
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& add = op(i);
      if (add.kind != OpKind::Add || !alone(i) || add.operands[0] == add.operands[1]) continue;
      for (ValueId v : add.operands) {
        const int pg = producer(v);
        if (!alone(pg) || op(pg).kind != OpKind::PermuteGrad || uses(v) != 1) continue;
        const ValueId other = add.operands[0] == v ? add.operands[1] : add.operands[0];
        if (graph_.type(other) != graph_.type(v) || graph_.type(add.results[0]) != graph_.type(v)) continue;
        OpGroup g{OpGroup::Kind::combine_add, 0, 0, {pg, i}, {v}, {}};
        take(g);
        g.position = i;  // at the add: its other operand may come after the permute_grad
        g.anchor = pg;
        groups.push_back(std::move(g));
        break;
      }
    }
  }

  void find_reduce_chains(std::vector<OpGroup>& groups) {
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const OpKind kind = op(i).kind;
      if ((kind != OpKind::Sum && kind != OpKind::Mean && kind != OpKind::Max) || !alone(i)) continue;
      const ValueId x = op(i).operands[0];
      const int last = producer(x);
      if (last < 0 || uses(x) != 1 || step_of_op_[static_cast<std::size_t>(last)] != last) continue;
      std::vector<int> chain = step_members(last);
      if (chain.empty() || (chain.size() == 1 && !is_fusible_elementwise(op(last).kind))) continue;
      // Every other value of the chain is read inside it only (uses counts a
      // graph output as many): the reduction kernel stores nothing else.
      std::map<ValueId, int> inside;
      for (int m : chain)
        for (ValueId v : op(m).operands) ++inside[v];
      bool internal = true;
      for (int m : chain)
        if (m != last && uses(op(m).results[0]) != inside[op(m).results[0]]) internal = false;
      if (!internal) continue;
      OpGroup g{OpGroup::Kind::reduce_chain, i, i, chain, {x}, {}};
      g.ops.push_back(i);
      g.runs_at_anchor = true;
      if (!inputs_ready(g.ops, i)) continue;
      take(g);
      groups.push_back(std::move(g));
    }
  }

  void find_weight_casts(std::vector<OpGroup>& groups) {
    OpGroup g{OpGroup::Kind::weight_casts, 0, 0, {}, {}, {}};
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& c = op(i);
      if (c.kind != OpKind::Cast || !alone(i) || producer(c.operands[0]) >= 0) continue;
      if (graph_.type(c.operands[0]).dtype != DType::f32 || graph_.type(c.results[0]).dtype != DType::bf16) continue;
      g.ops.push_back(i);
    }
    if (g.ops.size() < 2) return;  // its operands are arguments: ready anywhere
    take(g);
    groups.push_back(std::move(g));
  }

  // An mj.gelu of a GEMM's product, or an mj.gelu_grad whose dy is one,
  // both marked by fuse-gemm-epilogue; the marks are checked again here
  // (a pass after it may have changed the graph): a mark that no longer
  // fits leaves both ops as they are.
  void find_gemm_epilogues(std::vector<OpGroup>& groups) {
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      const Op& ew = op(i);
      const AttrValue* folded = ew.attrs.find("mj.gemm_epilogue");
      if (!folded || !std::holds_alternative<bool>(*folded) || !std::get<bool>(*folded) || !alone(i)) continue;
      if (ew.kind != OpKind::Gelu && ew.kind != OpKind::GeluGrad && ew.kind != OpKind::Cast) continue;
      const ValueId product = ew.kind == OpKind::GeluGrad ? ew.operands[1] : ew.operands[0];
      const int gemm = producer(product);
      if (!alone(gemm) || gemm > i || op(gemm).results[0] != product) continue;
      const AttrValue* mark = op(gemm).attrs.find("mj.epilogue");
      const char* want = ew.kind == OpKind::Gelu ? "gelu" : ew.kind == OpKind::GeluGrad ? "gelu_grad" : "cast";
      if (!mark || !std::holds_alternative<std::string>(*mark) || std::get<std::string>(*mark) != want) continue;
      if (ew.kind == OpKind::Cast) {
        const TensorType& y = graph_.type(ew.results[0]);
        if (y.dtype != DType::f32 || y.shape != graph_.type(product).shape) continue;
      } else if (graph_.type(ew.results[0]) != graph_.type(product)) {
        continue;
      }
      if (ew.kind == OpKind::GeluGrad && (uses(product) != 1 || ew.operands[0] == product || graph_.type(ew.operands[0]) != graph_.type(product)))
        continue;
      const GemmEpilogue::Kind kind = ew.kind == OpKind::Gelu       ? GemmEpilogue::Kind::gelu
                                      : ew.kind == OpKind::GeluGrad ? GemmEpilogue::Kind::gelu_grad
                                                                    : GemmEpilogue::Kind::widen;
      if (!gemm_has_epilogue(graph_, op(gemm), target_, kind, ew.kind == OpKind::Gelu || (kind == GemmEpilogue::Kind::widen && uses(product) != 1)))
        continue;
      OpGroup g{OpGroup::Kind::gemm_epilogue, gemm, gemm, {gemm, i}, {}, {}};
      if (!inputs_ready(g.ops, gemm)) continue;
      if (uses(product) == 1) g.internal.push_back(product);  // read only by the folded op
      take(g);
      g.anchor = gemm;
      groups.push_back(std::move(g));
    }
    // The gathers' permutes, into those groups or into new ones.
    for (int gemm = 0; gemm < static_cast<int>(ops_.size()); ++gemm) {
      const Op& gm = op(gemm);
      if (gm.kind != OpKind::GatherMatmul) continue;
      OpGroup* group = nullptr;
      for (OpGroup& g : groups)
        if (g.kind == OpGroup::Kind::gemm_epilogue && g.ops.front() == gemm) group = &g;
      if (!group && !alone(gemm)) continue;
      const int slots_from = producer(gm.operands[2]);
      // (A moe.route whose xs something reads wrote the rows already.)
      if (slots_from >= 0 && op(slots_from).kind == OpKind::Route && uses(op(slots_from).results[7]) > 0) continue;
      // The sm80 family gathers in its loads (no copy to reuse).
      if (gemm_problem_of(graph_, gm) && choose_gemm(graph_, gm, *gemm_problem_of(graph_, gm), target_).family == GemmFamily::sm80) continue;
      for (int j = gemm + 1; j < static_cast<int>(ops_.size()); ++j) {
        const Op& p = op(j);
        if (p.kind != OpKind::Permute || !alone(j) || sm90_permute_elided(graph_, p, target_) || p.operands[0] != gm.operands[0] ||
            p.operands[1] != gm.operands[2] ||
            p.attrs.get_int("top_k") != gm.attrs.get_int("top_k") || graph_.type(p.results[0]).dtype != graph_.type(gm.operands[0]).dtype ||
            graph_.type(p.results[0]).dim(0) != graph_.type(gm.results[0]).dim(0))
          continue;
        if (group) {
          group->ops.push_back(j);
          taken_[static_cast<std::size_t>(j)] = true;
        } else {
          OpGroup g{OpGroup::Kind::gemm_epilogue, gemm, gemm, {gemm, j}, {}, {}};
          take(g);
          g.anchor = gemm;
          groups.push_back(std::move(g));
        }
        break;
      }
    }
  }

  // AdamW's (param, m, v) -> (param', m', v') in place, where the result's
  // only use is the output that updates that argument and no step from the
  // group's position on reads the argument besides this adamw.
  void add_in_place(OpGroup& g, int adamw) {
    const Op& a = op(adamw);
    const int operand_of_result[3] = {0, 2, 3};
    for (int k = 0; k < 3; ++k) {
      const ValueId result = a.results[static_cast<std::size_t>(k)], argument = a.operands[static_cast<std::size_t>(operand_of_result[k])];
      if (graph_.arg_of(argument) == nullptr || uses(result) != kOutputUse || update_of(result) != graph_.value(argument).name) continue;
      bool read_later = false;
      for (int i = 0; i < static_cast<int>(ops_.size()) && !read_later; ++i) {
        if (i == adamw || step_of_op_[static_cast<std::size_t>(i)] < g.position) continue;
        for (ValueId v : op(i).operands) read_later = read_later || v == argument;
      }
      if (!read_later) g.in_place.push_back({result, argument});
    }
  }

  // The argument name that output value `v` updates ("" if none).
  std::string update_of(ValueId v) const {
    for (const auto& out : graph_.outputs())
      if (out.value == v) return out.updates;
    return "";
  }

  const Graph& graph_;
  const std::vector<Op>& ops_;
  const std::vector<int>& step_of_op_;
  const Target& target_;
  std::vector<int> producer_, uses_;
  std::vector<bool> taken_;
  bool fold_casts_ = true;
};

// Chunks of each table entry: chunk_begin[k] for k = 0..tensors.
template <std::size_t N> void set_chunk_begin(mj::i64 (&chunk_begin)[N], const std::vector<std::int64_t>& sizes) {
  chunk_begin[0] = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k)
    chunk_begin[k + 1] = chunk_begin[k] + (sizes[k] + mj::kMultiTensorChunk - 1) / mj::kMultiTensorChunk;
}

unsigned multi_tensor_grid(const Target& target, std::int64_t chunks) { return persistent_grid(target, chunks, 8); }

void emit_sum_squares(EmitContext& ctx, const OpGroup& group) {
  const Graph& graph = ctx.graph();
  std::map<ValueId, ValueId> square_of;  // mul(g, g) result -> g
  for (int i : group.ops)
    if (const Op& op = graph.ops()[static_cast<std::size_t>(i)]; op.kind == OpKind::Mul) square_of[op.results[0]] = op.operands[0];
  std::vector<std::pair<ValueId, ValueId>> pairs;  // (g, sum result), in graph order
  for (int i : group.ops)
    if (const Op& op = graph.ops()[static_cast<std::size_t>(i)]; op.kind == OpKind::Sum) pairs.push_back({square_of.at(op.operands[0]), op.results[0]});
  const std::string type = template_type(graph.type(pairs[0].first).dtype);
  TileConfig config = TileConfig::fixed_threads(256);
  for (std::size_t first = 0; first < pairs.size(); first += mj::kMultiTensorMax) {
    const std::size_t count = std::min<std::size_t>(mj::kMultiTensorMax, pairs.size() - first);
    mj::MultiSumSquaresArgs<void> a{};
    a.tensors = static_cast<int>(count);
    std::vector<std::int64_t> sizes;
    std::vector<Bind> pointers;
    for (std::size_t k = 0; k < count; ++k) {
      const auto [g, out] = pairs[first + k];
      a.n[k] = graph.type(g).numel();
      sizes.push_back(a.n[k]);
      pointers.push_back({&a.x[k], B::of(g)});
      pointers.push_back({&a.out[k], B::of(out)});
    }
    set_chunk_begin(a.chunk_begin, sizes);
    const std::int64_t chunks = a.chunk_begin[count];
    pointers.push_back({&a.partials, B::scratch(ctx.scratch(std::max<std::int64_t>(chunks, 1) * 8))});
    ctx.launch("elementwise", instantiation("multi_sum_squares_parts_kernel", {type, std::to_string(config.threads)}), config,
               {multi_tensor_grid(ctx.target(), chunks)}, a, pointers);
    ctx.launch("elementwise", instantiation("multi_sum_squares_finish_kernel", {type, std::to_string(config.threads)}), config,
               {static_cast<unsigned>(count)}, a, pointers);
  }
}

void emit_adamws(EmitContext& ctx, const OpGroup& group) {
  const Graph& graph = ctx.graph();
  const auto& ops = graph.ops();
  auto in_group = [&](ValueId v) {
    for (int m : group.ops)
      if (ops[static_cast<std::size_t>(m)].results[0] == v) return m;
    return -1;
  };
  std::vector<int> adamws;
  for (int i : group.ops)
    if (ops[static_cast<std::size_t>(i)].kind == OpKind::AdamW) adamws.push_back(i);
  const Op& head = ops[static_cast<std::size_t>(adamws.front())];
  TileConfig config = TileConfig::fixed_threads(256);
  for (std::size_t first = 0; first < adamws.size(); first += mj::kMultiTensorMax) {
    const std::size_t count = std::min<std::size_t>(mj::kMultiTensorMax, adamws.size() - first);
    mj::MultiAdamWArgs a{};
    a.beta1 = head.attrs.get_float("beta1");
    a.beta2 = head.attrs.get_float("beta2");
    a.eps = static_cast<float>(head.attrs.get_float("eps"));
    a.weight_decay = static_cast<float>(head.attrs.get_float("weight_decay"));
    a.tensors = static_cast<int>(count);
    std::vector<Bind> pointers = {{&a.lr, B::of(head.operands[4])}, {&a.step, B::of(head.operands[5])}};
    std::vector<std::int64_t> sizes;
    for (std::size_t k = 0; k < count; ++k) {
      const Op& op = ops[static_cast<std::size_t>(adamws[first + k])];
      mj::AdamWTensor& t = a.t[k];
      t.n = graph.type(op.operands[0]).numel();
      sizes.push_back(t.n);
      ValueId grad = op.operands[1];
      Buffer scale = B::none();
      if (const int mul = in_group(grad); mul >= 0) {  // the absorbed clip mul(g, s)
        const Op& m = ops[static_cast<std::size_t>(mul)];
        grad = m.operands[0];
        ValueId s = m.operands[1];
        if (const int broadcast = in_group(s); broadcast >= 0) s = ops[static_cast<std::size_t>(broadcast)].operands[0];
        scale = B::of(s);
      }
      pointers.insert(pointers.end(), {{&t.param, B::of(op.operands[0])},
                                       {&t.grad, B::of(grad)},
                                       {&t.grad_scale, scale},
                                       {&t.m, B::of(op.operands[2])},
                                       {&t.v, B::of(op.operands[3])},
                                       {&t.new_param, B::of(op.results[0])},
                                       {&t.new_m, B::of(op.results[1])},
                                       {&t.new_v, B::of(op.results[2])}});
    }
    set_chunk_begin(a.chunk_begin, sizes);
    ctx.launch("elementwise", instantiation("multi_adamw_kernel", {std::to_string(config.threads)}), config,
               {multi_tensor_grid(ctx.target(), a.chunk_begin[count])}, a, pointers);
  }
}

void emit_weight_casts(EmitContext& ctx, const OpGroup& group) {
  const Graph& graph = ctx.graph();
  const auto& ops = graph.ops();
  TileConfig config = TileConfig::fixed_threads(256);
  for (std::size_t first = 0; first < group.ops.size(); first += mj::kMultiTensorMax) {
    const std::size_t count = std::min<std::size_t>(mj::kMultiTensorMax, group.ops.size() - first);
    mj::MultiCastArgs a{};
    a.tensors = static_cast<int>(count);
    std::vector<Bind> pointers;
    std::vector<std::int64_t> sizes;
    for (std::size_t k = 0; k < count; ++k) {
      const Op& op = ops[static_cast<std::size_t>(group.ops[first + k])];
      a.n[k] = graph.type(op.operands[0]).numel();
      sizes.push_back(a.n[k]);
      pointers.insert(pointers.end(), {{&a.x[k], B::of(op.operands[0])}, {&a.y[k], B::of(op.results[0])}});
    }
    set_chunk_begin(a.chunk_begin, sizes);
    ctx.launch("elementwise", instantiation("multi_cast_kernel", {std::to_string(config.threads)}), config,
               {multi_tensor_grid(ctx.target(), a.chunk_begin[count])}, a, pointers);
  }
}

// ctx at the norm; group.ops = the norm and its add and / or cast.
void emit_norm_with(EmitContext& ctx, const OpGroup& group) {
  const Op *add = nullptr, *cast = nullptr, *widened = nullptr;
  for (int m : group.ops) {
    const Op& member = ctx.graph().ops()[static_cast<std::size_t>(m)];
    if (member.kind == OpKind::Add) add = &member;
  }
  for (int m : group.ops) {
    const Op& member = ctx.graph().ops()[static_cast<std::size_t>(m)];
    if (member.kind != OpKind::Cast) continue;
    if (add && add_takes_widened(ctx.graph(), *add, member)) widened = &member;  // the cast into the add
    else cast = &member;                                                       // the cast of the norm's result
  }
  const bool store_y = std::find(group.internal.begin(), group.internal.end(), ctx.result(0)) == group.internal.end();
  emit_norm_group(ctx, add, cast, store_y, widened);
}

// ctx at the norm backward; group.ops = it and its add and / or cast, and
// the chain computing its dy (add_widened_dy).
void emit_norm_grad_with(EmitContext& ctx, const OpGroup& group) {
  const Op *add = nullptr, *cast = nullptr, *dy_add = nullptr, *dy_cast = nullptr;
  const ValueId dy = ctx.operand(2);
  for (int m : group.ops) {
    const Op& member = ctx.graph().ops()[static_cast<std::size_t>(m)];
    if (member.kind == OpKind::Add) (member.results[0] == dy ? dy_add : add) = &member;
  }
  for (int m : group.ops) {
    const Op& member = ctx.graph().ops()[static_cast<std::size_t>(m)];
    if (member.kind != OpKind::Cast) continue;
    if (dy_add && add_takes_widened(ctx.graph(), *dy_add, member)) dy_cast = &member;
    else cast = &member;
  }
  emit_norm_grad_group(ctx, add, cast, dy_add, dy_cast);
}

// ctx at the GEMM; group.ops = {gemm, the folded op and / or a gather's permute}.
void emit_gemm_epilogue(EmitContext& ctx, const OpGroup& group) {
  GemmEpilogue epilogue;
  for (std::size_t k = 1; k < group.ops.size(); ++k) {
    const Op& member = ctx.graph().ops()[static_cast<std::size_t>(group.ops[k])];
    if (member.kind == OpKind::Permute) {
      epilogue.gathered_rows = B::of(member.results[0]);
    } else if (member.kind == OpKind::Gelu) {
      epilogue.kind = GemmEpilogue::Kind::gelu;
      epilogue.out = B::of(member.results[0]);
      const ValueId product = ctx.result(0);
      const bool internal = std::find(group.internal.begin(), group.internal.end(), product) != group.internal.end();
      epilogue.aux = internal ? B::none() : B::of(product);
    } else if (member.kind == OpKind::Cast) {
      epilogue.kind = GemmEpilogue::Kind::widen;
      epilogue.out = B::of(member.results[0]);
      const ValueId product = ctx.result(0);
      const bool internal = std::find(group.internal.begin(), group.internal.end(), product) != group.internal.end();
      epilogue.aux = internal ? B::none() : B::of(product);
    } else {
      MOEJIT_ASSERT(member.kind == OpKind::GeluGrad, "emit_gemm_epilogue: a gelu, gelu_grad, cast or permute");
      epilogue.kind = GemmEpilogue::Kind::gelu_grad;
      epilogue.out = B::of(member.results[0]);
      epilogue.aux = B::of(member.operands[0]);
    }
  }
  if (ctx.op().kind == OpKind::Matmul) emit_matmul_with_epilogue(ctx, epilogue);
  else if (ctx.op().kind == OpKind::GroupedMatmulWgrad) emit_wgrad_with_epilogue(ctx, epilogue);
  else emit_grouped_with_epilogue(ctx, epilogue);
}

}  // namespace

std::vector<OpGroup> find_op_groups(const Graph& graph, const std::vector<int>& step_of_op, const Target& target) {
  if (const char* env = std::getenv("MOEJIT_OP_GROUPS"); env && std::string(env) == "0") return {};
  if (!fusions_enabled()) return {};
  return GroupFinder(graph, step_of_op, target).find();
}

void emit_op_group(EmitContext& ctx, const OpGroup& group) {
  switch (group.kind) {
    case OpGroup::Kind::add_norm: emit_norm_with(ctx, group); break;
    case OpGroup::Kind::norm_grad_add: emit_norm_grad_with(ctx, group); break;
    case OpGroup::Kind::sum_squares: emit_sum_squares(ctx, group); break;
    case OpGroup::Kind::adamw: emit_adamws(ctx, group); break;
    case OpGroup::Kind::gemm_epilogue: emit_gemm_epilogue(ctx, group); break;
    case OpGroup::Kind::weight_casts: emit_weight_casts(ctx, group); break;
    case OpGroup::Kind::combine_add: {
      const Op& add = ctx.graph().ops()[static_cast<std::size_t>(group.ops.back())];
      emit_permute_grad_with_addend(ctx, B::of(add.operands[0] == ctx.result(0) ? add.operands[1] : add.operands[0]), add.results[0]);
      break;
    }
    case OpGroup::Kind::reduce_chain: emit_reduction_of_chain(ctx, {group.ops.begin(), group.ops.end() - 1}); break;
  }
}

}  // namespace moejit::codegen
