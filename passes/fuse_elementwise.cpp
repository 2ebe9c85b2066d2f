// fuse-elementwise: groups chains of elementwise ops so the CUDA backend
// runs each group as one kernel (one pass over memory instead of one per op).
//
// Representation: every op of a group gets the discardable attribute
// `mj.fusion_group = <id> : i64` (ids count groups in graph order). The ops
// stay in the graph, so the CPU backend, the printer and every other pass
// see the same computation; the CUDA codegen (codegen/codegen.cpp) emits one
// kernel per group at the group's last op and stores only the values used
// outside the group.
//
// Algorithm: walk the ops in order; an elementwise op (unary and binary
// math, compare, where, cast, constant, dropout, gelu_grad) joins the group
// of an operand's producer when that producer is elementwise too, the
// operand has exactly one use (so nothing outside needs it stored) and the
// shapes agree. An mj.broadcast is such a producer too: its reader's kernel
// reads the broadcast's operand at the broadcast index instead of a
// materialized copy (a scalar loss gradient broadcast over the activations
// would otherwise be written and read back in full). Groups are unions (union-find), so a tree of single-use
// producers fuses into its root. Groups of one op get no attribute, and
// stale attributes from an earlier run are removed. An op that
// fuse-gemm-epilogue folded into a GEMM (mj.gemm_epilogue) joins no group.
//
// Before grouping, a cast that several chain ops read is cloned for each of
// them (split_shared_casts below), so the cast joins every reader's chain
// instead of being stored once for all.
//
// A group stays within what one generated kernel takes (the CUDA chain's
// argument struct, codegen/kernels/elementwise.cuh): at most
// kMaxGroupInputs distinct values read from outside, kMaxGroupOutputs
// values that may be stored (counted from above: every member's result not
// consumed inside the group), kMaxGroupDropouts dropouts. A join that would
// pass a limit is not made (the producer's group stays a group of its own),
// so a long sum of scalars (a global gradient norm over many parameters)
// becomes several kernels instead of one the backend cannot build.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

bool is_fusible_elementwise(OpKind kind) {
  switch (kind) {
    case OpKind::Neg: case OpKind::Exp: case OpKind::Log: case OpKind::Sqrt: case OpKind::Rsqrt: case OpKind::Tanh:
    case OpKind::Relu: case OpKind::Gelu: case OpKind::Silu: case OpKind::Sigmoid: case OpKind::Softplus:
    case OpKind::Add: case OpKind::Sub: case OpKind::Mul: case OpKind::Div: case OpKind::Maximum: case OpKind::Minimum:
    case OpKind::Compare: case OpKind::Where: case OpKind::Cast: case OpKind::Constant: case OpKind::GeluGrad:
    case OpKind::Dropout:
      return true;
    default:
      return false;
  }
}

bool joins_elementwise_chain(OpKind kind) { return is_fusible_elementwise(kind) || kind == OpKind::Broadcast; }

namespace {

constexpr const char* kGroupAttr = "mj.fusion_group";

// Must match kChainMaxInputs / kChainMaxOutputs / kChainMaxDropouts of
// codegen/kernels/elementwise.cuh (tests/cuda/moeut_gpu_test.cpp checks).
constexpr std::size_t kMaxGroupInputs = 24;
constexpr int kMaxGroupOutputs = 8;
constexpr int kMaxGroupDropouts = 8;

// What a group needs from one kernel, for the join limits above.
struct GroupNeeds {
  std::set<ValueId> operands, produced;
  int outputs = 0, dropouts = 0;

  std::size_t inputs() const {
    std::size_t n = 0;
    for (ValueId v : operands) n += produced.count(v) ? 0 : 1;
    return n;
  }
};

// A cast read by several chain ops is cloned once for each reader after the
// first, the clone placed right before its reader, so every reader's chain
// computes the cast itself: a recomputed cast costs each reader a read of
// the cast's operand, a stored one a write and the reads of its result (the
// layer bench's f32 view of a bf16 target, read by the loss and by the
// loss's gradient, was a 151 MB write and two reads of it: docs/perf.md).
// Casts that are graph outputs, that fuse-gemm-epilogue folded, or that any
// other op reads stay as they are. Returns the clones made.
std::int64_t split_shared_casts(Graph& graph) {
  const std::vector<Op>& ops = graph.ops();
  const auto uses = graph.use_counts();
  std::vector<std::vector<int>> readers(static_cast<std::size_t>(graph.num_values()));
  for (std::size_t i = 0; i < ops.size(); ++i)
    for (ValueId v : ops[i].operands)
      if (v != kNoValue && (readers[static_cast<std::size_t>(v)].empty() || readers[static_cast<std::size_t>(v)].back() != static_cast<int>(i)))
        readers[static_cast<std::size_t>(v)].push_back(static_cast<int>(i));
  auto chain_reader = [&](const Op& op, ValueId v) {
    return is_fusible_elementwise(op.kind) && !op.attrs.has("mj.gemm_epilogue") && graph.type(op.results[0]).shape == graph.type(v).shape;
  };
  std::map<int, std::vector<ValueId>> split;  // reader op -> the casts it gets a clone of
  for (const Op& op : ops) {
    if (op.kind != OpKind::Cast || op.attrs.has("mj.gemm_epilogue")) continue;
    const ValueId r = op.results[0];
    const std::vector<int>& rs = readers[static_cast<std::size_t>(r)];
    int operand_uses = 0;
    for (int i : rs)
      for (ValueId v : ops[static_cast<std::size_t>(i)].operands) operand_uses += v == r ? 1 : 0;
    if (rs.size() < 2 || operand_uses != uses[static_cast<std::size_t>(r)]) continue;  // an output, or one reader
    if (!std::all_of(rs.begin(), rs.end(), [&](int i) { return chain_reader(ops[static_cast<std::size_t>(i)], r); })) continue;
    for (std::size_t k = 1; k < rs.size(); ++k) split[rs[k]].push_back(r);
  }
  if (split.empty()) return 0;
  const auto producers = graph.producers();
  std::vector<Op> rebuilt;
  rebuilt.reserve(ops.size() + split.size());
  std::int64_t clones = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    Op reader = ops[i];
    if (auto it = split.find(static_cast<int>(i)); it != split.end())
      for (ValueId r : it->second) {
        Op clone = ops[static_cast<std::size_t>(producers[static_cast<std::size_t>(r)])];
        clone.attrs.erase(kGroupAttr);
        const ValueId copy = graph.new_value(graph.type(r));
        clone.results = {copy};
        for (ValueId& v : reader.operands) v = v == r ? copy : v;
        rebuilt.push_back(std::move(clone));
        ++clones;
      }
    rebuilt.push_back(std::move(reader));
  }
  graph.mutable_ops() = std::move(rebuilt);
  return clones;
}

class FuseElementwisePass final : public Pass {
 public:
  std::string_view name() const override { return "fuse-elementwise"; }

  void run(Graph& graph) override {
    reset_statistics();
    const std::int64_t casts_split = split_shared_casts(graph);
    auto& ops = graph.mutable_ops();
    const auto producers = graph.producers();
    const auto uses = graph.use_counts();
    std::vector<int> parent(ops.size());
    std::iota(parent.begin(), parent.end(), 0);
    auto find = [&](int i) {
      while (parent[static_cast<std::size_t>(i)] != i) i = parent[static_cast<std::size_t>(i)] = parent[static_cast<std::size_t>(parent[static_cast<std::size_t>(i)])];
      return i;
    };
    std::map<int, GroupNeeds> needs;  // by root
    std::int64_t limited = 0;
    // An op folded into a GEMM's epilogue (fuse-gemm-epilogue) is no chain member.
    // A broadcast joins as a producer only (its operand has another shape:
    // read from outside the chain at the broadcast index).
    auto member = [&](const Op& op) { return joins_elementwise_chain(op.kind) && !op.attrs.has("mj.gemm_epilogue"); };
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      if (!member(op)) continue;
      const Shape& shape = graph.type(op.results[0]).shape;
      GroupNeeds& own = needs[static_cast<int>(i)];
      own.operands.insert(op.operands.begin(), op.operands.end());
      own.produced.insert(op.results[0]);
      own.outputs = 1;
      own.dropouts = op.kind == OpKind::Dropout ? 1 : 0;
      if (op.kind == OpKind::Broadcast) continue;  // joins its reader's group, never its operand's
      for (ValueId v : op.operands) {
        int p = producers[static_cast<std::size_t>(v)];
        if (p < 0 || !member(ops[static_cast<std::size_t>(p)])) continue;
        if (uses[static_cast<std::size_t>(v)] != 1 || graph.type(v).shape != shape) continue;
        const int from = find(p), into = find(static_cast<int>(i));
        if (from == into) continue;
        GroupNeeds merged = needs[into];
        const GroupNeeds& other = needs[from];
        merged.operands.insert(other.operands.begin(), other.operands.end());
        merged.produced.insert(other.produced.begin(), other.produced.end());
        merged.outputs += other.outputs - 1;  // v is now consumed inside
        merged.dropouts += other.dropouts;
        if (merged.inputs() > kMaxGroupInputs || merged.outputs > kMaxGroupOutputs || merged.dropouts > kMaxGroupDropouts) {
          ++limited;
          continue;
        }
        parent[static_cast<std::size_t>(from)] = into;
        needs[into] = std::move(merged);
        needs.erase(from);
      }
    }
    // Group sizes, then ids in the order of each group's last op.
    std::map<int, int> size;
    for (std::size_t i = 0; i < ops.size(); ++i)
      if (member(ops[i])) ++size[find(static_cast<int>(i))];
    std::map<int, std::int64_t> id;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      ops[i].attrs.erase(kGroupAttr);
      if (!member(ops[i]) || size[find(static_cast<int>(i))] < 2) continue;
      ops[i].attrs.set(kGroupAttr, std::int64_t{0});  // placeholder until ids are known
    }
    // Number groups by their last op, in graph order.
    std::vector<std::pair<int, int>> last_op;  // (last op index, root)
    for (int i = 0; i < static_cast<int>(ops.size()); ++i)
      if (ops[static_cast<std::size_t>(i)].attrs.has(kGroupAttr)) {
        int root = find(i);
        bool found = false;
        for (auto& [last, r] : last_op)
          if (r == root) {
            last = i;
            found = true;
          }
        if (!found) last_op.push_back({i, root});
      }
    std::sort(last_op.begin(), last_op.end());
    for (std::size_t g = 0; g < last_op.size(); ++g) id[last_op[g].second] = static_cast<std::int64_t>(g);
    std::int64_t fused = 0;
    for (int i = 0; i < static_cast<int>(ops.size()); ++i)
      if (ops[static_cast<std::size_t>(i)].attrs.has(kGroupAttr)) {
        ops[static_cast<std::size_t>(i)].attrs.set(kGroupAttr, id[find(i)]);
        ++fused;
      }
    count("groups", static_cast<std::int64_t>(last_op.size()));
    count("ops-fused", fused);
    count("joins-over-kernel-limits", limited);
    count("casts-split", casts_split);
  }
};

}  // namespace

std::unique_ptr<Pass> create_fuse_elementwise_pass(const PassOptions&) { return std::make_unique<FuseElementwisePass>(); }

}  // namespace moejit
