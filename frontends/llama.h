// Llama-family decoders (Llama, SmolLM, Mixtral) as one moejit graph: RMSNorm,
// rotary position embeddings, grouped-query attention, SwiGLU MLP or a
// Mixtral MoE feed-forward, tied or untied lm head.
//
//   idx [B, T] i32 -> embed_tokens
//     -> L x { x += o_proj(attn(rope(q), rope(k), v)(input_layernorm(x)))
//              x += ffn(post_attention_layernorm(x)) }
//     -> norm -> logits [B*T, V] = x · (lm_head or embed_tokens)ᵀ
//   attn: q [B, Hq, T, Dh], k and v [B, Hkv, T, Dh], each kv head shared by
//         Hq/Hkv consecutive query heads; causal, scale 1/sqrt(Dh).
//   ffn (dense): down_proj(silu(gate_proj(x)) * up_proj(x))
//   ffn (Mixtral): router [E, D] -> softmax -> top-k -> renormalized weights
//         -> the chosen experts' SwiGLU MLPs (nn::moe_block, no aux losses).
//
// Parameter names are Hugging Face's for everything dense
// ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight") and
// nn::moe_block's for the experts ("model.layers.0.block_sparse_moe.router.weight",
// "...block_sparse_moe.experts.w_up" [E, D, F], w_gate [E, D, F],
// w_down [E, F, D]); hf_checkpoint.h maps them to and from Hugging Face files.
// Graph arguments: input "idx" [B, T] i32, "targets" [B, T] i32 (with loss),
// "rope.cos"/"rope.sin" (bind_rope_tables), the parameters.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "frontends/nn.h"
#include "frontends/rope.h"
#include "ir/graph.h"
#include "runtime/backend.h"

namespace moejit {

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";  // | MixtralForCausalLM
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;  // dense MLP width, or one expert's width
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  RopeConfig rope;
  // Mixture of experts (Mixtral): 0 experts is a dense model.
  std::int64_t num_local_experts = 0;
  std::int64_t num_experts_per_tok = 2;
  std::int64_t sliding_window = 0;  // 0: none; a longer sequence is refused
  double initializer_range = 0.02;

  std::int64_t head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  bool is_moe() const { return num_local_experts > 0; }
};

// Throws moejit::Error naming the field, what was expected and what was found.
void validate_llama_config(const LlamaConfig& config);

struct LlamaGraphOptions {
  std::int64_t batch = 1;
  std::int64_t seq_len = 0;  // required, <= max_position_embeddings
  bool with_loss = false;    // "targets" input, "loss" output
  bool output_logits = true; // "logits" [B*T, V]
  // MoE only, with loss: the load-balancing loss (Switch / Mixtral's
  // router_aux_loss_coef) of every layer added to "loss"; outputs "lm_loss"
  // and "aux_loss" then too.
  double aux_loss_coeff = 0.0;
  bool output_routing = false;  // MoE: outputs "counts.<layer>" [E] i32, slots routed to each expert
};

struct LlamaGraph {
  std::vector<ParamSpec> params;  // in creation order
  std::int64_t batch = 0, seq_len = 0;
};

LlamaGraph build_llama(Graph& graph, const LlamaConfig& config, const LlamaGraphOptions& options);
std::vector<ParamSpec> llama_param_specs(const LlamaConfig& config);

// Logits [B*T, V] of ids [B, T] i32 on `backend` (rope tables bound here);
// `params` is checked against the config's specs first.
HostTensor llama_logits(Backend& backend, const LlamaConfig& config, const std::map<std::string, HostTensor>& params,
                        const HostTensor& ids);

}  // namespace moejit
