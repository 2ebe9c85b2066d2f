// CPU kernel of expert-choice routing (moe.expert_choice): the executable
// specification of docs/moe.md "moe.expert_choice", as loops.
//
// scores [T, E]: each expert e ranks the T tokens by scores[:, e] (higher
// first, NaN last, ties to the lower token) and takes the first C
// (ir/expert_choice.h). Its segment is rows e*C .. e*C+C-1, in rank order.
#include <algorithm>
#include <numeric>

#include "ir/expert_choice.h"
#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {

// moe.expert_choice: scores [T, E] -> slots [E*C], offsets [E+1], positions [T, E], counts [E].
void kernel_ExpertChoice(const KernelArgs& args) {
  const HostTensor& scores_tensor = input(args, 0);
  const std::int64_t tokens = scores_tensor.type().dim(0), experts = scores_tensor.type().dim(1);
  const std::int64_t capacity = expert_choice_capacity(tokens, args.op.attrs.get_int("top_k"), experts,
                                                       args.op.attrs.get_float("capacity_factor"));
  const std::vector<double> scores = scores_tensor.to_doubles();  // [T, E]
  auto slots = out<std::int32_t>(args, 0);      // [E*C]
  auto offsets = out<std::int32_t>(args, 1);    // [E+1]
  auto positions = out<std::int32_t>(args, 2);  // [T, E]
  auto counts = out<std::int32_t>(args, 3);     // [E]
  std::fill(positions.begin(), positions.end(), -1);

  std::vector<std::int64_t> order(idx(tokens));
  for (std::int64_t e = 0; e < experts; ++e) {
    auto score = [&](std::int64_t t) { return scores[idx(t * experts + e)]; };
    std::iota(order.begin(), order.end(), std::int64_t{0});
    std::partial_sort(order.begin(), order.begin() + capacity, order.end(), [&](std::int64_t a, std::int64_t b) {
      return expert_choice_ranks_before(score(a), a, score(b), b);
    });
    for (std::int64_t j = 0; j < capacity; ++j) {
      const std::int64_t t = order[idx(j)], row = e * capacity + j;
      slots[idx(row)] = static_cast<std::int32_t>(t * experts + e);  // slot id t*E + e, as moe.permute reads it
      positions[idx(t * experts + e)] = static_cast<std::int32_t>(row);
    }
    offsets[idx(e)] = static_cast<std::int32_t>(e * capacity);
    counts[idx(e)] = static_cast<std::int32_t>(capacity);
  }
  offsets[idx(experts)] = static_cast<std::int32_t>(experts * capacity);
}

}  // namespace moejit::cpu
