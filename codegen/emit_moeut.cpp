// Emitter of expert-choice routing (moe.expert_choice): one launch of
// mj::expert_choice_kernel (codegen/kernels/moeut.cuh), grid (T/256, E).
#include <fmt/format.h>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/moeut.cuh"
#include "ir/expert_choice.h"

namespace moejit::codegen {

void emit_ExpertChoice(EmitContext& ctx) {
  const TensorType& scores = ctx.in(0);
  const std::int64_t tokens = scores.dim(0), experts = scores.dim(1);
  if (experts > 65535) ctx.fail(fmt::format("routes to at most 65535 experts by expert choice, found {}", experts));
  TileConfig config = TileConfig::fixed_threads(256);
  mj::ExpertChoiceArgs<void> a{};
  a.tokens = tokens;
  a.E = experts;
  a.capacity = expert_choice_capacity(tokens, ctx.attrs().get_int("top_k"), experts, ctx.attrs().get_float("capacity_factor"));
  ctx.launch("moeut", instantiation("expert_choice_kernel", {ctx.in_type(0), std::to_string(config.threads)}), config,
             {tiles(tokens, config.threads), static_cast<unsigned>(experts)}, a,
             {{&a.scores, Buffer::of(ctx.operand(0))},
              {&a.slots, Buffer::of(ctx.result(0))},
              {&a.offsets, Buffer::of(ctx.result(1))},
              {&a.positions, Buffer::of(ctx.result(2))},
              {&a.counts, Buffer::of(ctx.result(3))}});
}

}  // namespace moejit::codegen
