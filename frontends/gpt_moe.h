// GPT-MoE: a nanoGPT-shaped decoder whose feed-forward layers are mixtures of
// experts (every moe_every-th block), built as one moejit graph from a
// GptMoeConfig. The MoEUT variant (docs/gpt_moe.md) adds shared layer groups
// (group_size), SwitchHead attention, peri-LayerNorm and RoPE; the MoE block
// can route by expert choice.
//
//   idx [B, T] i32 -> wte(idx) + wpe[0:T] -> dropout
//     -> n_layer x { x += attn(ln_1(x)); x += ffn(ln_2(x)) }   (pre-LN)
//     -> ln_f -> logits = x · wte.weightᵀ   (lm head tied to the token embedding)
//   loss = cross_entropy(logits, targets) + Σ_moe-layers aux losses
//
// Graph arguments: input "idx" [B, T] i32, input "targets" [B, T] i32 (with
// loss), the parameters (names in docs/checkpoints.md), state
// "h.<i>.moe.router.selection_bias" when selection_bias is on, and
// "rng_offset" [] i64 when training with dropout > 0 or noisy gating: the
// step_offset of every mj.dropout and mj.random_normal (see RandomStreams in
// nn.h; feed step · rng_positions_per_step).
// Outputs: "logits" [B*T, V] (when asked), "loss", "lm_loss", "aux_loss" (with
// loss; aux_loss only when some coefficient is > 0), and per MoE layer i
// "experts.<i>" [B*T, K] i32 and "counts.<i>" [E] i32 (when asked; expert
// choice: experts.<i> is positions [B*T, E]), and per SwitchHead layer
// "att_v_experts.<i>" (att_n_experts > 1) and "att_o_experts.<i>"
// [B*T*H, att_k] i32. With position_embedding rope the graph has the inputs
// "rope.cos" and "rope.sin" (frontends/rope.h: bind_rope_tables).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "frontends/config.h"
#include "frontends/nn.h"
#include "ir/graph.h"

namespace moejit {

struct GptMoeGraphOptions {
  std::int64_t batch = 1;
  std::int64_t seq_len = 0;     // 0: block_size
  bool training = false;        // dropout and noisy gating
  bool with_loss = true;        // a "targets" input and the loss outputs
  bool output_logits = false;   // output "logits" [B*T, V]
  bool output_routing = false;  // outputs "experts.<i>" and "counts.<i>" per MoE layer
  // outputs "router_logits.<i>" [B*T, E] and "aux_loss.<i>" [] (when the layer
  // has one) per MoE layer (gpt_moe eval --dump)
  bool output_router = false;
};

// One routing decision of the model that the expert report counts: the
// graph output `output` (when output_routing) holds, per routed row, either
// the chosen expert ids [rows, K] (token choice, SwitchHead) or, for expert
// choice, positions [rows, E] with >= 0 where expert e took the row. Rows
// are tokens (rows_per_token 1) or (token, head) pairs (SwitchHead).
struct RoutingTable {
  std::string name;    // "layer 0", "layer 0 attention values", "layer 0 attention output"
  std::string output;  // "experts.0", "att_v_experts.0", "att_o_experts.0"
  std::int64_t layer = 0;
  std::int64_t num_experts = 0;  // SwitchHead: n_head * att_n_experts (id h*E + e)
  std::int64_t rows_per_token = 1;
  bool expert_mask = false;  // positions [rows, E] instead of ids [rows, K]
};

struct GptMoeGraph {
  std::vector<ParamSpec> params;         // parameters and kept state, in creation order
  std::vector<std::int64_t> moe_layers;  // block indices that are MoE
  std::vector<RoutingTable> routing_tables;  // feed-forward MoE layers, then SwitchHead layers
  // Philox positions the random ops take per run; 0 when the graph has none
  // (and no "rng_offset" input). Run s should get rng_offset = s · this.
  std::int64_t rng_positions_per_step = 0;
  std::int64_t batch = 0, seq_len = 0;
};

// Builds the model into `graph` (which should be empty). The config must be
// valid (validate_config) and have vocab_size > 0.
GptMoeGraph build_gpt_moe(Graph& graph, const GptMoeConfig& config, const GptMoeGraphOptions& options);

// The parameters and state a config's model has, without building a graph
// for use (checkpoint checks, counting). Same names, shapes and order.
std::vector<ParamSpec> gpt_moe_param_specs(const GptMoeConfig& config);
// Number of trained parameter elements (state excluded).
std::int64_t count_parameters(const std::vector<ParamSpec>& specs);

}  // namespace moejit
