// Static sizes of the MoE dispatch, shared by shape rules and kernels.
#pragma once
#include <cstdint>

namespace moejit {

// Slots one expert may keep: ceil(capacity_factor * T * K / E), or T*K when
// dropless (capacity_factor = 0).
std::int64_t dispatch_capacity(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts, double capacity_factor);

// N, the static number of routed rows: the slots that can be kept, plus room
// to pad each of the E segments to a multiple of `block`, rounded up to a
// multiple of `block`.
std::int64_t dispatch_rows(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts, double capacity_factor,
                           std::int64_t block);

}  // namespace moejit
