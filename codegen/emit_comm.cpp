// Emitters of the communication ops (comm.*). On one rank each is a device
// copy (the identity); world_size > 1 needs NCCL, which the CUDA backend does
// not load yet (docs/scale.md), so it fails at compile time naming the op.
#include <fmt/format.h>

#include "codegen/cuda_codegen.h"

namespace moejit::codegen {

namespace {

using B = Buffer;

void expect_single_rank(EmitContext& ctx) {
  const std::int64_t world_size = ctx.op().attrs.get_int("world_size");
  if (world_size != 1)
    ctx.fail(fmt::format("runs a single rank only: found world_size {} (collectives over NCCL are not built yet)",
                         world_size));
}

void copy_operand_to_result(EmitContext& ctx, int operand, int result) {
  ctx.copy(B::of(ctx.operand(operand)), B::of(ctx.result(result)), static_cast<std::int64_t>(ctx.out(result).bytes()));
}

}  // namespace

void emit_AllReduce(EmitContext& ctx) {
  expect_single_rank(ctx);
  copy_operand_to_result(ctx, 0, 0);
}

void emit_AllGather(EmitContext& ctx) {
  expect_single_rank(ctx);
  copy_operand_to_result(ctx, 0, 0);
}

void emit_ReduceScatter(EmitContext& ctx) {
  expect_single_rank(ctx);
  copy_operand_to_result(ctx, 0, 0);
}

void emit_AllToAll(EmitContext& ctx) {
  expect_single_rank(ctx);
  copy_operand_to_result(ctx, 0, 0);
  copy_operand_to_result(ctx, 1, 1);
}

}  // namespace moejit::codegen
