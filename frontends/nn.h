// nn-level builders: the layers of a transformer written with the op
// builder, each creating its parameters under a stable dotted name
// ("h.0.attn.c_attn.weight"), so the names are also the checkpoint's tensor
// names. A Scope carries the Builder, the name prefix, the list of parameters
// created so far (with how to initialize each), whether the graph is for
// training (dropout, noisy gating) and where its random ops draw from.
//
// Layout of linear weights: [out, in], as PyTorch and nanoGPT store them;
// y = x · Wᵀ (matmul with transpose_b). Expert weights are [E, in, out], the
// layout moe.grouped_matmul takes.
//
//   Graph graph;
//   Builder b(graph);
//   std::vector<ParamSpec> params;
//   Scope root(b, params, {.training = true});
//   Tensor y = nn::linear(root.child("c_fc"), x, 256, {.bias = false});
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ir/builder.h"
#include "runtime/host_tensor.h"

namespace moejit {

// How a parameter starts.
struct ParamInit {
  enum class Kind { normal, zeros, ones };
  Kind kind = Kind::normal;
  double std = 0.02;
};

// One parameter (or kept state) of a model: its graph argument name, type,
// initialization, and whether AdamW decays it (matrices and embeddings yes;
// biases and norm gains no). State (the selection bias) is kept and saved
// but not trained by gradient.
struct ParamSpec {
  std::string name;
  TensorType type;
  ParamInit init;
  bool weight_decay = true;
  ArgRole role = ArgRole::param;
};

// Where the random ops of a training graph (dropout masks, gating noise)
// draw from: one Philox stream keyed by `seed`. Each random op takes the next
// `count` positions as its `offset` attribute, and every one adds the graph
// input "rng_offset" [] i64 (its step_offset operand). Feeding rng_offset =
// step · positions_per_step gives every step fresh numbers from ONE compiled
// graph, and no two ops and no two steps share a Philox position.
struct RandomStreams {
  std::int64_t seed = 0;
  std::int64_t positions_per_step = 0;  // positions taken by the ops so far
  std::optional<Tensor> rng_offset;     // the graph input, made on first use
};

// One random op's share of the stream: pass seed, offset and &step_offset to
// Builder::dropout / random_normal.
struct RandomSite {
  std::int64_t seed = 0;
  std::int64_t offset = 0;
  Tensor step_offset;  // the "rng_offset" input
};

struct ScopeOptions {
  bool training = false;  // dropout and noisy gating only when training
  double dropout = 0.0;
  // Layer groups (MoEUT): a scope that shares parameters returns the
  // existing graph parameter when one of the same name was already created
  // (its shape must match), so a layer built twice under one prefix has ONE
  // tensor per weight and autodiff sums the gradients of its uses. Without
  // it, creating a name twice is an error.
  bool share_params = false;
};

class Scope {
 public:
  // `random` must outlive the scope; it is needed only by training scopes
  // with dropout > 0 or noisy gating.
  Scope(Builder& builder, std::vector<ParamSpec>& params, ScopeOptions options = {},
        RandomStreams* random = nullptr, std::string prefix = "");

  // A scope whose names are prefixed by "<prefix><name>.".
  Scope child(std::string_view name) const;
  Builder& b() const { return *builder_; }
  const ScopeOptions& options() const { return options_; }
  // "<prefix><name>"
  std::string full_name(std::string_view name) const;

  // Creates graph parameter <prefix><name> and records its spec.
  // With share_params, an existing parameter of that name is returned instead.
  Tensor param(std::string_view name, Shape shape, ParamInit init, bool weight_decay = true) const;
  // Creates kept, untrained state <prefix><name> and records its spec.
  Tensor state(std::string_view name, Shape shape, ParamInit init) const;
  // Takes `count` positions of the random stream (and makes the
  // "rng_offset" input on first use). Asserts that the scope has streams.
  RandomSite random_site(std::int64_t count) const;
  // x with mj.dropout applied when training with p > 0 (else x), on the
  // scope's random stream.
  Tensor dropout(Tensor x) const;

 private:
  Builder* builder_;
  std::vector<ParamSpec>* params_;
  ScopeOptions options_;
  RandomStreams* random_;
  std::string prefix_;
};

namespace nn {

struct LinearOptions {
  bool bias = false;
  double init_std = 0.02;
  bool weight_decay = true;
};
// linear: x [N, in] -> [N, out]; params weight [out, in], bias? [out].
Tensor linear(const Scope& s, Tensor x, std::int64_t out_features, const LinearOptions& options = {});

// embedding: ids [...] i32 -> [..., dim]; param weight [num, dim].
Tensor embedding(const Scope& s, Tensor ids, std::int64_t num, std::int64_t dim, double init_std = 0.02);

// layer_norm: x [..., C] -> [..., C]; params weight [C] (ones), bias [C] (zeros).
Tensor layer_norm(const Scope& s, Tensor x, double eps = 1e-5);

struct AttentionOptions {
  std::int64_t batch = 1, seq_len = 1, n_head = 1;
  bool bias = false;
  double init_std = 0.02, proj_std = 0.02;  // proj_std: the output projection c_proj
  bool rope = false;  // rotary embeddings on q and k (frontends/rope.h)
};
// causal self-attention: x [B*T, D] -> [B*T, D].
//   c_attn: [3D, D] projects to q, k, v; each reshaped to heads [B, H, T, D/H];
//   mj.attention (causal); heads merged back; c_proj: [D, D].
Tensor causal_self_attention(const Scope& s, Tensor x, const AttentionOptions& options);

struct MlpOptions {
  std::int64_t hidden = 0;
  std::string activation = "gelu";  // gelu: c_proj(gelu(c_fc(x))); swiglu: c_proj(silu(c_gate(x)) * c_fc(x))
  bool bias = false;
  double init_std = 0.02, proj_std = 0.02;
};
// MLP: x [N, D] -> [N, D].
Tensor mlp(const Scope& s, Tensor x, const MlpOptions& options);

struct MoeOptions {
  std::int64_t num_experts = 4;
  std::int64_t top_k = 2;
  std::int64_t d_expert = 128;
  std::string activation = "gelu";  // gelu | swiglu
  std::string score = "softmax";    // softmax | sigmoid
  std::string order = "softmax_then_topk";
  bool normalize = true;
  bool noisy_gating = false;   // router.w_noise exists; the noise is added only when training,
                               // drawn from the scope's random stream
  bool selection_bias = false; // state router.selection_bias [E], shifts selection only
  double capacity_factor = 0.0;
  double aux_loss_coeff = 0.0, z_loss_coeff = 0.0, entropy_coeff = 0.0;
  bool shared_expert = false;  // an MLP of width d_expert added to every token
  bool bias = false;           // biases of the shared expert's linears
  double init_std = 0.02, proj_std = 0.02;
  // "token_choice": each token picks top_k experts (moe.gate + moe.dispatch).
  // "expert_choice": each expert takes its C = ceil(capacity_factor*T*top_k/E)
  // best tokens by score (moe.expert_choice; capacity_factor > 0; no
  // load-balance loss, noisy gating or selection bias: balanced by
  // construction). docs/moe.md.
  std::string router_type = "token_choice";
  // sigma-MoE expert dropout (MoEUT): while training, each (token, expert)
  // pair is removed from the selection with this probability (its selection
  // logit becomes -1e9); the weights of the chosen experts are unchanged.
  double expert_dropout = 0.0;
};

struct MoeOutputs {
  Tensor y;                       // [T, D]
  std::optional<Tensor> aux_loss; // [] f32, the sum of the enabled auxiliary losses
  Tensor router_logits;           // [T, E]
  Tensor experts;                 // [T, K] i32, chosen experts in descending score order
  Tensor counts;                  // [E] i32, slots routed to each expert (before drops)
  // expert_choice only: positions [T, E] i32, >= 0 where expert e took token
  // t (then `experts` is the same tensor).
  std::optional<Tensor> chosen_positions;
};
// MoE feed-forward: x [T, D] -> y [T, D].
//   router.weight [E, D] -> logits [T, E] (noisy when asked, through
//   noisy_top_k_gate of frontends/moe_gating.h) -> moe.gate ->
//   moe.dispatch -> moe.permute -> experts.w_up [E, D, F] (and experts.w_gate
//   for swiglu) -> activation -> experts.w_down [E, F, D] -> moe.combine
//   (+ shared expert MLP "shared").
//   router_input [T, D] (optional): what the router reads, when it is not x
//   (MoEUT's peri-LayerNorm: the router reads LN(x), the experts read x).
//   activation also takes "relu" (sigma-MoE's experts: relu(x W1[e]) W2[e]).
MoeOutputs moe_block(const Scope& s, Tensor x, const MoeOptions& options,
                     std::optional<Tensor> router_input = std::nullopt);

struct SwitchHeadOptions {
  std::int64_t batch = 1, seq_len = 1, n_head = 1;
  std::int64_t head_dim = 0;     // Dh; 0: d_model / n_head
  std::int64_t num_experts = 1;  // E, experts per head (MoEUT's att_n_experts)
  std::int64_t top_k = 1;        // experts per head and token (att_k)
  bool rope = true;              // rotary embeddings on q and k
  double init_std = 0.02, proj_std = 0.02;
};
struct SwitchHeadOutputs {
  Tensor y;                              // [B*T, D]
  std::optional<Tensor> value_experts;   // [B*T*H, K] i32 ids h*E + e (E > 1 only)
  Tensor output_experts;                 // [B*T*H, K] i32 ids h*E + e
};
// SwitchHead attention (Csordas et al. 2023): x [B*T, D] (what the values
// read), qk_input [B*T, D] (what queries, keys and both routers read; x
// itself under pre-LN) -> [B*T, D].
//   q = qk_input q.weightᵀ, k likewise ([H*Dh, D] each), heads [B, H, T, Dh],
//   RoPE on q and k; per head h a sigmoid router (sel_v.weight, sel_o.weight
//   [H*E, D]) picks the top_k of its E experts (no renormalization):
//     v[t,h]   = sum_k s_v[t,h,k] * x[t] · v.experts[h*E + e_k]      ([H*E, D, Dh])
//     att      = causal attention(q, k, v)                          [B, H, T, Dh]
//     y[t]     = sum_h sum_k s_o[t,h,k] * att[t,h] · o.experts[h*E + e_k]  ([H*E, Dh, D])
//   Each (token, head) row is one routed row of moe.gate / moe.dispatch over
//   the H*E experts of the layer. E = 1: the value is a plain projection
//   (v.weight [H*Dh, D]) and the output projection is gated by
//   sigmoid(qk_input · sel_o) per head: RoPE attention with a learned output gate.
SwitchHeadOutputs switchhead_attention(const Scope& s, Tensor x, Tensor qk_input, const SwitchHeadOptions& options);

}  // namespace nn

// Values for every spec, drawn deterministically from `seed` (normal inits in
// spec order from one generator).
std::map<std::string, HostTensor> init_parameters(const std::vector<ParamSpec>& specs, std::uint64_t seed);

// Fails with moejit::Error unless `values` holds exactly the specs' names,
// each with its dtype and shape, e.g.
//   "ckpt.safetensors: tensor h.0.attn.c_attn.weight: expected [192, 64] f32 (from the config), found [96, 64] f32"
// `source` names where the values come from (a checkpoint path).
void check_parameters(const std::map<std::string, HostTensor>& values, const std::vector<ParamSpec>& specs,
                      const std::string& source);

}  // namespace moejit
