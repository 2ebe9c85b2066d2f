// Shape rules of the communication ops (comm.*). world_size is the number of
// ranks taking part; the rank itself is not an attribute: it is a property of
// the process (its communicator), so every rank runs the same graph text.
#include "ir/infer.h"

namespace moejit {

using namespace infer_util;

namespace {

constexpr std::int64_t kMaxWorldSize = std::int64_t{1} << 20;

bool expect_world_size(InferCtx& ctx, std::int64_t& world_size) {
  world_size = ctx.attrs.get_int("world_size");
  if (world_size < 1 || world_size > kMaxWorldSize)
    return ctx.fail(fmt::format("attribute 'world_size': expected 1 <= world_size <= {}, found {}", kMaxWorldSize, world_size));
  return true;
}

// Operand 0 of the gather/scatter ops: float, rank >= 1 (dim 0 is split or
// joined between ranks).
bool expect_rows(InferCtx& ctx) {
  if (!expect_float(ctx, 0)) return false;
  if (ctx.operands[0].rank() < 1)
    return ctx.fail(fmt::format("{}: expected rank >= 1 (rows are split between ranks), found {}", ctx.operand_label(0),
                                ctx.operands[0].str()));
  return true;
}

}  // namespace

// comm.all_reduce: x float -> the sum of x over all ranks, same type.
bool infer_all_reduce(InferCtx& ctx) {
  std::int64_t world_size = 0;
  if (!expect_world_size(ctx, world_size) || !expect_float(ctx, 0)) return false;
  ctx.results = {ctx.operands[0]};
  return true;
}

// comm.all_gather: x [R, ...] -> [world_size * R, ...], rank r's rows at r*R.
bool infer_all_gather(InferCtx& ctx) {
  std::int64_t world_size = 0;
  if (!expect_world_size(ctx, world_size) || !expect_rows(ctx)) return false;
  TensorType y = ctx.operands[0];
  if (__builtin_mul_overflow(y.shape[0], world_size, &y.shape[0]))
    return ctx.fail(fmt::format("{}: expected world_size * rows to fit in 64 bits, found {} rows and world_size {}",
                                ctx.operand_label(0), ctx.operands[0].dim(0), world_size));
  ctx.results = {y};
  return true;
}

// comm.reduce_scatter: x [world_size * R, ...] -> [R, ...], rank r gets the
// sum over ranks of rows r*R .. (r+1)*R.
bool infer_reduce_scatter(InferCtx& ctx) {
  std::int64_t world_size = 0;
  if (!expect_world_size(ctx, world_size) || !expect_rows(ctx)) return false;
  TensorType y = ctx.operands[0];
  if (y.shape[0] % world_size != 0)
    return ctx.fail(fmt::format("{}: expected dim 0 a multiple of world_size {}, found {}", ctx.operand_label(0), world_size,
                                ctx.operands[0].str()));
  y.shape[0] /= world_size;
  ctx.results = {y};
  return true;
}

// comm.all_to_all: x [N, ...], send_counts [world_size] i32 -> y [M, ...]
// (x's dtype), recv_counts [world_size] i32. The rows of x are grouped by
// destination rank; N and M (recv_rows, default N) are static capacities:
// a rank sends at most N rows and receives at most M.
bool infer_all_to_all(InferCtx& ctx) {
  std::int64_t world_size = 0;
  if (!expect_world_size(ctx, world_size) || !expect_rows(ctx) || !expect_rank(ctx, 1, 1) ||
      !expect_dtype(ctx, 1, DType::i32))
    return false;
  if (ctx.operands[1].dim(0) != world_size)
    return ctx.fail(fmt::format("{}: expected [{}] (one count per rank, world_size), found {}", ctx.operand_label(1),
                                world_size, ctx.operands[1].str()));
  TensorType y = ctx.operands[0];
  if (ctx.attrs.has("recv_rows")) {
    const std::int64_t recv_rows = ctx.attrs.get_int("recv_rows");
    if (recv_rows < 1 || recv_rows > (std::int64_t{1} << 40))
      return ctx.fail(fmt::format("attribute 'recv_rows': expected 1 <= recv_rows <= 2^40, found {}", recv_rows));
    y.shape[0] = recv_rows;
  }
  ctx.results = {y, ctx.operands[1]};
  return true;
}

}  // namespace moejit
