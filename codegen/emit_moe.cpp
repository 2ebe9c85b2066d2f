// Emitters of the MoE ops (moe.*): routing, dispatch, the expert matmuls,
// combine, the auxiliary losses, and the fused forms (route, gather_matmul,
// matmul_combine), which run their parts back to back on the GPU.
#include <fmt/format.h>

#include <algorithm>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "ir/moe_shapes.h"

namespace moejit::codegen {

namespace {

using Arg = KernelArg;

unsigned tiles(std::int64_t n, std::int64_t tile) { return static_cast<unsigned>(std::max<std::int64_t>((n + tile - 1) / tile, 1)); }

struct GateFlags {
  int softmax_score, score_first, normalize;
};
GateFlags gate_flags(const AttrList& attrs) {
  return {attrs.get_string("score") == "softmax" ? 1 : 0, attrs.get_string("order") == "softmax_then_topk" ? 1 : 0,
          attrs.get_bool("normalize") ? 1 : 0};
}

// gate over logits [T, E] (+ bias) into weights / experts.
void gate(EmitContext& ctx, ValueId logits, Arg bias, ValueId weights, ValueId experts, std::int64_t top_k) {
  const TensorType& lt = ctx.graph().type(logits);
  std::int64_t tokens = lt.dim(0), E = lt.dim(1);
  const char* t = cuda_type(lt.dtype);
  GateFlags g = gate_flags(ctx.attrs());
  std::string kernel = ctx.define(fmt::format("gate_{}", t),
                                  fmt::format("const {0}* logits, const {0}* bias, {0}* weights, int* experts, i64 tokens, int E, int K, int softmax_score, int score_first, int normalize", t),
                                  fmt::format("  gate_impl<{}>(logits, bias, weights, experts, tokens, E, K, softmax_score, score_first, normalize);\n", t));
  ctx.launch(kernel, blocks_for(tokens * 32, 128),  // a warp per token
             {Arg::of(logits), std::move(bias), Arg::of(weights), Arg::of(experts), Arg::i64(tokens), Arg::i32(E), Arg::i32(top_k),
              Arg::i32(g.softmax_score), Arg::i32(g.score_first), Arg::i32(g.normalize)},
             128);
}

// dispatch as three launches (see codegen/kernels/moe.cuh): per-tile counts,
// one scan, stable per-tile scatter. A tile is `tile` slots owned by one
// warp; the tile grows with the slot count so there are at most ~1024 tiles.
void dispatch(EmitContext& ctx, ValueId experts, ValueId slots, ValueId offsets, ValueId positions, ValueId counts) {
  const TensorType& et = ctx.graph().type(experts);
  std::int64_t tokens = et.dim(0), top_k = et.dim(1), E = ctx.attrs().get_int("num_experts");
  if (E > 4096) ctx.fail(fmt::format("dispatches to at most 4096 experts, found {}", E));
  double capacity_factor = ctx.attrs().get_float("capacity_factor");
  std::int64_t block = ctx.attrs().get_int("block");
  std::int64_t rows = dispatch_rows(tokens, top_k, E, capacity_factor, block);
  std::int64_t capacity = dispatch_capacity(tokens, top_k, E, capacity_factor);
  std::int64_t num_slots = tokens * top_k;
  std::int64_t tile = std::max<std::int64_t>(128, ((num_slots + 1023) / 1024 + 31) / 32 * 32);
  std::int64_t tiles = std::max<std::int64_t>((num_slots + tile - 1) / tile, 1);
  std::int64_t ranks = ctx.scratch(E * tiles * 4);  // [E, tiles] i32
  unsigned warp_blocks = blocks_for(tiles * 32, 256);
  std::string count = ctx.define("dispatch_count", "const int* experts, int* ranks, int* slots, i64 num_slots, int E, i64 rows, i64 tile, i64 tiles",
                                 "  dispatch_count_impl(experts, ranks, slots, num_slots, E, rows, tile, tiles);\n");
  ctx.launch(count, warp_blocks,
             {Arg::of(experts), Arg::scratch(ranks), Arg::of(slots), Arg::i64(num_slots), Arg::i32(E), Arg::i64(rows), Arg::i64(tile), Arg::i64(tiles)});
  std::string scan = ctx.define("dispatch_scan", "int* ranks, int* offsets, int* counts, int E, i64 tiles, i64 capacity, i64 block",
                                "  dispatch_scan_impl(ranks, offsets, counts, E, tiles, capacity, block);\n");
  ctx.launch(scan, 1,
             {Arg::scratch(ranks), Arg::of(offsets), Arg::of(counts), Arg::i32(E), Arg::i64(tiles), Arg::i64(capacity), Arg::i64(block)}, 1024);
  std::string scatter = ctx.define("dispatch_scatter",
                                   "const int* experts, int* ranks, const int* offsets, int* slots, int* positions, i64 num_slots, int E, i64 capacity, i64 tile, i64 tiles",
                                   "  dispatch_scatter_impl(experts, ranks, offsets, slots, positions, num_slots, E, capacity, tile, tiles);\n");
  ctx.launch(scatter, warp_blocks,
             {Arg::of(experts), Arg::scratch(ranks), Arg::of(offsets), Arg::of(slots), Arg::of(positions), Arg::i64(num_slots), Arg::i32(E),
              Arg::i64(capacity), Arg::i64(tile), Arg::i64(tiles)});
}

void permute(EmitContext& ctx, ValueId x, ValueId slots, ValueId xs, std::int64_t top_k) {
  const TensorType& out = ctx.graph().type(xs);
  std::int64_t rows = out.dim(0), D = out.dim(1);
  const char* t = cuda_type(out.dtype);
  std::string kernel = ctx.define(fmt::format("permute_{}", t), fmt::format("const {0}* x, const int* slots, {0}* xs, i64 rows, i64 D, int top_k", t),
                                  fmt::format("  permute_impl<{}>(x, slots, xs, rows, D, top_k);\n", t));
  ctx.launch(kernel, blocks_for(rows * D), {Arg::of(x), Arg::of(slots), Arg::of(xs), Arg::i64(rows), Arg::i64(D), Arg::i32(top_k)});
}

// out[t] = sum_k w[t,k] ys[positions[t,k]] (w null: ones). ys [N, D] -> out [T, D].
void combine(EmitContext& ctx, Arg ys, DType dtype, std::int64_t D, Arg weights, ValueId positions, ValueId out) {
  const TensorType& pt = ctx.graph().type(positions);
  std::int64_t tokens = pt.dim(0), K = pt.dim(1);
  const char* t = cuda_type(dtype);
  std::string kernel = ctx.define(fmt::format("combine_{}", t), fmt::format("const {0}* ys, const {0}* weights, const int* positions, {0}* out, i64 tokens, int K, i64 D", t),
                                  fmt::format("  combine_impl<{}>(ys, weights, positions, out, tokens, K, D);\n", t));
  ctx.launch(kernel, blocks_for(tokens * D), {std::move(ys), std::move(weights), Arg::of(positions), Arg::of(out), Arg::i64(tokens), Arg::i32(K), Arg::i64(D)});
}

// Grouped matmul of rows (optionally gathered through slots) into `out` [N, F],
// zeroing rows outside every segment first.
void grouped_matmul(EmitContext& ctx, ValueId x, ValueId w, ValueId offsets, Arg slots, std::int64_t top_k, Arg out, std::int64_t rows,
                    bool transpose_w) {
  const TensorType& wt = ctx.graph().type(w);
  std::int64_t E = wt.dim(0), D = transpose_w ? wt.dim(2) : wt.dim(1), F = transpose_w ? wt.dim(1) : wt.dim(2);
  if (E > 65535) ctx.fail(fmt::format("supports at most 65535 experts, found {}", E));
  const char* t = cuda_type(wt.dtype);
  ctx.zero(out, rows * F * static_cast<std::int64_t>(dtype_size(wt.dtype)));
  std::string kernel = ctx.define(fmt::format("grouped_matmul_{}", t),
                                  fmt::format("const {0}* x, const {0}* w, const int* offsets, const int* slots, int top_k, {0}* out, i64 D, i64 F, int transpose_w", t),
                                  fmt::format("  grouped_matmul_impl<{}>(x, w, offsets, slots, top_k, out, D, F, transpose_w);\n", t));
  Launch& l = ctx.launch(kernel, tiles(F, 64),
                         {Arg::of(x), Arg::of(w), Arg::of(offsets), std::move(slots), Arg::i32(top_k), std::move(out), Arg::i64(D), Arg::i64(F),
                          Arg::i32(transpose_w ? 1 : 0)});
  l.grid[1] = tiles(rows, 64);
  l.grid[2] = static_cast<unsigned>(E);
}

// Statistics for the auxiliary losses into scratch (2E doubles).
std::int64_t expert_stats(EmitContext& ctx, ValueId probs, Arg experts, std::int64_t top_k) {
  const TensorType& pt = ctx.graph().type(probs);
  std::int64_t tokens = pt.dim(0), E = pt.dim(1);
  std::int64_t stats = ctx.scratch(2 * E * 8);
  const char* t = cuda_type(pt.dtype);
  std::string kernel = ctx.define(fmt::format("expert_stats_{}", t), fmt::format("const {}* probs, const int* experts, double* stats, i64 tokens, int E, int K", t),
                                  fmt::format("  expert_stats_impl<{}>(probs, experts, stats, tokens, E, K);\n", t));
  ctx.launch(kernel, 1, {Arg::of(probs), std::move(experts), Arg::scratch(stats), Arg::i64(tokens), Arg::i32(E), Arg::i32(top_k)});
  return stats;
}

void expert_loss(EmitContext& ctx, std::int64_t stats, int kind) {
  std::int64_t E = ctx.in(0).dim(1);
  const char* t = ctx.out_type(0);
  std::string kernel = ctx.define(fmt::format("expert_loss_{}", t), fmt::format("const double* stats, {}* out, int E, double coeff, int kind", t),
                                  fmt::format("  expert_loss_impl<{}>(stats, out, E, coeff, kind);\n", t));
  ctx.launch(kernel, 1, {Arg::scratch(stats), Arg::of(ctx.result(0)), Arg::i32(E), Arg::f64(ctx.attrs().get_float("coeff")), Arg::i32(kind)}, 32);
}

void expert_loss_grad(EmitContext& ctx, std::int64_t stats, ValueId dloss, int kind) {
  std::int64_t tokens = ctx.in(0).dim(0), E = ctx.in(0).dim(1);
  const char* t = ctx.out_type(0);
  std::string kernel = ctx.define(fmt::format("expert_loss_grad_{}", t),
                                  fmt::format("const double* stats, const {0}* dloss, {0}* dprobs, i64 tokens, int E, double coeff, int kind", t),
                                  fmt::format("  expert_loss_grad_impl<{}>(stats, dloss, dprobs, tokens, E, coeff, kind);\n", t));
  ctx.launch(kernel, blocks_for(tokens * E),
             {Arg::scratch(stats), Arg::of(dloss), Arg::of(ctx.result(0)), Arg::i64(tokens), Arg::i32(E), Arg::f64(ctx.attrs().get_float("coeff")),
              Arg::i32(kind)});
}

}  // namespace

// ---- routing ----
void emit_Gate(EmitContext& ctx) {
  gate(ctx, ctx.operand(0), ctx.has_operand(1) ? Arg::of(ctx.operand(1)) : Arg::none(), ctx.result(0), ctx.result(1), ctx.attrs().get_int("top_k"));
}

void emit_GateGrad(EmitContext& ctx) {
  std::int64_t tokens = ctx.in(0).dim(0), E = ctx.in(0).dim(1), K = ctx.in(1).dim(1);
  const char* t = ctx.in_type(0);
  GateFlags g = gate_flags(ctx.attrs());
  std::string kernel = ctx.define(fmt::format("gate_grad_{}", t),
                                  fmt::format("const {0}* logits, const int* experts, const {0}* dweights, {0}* dlogits, i64 tokens, int E, int K, int softmax_score, int score_first, int normalize", t),
                                  fmt::format("  gate_grad_impl<{}>(logits, experts, dweights, dlogits, tokens, E, K, softmax_score, score_first, normalize);\n", t));
  ctx.launch(kernel, blocks_for(tokens * 32, 128),  // a warp per token
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.result(0)), Arg::i64(tokens), Arg::i32(E),
              Arg::i32(K), Arg::i32(g.softmax_score), Arg::i32(g.score_first), Arg::i32(g.normalize)},
             128);
}

void emit_Dispatch(EmitContext& ctx) { dispatch(ctx, ctx.operand(0), ctx.result(0), ctx.result(1), ctx.result(2), ctx.result(3)); }

void emit_Permute(EmitContext& ctx) { permute(ctx, ctx.operand(0), ctx.operand(1), ctx.result(0), ctx.attrs().get_int("top_k")); }

void emit_PermuteGrad(EmitContext& ctx) {
  combine(ctx, Arg::of(ctx.operand(0)), ctx.in(0).dtype, ctx.in(0).dim(1), Arg::none(), ctx.operand(1), ctx.result(0));
}

// ---- expert matmuls ----
void emit_GroupedMatmul(EmitContext& ctx) {
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(2), Arg::none(), 1, Arg::of(ctx.result(0)), ctx.out(0).dim(0),
                 ctx.attrs().get_bool("transpose_w"));
}

void emit_GroupedMatmulWgrad(EmitContext& ctx) {
  std::int64_t D = ctx.in(0).dim(1), F = ctx.in(1).dim(1), E = ctx.out(0).dim(0);
  if (E > 65535) ctx.fail(fmt::format("supports at most 65535 experts, found {}", E));
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("grouped_wgrad_{}", t), fmt::format("const {0}* xs, const {0}* dys, const int* offsets, {0}* dw, i64 D, i64 F", t),
                                  fmt::format("  grouped_wgrad_impl<{}>(xs, dys, offsets, dw, D, F);\n", t));
  Launch& l = ctx.launch(kernel, tiles(F, 64),
                         {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.result(0)), Arg::i64(D), Arg::i64(F)});
  l.grid[1] = tiles(D, 64);
  l.grid[2] = static_cast<unsigned>(E);
}

void emit_Combine(EmitContext& ctx) {
  combine(ctx, Arg::of(ctx.operand(0)), ctx.in(0).dtype, ctx.in(0).dim(1), Arg::of(ctx.operand(1)), ctx.operand(2), ctx.result(0));
}

void emit_CombineGrad(EmitContext& ctx) {
  std::int64_t rows = ctx.in(0).dim(0), D = ctx.in(0).dim(1), tokens = ctx.in(1).dim(0), K = ctx.in(1).dim(1);
  const char* t = ctx.in_type(0);
  ctx.zero(Arg::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes()));
  std::string rows_kernel = ctx.define(fmt::format("combine_grad_rows_{}", t),
                                       fmt::format("const {0}* weights, const int* positions, const {0}* dout, {0}* dys, i64 tokens, int K, i64 D", t),
                                       fmt::format("  combine_grad_rows_impl<{}>(weights, positions, dout, dys, tokens, K, D);\n", t));
  ctx.launch(rows_kernel, blocks_for(tokens * K * D),
             {Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.operand(3)), Arg::of(ctx.result(0)), Arg::i64(tokens), Arg::i32(K),
              Arg::i64(D)});
  std::string weights_kernel = ctx.define(fmt::format("combine_grad_weights_{}", t),
                                          fmt::format("const {0}* ys, const int* positions, const {0}* dout, {0}* dweights, i64 slots, int K, i64 D", t),
                                          fmt::format("  combine_grad_weights_impl<{}>(ys, positions, dout, dweights, slots, K, D);\n", t));
  ctx.launch(weights_kernel, static_cast<unsigned>(std::clamp<std::int64_t>(tokens * K, 1, 65535)),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(2)), Arg::of(ctx.operand(3)), Arg::of(ctx.result(1)), Arg::i64(tokens * K), Arg::i32(K),
              Arg::i64(D)},
             128);
  (void)rows;
}

// ---- auxiliary losses ----
void emit_LoadBalanceLoss(EmitContext& ctx) {
  expert_loss(ctx, expert_stats(ctx, ctx.operand(0), Arg::of(ctx.operand(1)), ctx.in(1).dim(1)), 0);
}
void emit_LoadBalanceLossGrad(EmitContext& ctx) {
  expert_loss_grad(ctx, expert_stats(ctx, ctx.operand(0), Arg::of(ctx.operand(1)), ctx.in(1).dim(1)), ctx.operand(2), 0);
}
void emit_EntropyReg(EmitContext& ctx) { expert_loss(ctx, expert_stats(ctx, ctx.operand(0), Arg::none(), 1), 1); }
void emit_EntropyRegGrad(EmitContext& ctx) {
  expert_loss_grad(ctx, expert_stats(ctx, ctx.operand(0), Arg::none(), 1), ctx.operand(1), 1);
}

void emit_ZLoss(EmitContext& ctx) {
  std::int64_t tokens = ctx.in(0).dim(0), E = ctx.in(0).dim(1);
  const char* t = ctx.in_type(0);
  std::int64_t values = ctx.scratch(tokens * 8);
  std::string rows_kernel = ctx.define(fmt::format("z_loss_rows_{}", t), fmt::format("const {}* logits, double* row_values, i64 tokens, i64 E", t),
                                       fmt::format("  z_loss_rows_impl<{}>(logits, row_values, tokens, E);\n", t));
  ctx.launch(rows_kernel, static_cast<unsigned>(std::clamp<std::int64_t>(tokens, 1, 65535)),
             {Arg::of(ctx.operand(0)), Arg::scratch(values), Arg::i64(tokens), Arg::i64(E)}, 64);
  std::string mean_kernel = ctx.define(fmt::format("mean_of_values_{}", t), fmt::format("const double* values, i64 n, double coeff, {}* out", t),
                                       fmt::format("  mean_of_values_impl<{}>(values, n, coeff, out);\n", t));
  ctx.launch(mean_kernel, 1, {Arg::scratch(values), Arg::i64(tokens), Arg::f64(ctx.attrs().get_float("coeff")), Arg::of(ctx.result(0))});
}

void emit_ZLossGrad(EmitContext& ctx) {
  std::int64_t tokens = ctx.in(0).dim(0), E = ctx.in(0).dim(1);
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("z_loss_grad_{}", t), fmt::format("const {0}* logits, const {0}* dloss, {0}* dlogits, i64 tokens, i64 E, double coeff", t),
                                  fmt::format("  z_loss_grad_impl<{}>(logits, dloss, dlogits, tokens, E, coeff);\n", t));
  ctx.launch(kernel, static_cast<unsigned>(std::clamp<std::int64_t>(tokens, 1, 65535)),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.result(0)), Arg::i64(tokens), Arg::i64(E),
              Arg::f64(ctx.attrs().get_float("coeff"))},
             64);
}

// ---- fused forms ----
// moe.route: logits = x w_router; gate; dispatch; permute (results in the op's order).
void emit_Route(EmitContext& ctx) {
  const TensorType& x = ctx.in(0);
  std::int64_t tokens = x.dim(0), D = x.dim(1), E = ctx.in(1).dim(1);
  const char* t = ctx.in_type(0);
  std::string mm = ctx.define(fmt::format("matmul_{}", t),
                              fmt::format("const {0}* a, const {0}* b, {0}* c, i64 M, i64 N, i64 K, i64 a_sm, i64 a_sk, i64 b_sk, i64 b_sn, i64 a_batch, i64 b_batch", t),
                              fmt::format("  matmul_impl<{}>(a, b, c, M, N, K, a_sm, a_sk, b_sk, b_sn, a_batch, b_batch);\n", t));
  Launch& l = ctx.launch(mm, tiles(E, 64),
                         {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.result(0)), Arg::i64(tokens), Arg::i64(E), Arg::i64(D),
                          Arg::i64(D), Arg::i64(1), Arg::i64(E), Arg::i64(1), Arg::i64(0), Arg::i64(0)});
  l.grid[1] = tiles(tokens, 64);
  std::int64_t top_k = ctx.attrs().get_int("top_k");
  gate(ctx, ctx.result(0), ctx.has_operand(2) ? Arg::of(ctx.operand(2)) : Arg::none(), ctx.result(1), ctx.result(2), top_k);
  dispatch(ctx, ctx.result(2), ctx.result(3), ctx.result(4), ctx.result(5), ctx.result(6));
  permute(ctx, ctx.operand(0), ctx.result(3), ctx.result(7), top_k);
}

// moe.gather_matmul: grouped matmul whose rows are read through slots.
void emit_GatherMatmul(EmitContext& ctx) {
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(3), Arg::of(ctx.operand(2)), ctx.attrs().get_int("top_k"),
                 Arg::of(ctx.result(0)), ctx.out(0).dim(0), false);
}

// moe.matmul_combine: expert outputs into its ys result [N, D] (kept for the
// backward, which reads them instead of recomputing), then combine.
void emit_MatmulCombine(EmitContext& ctx) {
  std::int64_t rows = ctx.in(0).dim(0), D = ctx.in(1).dim(2);
  DType dtype = ctx.in(0).dtype;
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(2), Arg::none(), 1, Arg::of(ctx.result(1)), rows, false);
  combine(ctx, Arg::of(ctx.result(1)), dtype, D, Arg::of(ctx.operand(3)), ctx.operand(4), ctx.result(0));
}

}  // namespace moejit::codegen
