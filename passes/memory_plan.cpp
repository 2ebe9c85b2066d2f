// memory-plan: liveness and best-fit placement in one arena (see
// passes/memory_plan.h). As a pass in a pipeline it leaves the graph as it
// is and reports the plan: statistics arena-bytes, unshared-bytes and
// values-planned; with {print=true} it also writes one line per value
// ("memory-plan: %3 tensor<4x8xf32> offset 256 bytes 128") to stderr.
#include "passes/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <map>

#include "ir/error.h"
#include "ir/printer.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::int64_t align(std::int64_t bytes) {
  return (std::max<std::int64_t>(bytes, 1) + MemoryPlan::kAlignment - 1) / MemoryPlan::kAlignment * MemoryPlan::kAlignment;
}

// Free blocks of the arena by offset; best-fit allocation, coalescing frees.
class Arena {
 public:
  std::int64_t allocate(std::int64_t bytes) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= bytes && (best == free_.end() || it->second < best->second)) best = it;
    if (best != free_.end()) {
      std::int64_t offset = best->first, size = best->second;
      free_.erase(best);
      if (size > bytes) free_[offset + bytes] = size - bytes;
      return offset;
    }
    // Grow the arena, reusing a free block that ends at its top.
    std::int64_t offset = end_;
    if (!free_.empty()) {
      auto last = std::prev(free_.end());
      if (last->first + last->second == end_) {
        offset = last->first;
        free_.erase(last);
      }
    }
    end_ = offset + bytes;
    return offset;
  }

  void release(std::int64_t offset, std::int64_t bytes) {
    auto [it, inserted] = free_.emplace(offset, bytes);
    MOEJIT_ASSERT(inserted, "double free in the memory plan");
    if (auto next = std::next(it); next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }

  std::int64_t size() const { return end_; }

 private:
  std::map<std::int64_t, std::int64_t> free_;
  std::int64_t end_ = 0;
};

}  // namespace

MemoryPlan plan_memory(const Graph& graph, const std::vector<MemoryPlanStep>& steps) {
  const auto num_values = static_cast<std::size_t>(graph.num_values());
  const int num_steps = static_cast<int>(steps.size());
  MemoryPlan plan;
  plan.offsets.assign(num_values, -1);
  plan.scratch_offsets.assign(steps.size(), -1);
  // Liveness: the defining step and the last step reading each value.
  std::vector<int> defined_at(num_values, -1), last_use(num_values, -1);
  for (int s = 0; s < num_steps; ++s) {
    for (ValueId v : steps[static_cast<std::size_t>(s)].defines) {
      MOEJIT_ASSERT(defined_at[static_cast<std::size_t>(v)] < 0, "value defined twice in the memory plan");
      defined_at[static_cast<std::size_t>(v)] = s;
      last_use[static_cast<std::size_t>(v)] = std::max(last_use[static_cast<std::size_t>(v)], s);
    }
    for (ValueId v : steps[static_cast<std::size_t>(s)].uses)
      last_use[static_cast<std::size_t>(v)] = std::max(last_use[static_cast<std::size_t>(v)], s);
  }
  for (const auto& out : graph.outputs()) last_use[static_cast<std::size_t>(out.value)] = num_steps;
  // Values whose life ends at each step, freed before the next step allocates.
  std::vector<std::vector<ValueId>> dies_after(steps.size());
  for (std::size_t v = 0; v < num_values; ++v)
    if (defined_at[v] >= 0 && last_use[v] < num_steps) dies_after[static_cast<std::size_t>(last_use[v])].push_back(static_cast<ValueId>(v));

  Arena arena;
  for (int s = 0; s < num_steps; ++s) {
    const auto& step = steps[static_cast<std::size_t>(s)];
    for (ValueId v : step.defines) {
      std::int64_t bytes = align(static_cast<std::int64_t>(graph.type(v).bytes()));
      plan.offsets[static_cast<std::size_t>(v)] = arena.allocate(bytes);
      plan.unshared_bytes += bytes;
    }
    if (step.scratch_bytes > 0) {
      std::int64_t bytes = align(step.scratch_bytes);
      plan.scratch_offsets[static_cast<std::size_t>(s)] = arena.allocate(bytes);
      plan.unshared_bytes += bytes;
      arena.release(plan.scratch_offsets[static_cast<std::size_t>(s)], bytes);
    }
    for (ValueId v : dies_after[static_cast<std::size_t>(s)])
      arena.release(plan.offsets[static_cast<std::size_t>(v)], align(static_cast<std::int64_t>(graph.type(v).bytes())));
  }
  plan.arena_bytes = arena.size();
  return plan;
}

MemoryPlan plan_memory(const Graph& graph) {
  std::vector<MemoryPlanStep> steps;
  for (const Op& op : graph.ops()) steps.push_back({op.operands, op.results, 0});
  return plan_memory(graph, steps);
}

namespace {

class MemoryPlanPass final : public Pass {
 public:
  explicit MemoryPlanPass(bool print) : print_(print) {}
  std::string_view name() const override { return "memory-plan"; }
  void run(Graph& graph) override {
    reset_statistics();
    MemoryPlan plan = plan_memory(graph);
    std::int64_t planned = 0;
    for (int v = 0; v < graph.num_values(); ++v) {
      if (plan.offsets[static_cast<std::size_t>(v)] < 0) continue;
      ++planned;
      if (print_)
        std::cerr << fmt::format("memory-plan: {} {} offset {} bytes {}\n", value_ref(graph, v), graph.type(v).str(),
                                 plan.offsets[static_cast<std::size_t>(v)], graph.type(v).bytes());
    }
    if (print_) std::cerr << fmt::format("memory-plan: arena {} bytes\n", plan.arena_bytes);
    count("arena-bytes", plan.arena_bytes);
    count("unshared-bytes", plan.unshared_bytes);
    count("values-planned", planned);
  }

 private:
  bool print_;
};

}  // namespace

std::unique_ptr<Pass> create_memory_plan_pass(const PassOptions& options) {
  bool print = false;
  if (auto it = options.find("print"); it != options.end()) {
    if (it->second != "true" && it->second != "false")
      throw Error(fmt::format("memory-plan: option 'print': expected true or false, found '{}'", it->second));
    print = it->second == "true";
  }
  return std::make_unique<MemoryPlanPass>(print);
}

}  // namespace moejit
