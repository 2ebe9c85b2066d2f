// Noisy top-k gating from ops (see frontends/moe_gating.h).
#include "frontends/moe_gating.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

NoisyGateOutputs noisy_top_k_gate(Builder& b, Tensor x, Tensor w_router, std::optional<Tensor> w_noise,
                                  const NoisyGateOptions& options, std::optional<Tensor> bias) {
  if (options.selection_bias && !bias)
    throw Error("noisy_top_k_gate: selection_bias is on, so a bias [E] is expected; found none");
  if (!options.selection_bias && bias)
    throw Error("noisy_top_k_gate: a bias was given but selection_bias is off; turn it on or drop the bias");
  NoisyGateOutputs out;
  out.logits = b.matmul(x, w_router);  // [T, E]
  out.gate_logits = out.logits;
  if (options.noisy) {
    if (!w_noise) throw Error("noisy_top_k_gate: noisy gating needs w_noise [D, E]; found none");
    if (w_noise->type() != w_router.type())
      throw Error(fmt::format("noisy_top_k_gate: w_noise: expected {} (like w_router), found {}", w_router.type().str(),
                              w_noise->type().str()));
    Tensor noise_scale = b.softplus(b.matmul(x, *w_noise));
    Tensor step_offset = options.step_offset.value_or(Tensor{});
    Tensor noise = b.random_normal(out.logits.shape(), options.seed, options.offset, out.logits.dtype(),
                                   options.step_offset ? &step_offset : nullptr);
    out.gate_logits = b.add(out.logits, b.mul(noise, noise_scale));
  }
  Tensor bias_value;
  if (bias) bias_value = *bias;
  auto [weights, experts] = b.moe_gate(out.gate_logits, options.gate, bias ? &bias_value : nullptr);
  out.weights = weights;
  out.experts = experts;
  return out;
}

}  // namespace moejit
