// Static sizes of expert-choice routing (moe.expert_choice), shared by the
// shape rule, the CPU kernel and the CUDA emitter. docs/moe.md has the rules.
#pragma once
#include <cstdint>

namespace moejit {

// Tokens each expert takes: C = ceil(capacity_factor * T * top_k / E),
// clamped to 1..T (an expert cannot take a token twice). With
// capacity_factor 1 the experts take T * top_k slots in all, the same
// compute as token-choice top-k.
std::int64_t expert_choice_capacity(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts,
                                    double capacity_factor);

// Whether token a (score sa) ranks before token b (score sb) in one
// expert's column: the higher score first, NaN below every number, ties
// (and two NaNs) to the lower token index.
inline bool expert_choice_ranks_before(double sa, std::int64_t a, double sb, std::int64_t b) {
  const bool a_nan = sa != sa, b_nan = sb != sb;
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && sa != sb) return sa > sb;
  return a < b;
}

}  // namespace moejit
