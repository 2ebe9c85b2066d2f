// The two passes of the CUDA backend, checked on the CPU: memory-plan
// (values alive at the same time never share bytes; reuse happens;
// alignment) against liveness recomputed here, and fuse-elementwise (groups
// are single-use chains, and the CPU backend computes the same with them).
#include <catch2/catch.hpp>

#include <cstring>
#include <map>

#include "cuda/cuda_test_util.h"
#include "ir/sample_graphs.h"
#include "passes/memory_plan.h"
#include "passes/passes.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

// Checks a plan against lifetimes computed from scratch: value v lives over
// steps [first, last]; two values whose lives overlap must not overlap in bytes.
void check_plan(const Graph& graph, const std::vector<MemoryPlanStep>& steps, const MemoryPlan& plan) {
  struct Life {
    int first = -1, last = -1;
    std::int64_t begin = 0, end = 0;
  };
  std::map<int, Life> lives;  // value or -(step + 1) for scratch
  for (int s = 0; s < static_cast<int>(steps.size()); ++s) {
    for (ValueId v : steps[static_cast<std::size_t>(s)].defines) lives[v].first = lives[v].last = s;
    for (ValueId v : steps[static_cast<std::size_t>(s)].uses)
      if (lives.count(v)) lives[v].last = std::max(lives[v].last, s);
    if (steps[static_cast<std::size_t>(s)].scratch_bytes > 0) {
      Life& l = lives[-(s + 1)];
      l.first = l.last = s;
      l.begin = plan.scratch_offsets[static_cast<std::size_t>(s)];
      l.end = l.begin + steps[static_cast<std::size_t>(s)].scratch_bytes;
    }
  }
  for (const auto& out : graph.outputs())
    if (lives.count(out.value)) lives[out.value].last = static_cast<int>(steps.size());
  for (auto& [v, life] : lives) {
    if (v < 0) continue;
    life.begin = plan.offsets[static_cast<std::size_t>(v)];
    life.end = life.begin + static_cast<std::int64_t>(graph.type(v).bytes());
  }
  int overlapping_lives = 0;
  for (const auto& [v, a] : lives) {
    REQUIRE(a.begin >= 0);
    CHECK(a.begin % 256 == 0);
    CHECK(a.end <= plan.arena_bytes);
    for (const auto& [w, b] : lives) {
      if (w <= v) continue;
      bool alive_together = a.first <= b.last && b.first <= a.last;
      if (!alive_together) continue;
      ++overlapping_lives;
      bool bytes_overlap = a.begin < b.end && b.begin < a.end;
      INFO("values " << v << " and " << w);
      CHECK_FALSE(bytes_overlap);
    }
  }
  CHECK(overlapping_lives > 0);
}

}  // namespace

TEST_CASE("memory plan: values alive together never share bytes (GPT-MoE training graph)", "[cuda][memory-plan]") {
  Graph graph = cuda_test::make_gpt_training_graph(cuda_test::small_gpt_config(), 2);
  std::vector<MemoryPlanStep> steps;
  for (const Op& op : graph.ops()) steps.push_back({op.operands, op.results, 0});
  MemoryPlan plan = plan_memory(graph);
  check_plan(graph, steps, plan);
  // Reuse: the arena is much smaller than separate buffers.
  CHECK(plan.arena_bytes * 2 < plan.unshared_bytes);
  for (const auto& arg : graph.args()) CHECK(plan.offsets[static_cast<std::size_t>(arg.value)] == -1);
}

TEST_CASE("memory plan: step scratch never overlaps live values", "[cuda][memory-plan]") {
  Graph graph = make_all_ops_graph();
  std::vector<MemoryPlanStep> steps;
  std::int64_t scratch = 100;
  for (const Op& op : graph.ops()) {
    MemoryPlanStep s{{}, op.results, scratch};
    for (ValueId v : op.operands)
      if (!graph.arg_of(v)) s.uses.push_back(v);
    steps.push_back(s);
    scratch = scratch * 7 % 5000 + 1;
  }
  MemoryPlan plan = plan_memory(graph, steps);
  check_plan(graph, steps, plan);
}

TEST_CASE("fuse-elementwise: groups are single-use chains and the CPU computes the same", "[cuda][fuse-elementwise]") {
  Graph plain = make_all_ops_graph();
  Graph fused = plain;
  create_fuse_elementwise_pass({})->run(fused);
  std::map<std::int64_t, std::vector<int>> groups;
  for (int i = 0; i < static_cast<int>(fused.ops().size()); ++i)
    if (const AttrValue* g = fused.ops()[static_cast<std::size_t>(i)].attrs.find("mj.fusion_group"))
      groups[std::get<std::int64_t>(*g)].push_back(i);
  REQUIRE(groups.size() >= 3);
  auto uses = fused.use_counts();
  for (const auto& [id, ops] : groups) {
    CHECK(ops.size() >= 2);
    // Every member but the last feeds exactly one op, a member of its group.
    for (std::size_t k = 0; k + 1 < ops.size(); ++k) {
      ValueId r = fused.ops()[static_cast<std::size_t>(ops[k])].results[0];
      CHECK(uses[static_cast<std::size_t>(r)] == 1);
      bool consumer_in_group = false;
      for (int j : ops)
        for (ValueId v : fused.ops()[static_cast<std::size_t>(j)].operands) consumer_in_group |= v == r;
      CHECK(consumer_in_group);
    }
  }
  // Running the pass again gives the same groups.
  Graph twice = fused;
  create_fuse_elementwise_pass({})->run(twice);
  for (std::size_t i = 0; i < fused.ops().size(); ++i) CHECK(twice.ops()[i].attrs == fused.ops()[i].attrs);

  auto cpu = make_cpu_backend();
  auto args = cuda_test::random_args(plain, 3, 10);
  auto a = cpu->compile(plain);
  auto b = cpu->compile(fused);
  for (const auto& [name, value] : args) {
    a->set(name, value);
    b->set(name, value);
  }
  a->run();
  b->run();
  for (const auto& out : plain.outputs()) {
    HostTensor x = a->get(out.name), y = b->get(out.name);
    INFO(out.name);
    REQUIRE(x.bytes() == y.bytes());
    CHECK(std::memcmp(x.raw(), y.raw(), x.bytes()) == 0);
  }
}
