// Hugging Face checkpoints of Llama-family models, in and out.
//
// In: a directory as save_pretrained writes it: config.json and either
// model.safetensors or shards listed in model.safetensors.index.json
// ({"weight_map": {tensor: file}}). LlamaForCausalLM and MixtralForCausalLM
// tensors are taken by name (llama.h has moejit's names):
//   model.embed_tokens.weight, model.norm.weight, lm_head.weight (absent when tied)
//   model.layers.<i>.{input_layernorm,post_attention_layernorm}.weight
//   model.layers.<i>.self_attn.{q,k,v,o}_proj.weight
//   dense:   model.layers.<i>.mlp.{gate,up,down}_proj.weight
//   Mixtral: model.layers.<i>.block_sparse_moe.gate.weight [E, D]
//            model.layers.<i>.block_sparse_moe.experts.<e>.{w1,w3}.weight [F, D], w2 [D, F]
//            (or transformers 5's fused model.layers.<i>.mlp.gate.weight,
//             mlp.experts.gate_up_proj [E, 2F, D] and mlp.experts.down_proj [E, D, F])
// Anything missing, unexpected or wrongly shaped is an Error naming the file,
// the Hugging Face tensor, what was expected and what was found. Float
// tensors (f32, bf16, f16, f64) are converted to LoadOptions::dtype.
//
// Out: export_mixtral writes config.json + model.safetensors of a
// MixtralForCausalLM (the per-expert w1/w2/w3 layout that both transformers
// 4 and 5 read) from a moejit Llama-family MoE model.
#pragma once
#include <map>
#include <string>

#include "frontends/llama.h"
#include "runtime/host_tensor.h"

namespace moejit {

// config.json text -> LlamaConfig. Reads transformers 4 keys (rope_theta,
// rope_scaling) and 5 keys (rope_parameters). Refuses what the builder does
// not implement (attention or MLP biases, an activation other than silu) with
// an Error naming the key.
LlamaConfig llama_config_from_hf_json(const std::string& json_text, const std::string& source = "config.json");
// LlamaConfig -> config.json text (both the transformers 4 and 5 rope keys).
std::string llama_config_to_hf_json(const LlamaConfig& config);

struct HfLoadOptions {
  DType dtype = DType::f32;  // what float weights are converted to
};

struct HfModel {
  LlamaConfig config;
  std::map<std::string, HostTensor> params;  // moejit names (llama.h)
};

// Reads <dir>/config.json and the weights.
HfModel load_hf_model(const std::string& dir, const HfLoadOptions& options = {});

// Hugging Face tensors (a whole checkpoint, any shards merged) -> moejit
// parameters of `config`, checked against llama_param_specs.
std::map<std::string, HostTensor> params_from_hf_tensors(const LlamaConfig& config,
                                                        std::map<std::string, HostTensor> tensors,
                                                        const std::string& source, const HfLoadOptions& options = {});
// moejit parameters -> Hugging Face tensors (per-expert layout for MoE; with
// tied embeddings lm_head.weight too, a copy of model.embed_tokens.weight).
std::map<std::string, HostTensor> hf_tensors_from_params(const LlamaConfig& config,
                                                        const std::map<std::string, HostTensor>& params);

// Writes <dir>/config.json and <dir>/model.safetensors (creating dir) for a
// MoE config (architecture MixtralForCausalLM). Each file is written
// atomically.
void export_mixtral(const std::string& dir, const LlamaConfig& config,
                    const std::map<std::string, HostTensor>& params);

// moejit's own Llama-family checkpoint: the parameters under their moejit
// names in one safetensors file, metadata "format" = "moejit.llama.v1" and
// "config" = the config.json text.
inline constexpr const char* kLlamaCheckpointFormat = "moejit.llama.v1";
void save_llama_checkpoint(const std::string& path, const LlamaConfig& config,
                           const std::map<std::string, HostTensor>& params,
                           const std::map<std::string, std::string>& extra_metadata = {});
HfModel load_llama_checkpoint(const std::string& path);

}  // namespace moejit
