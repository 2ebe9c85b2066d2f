// GptMoeConfig: every knob of the GPT-MoE model and its training run, with
// nanoGPT / Megatron names where they exist. One flat table of fields
// (config_fields()) drives JSON loading, command-line overrides, --help text
// and the copy stored in checkpoint metadata, so a key is named once.
//
//   GptMoeConfig config;                                  // the defaults
//   config = config_from_json(text, config);              // a JSON file on top
//   set_config_value(config, "n_layer", "4");             // a flag on top
//   validate_config(config);                              // moejit::Error naming the key
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moejit {

struct GptMoeConfig {
  // ---- model ----
  std::int64_t vocab_size = 0;  // 0: taken from the tokenizer (distinct bytes of the corpus)
  std::int64_t n_layer = 2;
  std::int64_t n_head = 4;
  std::int64_t n_embd = 64;
  std::int64_t block_size = 64;  // context length T
  std::int64_t ffn_hidden_size = 0;  // width of the dense MLP layers; 0: 4 * n_embd
  double dropout = 0.0;
  bool bias = false;  // biases in the linear layers (layer norms always have one)
  // ---- mixture of experts ----
  std::int64_t num_experts = 4;
  std::int64_t top_k = 2;
  std::int64_t moe_every = 1;  // layer i is MoE when (i + 1) % moe_every == 0; 0: no MoE layer
  std::int64_t d_expert = 128;  // hidden width of one expert
  std::string activation = "gelu";  // gelu | swiglu (experts and dense MLPs)
  std::string router_score = "softmax";  // softmax | sigmoid
  std::string router_order = "softmax_then_topk";  // | topk_then_softmax (Mixtral)
  bool normalize_topk = true;  // renormalize the k routing weights to sum to 1
  bool noisy_gating = false;  // noisy top-k gating (Shazeer et al. 2017), training only
  bool selection_bias = false;  // aux-loss-free balancing: a per-expert bias on selection only
  double bias_update_rate = 0.001;  // step of the selection-bias update (DeepSeek-V3's gamma)
  double capacity_factor = 0.0;  // 0: dropless
  bool shared_expert = false;  // one always-on expert of width d_expert beside the routed ones
  double aux_loss_coeff = 0.01;  // Switch load-balancing loss
  double z_loss_coeff = 0.001;  // router z-loss
  double entropy_coeff = 0.0;  // MoEUT-style entropy regularizer
  std::string router_type = "token_choice";  // | expert_choice (each expert takes its top-C tokens)
  double expert_dropout = 0.0;  // sigma-MoE: drop (token, expert) pairs from the selection while training
  // ---- MoEUT: shared layers, SwitchHead attention, peri-LayerNorm, RoPE ----
  std::int64_t group_size = 0;  // G: n_layer layers repeat G distinct ones (layer i is group layer i % G); 0: n_layer
  std::string attention = "dense";  // | switchhead (value/output projections are per-head MoEs)
  std::int64_t att_n_experts = 1;  // SwitchHead experts per head (1: RoPE attention with an output gate)
  std::int64_t att_k = 1;  // SwitchHead experts per head and token
  std::int64_t head_dim = 0;  // SwitchHead head width; 0: n_embd / n_head
  std::string layer_norm = "pre";  // | peri (MoEUT: only routers, q and k read LN(x))
  std::string position_embedding = "learned";  // | rope (rotary q/k, no wpe)
  double rope_theta = 10000.0;
  // ---- training ----
  std::int64_t batch_size = 8;
  double learning_rate = 2e-3;
  double min_lr = 2e-4;
  std::int64_t warmup_iters = 30;
  std::int64_t max_iters = 800;
  std::int64_t lr_decay_iters = 0;  // 0: max_iters
  bool decay_lr = true;  // cosine decay from learning_rate to min_lr
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double grad_clip = 1.0;  // 0: no clipping
  std::int64_t eval_interval = 100;
  std::int64_t eval_iters = 10;
  std::int64_t log_interval = 25;
  std::int64_t checkpoint_interval = 100;  // steps between ckpt.safetensors saves; 0: only at the end
  std::int64_t seed = 1337;
  double init_std = 0.02;
  // Training precision: bf16 mixed precision (the mixed-precision pass:
  // matmuls in bf16, f32 master weights, moments, losses and router) or f32;
  // auto: bf16 on the GPU, f32 on the CPU (training_precision in trainer.h).
  std::string dtype = "auto";

  std::int64_t dense_hidden() const { return ffn_hidden_size > 0 ? ffn_hidden_size : 4 * n_embd; }
  std::int64_t decay_iters() const { return lr_decay_iters > 0 ? lr_decay_iters : max_iters; }
  // Whether block `layer` (0-based) has a MoE feed-forward.
  bool is_moe_layer(std::int64_t layer) const { return moe_every > 0 && (layer + 1) % moe_every == 0; }
  // Distinct layers (G) and the group layer whose weights block `layer` uses.
  std::int64_t distinct_layers() const { return group_size > 0 ? group_size : n_layer; }
  std::int64_t group_layer(std::int64_t layer) const { return layer % distinct_layers(); }
  std::int64_t num_moe_layers() const;
};

enum class ConfigKind { Int, Float, Bool, String };

struct ConfigField {
  std::string_view name;
  std::string_view group;  // "model", "moe", "training"
  ConfigKind kind;
  std::string_view help;
  std::vector<std::string_view> choices;  // String fields only; empty = free text
};

// Every field, in declaration order.
const std::vector<ConfigField>& config_fields();
const ConfigField* find_config_field(std::string_view name);

// Sets one field from text ("4", "0.5", "true", "swiglu"). Throws moejit::Error
// naming the key when it is unknown or the text is not of its kind.
void set_config_value(GptMoeConfig& config, std::string_view key, std::string_view text);
// The field's value as text, the way set_config_value reads it back.
std::string get_config_value(const GptMoeConfig& config, std::string_view key);

// Reads a JSON object of fields on top of `base`. Throws moejit::Error on bad
// JSON, an unknown key, or a value of the wrong type (naming the key, what
// was expected and what was found). Does not validate ranges.
GptMoeConfig config_from_json(std::string_view json_text, const GptMoeConfig& base = {});
GptMoeConfig load_config_file(const std::string& path, const GptMoeConfig& base = {});
// Every field as one JSON object (pretty-printed with `indent` >= 0).
std::string config_to_json(const GptMoeConfig& config, int indent = -1);

// Checks ranges and relations (n_embd divisible by n_head, top_k <=
// num_experts, ...). Throws moejit::Error naming the key, what was expected
// and what was found. vocab_size 0 is allowed (filled in from the data).
void validate_config(const GptMoeConfig& config);

}  // namespace moejit
