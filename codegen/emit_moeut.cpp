// Emitter of expert-choice routing (moe.expert_choice): one launch of
// expert_choice_impl (codegen/kernels/moeut.cuh), grid (T/256, E).
#include <fmt/format.h>

#include "codegen/cuda_codegen.h"
#include "ir/expert_choice.h"

namespace moejit::codegen {

void emit_ExpertChoice(EmitContext& ctx) {
  const TensorType& scores = ctx.in(0);
  const std::int64_t tokens = scores.dim(0), experts = scores.dim(1);
  if (experts > 65535) ctx.fail(fmt::format("routes to at most 65535 experts by expert choice, found {}", experts));
  const std::int64_t capacity =
      expert_choice_capacity(tokens, ctx.attrs().get_int("top_k"), experts, ctx.attrs().get_float("capacity_factor"));
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(
      fmt::format("expert_choice_{}", t),
      fmt::format("const {}* scores, int* slots, int* offsets, int* positions, int* counts, i64 tokens, i64 E, i64 capacity", t),
      "  expert_choice_impl(scores, slots, offsets, positions, counts, tokens, E, capacity);\n");
  Launch& launch = ctx.launch(kernel, static_cast<unsigned>((tokens + 255) / 256),
                              {KernelArg::of(ctx.operand(0)), KernelArg::of(ctx.result(0)), KernelArg::of(ctx.result(1)),
                               KernelArg::of(ctx.result(2)), KernelArg::of(ctx.result(3)), KernelArg::i64(tokens),
                               KernelArg::i64(experts), KernelArg::i64(capacity)},
                              256);
  launch.grid[1] = static_cast<unsigned>(experts);
}

}  // namespace moejit::codegen
