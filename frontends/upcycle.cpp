// Dense -> MoE upcycling (see upcycle.h).
#include "frontends/upcycle.h"

#include <fmt/format.h>

#include <cmath>
#include <optional>
#include <random>

#include "frontends/gpt_moe.h"
#include "ir/error.h"

namespace moejit {

void validate_upcycle(const UpcycleOptions& o, std::int64_t hidden) {
  if (o.num_copies < 1) throw Error(fmt::format("upcycle: num_experts: expected >= 1, found {}", o.num_copies));
  if (o.top_k < 1 || o.top_k > o.num_copies)
    throw Error(fmt::format("upcycle: top_k: expected 1..num_experts ({}), found {}", o.num_copies, o.top_k));
  if (o.granularity < 1 || hidden % o.granularity != 0)
    throw Error(fmt::format("upcycle: granularity: expected a divisor of the MLP width {}, found {}", hidden,
                            o.granularity));
  if (!(o.router_std > 0)) throw Error(fmt::format("upcycle: router_std: expected > 0, found {}", o.router_std));
  if (!(o.noise_std >= 0)) throw Error(fmt::format("upcycle: noise_std: expected >= 0, found {}", o.noise_std));
}

namespace {

struct ExpertWeights {
  HostTensor router;                // [E, D]
  HostTensor w_up;                  // [E, D, F]
  std::optional<HostTensor> w_gate; // [E, D, F]
  HostTensor w_down;                // [E, F, D]
};

// One dense MLP (linear weights [H, D] up/gate, [D, H] down) -> experts.
ExpertWeights split_mlp(const HostTensor& up, const HostTensor* gate, const HostTensor& down,
                        const UpcycleOptions& o, std::mt19937_64& rng) {
  const std::int64_t H = up.shape()[0], D = up.shape()[1], G = o.granularity, F = H / G, C = o.num_copies,
                     E = C * G;
  std::normal_distribution<double> normal(0.0, 1.0);
  auto rms = [](const HostTensor& t) {
    double ss = 0;
    for (double v : t.to_doubles()) ss += v * v;
    return std::sqrt(ss / static_cast<double>(std::max<std::int64_t>(1, t.numel())));
  };
  // Input-side weights [H, D] -> [E, D, F]: expert c*G+g, column f = hidden unit g*F+f.
  auto input_side = [&](const HostTensor& w) {
    HostTensor out(TensorType{DType::f32, {E, D, F}});
    const double noise = o.noise_std * rms(w);
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t f = 0; f < F; ++f) {
          double v = w.get(((e % G) * F + f) * D + d);
          if (noise > 0) v += noise * normal(rng);
          out.set((e * D + d) * F + f, v);
        }
    return out;
  };
  ExpertWeights x;
  x.w_up = input_side(up);
  if (gate) x.w_gate = input_side(*gate);
  // Output side [D, H] -> [E, F, D], times G: the G pieces' weights each get 1/G.
  x.w_down = HostTensor(TensorType{DType::f32, {E, F, D}});
  const double down_noise = o.noise_std * rms(down);
  for (std::int64_t e = 0; e < E; ++e)
    for (std::int64_t f = 0; f < F; ++f)
      for (std::int64_t d = 0; d < D; ++d) {
        double v = down.get(d * H + (e % G) * F + f) * static_cast<double>(G);
        if (down_noise > 0) v += down_noise * static_cast<double>(G) * normal(rng);
        x.w_down.set((e * F + f) * D + d, v);
      }
  // Router rows: one draw per copy, shared by its pieces.
  x.router = HostTensor(TensorType{DType::f32, {E, D}});
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t d = 0; d < D; ++d) {
      const double v = o.router_std * normal(rng);
      for (std::int64_t g = 0; g < G; ++g) x.router.set((c * G + g) * D + d, v);
    }
  return x;
}

const HostTensor& need(const std::map<std::string, HostTensor>& params, const std::string& name) {
  auto it = params.find(name);
  if (it == params.end()) throw Error(fmt::format("upcycle: tensor {}: expected in the dense model, found none", name));
  return it->second;
}

}  // namespace

UpcycledGptMoe upcycle_gpt_moe(const GptMoeConfig& dense, const std::map<std::string, HostTensor>& params,
                               const UpcycleOptions& o) {
  if (dense.num_moe_layers() != 0)
    throw Error(fmt::format("upcycle: expected a dense model (moe_every 0), found {} MoE layer(s)",
                            dense.num_moe_layers()));
  if (dense.bias)
    throw Error("upcycle: bias: expected false (experts have no biases, so an MLP with biases cannot be copied "
                "exactly), found true");
  if (dense.layer_norm != "pre")
    throw Error(fmt::format("upcycle: layer_norm: expected pre (with peri-LN the experts would read x where the "
                            "dense MLP reads LN(x)), found {}",
                            dense.layer_norm));
  check_parameters(params, gpt_moe_param_specs(dense), "upcycle: the dense model");
  const std::int64_t H = dense.dense_hidden();
  validate_upcycle(o, H);
  UpcycledGptMoe result;
  GptMoeConfig& c = result.config;
  c = dense;
  c.moe_every = 1;
  c.num_experts = o.num_copies * o.granularity;
  c.top_k = o.top_k * o.granularity;
  c.d_expert = H / o.granularity;
  c.router_score = "softmax";
  c.router_order = "softmax_then_topk";
  c.normalize_topk = true;
  c.noisy_gating = false;
  c.selection_bias = false;
  c.shared_expert = false;
  c.capacity_factor = 0.0;
  c.router_type = "token_choice";  // each token's own top-k: the copies' weights sum to 1 per token
  validate_config(c);
  std::mt19937_64 rng(o.seed);
  for (const auto& [name, t] : params)
    if (name.find(".mlp.") == std::string::npos) result.params[name] = t;
  for (std::int64_t layer = 0; layer < dense.distinct_layers(); ++layer) {  // shared layers (group_size) once
    const std::string mlp = fmt::format("h.{}.mlp.", layer), moe = fmt::format("h.{}.moe.", layer);
    const HostTensor* gate = dense.activation == "swiglu" ? &need(params, mlp + "c_gate.weight") : nullptr;
    ExpertWeights x = split_mlp(need(params, mlp + "c_fc.weight"), gate, need(params, mlp + "c_proj.weight"), o, rng);
    result.params[moe + "router.weight"] = x.router;
    result.params[moe + "experts.w_up"] = x.w_up;
    if (x.w_gate) result.params[moe + "experts.w_gate"] = *x.w_gate;
    result.params[moe + "experts.w_down"] = x.w_down;
  }
  check_parameters(result.params, gpt_moe_param_specs(c), "upcycle: the MoE model");
  return result;
}

UpcycledLlama upcycle_llama(const LlamaConfig& dense, const std::map<std::string, HostTensor>& params,
                            const UpcycleOptions& o) {
  if (dense.is_moe())
    throw Error(fmt::format("upcycle: expected a dense Llama-family model, found {} experts", dense.num_local_experts));
  check_parameters(params, llama_param_specs(dense), "upcycle: the dense model");
  validate_upcycle(o, dense.intermediate_size);
  UpcycledLlama result;
  LlamaConfig& c = result.config;
  c = dense;
  c.architecture = "MixtralForCausalLM";
  c.num_local_experts = o.num_copies * o.granularity;
  c.num_experts_per_tok = o.top_k * o.granularity;
  c.intermediate_size = dense.intermediate_size / o.granularity;
  validate_llama_config(c);
  std::mt19937_64 rng(o.seed);
  for (const auto& [name, t] : params)
    if (name.find(".mlp.") == std::string::npos) result.params[name] = t;
  for (std::int64_t layer = 0; layer < dense.num_hidden_layers; ++layer) {
    const std::string mlp = fmt::format("model.layers.{}.mlp.", layer);
    const std::string moe = fmt::format("model.layers.{}.block_sparse_moe.", layer);
    ExpertWeights x = split_mlp(need(params, mlp + "up_proj.weight"), &need(params, mlp + "gate_proj.weight"),
                                need(params, mlp + "down_proj.weight"), o, rng);
    result.params[moe + "router.weight"] = x.router;
    result.params[moe + "experts.w_up"] = x.w_up;
    result.params[moe + "experts.w_gate"] = *x.w_gate;
    result.params[moe + "experts.w_down"] = x.w_down;
  }
  check_parameters(result.params, llama_param_specs(c), "upcycle: the MoE model");
  return result;
}

}  // namespace moejit
