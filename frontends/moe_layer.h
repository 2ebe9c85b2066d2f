// The MoE layer the benchmarks (bench/moe_layer_bench.cpp), the tuner
// (`moejit tune --moe-layer`) and the GPU tests measure, built once: bf16 x
// [T, D] routed (router logits x w_router in f32, softmax top-K
// renormalized, dropless dispatch) to E experts (w_up [E, D, F], GELU,
// w_down [E, F, D]), combined with the routing weights; outputs y and
// loss = mean(f32(y) * f32(target)) + a load-balance loss (0.01), target bf16
// [T, D] as the PyTorch peer holds it.
#pragma once

#include <cstdint>
#include <string>

#include "ir/graph.h"

namespace moejit {

struct MoeLayerShape {
  std::int64_t tokens = 0, d_model = 0, d_expert = 0, experts = 0, top_k = 0;
};

// backward: the MoE fusions (moe-fusions, before autodiff, as the trainer
// does), then the gradients of x, w_router, w_up and w_down.
Graph moe_layer_graph(const std::string& name, const MoeLayerShape& shape, bool backward);

}  // namespace moejit
