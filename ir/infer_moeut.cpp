// Shape rules of the ops added for MoEUT and expert-choice routing:
// moe.expert_choice. Sizes: tokens T, experts E, capacity C
// (ir/expert_choice.h).
#include <climits>
#include <cmath>

#include "ir/expert_choice.h"
#include "ir/infer.h"

namespace moejit {

using namespace infer_util;

std::int64_t expert_choice_capacity(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts,
                                    double capacity_factor) {
  double c = std::ceil(capacity_factor * static_cast<double>(tokens) * static_cast<double>(top_k) /
                       static_cast<double>(num_experts));
  if (!(c < static_cast<double>(tokens))) return tokens;  // also catches overflow
  return std::max<std::int64_t>(static_cast<std::int64_t>(c), 1);
}

// moe.expert_choice: scores [T, E] float -> slots [E*C], offsets [E+1],
// positions [T, E], counts [E] (all i32).
bool infer_expert_choice(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0)) return false;
  const TensorType& scores = ctx.operands[0];
  const std::int64_t tokens = scores.dim(0), experts = scores.dim(1);
  constexpr std::int64_t kMaxExperts = std::int64_t{1} << 20;
  if (tokens < 1 || experts < 1 || experts > kMaxExperts)
    return ctx.fail(fmt::format("{}: expected [T, E] with T >= 1 and 1 <= E <= {}, found {}", ctx.operand_label(0),
                                kMaxExperts, scores.str()));
  const std::int64_t top_k = ctx.attrs.get_int("top_k");
  if (top_k < 1 || top_k > experts)
    return ctx.fail(fmt::format("attribute 'top_k': expected 1 <= top_k <= {} (the experts), found {}", experts, top_k));
  const double capacity_factor = ctx.attrs.get_float("capacity_factor");
  if (!(capacity_factor > 0.0) || !std::isfinite(capacity_factor))  // also NaN
    return ctx.fail(fmt::format("attribute 'capacity_factor': expected a finite value > 0 (expert choice has no "
                                "dropless form), found {}",
                                capacity_factor));
  const std::int64_t capacity = expert_choice_capacity(tokens, top_k, experts, capacity_factor);
  if (experts * capacity > std::int64_t{INT32_MAX} || tokens * experts > std::int64_t{INT32_MAX})
    return ctx.fail(fmt::format("{}: expected E * T at most {} (i32 slot ids), found {}", ctx.operand_label(0), INT32_MAX,
                                scores.str()));
  ctx.results = {TensorType{DType::i32, {experts * capacity}}, TensorType{DType::i32, {experts + 1}},
                 TensorType{DType::i32, {tokens, experts}}, TensorType{DType::i32, {experts}}};
  return true;
}

}  // namespace moejit
