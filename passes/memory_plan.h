// memory-plan: places every intermediate value in one arena.
//
// Liveness over the op order: a value lives from the step that defines it to
// the last step that reads it (graph outputs: to the end). Walking the steps
// in order, the values whose life ended before the step are freed, then the
// step's results and scratch get the smallest free block that fits (best
// fit; ties to the lower offset), or the end of the arena grows. Blocks are
// 256-byte aligned and neighbors coalesce when freed.
//
// The plan is a side table (not graph attributes): the CUDA executor asks
// for it with its own steps (fused groups, per-step scratch) and allocates
// one buffer of arena_bytes. Arguments (inputs, params, state) are not in
// the arena: they keep their own buffers across runs.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "passes/pass.h"

namespace moejit {

struct MemoryPlanStep {
  std::vector<ValueId> uses;     // values read by the step
  std::vector<ValueId> defines;  // values the step writes (placed in the arena)
  std::int64_t scratch_bytes = 0;
};

struct MemoryPlan {
  static constexpr std::int64_t kAlignment = 256;
  std::vector<std::int64_t> offsets;          // per value: byte offset in the arena, -1 if not in it
  std::vector<std::int64_t> scratch_offsets;  // per step: byte offset of its scratch, -1 if none
  std::int64_t arena_bytes = 0;               // the arena's size
  std::int64_t unshared_bytes = 0;            // what separate buffers would take (aligned)
};

// Plans the given schedule (steps in execution order).
MemoryPlan plan_memory(const Graph& graph, const std::vector<MemoryPlanStep>& steps);
// One step per op, every op result in the arena.
MemoryPlan plan_memory(const Graph& graph);

}  // namespace moejit
