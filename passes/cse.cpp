// cse: common subexpression elimination. Ops with the same kind, the same
// operands and equal attributes compute the same values; all but the first
// are erased and their uses point at the first one's results.
//
// Why: builders, nn blocks and autodiff create the same constant, the same
// broadcast or the same transpose many times over; merging them shrinks the
// graph that fusion, memory planning and the backends see.
//
// What counts as equal: kind, operands (after earlier merges), attributes
// (structurally: AttrList keeps them sorted) and result types. Random ops
// (mj.random_normal, mj.dropout) are merged too: they are counter-based
// Philox functions of (seed, offset, step_offset operand, element index), so
// equal attributes and operands mean equal bits. Not merged: mj.adamw, and any op one of whose results is an
// output that updates an argument (two state updates stay two updates, so
// each output keeps a value of its own).
//
// Algorithm: one forward sweep in topological order. Each op's operands are
// first rewritten through the replacements found so far; the op is then
// looked up in a hash table of the ops kept (hash of kind, operands and
// attribute text, confirmed by full equality). A hit maps the op's results to
// the kept op's results and erases it; a miss keeps it. Outputs are rewritten
// at the end. One sweep suffices: an op's operands are final before it is
// looked at.
//
// Statistics: ops-erased.
#include <fmt/format.h>

#include <functional>
#include <memory>
#include <unordered_map>

#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t hash_op(const Op& op) {
  std::size_t h = std::hash<int>{}(static_cast<int>(op.kind));
  auto mix = [&h](std::size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
  for (auto v : op.operands) mix(std::hash<ValueId>{}(v));
  for (const auto& a : op.attrs.items()) {
    mix(std::hash<std::string>{}(a.name));
    mix(std::hash<std::string>{}(attr_value_str(a.value)));
  }
  return h;
}

bool same_computation(const Graph& graph, const Op& a, const Op& b) {
  if (a.kind != b.kind || a.operands != b.operands || !(a.attrs == b.attrs) || a.results.size() != b.results.size())
    return false;
  for (std::size_t r = 0; r < a.results.size(); ++r)
    if (graph.type(a.results[r]) != graph.type(b.results[r])) return false;
  return true;
}

class CsePass final : public Pass {
 public:
  std::string_view name() const override { return "cse"; }

  void run(Graph& graph) override {
    auto& ops = graph.mutable_ops();
    // Values that are outputs updating state: their ops are never merged.
    std::vector<bool> updates_state(static_cast<std::size_t>(graph.num_values()), false);
    for (const auto& out : graph.outputs())
      if (!out.updates.empty()) updates_state[static_cast<std::size_t>(out.value)] = true;

    std::vector<ValueId> replacement(static_cast<std::size_t>(graph.num_values()));
    for (std::size_t v = 0; v < replacement.size(); ++v) replacement[v] = static_cast<ValueId>(v);
    std::unordered_multimap<std::size_t, std::size_t> kept_by_hash;  // hash -> index into `kept`
    std::vector<Op> kept;
    kept.reserve(ops.size());
    int erased = 0;
    for (auto& op : ops) {
      for (auto& v : op.operands) v = replacement[static_cast<std::size_t>(v)];
      bool mergeable = op.kind != OpKind::AdamW;
      for (auto r : op.results) mergeable = mergeable && !updates_state[static_cast<std::size_t>(r)];
      if (mergeable) {
        std::size_t h = hash_op(op);
        const Op* twin = nullptr;
        auto [begin, end] = kept_by_hash.equal_range(h);
        for (auto it = begin; it != end && !twin; ++it)
          if (same_computation(graph, kept[it->second], op)) twin = &kept[it->second];
        if (twin) {
          for (std::size_t r = 0; r < op.results.size(); ++r)
            replacement[static_cast<std::size_t>(op.results[r])] = twin->results[r];
          ++erased;
          continue;
        }
        kept_by_hash.emplace(h, kept.size());
      }
      kept.push_back(std::move(op));
    }
    ops = std::move(kept);
    for (auto& out : graph.mutable_outputs()) out.value = replacement[static_cast<std::size_t>(out.value)];
    count("ops-erased", erased);
  }
};

}  // namespace

std::unique_ptr<Pass> create_cse_pass(const PassOptions&) { return std::make_unique<CsePass>(); }

}  // namespace moejit
