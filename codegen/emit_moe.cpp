// Emitters of the MoE ops (moe.*): routing, dispatch, the expert matmuls,
// combine, the auxiliary losses, and the fused forms (route, gather_matmul,
// matmul_combine), which run their parts back to back on the GPU. The
// expert matmuls take their TileConfig from choose_gemm (gemm_select.cpp):
// the op's tile_m/n/k when moe-tiling set them, else the heuristic.
#include <fmt/format.h>

#include <algorithm>

#include "codegen/cuda_codegen.h"
#include "codegen/gemm_sm80_launch.h"
#include "codegen/gemm_sm90_launch.h"
#include "codegen/gemm_select.h"
#include "codegen/kernels/matmul.cuh"
#include "codegen/kernels/moe.cuh"
#include "codegen/kernels/reduce.cuh"
#include "codegen/route_config.h"
#include "codegen/simt_matmul.h"
#include "ir/error.h"
#include "ir/moe_shapes.h"

namespace moejit::codegen {

namespace {

using B = Buffer;

std::string threads_of(const TileConfig& c) { return std::to_string(c.threads); }

void gate_flags(const AttrList& attrs, int& softmax_score, int& score_first, int& normalize) {
  softmax_score = attrs.get_string("score") == "softmax" ? 1 : 0;
  score_first = attrs.get_string("order") == "softmax_then_topk" ? 1 : 0;
  normalize = attrs.get_bool("normalize") ? 1 : 0;
}

// The gate and gate_grad with a few lanes a token (gate_rows_kernel,
// gate_grad_rows_kernel in codegen/kernels/moe.cuh, mj::kGateRowsLanes)
// apply to f32 logits with E % 4 == 0, E <= 256 and K <= 8
// (MOEJIT_GATE_ROWS=0: the warp kernels, to compare with). A block: 256
// threads, a padded row of shared memory a token.
bool gate_rows_apply(DType logits, std::int64_t E, std::int64_t top_k) {
  return logits == DType::f32 && E % 4 == 0 && E <= 256 && top_k >= 1 && top_k <= 8 && env_flag("MOEJIT_GATE_ROWS", true);
}
std::string gate_rows_kernel(const char* name, std::int64_t top_k) {
  return instantiation(name, {std::to_string(top_k), std::to_string(mj::kGateRowsLanes)});
}
unsigned gate_rows_shared_bytes(std::int64_t E) {
  return static_cast<unsigned>(mj::gate_rows_tokens(mj::kGateRowsLanes) * mj::gate_rows_stride(static_cast<int>(E)) * 4);
}
unsigned gate_rows_blocks(std::int64_t tokens) { return tiles(tokens, mj::gate_rows_tokens(mj::kGateRowsLanes)); }

// gate over logits [T, E] (+ bias) into weights / experts: four lanes a
// token (gate_rows_apply), else a warp a token.
void gate(EmitContext& ctx, ValueId logits, B bias, ValueId weights, ValueId experts, std::int64_t top_k) {
  const TensorType& lt = ctx.graph().type(logits);
  mj::GateArgs<void> a{};
  a.tokens = lt.dim(0);
  a.E = static_cast<int>(lt.dim(1));
  a.K = static_cast<int>(top_k);
  gate_flags(ctx.attrs(), a.softmax_score, a.score_first, a.normalize);
  if (gate_rows_apply(lt.dtype, a.E, top_k) && ctx.graph().type(weights).dtype == DType::f32) {
    const TileConfig rows = TileConfig::fixed_threads(mj::kGateRowsThreads);
    ctx.launch("moe", gate_rows_kernel("gate_rows_kernel", top_k), rows, {gate_rows_blocks(a.tokens)}, a,
               {{&a.logits, B::of(logits)}, {&a.bias, bias}, {&a.weights, B::of(weights)}, {&a.experts, B::of(experts)}},
               gate_rows_shared_bytes(a.E));
    return;
  }
  TileConfig config = TileConfig::fixed_threads(128);
  const std::string keys = std::to_string(a.E <= 256 ? (a.E + 31) / 32 : 0);  // keys per lane in registers (0: recomputed)
  std::string kernel = warp_kernels_enabled() ? instantiation("gate_kernel", {template_type(lt.dtype), keys, threads_of(config), "true"})
                                              : instantiation("gate_kernel", {template_type(lt.dtype), keys, threads_of(config)});
  ctx.launch("moe", kernel, config, {blocks_for(a.tokens * 32, 128)}, a,
             {{&a.logits, B::of(logits)}, {&a.bias, bias}, {&a.weights, B::of(weights)}, {&a.experts, B::of(experts)}});
}

// dispatch_count_kernel / dispatch_scatter_kernel: a row of shared memory
// a warp (E ints) up to kDispatchSharedExperts experts, else `ranks` itself.
std::string dispatch_warp_kernel(const char* name, std::int64_t E, const TileConfig& warps) {
  return E <= mj::kDispatchSharedExperts ? instantiation(name, {threads_of(warps), "true"}) : instantiation(name, {threads_of(warps)});
}
unsigned dispatch_warp_shared_bytes(std::int64_t E, const TileConfig& warps) {
  return E <= mj::kDispatchSharedExperts ? static_cast<unsigned>(warps.threads / 32 * E * 4) : 0u;
}

// The slots of dispatch cut into tiles of `tile` slots (a multiple of 32),
// one warp each; ranks: scratch [E, tiles] i32 of per-tile expert counts.
struct DispatchTiles {
  std::int64_t tile = 0, tiles = 0, ranks = 0;
};

// The scan and the stable per-tile scatter, once `ranks` holds each tile's
// counts (from dispatch_count_kernel or route_kernel).
void dispatch_finish(EmitContext& ctx, ValueId experts, ValueId slots, ValueId offsets, ValueId positions, ValueId counts,
                     const DispatchTiles& tiling);

// dispatch as three launches (see codegen/kernels/moe.cuh): per-tile counts,
// one scan, stable per-tile scatter (the last two one launch when E x tiles
// is small: dispatch_finish). A tile is `tile` slots owned by one
// warp; the tile grows with the slot count so there are at most ~1024 tiles.
void dispatch(EmitContext& ctx, ValueId experts, ValueId slots, ValueId offsets, ValueId positions, ValueId counts) {
  const TensorType& et = ctx.graph().type(experts);
  std::int64_t tokens = et.dim(0), top_k = et.dim(1), E = ctx.attrs().get_int("num_experts");
  if (E > 4096) ctx.fail(fmt::format("dispatches to at most 4096 experts, found {}", E));
  std::int64_t rows = dispatch_rows(tokens, top_k, E, ctx.attrs().get_float("capacity_factor"), ctx.attrs().get_int("block"));
  std::int64_t num_slots = tokens * top_k;
  DispatchTiles tiling;
  tiling.tile = std::max<std::int64_t>(128, ((num_slots + 1023) / 1024 + 31) / 32 * 32);
  tiling.tiles = std::max<std::int64_t>((num_slots + tiling.tile - 1) / tiling.tile, 1);
  tiling.ranks = ctx.scratch(E * tiling.tiles * 4);
  TileConfig warps = TileConfig::fixed_threads(256);
  mj::DispatchCountArgs count{};
  count.num_slots = num_slots;
  count.E = static_cast<int>(E);
  count.rows = rows;
  count.tile = tiling.tile;
  count.tiles = tiling.tiles;
  ctx.launch("moe", dispatch_warp_kernel("dispatch_count_kernel", E, warps), warps, {blocks_for(tiling.tiles * 32, 256)}, count,
             {{&count.experts, B::of(experts)}, {&count.ranks, B::scratch(tiling.ranks)}, {&count.slots, B::of(slots)}},
             dispatch_warp_shared_bytes(E, warps));
  dispatch_finish(ctx, experts, slots, offsets, positions, counts, tiling);
}

void dispatch_finish(EmitContext& ctx, ValueId experts, ValueId slots, ValueId offsets, ValueId positions, ValueId counts,
                     const DispatchTiles& tiling) {
  const TensorType& et = ctx.graph().type(experts);
  std::int64_t tokens = et.dim(0), top_k = et.dim(1), E = ctx.attrs().get_int("num_experts");
  double capacity_factor = ctx.attrs().get_float("capacity_factor");
  std::int64_t block = ctx.attrs().get_int("block");
  std::int64_t capacity = dispatch_capacity(tokens, top_k, E, capacity_factor);
  std::int64_t num_slots = tokens * top_k;
  std::int64_t tile = tiling.tile, num_tiles = tiling.tiles, ranks = tiling.ranks;
  TileConfig warps = TileConfig::fixed_threads(256);
  unsigned warp_blocks = blocks_for(num_tiles * 32, 256);

  // Few tiles: the scan redone by every block of the scatter (each reads all
  // E x tiles counts, at most 32 a thread), one launch instead of two.
  if (E <= 256 && E * num_tiles <= 8192) {
    mj::DispatchScanScatterArgs f{};
    f.num_slots = num_slots;
    f.E = static_cast<int>(E);
    f.capacity = capacity;
    f.block = block;
    f.tile = tile;
    f.tiles = num_tiles;
    ctx.launch("moe", instantiation("dispatch_scan_scatter_kernel", {threads_of(warps)}), warps,
               {static_cast<unsigned>((num_tiles + warps.threads / 32 - 1) / (warps.threads / 32))}, f,
               {{&f.experts, B::of(experts)},
                {&f.ranks, B::scratch(ranks)},
                {&f.offsets, B::of(offsets)},
                {&f.counts, B::of(counts)},
                {&f.slots, B::of(slots)},
                {&f.positions, B::of(positions)}});
    return;
  }

  const TileConfig row_block = TileConfig::fixed_threads(512);  // up to 1024 tiles (the tiling above): two passes
  mj::DispatchScanArgs scan{};
  scan.E = static_cast<int>(E);
  scan.tiles = num_tiles;
  scan.capacity = capacity;
  scan.block = block;
  ctx.launch("moe", instantiation("dispatch_scan_rows_kernel", {threads_of(row_block)}), row_block, {static_cast<unsigned>(E)}, scan,
             {{&scan.ranks, B::scratch(ranks)}, {&scan.counts, B::of(counts)}});
  const TileConfig one_warp = TileConfig::fixed_threads(32);
  ctx.launch("moe", instantiation("dispatch_offsets_kernel", {threads_of(one_warp)}), one_warp, {1}, scan,
             {{&scan.counts, B::of(counts)}, {&scan.offsets, B::of(offsets)}});

  mj::DispatchScatterArgs scatter{};
  scatter.num_slots = num_slots;
  scatter.E = static_cast<int>(E);
  scatter.capacity = capacity;
  scatter.tile = tile;
  scatter.tiles = num_tiles;
  ctx.launch("moe", dispatch_warp_kernel("dispatch_scatter_kernel", E, warps), warps, {warp_blocks}, scatter,
             {{&scatter.experts, B::of(experts)},
              {&scatter.ranks, B::scratch(ranks)},
              {&scatter.offsets, B::of(offsets)},
              {&scatter.slots, B::of(slots)},
              {&scatter.positions, B::of(positions)}},
             dispatch_warp_shared_bytes(E, warps));
}

// Blocks of `config.threads` for the warp-per-row kernels over `rows` rows.
unsigned warp_row_blocks(std::int64_t rows, const TileConfig& config) {
  const std::int64_t warps_per_block = std::max(config.threads / 32, 1);
  return static_cast<unsigned>(std::clamp<std::int64_t>((rows + warps_per_block - 1) / warps_per_block, 1, 65535));
}

// xs [rows, D] = x rows through slots (rows of zeros where a slot is < 0).
void permute_into(EmitContext& ctx, ValueId x, ValueId slots, B xs, DType dtype, std::int64_t rows, std::int64_t D, std::int64_t top_k) {
  TileConfig config = TileConfig::fixed_threads(256);
  mj::PermuteArgs<void> a{};
  a.rows = rows;
  a.D = D;
  a.top_k = static_cast<int>(top_k);
  ctx.launch("moe", instantiation("permute_kernel", {template_type(dtype), threads_of(config)}), config, {warp_row_blocks(a.rows, config)}, a,
             {{&a.x, B::of(x)}, {&a.slots, B::of(slots)}, {&a.xs, xs}});
}

void permute(EmitContext& ctx, ValueId x, ValueId slots, ValueId xs, std::int64_t top_k) {
  const TensorType& out = ctx.graph().type(xs);
  permute_into(ctx, x, slots, B::of(xs), out.dtype, out.dim(0), out.dim(1), top_k);
}

// Whether the routed rows are exactly the T * K slots: `routing` (offsets
// or positions) comes from a dropless, unpadded dispatch (capacity_factor 0,
// block 1), whose segments cover every row and whose positions name each row
// once (so a grouped matmul or combine_grad writes all of its output).
bool segments_cover_rows(const Graph& graph, ValueId routing) {
  for (const Op& op : graph.ops()) {
    if (op.kind != OpKind::Dispatch && op.kind != OpKind::Route) continue;
    for (ValueId r : op.results)
      if (r == routing) return op.attrs.get_float("capacity_factor") == 0.0 && op.attrs.get_int("block") == 1;
  }
  return false;
}

// out[t] = sum_k w[t,k] ys[positions[t,k]] (w null: ones). ys [N, D] -> out [T, D].
void combine(EmitContext& ctx, B ys, DType dtype, std::int64_t D, B weights, ValueId positions, ValueId out, B addend = B::none()) {
  const TensorType& pt = ctx.graph().type(positions);
  TileConfig config = TileConfig::fixed_threads(256);
  mj::CombineArgs<void> a{};
  a.tokens = pt.dim(0);
  a.K = static_cast<int>(pt.dim(1));
  a.D = D;
  ctx.launch("moe", instantiation("combine_kernel", {template_type(dtype), threads_of(config)}), config, {warp_row_blocks(a.tokens, config)}, a,
             {{&a.ys, ys}, {&a.weights, weights}, {&a.positions, B::of(positions)}, {&a.addend, addend}, {&a.out, B::of(out)}});
}

// The xs result of the moe.route whose slots are `slots` and whose rows are
// x (same top_k), when something reads it (so emit_Route writes it); else
// kNoValue.
ValueId routed_rows(const EmitContext& ctx, ValueId x, const B& slots, std::int64_t top_k) {
  if (slots.kind != B::Kind::value) return kNoValue;
  for (const Op& op : ctx.graph().ops())
    if (op.kind == OpKind::Route && op.results[3] == slots.value)
      return op.operands[0] == x && op.attrs.get_int("top_k") == top_k && ctx.used(op.results[7]) ? op.results[7] : kNoValue;
  return kNoValue;
}

// Grouped matmul of rows (optionally gathered through slots) into `out` [N, F],
// zeroing rows outside every segment first.
// `epilogue` (not store): out is the folded op's result (codegen/op_groups.cpp).
void grouped_matmul(EmitContext& ctx, ValueId x, ValueId w, ValueId offsets, B slots, std::int64_t top_k, B out, std::int64_t rows,
                    bool transpose_w, const GemmEpilogue& epilogue = {}) {
  const TensorType& wt = ctx.graph().type(w);
  std::int64_t E = wt.dim(0);
  if (E > 65535) ctx.fail(fmt::format("supports at most 65535 experts, found {}", E));
  mj::GroupedMatmulArgs<void> a{};
  a.D = transpose_w ? wt.dim(2) : wt.dim(1);
  a.F = transpose_w ? wt.dim(1) : wt.dim(2);
  a.top_k = static_cast<int>(top_k);
  a.transpose_w = transpose_w ? 1 : 0;
  const GemmProblem problem = *gemm_problem_of(ctx.graph(), ctx.op());
  MOEJIT_ASSERT(problem.m == rows && problem.n == a.F && problem.k == a.D, "grouped_matmul: gemm_problem_of disagrees with the emitter");
  GemmChoice choice = choose_gemm(ctx.graph(), ctx.op(), problem, ctx.target());
  const TileConfig& c = choice.config;
  const bool plain = epilogue.kind == GemmEpilogue::Kind::store;
  if (!plain && choice.family != GemmFamily::sm90 && choice.family != GemmFamily::sm80)
    ctx.fail("(SIMT grouped matmul) has no GELU epilogue");  // gemm_has_epilogue said otherwise: a bug
  // Rows outside every segment (a padded or capacity-limited dispatch) are
  // zero in the unfused result: zero what the epilogue writes too (gelu(0)
  // and gelu_grad(x, 0) are 0).
  // (The widening epilogue's out is f32, its aux the 16-bit product.)
  const bool widen = epilogue.kind == GemmEpilogue::Kind::widen;
  const std::int64_t aux_bytes = rows * a.F * static_cast<std::int64_t>(dtype_size(wt.dtype));
  const std::int64_t out_bytes = widen ? rows * a.F * 4 : aux_bytes;
  auto zero_uncovered = [&] {
    if (segments_cover_rows(ctx.graph(), offsets)) return;
    ctx.zero(out, out_bytes);
    if ((epilogue.kind == GemmEpilogue::Kind::gelu || widen) && epilogue.aux.kind != B::Kind::null) ctx.zero(epilogue.aux, aux_bytes);
  };
  // Gathered rows (moe.gather_matmul): the sm90 and sm80 families read them
  // through the slots in their loads (below); for the SIMT tile they are
  // first copied into scratch, as the unfused graph's moe.permute does (the
  // SIMT tile reading each element through slots was slower than the copy:
  // the fused layer ran 4.5% behind the unfused one on an H200).
  // When the route that made the slots also writes xs (its result #7: the
  // backward reads it), that copy is read instead of making a second one.
  const ValueId routed_xs = routed_rows(ctx, x, slots, top_k);
  // A later moe.permute of the same rows (codegen/op_groups.cpp): gather into
  // its result, which every family then reads as contiguous rows.
  if (epilogue.gathered_rows.kind != B::Kind::null) {
    MOEJIT_ASSERT(slots.kind == B::Kind::value, "grouped_matmul: gathered rows of a gather");
    if (routed_xs != kNoValue) ctx.copy(B::of(routed_xs), epilogue.gathered_rows, rows * a.D * static_cast<std::int64_t>(dtype_size(wt.dtype)));
    else permute_into(ctx, x, slots.value, epilogue.gathered_rows, wt.dtype, rows, a.D, top_k);
    x = epilogue.gathered_rows.value;
    slots = B::none();
  }
  // Otherwise the sm80 family reads gathered rows straight from x (cp.async
  // takes any 16-byte-aligned address, and it loads unaligned rows element by
  // element): no copy.
  if (choice.family == GemmFamily::sm80) {
    zero_uncovered();
    Sm80Gemm g;
    g.mode = Sm80Gemm::Mode::grouped;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.dtype = wt.dtype;
    g.a = routed_xs != kNoValue ? B::of(routed_xs) : B::of(x);
    g.slots = routed_xs != kNoValue ? B::none() : slots;
    g.top_k = top_k;
    g.b = B::of(w);
    g.c = out;
    g.offsets = B::of(offsets);
    g.m = rows;
    g.n = a.F;
    g.k = a.D;
    g.groups = E;
    g.b_k_major = transpose_w;
    launch_sm80_gemm(ctx, c, g);
    return;
  }
  B rows_of_x = B::of(x);
  // The sm90 family gathers in its producer (cp.async through the slots)
  // where that pays (sm90_gathers_rows), so no copy of the rows is stored.
  const bool sm90_gather = choice.family == GemmFamily::sm90 && routed_xs == kNoValue && slots.kind != B::Kind::null &&
                           a.D % 8 == 0 && sm90_gathers_rows((a.F + c.tile_n - 1) / c.tile_n);
  if (routed_xs != kNoValue) {
    rows_of_x = B::of(routed_xs);
  } else if (slots.kind != B::Kind::null && !sm90_gather) {
    const std::int64_t xs = ctx.scratch(rows * a.D * static_cast<std::int64_t>(dtype_size(wt.dtype)));
    permute_into(ctx, x, slots.value, B::scratch(xs), wt.dtype, rows, a.D, top_k);
    rows_of_x = B::scratch(xs);
  }
  if (choice.family == GemmFamily::sm90) {
    zero_uncovered();
    Sm90Gemm g;
    g.mode = Sm90Gemm::Mode::grouped;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.a = rows_of_x;
    g.b = B::of(w);
    g.c = out;
    g.offsets = B::of(offsets);
    g.m = rows;
    g.n = a.F;
    g.k = a.D;
    g.groups = E;
    g.a_k_major = true;
    g.b_k_major = transpose_w;
    if (sm90_gather) {
      g.gather_slots = slots;
      g.gather_top_k = top_k;
    }
    launch_sm90_gemm(ctx, c, g);
    return;
  }
  ctx.zero(out, rows * a.F * static_cast<std::int64_t>(dtype_size(wt.dtype)));
  a.top_k = 1;
  ctx.launch("matmul",
             instantiation("grouped_matmul_kernel", {template_type(wt.dtype), std::to_string(c.tile_m), std::to_string(c.tile_n),
                                                     std::to_string(c.tile_k), threads_of(c)}),
             c, {tiles(a.F, c.tile_n), tiles(rows, c.tile_m), static_cast<unsigned>(E)}, a,
             {{&a.x, rows_of_x}, {&a.w, B::of(w)}, {&a.offsets, B::of(offsets)}, {&a.out, out}});
}

// Statistics for the auxiliary losses into scratch (2E doubles).
std::int64_t expert_stats(EmitContext& ctx, ValueId probs, B experts, std::int64_t top_k) {
  const TensorType& pt = ctx.graph().type(probs);
  std::int64_t stats = ctx.scratch(2 * pt.dim(1) * 8);
  TileConfig config = TileConfig::fixed_threads(256);
  mj::ExpertStatsArgs<void> a{};
  a.tokens = pt.dim(0);
  a.E = static_cast<int>(pt.dim(1));
  a.K = static_cast<int>(top_k);
  // Chunks of 16 tokens, so each thread's loop over its chunk stays short,
  // or more where the partials would pass 16 MiB (many experts).
  a.chunk = std::max<std::int64_t>(16, (a.tokens * a.E * 16 + (16 << 20) - 1) / (16 << 20));
  a.chunks = std::max<std::int64_t>((a.tokens + a.chunk - 1) / a.chunk, 1);
  const std::int64_t partials = ctx.scratch(a.chunks * a.E * 2 * 8);
  const std::vector<Bind> pointers = {{&a.probs, B::of(probs)}, {&a.experts, experts}, {&a.stats, B::scratch(stats)}, {&a.partials, B::scratch(partials)}};
  ctx.launch("moe", instantiation("expert_stats_parts_kernel", {template_type(pt.dtype), threads_of(config)}), config,
             {static_cast<unsigned>(std::min<std::int64_t>(a.chunks, 65535))}, a, pointers,
             static_cast<unsigned>(a.E * 4));  // the chunk's histogram
  ctx.launch("moe", instantiation("expert_stats_finish_kernel", {template_type(pt.dtype), threads_of(config)}), config,
             {static_cast<unsigned>(std::min<std::int64_t>(a.E, 65535))}, a, pointers);
  return stats;
}

void expert_loss(EmitContext& ctx, std::int64_t stats, int kind) {
  TileConfig config = TileConfig::fixed_threads(32);
  mj::ExpertLossArgs<void> a{};
  a.E = static_cast<int>(ctx.in(0).dim(1));
  a.coeff = ctx.attrs().get_float("coeff");
  a.kind = kind;
  ctx.launch("moe", instantiation("expert_loss_kernel", {ctx.out_type(0), threads_of(config)}), config, {1}, a,
             {{&a.stats, B::scratch(stats)}, {&a.out, B::of(ctx.result(0))}});
}

void expert_loss_grad(EmitContext& ctx, std::int64_t stats, ValueId dloss, int kind) {
  TileConfig config = TileConfig::fixed_threads(256);
  mj::ExpertLossGradArgs<void> a{};
  a.tokens = ctx.in(0).dim(0);
  a.E = static_cast<int>(ctx.in(0).dim(1));
  a.coeff = ctx.attrs().get_float("coeff");
  a.kind = kind;
  // Four blocks an SM: each thread computes its expert's value once and walks many rows.
  const unsigned blocks = std::min(blocks_for(a.tokens * a.E), static_cast<unsigned>(4 * ctx.target().sm_count));
  ctx.launch("moe", instantiation("expert_loss_grad_kernel", {ctx.out_type(0), threads_of(config)}), config, {blocks}, a,
             {{&a.stats, B::scratch(stats)}, {&a.dloss, B::of(dloss)}, {&a.dprobs, B::of(ctx.result(0))}});
}

}  // namespace

// ---- routing ----
void emit_Gate(EmitContext& ctx) {
  gate(ctx, ctx.operand(0), ctx.has_operand(1) ? B::of(ctx.operand(1)) : B::none(), ctx.result(0), ctx.result(1), ctx.attrs().get_int("top_k"));
}

void emit_GateGrad(EmitContext& ctx) {
  TileConfig config = TileConfig::fixed_threads(128);
  mj::GateGradArgs<void> a{};
  a.tokens = ctx.in(0).dim(0);
  a.E = static_cast<int>(ctx.in(0).dim(1));
  a.K = static_cast<int>(ctx.in(1).dim(1));
  gate_flags(ctx.attrs(), a.softmax_score, a.score_first, a.normalize);
  if (gate_rows_apply(ctx.in(0).dtype, a.E, a.K) && ctx.in(2).dtype == DType::f32 && ctx.out(0).dtype == DType::f32) {
    const TileConfig rows = TileConfig::fixed_threads(mj::kGateRowsThreads);
    ctx.launch("moe", gate_rows_kernel("gate_grad_rows_kernel", a.K), rows, {gate_rows_blocks(a.tokens)}, a,
               {{&a.logits, B::of(ctx.operand(0))},
                {&a.experts, B::of(ctx.operand(1))},
                {&a.dweights, B::of(ctx.operand(2))},
                {&a.dlogits, B::of(ctx.result(0))}},
               gate_rows_shared_bytes(a.E));
    return;
  }
  std::string kernel = warp_kernels_enabled() ? instantiation("gate_grad_kernel", {ctx.in_type(0), threads_of(config), "true"})
                                              : instantiation("gate_grad_kernel", {ctx.in_type(0), threads_of(config)});
  ctx.launch("moe", kernel, config, {blocks_for(a.tokens * 32, 128)}, a,
             {{&a.logits, B::of(ctx.operand(0))},
              {&a.experts, B::of(ctx.operand(1))},
              {&a.dweights, B::of(ctx.operand(2))},
              {&a.dlogits, B::of(ctx.result(0))}});
}

void emit_Dispatch(EmitContext& ctx) { dispatch(ctx, ctx.operand(0), ctx.result(0), ctx.result(1), ctx.result(2), ctx.result(3)); }

// moe.permute; nothing where every reader is a weight gradient that gathers
// the rows from x itself (sm90_permute_elided: no T*K*D copy).
void emit_Permute(EmitContext& ctx) {
  if (sm90_permute_elided(ctx.graph(), ctx.op(), ctx.target())) return;
  permute(ctx, ctx.operand(0), ctx.operand(1), ctx.result(0), ctx.attrs().get_int("top_k"));
}

void emit_PermuteGrad(EmitContext& ctx) {
  combine(ctx, B::of(ctx.operand(0)), ctx.in(0).dtype, ctx.in(0).dim(1), B::none(), ctx.operand(1), ctx.result(0));
}

void emit_permute_grad_with_addend(EmitContext& ctx, B addend, ValueId out) {
  combine(ctx, B::of(ctx.operand(0)), ctx.in(0).dtype, ctx.in(0).dim(1), B::none(), ctx.operand(1), out, addend);
}

// ---- expert matmuls ----
void emit_GroupedMatmul(EmitContext& ctx) {
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(2), B::none(), 1, B::of(ctx.result(0)), ctx.out(0).dim(0),
                 ctx.attrs().get_bool("transpose_w"));
}

void emit_GroupedMatmulWgrad(EmitContext& ctx) { emit_wgrad_with_epilogue(ctx, {}); }

// `epilogue`: store, or widen (an mj.cast to f32 folded in: codegen/op_groups.cpp).
void emit_wgrad_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue) {
  std::int64_t E = ctx.out(0).dim(0);
  if (E > 65535) ctx.fail(fmt::format("supports at most 65535 experts, found {}", E));
  mj::GroupedWgradArgs<void> a{};
  a.D = ctx.in(0).dim(1);
  a.F = ctx.in(1).dim(1);
  const GemmProblem problem = *gemm_problem_of(ctx.graph(), ctx.op());
  GemmChoice choice = choose_gemm(ctx.graph(), ctx.op(), problem, ctx.target());
  const TileConfig& c = choice.config;
  const bool plain = epilogue.kind == GemmEpilogue::Kind::store;
  MOEJIT_ASSERT(plain || epilogue.kind == GemmEpilogue::Kind::widen, "emit_wgrad_with_epilogue: store or widen");
  if (!plain && choice.family != GemmFamily::sm90 && choice.family != GemmFamily::sm80)
    ctx.fail("(SIMT weight gradient) has no widening epilogue");  // gemm_has_epilogue said otherwise: a bug
  const B out = plain ? B::of(ctx.result(0)) : epilogue.out;
  if (choice.family == GemmFamily::sm90) {
    Sm90Gemm g;
    g.mode = Sm90Gemm::Mode::wgrad;
    g.a = B::of(ctx.operand(0));
    if (const Op* permute = sm90_wgrad_gathered_permute(ctx.graph(), ctx.op(), ctx.target())) {  // xs from x through the slots
      g.a = B::of(permute->operands[0]);
      g.gather_slots = B::of(permute->operands[1]);
      g.gather_top_k = permute->attrs.get_int("top_k");
    }
    g.b = B::of(ctx.operand(1));
    g.c = out;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.offsets = B::of(ctx.operand(2));
    g.m = a.D;
    g.n = a.F;
    g.k = ctx.in(0).dim(0);
    g.groups = E;
    launch_sm90_gemm(ctx, c, g);
    return;
  }
  if (choice.family == GemmFamily::sm80) {
    Sm80Gemm g;
    g.mode = Sm80Gemm::Mode::wgrad;
    g.dtype = ctx.in(0).dtype;
    g.a = B::of(ctx.operand(0));
    g.b = B::of(ctx.operand(1));
    g.c = out;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.offsets = B::of(ctx.operand(2));
    g.m = a.D;
    g.n = a.F;
    g.k = ctx.in(0).dim(0);
    g.groups = E;
    launch_sm80_gemm(ctx, c, g);
    return;
  }
  ctx.launch("matmul",
             instantiation("grouped_wgrad_kernel", {ctx.in_type(0), std::to_string(c.tile_m), std::to_string(c.tile_n), std::to_string(c.tile_k),
                                                    threads_of(c)}),
             c, {tiles(a.F, c.tile_n), tiles(a.D, c.tile_m), static_cast<unsigned>(E)}, a,
             {{&a.xs, B::of(ctx.operand(0))}, {&a.dys, B::of(ctx.operand(1))}, {&a.offsets, B::of(ctx.operand(2))}, {&a.dw, B::of(ctx.result(0))}});
}

void emit_Combine(EmitContext& ctx) {
  combine(ctx, B::of(ctx.operand(0)), ctx.in(0).dtype, ctx.in(0).dim(1), B::of(ctx.operand(1)), ctx.operand(2), ctx.result(0));
}

void emit_CombineGrad(EmitContext& ctx) {
  std::int64_t D = ctx.in(0).dim(1), tokens = ctx.in(1).dim(0), K = ctx.in(1).dim(1);
  // Rows of dys that no slot names (padding, capacity) stay zero; a dropless
  // unpadded dispatch names every row once.
  if (!segments_cover_rows(ctx.graph(), ctx.operand(2))) ctx.zero(B::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes()));
  TileConfig config = TileConfig::fixed_threads(256);
  mj::CombineGradArgs<void> a{};
  a.slots = tokens * K;
  a.K = static_cast<int>(K);
  a.D = D;
  ctx.launch("moe", instantiation("combine_grad_kernel", {ctx.in_type(0), threads_of(config)}), config, {warp_row_blocks(a.slots, config)}, a,
             {{&a.ys, B::of(ctx.operand(0))},
              {&a.weights, B::of(ctx.operand(1))},
              {&a.positions, B::of(ctx.operand(2))},
              {&a.dout, B::of(ctx.operand(3))},
              {&a.dys, B::of(ctx.result(0))},
              {&a.dweights, B::of(ctx.result(1))}});
}

// ---- auxiliary losses ----
void emit_LoadBalanceLoss(EmitContext& ctx) {
  expert_loss(ctx, expert_stats(ctx, ctx.operand(0), B::of(ctx.operand(1)), ctx.in(1).dim(1)), 0);
}
void emit_LoadBalanceLossGrad(EmitContext& ctx) {
  expert_loss_grad(ctx, expert_stats(ctx, ctx.operand(0), B::of(ctx.operand(1)), ctx.in(1).dim(1)), ctx.operand(2), 0);
}
void emit_EntropyReg(EmitContext& ctx) { expert_loss(ctx, expert_stats(ctx, ctx.operand(0), B::none(), 1), 1); }
void emit_EntropyRegGrad(EmitContext& ctx) { expert_loss_grad(ctx, expert_stats(ctx, ctx.operand(0), B::none(), 1), ctx.operand(1), 1); }

namespace {
// The register width of the thread-per-token z-loss kernels for rows of E
// values (8, 16 or 32), 0 past 32: the block-per-row kernels.
int z_loss_thread_width(std::int64_t E) { return E <= 8 ? 8 : E <= 16 ? 16 : E <= 32 ? 32 : 0; }
}  // namespace

void emit_ZLoss(EmitContext& ctx) {
  std::int64_t tokens = ctx.in(0).dim(0);
  std::int64_t values = ctx.scratch(tokens * 8);
  TileConfig config = TileConfig::fixed_threads(64);
  mj::ZLossRowsArgs<void> r{};
  r.tokens = tokens;
  r.E = ctx.in(0).dim(1);
  if (const int emax = z_loss_thread_width(r.E)) {
    TileConfig thread_config = TileConfig::fixed_threads(256);
    ctx.launch("moe", instantiation("z_loss_rows_thread_kernel", {ctx.in_type(0), std::to_string(emax), threads_of(thread_config)}),
               thread_config, {blocks_for(tokens)}, r, {{&r.logits, B::of(ctx.operand(0))}, {&r.row_values, B::scratch(values)}});
  } else {
    ctx.launch("moe", instantiation("z_loss_rows_kernel", {ctx.in_type(0), threads_of(config)}), config,
               {static_cast<unsigned>(std::clamp<std::int64_t>(tokens, 1, 65535))}, r,
               {{&r.logits, B::of(ctx.operand(0))}, {&r.row_values, B::scratch(values)}});
  }
  TileConfig mean_config = TileConfig::fixed_threads(256);
  mj::MeanOfValuesArgs<void> m{};
  m.n = tokens;
  m.coeff = ctx.attrs().get_float("coeff");
  ctx.launch("reduce", instantiation("mean_of_values_kernel", {ctx.in_type(0), threads_of(mean_config)}), mean_config, {1}, m,
             {{&m.values, B::scratch(values)}, {&m.out, B::of(ctx.result(0))}});
}

void emit_ZLossGrad(EmitContext& ctx) {
  std::int64_t tokens = ctx.in(0).dim(0);
  TileConfig config = TileConfig::fixed_threads(64);
  mj::ZLossGradArgs<void> a{};
  a.tokens = tokens;
  a.E = ctx.in(0).dim(1);
  a.coeff = ctx.attrs().get_float("coeff");
  const std::vector<Bind> pointers = {{&a.logits, B::of(ctx.operand(0))}, {&a.dloss, B::of(ctx.operand(1))}, {&a.dlogits, B::of(ctx.result(0))}};
  if (const int emax = z_loss_thread_width(a.E)) {
    TileConfig thread_config = TileConfig::fixed_threads(256);
    ctx.launch("moe", instantiation("z_loss_grad_thread_kernel", {ctx.in_type(0), std::to_string(emax), threads_of(thread_config)}),
               thread_config, {blocks_for(tokens)}, a, pointers);
    return;
  }
  ctx.launch("moe", instantiation("z_loss_grad_kernel", {ctx.in_type(0), threads_of(config)}), config,
             {static_cast<unsigned>(std::clamp<std::int64_t>(tokens, 1, 65535))}, a, pointers);
}

// ---- fused forms ----
namespace {

// moe.route with E <= 256 on f32 / bf16 / f16 (route_problem_of): route_kernel
// (logits, gate, per-block expert counts) in the configuration choose_route
// gives (a tuning database's entry, else the heuristic), then dispatch's
// scan and scatter (one launch at few tiles), then permute when xs is
// read. Two to four launches, no host synchronization.
void fused_route(EmitContext& ctx, const RouteProblem& problem) {
  const std::int64_t tokens = problem.tokens, E = problem.experts, top_k = problem.top_k;
  const RouteConfig config = choose_route(problem, ctx.target());
  DispatchTiles tiling;
  tiling.tile = config.block_tokens() * top_k;
  tiling.tiles = std::max<std::int64_t>((tokens + config.block_tokens() - 1) / config.block_tokens(), 1);
  tiling.ranks = ctx.scratch(E * tiling.tiles * 4);
  mj::RouteArgs<void> a{};
  a.tokens = tokens;
  a.D = problem.d;
  a.rows = ctx.out(3).dim(0);
  a.tiles = tiling.tiles;
  a.E = static_cast<int>(E);
  a.K = static_cast<int>(top_k);
  gate_flags(ctx.attrs(), a.softmax_score, a.score_first, a.normalize);
  ctx.launch("moe",
             instantiation("route_kernel", {ctx.in_type(0), std::to_string(config.ep), std::to_string(config.tn), std::to_string(config.tm),
                                            std::to_string(config.threads), std::to_string(config.bk), std::to_string(config.stages)}),
             config.tile, {static_cast<unsigned>(tiling.tiles)}, a,
             {{&a.x, B::of(ctx.operand(0))},
              {&a.w, B::of(ctx.operand(1))},
              {&a.bias, ctx.has_operand(2) ? B::of(ctx.operand(2)) : B::none()},
              {&a.logits, B::of(ctx.result(0))},
              {&a.weights, B::of(ctx.result(1))},
              {&a.experts, B::of(ctx.result(2))},
              {&a.ranks, B::scratch(tiling.ranks)},
              {&a.slots, B::of(ctx.result(3))}});
  dispatch_finish(ctx, ctx.result(2), ctx.result(3), ctx.result(4), ctx.result(5), ctx.result(6), tiling);
  // xs is often unread (moe.gather_matmul reads x through the slots): then
  // it is not materialized (docs/moe.md allows it), saving a T*K*D copy.
  if (ctx.used(ctx.result(7))) permute(ctx, ctx.operand(0), ctx.result(3), ctx.result(7), top_k);
}

}  // namespace

// moe.route: logits = x w_router; gate; dispatch; permute (results in the op's
// order). Fused (fused_route) up to 256 experts in f32 / bf16 / f16; else the
// router product through the SIMT matmul, then the unfused kernels.
void emit_Route(EmitContext& ctx) {
  const TensorType& x = ctx.in(0);
  if (const std::optional<RouteProblem> problem = route_problem_of(ctx.graph(), ctx.op())) {
    fused_route(ctx, *problem);
    return;
  }
  mj::MatmulArgs<void> a{};
  a.M = x.dim(0);
  a.K = x.dim(1);
  a.N = ctx.in(1).dim(1);
  a.a_sm = a.K;
  a.a_sk = 1;
  a.b_sk = a.N;
  a.b_sn = 1;
  const GemmProblem problem = *gemm_problem_of(ctx.graph(), ctx.op());
  GemmChoice choice = choose_gemm(ctx.graph(), ctx.op(), problem, ctx.target());
  if (choice.family == GemmFamily::sm90) {  // bf16 on sm_90a
    Sm90Gemm g;
    g.a = B::of(ctx.operand(0));
    g.b = B::of(ctx.operand(1));
    g.c = B::of(ctx.result(0));
    g.m = a.M;
    g.n = a.N;
    g.k = a.K;
    g.a_k_major = true;
    g.b_k_major = false;
    launch_sm90_gemm(ctx, choice.config, g);
  } else {
    launch_simt_matmul(ctx, choice.config, a, 1, x.dtype, B::of(ctx.operand(0)), B::of(ctx.operand(1)), B::of(ctx.result(0)));
  }
  std::int64_t top_k = ctx.attrs().get_int("top_k");
  gate(ctx, ctx.result(0), ctx.has_operand(2) ? B::of(ctx.operand(2)) : B::none(), ctx.result(1), ctx.result(2), top_k);
  dispatch(ctx, ctx.result(2), ctx.result(3), ctx.result(4), ctx.result(5), ctx.result(6));
  // xs (#7) is written only when read: moe.gather_matmul gathers its own
  // rows, and its backward's weight gradient reads xs (fuse-router-permute
  // points that gather at #7).
  if (ctx.used(ctx.result(7))) permute(ctx, ctx.operand(0), ctx.result(3), ctx.result(7), top_k);
}

// A moe.grouped_matmul or moe.gather_matmul with an elementwise op in its
// epilogue (codegen/op_groups.cpp): the folded op's result instead of the
// product (which is `aux` where gelu's pre-activation is kept).
void emit_grouped_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue) {
  const B out = epilogue.kind == GemmEpilogue::Kind::store ? B::of(ctx.result(0)) : epilogue.out;
  if (ctx.op().kind == OpKind::GatherMatmul) {
    grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(3), B::of(ctx.operand(2)), ctx.attrs().get_int("top_k"), out,
                   ctx.out(0).dim(0), false, epilogue);
  } else {
    MOEJIT_ASSERT(ctx.op().kind == OpKind::GroupedMatmul && epilogue.gathered_rows.kind == B::Kind::null,
                  "emit_grouped_with_epilogue: a grouped matmul");
    grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(2), B::none(), 1, out, ctx.out(0).dim(0),
                   ctx.attrs().get_bool("transpose_w"), epilogue);
  }
}

// moe.gather_matmul: grouped matmul whose rows are read through slots.
void emit_GatherMatmul(EmitContext& ctx) {
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(3), B::of(ctx.operand(2)), ctx.attrs().get_int("top_k"),
                 B::of(ctx.result(0)), ctx.out(0).dim(0), false);
}

// moe.matmul_combine: expert outputs into its ys result [N, D] (kept for the
// backward, which reads them instead of recomputing), then combine.
void emit_MatmulCombine(EmitContext& ctx) {
  std::int64_t rows = ctx.in(0).dim(0), D = ctx.in(1).dim(2);
  DType dtype = ctx.in(0).dtype;
  grouped_matmul(ctx, ctx.operand(0), ctx.operand(1), ctx.operand(2), B::none(), 1, B::of(ctx.result(1)), rows, false);
  combine(ctx, B::of(ctx.result(1)), dtype, D, B::of(ctx.operand(3)), ctx.operand(4), ctx.result(0));
}

}  // namespace moejit::codegen
