// Shape rules of the MoE ops (moe.*). Sizes: tokens T, experts E, top-k K,
// width D (or F), routed rows N (a static upper bound, see dispatch_rows).
#include <cmath>

#include "ir/infer.h"
#include "ir/moe_shapes.h"

namespace moejit {

using namespace infer_util;

std::int64_t dispatch_capacity(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts, double capacity_factor) {
  if (capacity_factor <= 0.0) return tokens * top_k;
  double c = std::ceil(capacity_factor * static_cast<double>(tokens * top_k) / static_cast<double>(num_experts));
  if (!(c < static_cast<double>(tokens * top_k))) return tokens * top_k;  // no expert can hold more (and no overflow)
  return std::max<std::int64_t>(static_cast<std::int64_t>(c), 1);
}

std::int64_t dispatch_rows(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts, double capacity_factor,
                           std::int64_t block) {
  std::int64_t kept = tokens * top_k;
  if (capacity_factor > 0.0)
    kept = std::min(kept, num_experts * dispatch_capacity(tokens, top_k, num_experts, capacity_factor));
  if (block <= 1) return kept;
  std::int64_t bound = kept + num_experts * (block - 1);
  return (bound + block - 1) / block * block;
}

namespace {
const TensorType& operand(InferCtx& ctx, int i) { return ctx.operands[static_cast<std::size_t>(i)]; }

bool expect_shape(InferCtx& ctx, int i, const Shape& shape, DType dtype, std::string_view why) {
  TensorType want{dtype, shape};
  if (operand(ctx, i) == want) return true;
  return ctx.fail(fmt::format("{}: expected {}{}{}, found {}", ctx.operand_label(i), want.str(), why.empty() ? "" : " ", why,
                              operand(ctx, i).str()));
}

bool expect_offsets(InferCtx& ctx, int i, std::int64_t num_experts) {
  return expect_shape(ctx, i, {num_experts + 1}, DType::i32, "(E+1 segment offsets)");
}

bool check_tiles(InferCtx& ctx) {
  for (const char* name : {"tile_m", "tile_n", "tile_k"})
    if (ctx.attrs.has(name) && ctx.attrs.get_int(name) <= 0)
      return ctx.fail(fmt::format("attribute '{}': expected > 0, found {}", name, ctx.attrs.get_int(name)));
  return true;
}

bool check_gate_attrs(InferCtx& ctx, std::int64_t num_experts) {
  if (!expect_one_of(ctx, "score", {"softmax", "sigmoid"}) ||
      !expect_one_of(ctx, "order", {"softmax_then_topk", "topk_then_softmax"}))
    return false;
  if (ctx.attrs.has("top_k")) {
    std::int64_t k = ctx.attrs.get_int("top_k");
    if (k < 1 || k > num_experts)
      return ctx.fail(fmt::format("attribute 'top_k': expected 1 <= top_k <= {} (the experts), found {}", num_experts, k));
  }
  return true;
}

bool check_dispatch_attrs(InferCtx& ctx, std::int64_t num_experts_found) {
  // Bounds keep the static sizes (E * capacity, E * (block - 1)) far from overflow.
  constexpr std::int64_t kMaxExperts = std::int64_t{1} << 20, kMaxBlock = std::int64_t{1} << 20;
  std::int64_t e = ctx.attrs.get_int("num_experts");
  if (e < 1 || e > kMaxExperts)
    return ctx.fail(fmt::format("attribute 'num_experts': expected 1 <= num_experts <= {}, found {}", kMaxExperts, e));
  if (num_experts_found >= 0 && e != num_experts_found)
    return ctx.fail(fmt::format("attribute 'num_experts': expected {} (the router's width), found {}", num_experts_found, e));
  if (!(ctx.attrs.get_float("capacity_factor") >= 0.0))  // also NaN
    return ctx.fail(fmt::format("attribute 'capacity_factor': expected >= 0 (0 = dropless), found {}",
                                ctx.attrs.get_float("capacity_factor")));
  if (ctx.attrs.get_int("block") < 1 || ctx.attrs.get_int("block") > kMaxBlock)
    return ctx.fail(fmt::format("attribute 'block': expected 1 <= block <= {}, found {}", kMaxBlock, ctx.attrs.get_int("block")));
  return true;
}

std::vector<TensorType> dispatch_results(const AttrList& attrs, std::int64_t tokens, std::int64_t top_k) {
  std::int64_t e = attrs.get_int("num_experts");
  std::int64_t n = dispatch_rows(tokens, top_k, e, attrs.get_float("capacity_factor"), attrs.get_int("block"));
  return {TensorType{DType::i32, {n}}, TensorType{DType::i32, {e + 1}}, TensorType{DType::i32, {tokens, top_k}},
          TensorType{DType::i32, {e}}};
}
}  // namespace

bool infer_gate(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0)) return false;
  const auto& logits = operand(ctx, 0);
  if (ctx.operands.size() > 1 && !expect_shape(ctx, 1, {logits.dim(1)}, logits.dtype, "(one bias per expert)")) return false;
  if (!check_gate_attrs(ctx, logits.dim(1))) return false;
  std::int64_t k = ctx.attrs.get_int("top_k");
  ctx.results = {TensorType{logits.dtype, {logits.dim(0), k}}, TensorType{DType::i32, {logits.dim(0), k}}};
  return true;
}

bool infer_gate_grad(InferCtx& ctx) {
  // logits [T, E], experts [T, K] i32, dweights [T, K] -> dlogits [T, E]
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 2) || !expect_dtype(ctx, 1, DType::i32))
    return false;
  const auto& logits = operand(ctx, 0);
  if (operand(ctx, 1).dim(0) != logits.dim(0))
    return ctx.fail(fmt::format("{}: expected {} tokens, found {}", ctx.operand_label(1), logits.dim(0), operand(ctx, 1).str()));
  if (!expect_shape(ctx, 2, operand(ctx, 1).shape, logits.dtype, "(like experts)")) return false;
  if (!check_gate_attrs(ctx, logits.dim(1))) return false;
  ctx.results = {logits};
  return true;
}

bool infer_dispatch(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_dtype(ctx, 0, DType::i32) || !check_dispatch_attrs(ctx, -1)) return false;
  ctx.results = dispatch_results(ctx.attrs, operand(ctx, 0).dim(0), operand(ctx, 0).dim(1));
  return true;
}

bool infer_permute(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_rank(ctx, 1, 1) || !expect_dtype(ctx, 1, DType::i32)) return false;
  if (ctx.attrs.get_int("top_k") < 1)
    return ctx.fail(fmt::format("attribute 'top_k': expected >= 1, found {}", ctx.attrs.get_int("top_k")));
  ctx.results = {TensorType{operand(ctx, 0).dtype, {operand(ctx, 1).dim(0), operand(ctx, 0).dim(1)}}};
  return true;
}

bool infer_permute_grad(InferCtx& ctx) {
  // dxs [N, D], positions [T, K] i32 -> dx [T, D]
  if (!expect_rank(ctx, 0, 2) || !expect_rank(ctx, 1, 2) || !expect_dtype(ctx, 1, DType::i32)) return false;
  ctx.results = {TensorType{operand(ctx, 0).dtype, {operand(ctx, 1).dim(0), operand(ctx, 0).dim(1)}}};
  return true;
}

bool infer_grouped_matmul(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 3) || !check_tiles(ctx)) return false;
  const auto& xs = operand(ctx, 0);
  const auto& w = operand(ctx, 1);
  bool transpose_w = ctx.attrs.get_bool("transpose_w");
  std::int64_t d = transpose_w ? w.dim(2) : w.dim(1), f = transpose_w ? w.dim(1) : w.dim(2);
  if (w.dtype != xs.dtype || d != xs.dim(1))
    return ctx.fail(fmt::format("{}: expected [E, {}, F] of {} ({}), found {}", ctx.operand_label(1), xs.dim(1),
                                dtype_name(xs.dtype), transpose_w ? "as [E, F, D] with transpose_w" : "rows of xs times w[e]",
                                w.str()));
  if (!expect_offsets(ctx, 2, w.dim(0))) return false;
  ctx.results = {TensorType{xs.dtype, {xs.dim(0), f}}};
  return true;
}

bool infer_grouped_matmul_wgrad(InferCtx& ctx) {
  // xs [N, D], dys [N, F], offsets [E+1] -> [E, D, F]
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 2) || !expect_rank(ctx, 2, 1) ||
      !expect_dtype(ctx, 2, DType::i32))
    return false;
  const auto& xs = operand(ctx, 0);
  const auto& dys = operand(ctx, 1);
  if (dys.dtype != xs.dtype || dys.dim(0) != xs.dim(0))
    return ctx.fail(fmt::format("{}: expected [{}, F] of {}, found {}", ctx.operand_label(1), xs.dim(0), dtype_name(xs.dtype), dys.str()));
  std::int64_t e = operand(ctx, 2).dim(0) - 1;
  if (e < 1) return ctx.fail(fmt::format("{}: expected E+1 >= 2 offsets, found {}", ctx.operand_label(2), operand(ctx, 2).str()));
  ctx.results = {TensorType{xs.dtype, {e, xs.dim(1), dys.dim(1)}}};
  return true;
}

namespace {
// weights [T, K] float and positions [T, K] i32 at operand indices wi, pi.
bool check_weights_positions(InferCtx& ctx, int wi, int pi) {
  if (!expect_rank(ctx, wi, 2) || !expect_float(ctx, wi) || !expect_dtype(ctx, pi, DType::i32)) return false;
  return expect_shape(ctx, pi, operand(ctx, wi).shape, DType::i32, "(like weights)");
}
}  // namespace

bool infer_combine(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !check_weights_positions(ctx, 1, 2)) return false;
  ctx.results = {TensorType{operand(ctx, 0).dtype, {operand(ctx, 1).dim(0), operand(ctx, 0).dim(1)}}};
  return true;
}

bool infer_combine_grad(InferCtx& ctx) {
  // ys [N, D], weights [T, K], positions [T, K], dout [T, D] -> dys [N, D], dweights [T, K]
  if (!infer_combine(ctx)) return false;
  TensorType out = ctx.results[0];
  ctx.results.clear();
  if (!expect_shape(ctx, 3, out.shape, out.dtype, "(like the combined output)")) return false;
  ctx.results = {operand(ctx, 0), operand(ctx, 1)};
  return true;
}

bool infer_load_balance_loss(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 2) || !expect_dtype(ctx, 1, DType::i32)) return false;
  if (operand(ctx, 1).dim(0) != operand(ctx, 0).dim(0))
    return ctx.fail(fmt::format("{}: expected {} tokens (those of probs), found {}", ctx.operand_label(1), operand(ctx, 0).dim(0),
                                operand(ctx, 1).str()));
  ctx.results = {TensorType{operand(ctx, 0).dtype, {}}};
  return true;
}

bool infer_load_balance_loss_grad(InferCtx& ctx) {
  if (!infer_load_balance_loss(ctx)) return false;
  ctx.results.clear();
  if (!expect_shape(ctx, 2, {}, operand(ctx, 0).dtype, "(the loss gradient)")) return false;
  ctx.results = {operand(ctx, 0)};
  return true;
}

bool infer_scalar_loss(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0)) return false;
  ctx.results = {TensorType{operand(ctx, 0).dtype, {}}};
  return true;
}

bool infer_scalar_loss_grad(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_shape(ctx, 1, {}, operand(ctx, 0).dtype, "(the loss gradient)"))
    return false;
  ctx.results = {operand(ctx, 0)};
  return true;
}

bool infer_route(InferCtx& ctx) {
  // x [T, D], w_router [D, E], bias? [E] -> logits [T, E], weights [T, K],
  //   experts [T, K] i32, slots [N], offsets [E+1], positions [T, K], counts [E], xs [N, D]
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 2) || !expect_float(ctx, 1)) return false;
  const auto& x = operand(ctx, 0);
  const auto& w = operand(ctx, 1);
  if (w.dim(0) != x.dim(1) || w.dtype != x.dtype)
    return ctx.fail(fmt::format("{}: expected [{}, E] of {}, found {}", ctx.operand_label(1), x.dim(1), dtype_name(x.dtype), w.str()));
  std::int64_t e = w.dim(1);
  if (ctx.operands.size() > 2 && !expect_shape(ctx, 2, {e}, x.dtype, "(one bias per expert)")) return false;
  if (!check_gate_attrs(ctx, e) || !check_dispatch_attrs(ctx, e)) return false;
  std::int64_t t = x.dim(0), k = ctx.attrs.get_int("top_k");
  auto disp = dispatch_results(ctx.attrs, t, k);
  ctx.results = {TensorType{x.dtype, {t, e}}, TensorType{x.dtype, {t, k}}, TensorType{DType::i32, {t, k}}};
  ctx.results.insert(ctx.results.end(), disp.begin(), disp.end());
  ctx.results.push_back(TensorType{x.dtype, {disp[0].dim(0), x.dim(1)}});
  return true;
}

bool infer_gather_matmul(InferCtx& ctx) {
  // x [T, D], w [E, D, F], slots [N] i32, offsets [E+1], positions [T, K] i32 -> [N, F]
  // (positions, the inverse of slots, is there for the backward: dx gathers through it)
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 3) || !expect_rank(ctx, 2, 1) ||
      !expect_dtype(ctx, 2, DType::i32) || !check_tiles(ctx))
    return false;
  const auto& x = operand(ctx, 0);
  const auto& w = operand(ctx, 1);
  if (w.dtype != x.dtype || w.dim(1) != x.dim(1))
    return ctx.fail(fmt::format("{}: expected [E, {}, F] of {}, found {}", ctx.operand_label(1), x.dim(1), dtype_name(x.dtype), w.str()));
  if (!expect_offsets(ctx, 3, w.dim(0))) return false;
  if (ctx.attrs.get_int("top_k") < 1)
    return ctx.fail(fmt::format("attribute 'top_k': expected >= 1, found {}", ctx.attrs.get_int("top_k")));
  if (!expect_shape(ctx, 4, {x.dim(0), ctx.attrs.get_int("top_k")}, DType::i32, "(positions: [T, top_k])")) return false;
  ctx.results = {TensorType{x.dtype, {operand(ctx, 2).dim(0), w.dim(2)}}};
  return true;
}

bool infer_matmul_combine(InferCtx& ctx) {
  // hs [N, F], w [E, F, D], offsets [E+1], weights [T, K], positions [T, K]
  //   -> out [T, D], ys [N, D] (the expert outputs before the combine, kept for the backward)
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 3) || !check_tiles(ctx)) return false;
  const auto& hs = operand(ctx, 0);
  const auto& w = operand(ctx, 1);
  if (w.dtype != hs.dtype || w.dim(1) != hs.dim(1))
    return ctx.fail(fmt::format("{}: expected [E, {}, D] of {}, found {}", ctx.operand_label(1), hs.dim(1), dtype_name(hs.dtype), w.str()));
  if (!expect_offsets(ctx, 2, w.dim(0)) || !check_weights_positions(ctx, 3, 4)) return false;
  ctx.results = {TensorType{hs.dtype, {operand(ctx, 3).dim(0), w.dim(2)}}, TensorType{hs.dtype, {hs.dim(0), w.dim(2)}}};
  return true;
}

}  // namespace moejit
