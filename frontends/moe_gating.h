// Noisy top-k gating, built from ops (no op of its own): the router of
// Shazeer et al. 2017 as the makeMoE tutorial writes it,
//
//   logits       = x · w_router                               [T, E]
//   noise_scale  = softplus(x · w_noise)                       [T, E]
//   noisy_logits = logits + random_normal([T, E]) * noise_scale
//   weights, experts = moe.gate(noisy_logits, bias?)           [T, K]
//
// with moe.gate's default here the makeMoE one: top-k of the noisy logits,
// softmax over the k chosen (order topk_then_softmax). Noise belongs to
// training; with noisy = false the clean logits go to the gate and w_noise is
// not used. The selection bias (aux-loss-free balancing, DeepSeek-V3) is a
// switch: when on, `bias` [E] goes to moe.gate, where it shifts which experts
// are chosen but not their weights.
//
// The noise is mj.random_normal: Philox(seed, offset + step_offset +
// element), the same numbers on every backend. `step_offset` is a rank-0 i64
// graph value read at run time, so a training loop gets fresh noise each
// step by feeding a new value to ONE compiled graph (frontends/trainer.h
// feeds its "rng_offset" input).
#pragma once
#include <cstdint>
#include <optional>

#include "ir/builder.h"

namespace moejit {

struct NoisyGateOptions {
  GateOptions gate{.top_k = 2, .score = "softmax", .order = "topk_then_softmax", .normalize = false};
  bool noisy = true;             // add randn * softplus(x · w_noise) to the logits
  std::int64_t seed = 0;         // Philox key of the noise
  std::int64_t offset = 0;       // its base position, plus step_offset when given
  bool selection_bias = false;   // pass `bias` to moe.gate
  std::optional<Tensor> step_offset;  // [] i64, random_normal's run-time step_offset operand
};

struct NoisyGateOutputs {
  Tensor logits;        // clean router logits x · w_router [T, E] (for z-loss and load-balance probs)
  Tensor gate_logits;   // what the gate saw: noisy_logits, or logits when not noisy
  Tensor weights;       // [T, K]
  Tensor experts;       // [T, K] i32
};

// x [T, D], w_router [D, E], w_noise [D, E] (read only when noisy), bias [E]
// (required when selection_bias, else must be absent). Throws moejit::Error
// (naming the operand) on mismatched shapes or a bias that disagrees with the
// switch.
NoisyGateOutputs noisy_top_k_gate(Builder& b, Tensor x, Tensor w_router, std::optional<Tensor> w_noise,
                                  const NoisyGateOptions& options, std::optional<Tensor> bias = std::nullopt);

}  // namespace moejit
