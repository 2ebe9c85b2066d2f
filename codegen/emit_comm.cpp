// Emitters of the communication ops (comm.*). On one rank each is a device
// copy (the identity). With world_size > 1 each becomes a Launch of kind
// collective, which the executor runs through NCCL on its stream (so a CUDA
// graph captures it; runtime/cuda/nccl_communicator.h):
//   all_reduce, all_gather, reduce_scatter: one NCCL collective, sum for the
//     reductions, x's dtype;
//   all_to_all: NCCL sends fixed sizes known on the host and the per-peer
//     counts live on the device, so the rows go through per-peer blocks of a
//     static capacity C = min(x's rows, y's rows) (no rank sends more than it
//     has, nor receives more than y holds: enough whatever the routing):
//     a2a_pack_kernel (x's packed rows -> [N, C, D] blocks, counts copied),
//     one exchange (block p and count p to rank p, by ncclSend/ncclRecv in
//     a group), a2a_unpack_kernel (received blocks -> y's packed rows,
//     recv_counts). Each rank sends N*C rows, N times what a balanced
//     exchange needs (docs/scale.md: a per-peer capacity factor would cut it).
#include <fmt/format.h>

#include <cstdlib>
#include <string_view>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/comm.cuh"

namespace moejit::codegen {

namespace {

using B = Buffer;

std::int64_t world_size_of(const EmitContext& ctx) { return ctx.op().attrs.get_int("world_size"); }

// Whether the op goes through NCCL: world_size > 1, or MOEJIT_COMM_NCCL_SINGLE_RANK=1
// (a one-rank communicator: how one GPU tests the NCCL path, tests/cuda/nccl_gpu_test.cpp).
bool through_nccl(const EmitContext& ctx) {
  if (world_size_of(ctx) > 1) return true;
  const char* forced = std::getenv("MOEJIT_COMM_NCCL_SINGLE_RANK");
  return forced && std::string_view(forced) == "1";
}

void copy_operand_to_result(EmitContext& ctx, int operand, int result) {
  ctx.copy(B::of(ctx.operand(operand)), B::of(ctx.result(result)), static_cast<std::int64_t>(ctx.out(result).bytes()));
}

void collective(EmitContext& ctx, Launch::Collective kind, std::int64_t count) {
  const std::int64_t world_size = world_size_of(ctx);
  if (world_size > (1 << 16)) ctx.fail(fmt::format("supports at most 65536 ranks, found world_size {}", world_size));
  Launch l;
  l.kind = Launch::Kind::collective;
  l.collective = kind;
  l.dtype = ctx.in(0).dtype;
  l.count = count;
  l.world_size = static_cast<int>(world_size);
  l.src = B::of(ctx.operand(0));
  l.dst = B::of(ctx.result(0));
  ctx.step().launches.push_back(l);
}

std::string threads_of(const TileConfig& c) { return std::to_string(c.threads); }

unsigned warp_blocks(std::int64_t rows, const TileConfig& c) {
  const std::int64_t warps_per_block = c.threads / 32;
  return static_cast<unsigned>(std::max<std::int64_t>(1, std::min<std::int64_t>((rows + warps_per_block - 1) / warps_per_block, 8192)));
}

}  // namespace

const char* collective_name(Launch::Collective collective) {
  switch (collective) {
    case Launch::Collective::all_reduce: return "all_reduce";
    case Launch::Collective::all_gather: return "all_gather";
    case Launch::Collective::reduce_scatter: return "reduce_scatter";
    case Launch::Collective::exchange: return "exchange";
  }
  return "?";
}

void emit_AllReduce(EmitContext& ctx) {
  if (!through_nccl(ctx)) return copy_operand_to_result(ctx, 0, 0);
  collective(ctx, Launch::Collective::all_reduce, ctx.in(0).numel());
}

void emit_AllGather(EmitContext& ctx) {
  if (!through_nccl(ctx)) return copy_operand_to_result(ctx, 0, 0);
  collective(ctx, Launch::Collective::all_gather, ctx.in(0).numel());
}

void emit_ReduceScatter(EmitContext& ctx) {
  if (!through_nccl(ctx)) return copy_operand_to_result(ctx, 0, 0);
  collective(ctx, Launch::Collective::reduce_scatter, ctx.out(0).numel());
}

void emit_AllToAll(EmitContext& ctx) {
  const std::int64_t N = world_size_of(ctx);
  const TensorType& x = ctx.in(0);
  const std::int64_t rows = x.dim(0), D = x.numel() / std::max<std::int64_t>(1, rows), recv_rows = ctx.out(0).dim(0);
  const std::int64_t row_bytes = D * static_cast<std::int64_t>(dtype_size(x.dtype));
  if (!through_nccl(ctx)) {
    if (recv_rows == rows) {
      copy_operand_to_result(ctx, 0, 0);
    } else {  // the rows sent (at most min(rows, recv_rows)) come back whole; y's rows past x's are zero
      const std::int64_t kept = std::min(rows, recv_rows);
      ctx.zero(B::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes()));
      ctx.copy(B::of(ctx.operand(0)), B::of(ctx.result(0)), kept * row_bytes);
    }
    copy_operand_to_result(ctx, 1, 1);
    return;
  }
  // No peer sends more rows than it has (x's) nor receives more than y's.
  const std::int64_t C = std::min(rows, recv_rows);
  const std::int64_t block_bytes = C * row_bytes;
  const std::int64_t send_blocks = ctx.scratch(N * block_bytes), recv_blocks = ctx.scratch(N * block_bytes);
  const std::int64_t send_counts = ctx.scratch(N * 4), recv_counts = ctx.scratch(N * 4);
  TileConfig config = TileConfig::fixed_threads(256);
  if (N > config.threads) ctx.fail(fmt::format("supports at most {} ranks in all_to_all, found world_size {}", config.threads, N));

  mj::A2aPackArgs<void> pack{};
  pack.capacity = C;
  pack.D = D;
  pack.world = static_cast<int>(N);
  ctx.launch("comm", instantiation("a2a_pack_kernel", {template_type(x.dtype), threads_of(config)}), config,
             {warp_blocks(N * C, config)}, pack,
             {{&pack.x, B::of(ctx.operand(0))}, {&pack.send_counts, B::of(ctx.operand(1))},
              {&pack.blocks, B::scratch(send_blocks)}, {&pack.counts_out, B::scratch(send_counts)}});

  Launch exchange;
  exchange.kind = Launch::Kind::collective;
  exchange.collective = Launch::Collective::exchange;
  exchange.dtype = x.dtype;
  exchange.count = C * D;
  exchange.bytes = block_bytes;
  exchange.world_size = static_cast<int>(N);
  exchange.src = B::scratch(send_blocks);
  exchange.dst = B::scratch(recv_blocks);
  exchange.src_counts = B::scratch(send_counts);
  exchange.dst_counts = B::scratch(recv_counts);
  ctx.step().launches.push_back(exchange);

  mj::A2aUnpackArgs<void> unpack{};
  unpack.capacity = C;
  unpack.rows = recv_rows;
  unpack.D = D;
  unpack.world = static_cast<int>(N);
  ctx.launch("comm", instantiation("a2a_unpack_kernel", {template_type(x.dtype), threads_of(config)}), config,
             {warp_blocks(recv_rows, config)}, unpack,
             {{&unpack.blocks, B::scratch(recv_blocks)}, {&unpack.counts_in, B::scratch(recv_counts)},
              {&unpack.y, B::of(ctx.result(0))}, {&unpack.recv_counts, B::of(ctx.result(1))}});
}

}  // namespace moejit::codegen
