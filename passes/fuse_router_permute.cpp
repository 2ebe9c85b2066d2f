// fuse-router-permute: replaces the routing chain of a MoE layer
//
//   logits = mj.matmul(x, w_router)                  x [T, D], w_router [D, E]
//   weights, experts = moe.gate(logits, bias?)
//   slots, offsets, positions, counts = moe.dispatch(experts)
//   xs = moe.permute(x, slots)                       (the same x)
//
// by one op, moe.route(x, w_router, bias?), whose eight results are exactly
// those values (logits, weights, experts, slots, offsets, positions, counts,
// xs), so every other use of an intermediate, graph outputs included, is
// rewired to the fused op's result and nothing is lost.
//
// The permute is optional: without one (for instance when
// fuse-expert-gather-scatter already folded it into a moe.gather_matmul) the
// route is formed all the same and its xs result has no use; a backend need
// not materialize an unused xs. So the two fusion passes give the same graph
// in either order.
//
// Why: on the GPU the router matmul, the top-k, the histogram of experts,
// the prefix sum of offsets and the row gather are one kernel launch instead
// of four, with no round trip of logits and experts through memory.
//
// The router may also be stored [E, D] and multiplied transposed (nn::linear's
// layout: mj.matmul(x, w) {transpose_b = true}, as nn::moe_block builds it):
// then an mj.transpose of the weight ([E, D] -> [D, E], a tiny copy) feeds
// moe.route, and its gradient transposes the router gradient back.
//
// When: the matmul has rank-2 operands and no transpose of x; the gate's experts
// feed a moe.dispatch whose num_experts is the router width; the dispatch's
// slots feed a moe.permute of the matmul's own x with the gate's top_k. The
// first dispatch of the experts and the first such permute (if any) are taken. The
// optional gate bias must not itself depend on the chain (else the fused op
// would need its own result). Before or after autodiff both work: the fused
// op has a gradient rule (passes/grad_moe.cpp), and backward ops that read
// the intermediates read the same values from moe.route.
//
// Algorithm: scan the gates in order; for a match, append the moe.route op,
// point every use of the old values at its results, erase the three or four
// old ops, put moe.route where the matmul was and restore topological order with a
// stable sort (the bias may be defined after the matmul; ops that use the
// logits may sit between the matmul and the permute). Repeat until no chain
// matches.
//
// A moe.permute of a route's own x through the route's slots (the
// backward of moe.gather_matmul makes one to feed the weight gradient) is
// the route's xs: it is replaced by that result and erased, so a training
// graph gathers the rows once, in the forward, as the unfused graph does.
//
// Statistics: routes-formed, permutes-reused, routers-transposed, skipped-no-router-matmul, skipped-transposed-router,
// skipped-no-dispatch, skipped-bias-depends-on-chain.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>
#include <queue>

#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

// Reorders the ops so that every operand is defined before its use, keeping
// the existing order wherever it is already valid (smallest index first).
void sort_topologically(Graph& graph) {
  auto& ops = graph.mutable_ops();
  std::vector<int> producer = graph.producers();
  std::vector<int> waiting(ops.size(), 0);
  std::vector<std::vector<int>> users(ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i)
    for (auto v : ops[i].operands)
      if (int p = producer[idx(v)]; p >= 0) {
        ++waiting[i];
        users[static_cast<std::size_t>(p)].push_back(static_cast<int>(i));
      }
  std::priority_queue<int, std::vector<int>, std::greater<>> ready;
  for (std::size_t i = 0; i < ops.size(); ++i)
    if (waiting[i] == 0) ready.push(static_cast<int>(i));
  std::vector<Op> sorted;
  sorted.reserve(ops.size());
  while (!ready.empty()) {
    int i = ready.top();
    ready.pop();
    for (int u : users[static_cast<std::size_t>(i)])
      if (--waiting[static_cast<std::size_t>(u)] == 0) ready.push(u);
    sorted.push_back(std::move(ops[static_cast<std::size_t>(i)]));
  }
  MOEJIT_ASSERT(sorted.size() == ops.size(), "fuse-router-permute: the rewrite made a cycle");
  ops = std::move(sorted);
}

// The first op at index > after that uses `value` as operand #operand and has the given kind.
int first_user(const Graph& graph, ValueId value, OpKind kind, int operand, int after) {
  const auto& ops = graph.ops();
  for (std::size_t i = static_cast<std::size_t>(after + 1); i < ops.size(); ++i)
    if (ops[i].kind == kind && static_cast<int>(ops[i].operands.size()) > operand &&
        ops[i].operands[static_cast<std::size_t>(operand)] == value)
      return static_cast<int>(i);
  return -1;
}

// Whether `value` is computed from a result of one of the ops `chain`.
bool depends_on(const Graph& graph, ValueId value, const std::vector<int>& chain) {
  std::vector<bool> tainted(static_cast<std::size_t>(graph.num_values()), false);
  int first = *std::min_element(chain.begin(), chain.end());
  for (int i : chain)
    for (auto r : graph.ops()[static_cast<std::size_t>(i)].results) tainted[idx(r)] = true;
  for (std::size_t i = static_cast<std::size_t>(first); i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    bool any = std::any_of(op.operands.begin(), op.operands.end(), [&](ValueId v) { return tainted[idx(v)]; });
    if (any)
      for (auto r : op.results) tainted[idx(r)] = true;
  }
  return tainted[idx(value)];
}

class FuseRouterPermutePass final : public Pass {
 public:
  std::string_view name() const override { return "fuse-router-permute"; }

  void run(Graph& graph) override {
    reset_statistics();
    skip_reason_.clear();
    std::int64_t formed = 0;
    for (bool changed = true; changed;) {
      changed = false;
      for (std::size_t g = 0; g < graph.ops().size(); ++g) {
        const Op& op = graph.ops()[g];
        if (op.kind != OpKind::Gate || skip_reason_.count(op.results[0])) continue;
        if (try_fuse(graph, static_cast<int>(g))) {
          ++formed;
          changed = true;
          break;  // indices moved: scan again
        }
      }
    }
    count("routes-formed", formed);
    count("permutes-reused", reuse_route_permutes(graph));
    std::map<std::string, std::int64_t> skipped;
    for (const auto& [gate, reason] : skip_reason_) ++skipped[reason];
    for (const auto& [reason, n] : skipped) count(reason, n);
  }

 private:
  // Why each gate (named by its weights value) was left alone.
  std::map<ValueId, std::string> skip_reason_;
  ValueId current_gate_ = kNoValue;

  void skip(const std::string& reason) { skip_reason_[current_gate_] = reason; }

  // Replaces every moe.permute(x, route#3) {top_k} of a moe.route(x, ...)
  // with the same top_k by the route's xs (#7). The route precedes the
  // permute (it defines the slots), so the order stays valid.
  static std::int64_t reuse_route_permutes(Graph& graph) {
    std::vector<int> producer = graph.producers();
    std::vector<int> erased;
    auto& ops = graph.mutable_ops();
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& p = ops[i];
      if (p.kind != OpKind::Permute) continue;
      int r = producer[idx(p.operands[1])];
      if (r < 0) continue;
      const Op& route = ops[static_cast<std::size_t>(r)];
      if (route.kind != OpKind::Route || route.results[3] != p.operands[1] || route.operands[0] != p.operands[0] ||
          route.attrs.get_int("top_k") != p.attrs.get_int("top_k"))
        continue;
      graph.replace_uses(p.results[0], route.results[7]);
      erased.push_back(static_cast<int>(i));
    }
    for (auto it = erased.rbegin(); it != erased.rend(); ++it) ops.erase(ops.begin() + *it);
    return static_cast<std::int64_t>(erased.size());
  }

  bool try_fuse(Graph& graph, int gate_index) {
    const auto& ops = graph.ops();
    const Op& gate = ops[static_cast<std::size_t>(gate_index)];
    current_gate_ = gate.results[0];
    std::vector<int> producer = graph.producers();
    int matmul_index = producer[idx(gate.operands[0])];
    if (matmul_index < 0 || ops[static_cast<std::size_t>(matmul_index)].kind != OpKind::Matmul) {
      skip("skipped-no-router-matmul");
      return false;
    }
    const Op& matmul = ops[static_cast<std::size_t>(matmul_index)];
    ValueId x = matmul.operands[0], w_router = matmul.operands[1];
    if (matmul.attrs.get_bool("transpose_a") || graph.type(x).rank() != 2 || graph.type(w_router).rank() != 2) {
      skip("skipped-transposed-router");
      return false;
    }
    const bool router_transposed = matmul.attrs.get_bool("transpose_b");  // w_router stored [E, D]
    std::int64_t num_experts = graph.type(w_router).dim(router_transposed ? 0 : 1), top_k = gate.attrs.get_int("top_k");
    int dispatch_index = first_user(graph, gate.results[1], OpKind::Dispatch, 0, gate_index);
    if (dispatch_index < 0 || ops[static_cast<std::size_t>(dispatch_index)].attrs.get_int("num_experts") != num_experts) {
      skip("skipped-no-dispatch");
      return false;
    }
    const Op& dispatch = ops[static_cast<std::size_t>(dispatch_index)];
    int permute_index = -1;
    for (int after = dispatch_index; permute_index < 0;) {
      int candidate = first_user(graph, dispatch.results[0], OpKind::Permute, 1, after);
      if (candidate < 0) break;
      const Op& p = ops[static_cast<std::size_t>(candidate)];
      if (p.operands[0] == x && p.attrs.get_int("top_k") == top_k) permute_index = candidate;
      after = candidate;
    }
    std::vector<int> chain = {matmul_index, gate_index, dispatch_index};
    if (permute_index >= 0) chain.push_back(permute_index);
    std::vector<ValueId> operands = {x, w_router};  // w_router becomes the transpose's result below
    if (gate.operands.size() > 1) {
      if (depends_on(graph, gate.operands[1], chain)) {
        skip("skipped-bias-depends-on-chain");
        return false;
      }
      operands.push_back(gate.operands[1]);
    }

    AttrList attrs{{"top_k", top_k},
                   {"score", gate.attrs.get_string("score")},
                   {"order", gate.attrs.get_string("order")},
                   {"normalize", gate.attrs.get_bool("normalize")},
                   {"num_experts", num_experts},
                   {"capacity_factor", dispatch.attrs.get_float("capacity_factor")},
                   {"block", dispatch.attrs.get_int("block")}};
    std::vector<ValueId> old_values = {matmul.results[0],   gate.results[0],     gate.results[1],     dispatch.results[0],
                                       dispatch.results[1], dispatch.results[2], dispatch.results[3]};
    if (permute_index >= 0) old_values.push_back(ops[static_cast<std::size_t>(permute_index)].results[0]);
    std::vector<Op> new_ops;  // inserted where the matmul was, in this order
    if (router_transposed) {
      const TensorType& stored = graph.type(w_router);
      AttrList perm{{"perm", std::vector<std::int64_t>{1, 0}}};
      operands[1] = graph.add_op(OpKind::Transpose, {w_router}, perm, {TensorType{stored.dtype, {stored.dim(1), stored.dim(0)}}})[0];
      new_ops.push_back(std::move(graph.mutable_ops().back()));
      graph.mutable_ops().pop_back();
      count("routers-transposed");
    }
    std::vector<TensorType> operand_types;
    for (auto v : operands) operand_types.push_back(graph.type(v));
    std::string error;
    auto types = infer_op(OpKind::Route, operand_types, attrs, &error);
    MOEJIT_ASSERT(types.has_value(), "fuse-router-permute: moe.route rejected a matched chain: " + error);
    for (std::size_t r = 0; r < old_values.size(); ++r)
      MOEJIT_ASSERT((*types)[r] == graph.type(old_values[r]), "fuse-router-permute: moe.route result types differ from the chain's");

    std::vector<ValueId> fused = graph.add_op(OpKind::Route, operands, attrs, *types);
    for (std::size_t r = 0; r < old_values.size(); ++r) graph.replace_uses(old_values[r], fused[r]);
    auto& mops = graph.mutable_ops();
    new_ops.push_back(std::move(mops.back()));
    mops.pop_back();
    std::sort(chain.begin(), chain.end());
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) mops.erase(mops.begin() + *it);
    mops.insert(mops.begin() + chain.front(), std::make_move_iterator(new_ops.begin()), std::make_move_iterator(new_ops.end()));
    sort_topologically(graph);
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> create_fuse_router_permute_pass(const PassOptions&) { return std::make_unique<FuseRouterPermutePass>(); }

}  // namespace moejit
