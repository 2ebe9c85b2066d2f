// Hugging Face Llama / Mixtral checkpoints in and out (see hf_checkpoint.h).
#include "frontends/hf_checkpoint.h"

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "frontends/safetensors.h"
#include "ir/error.h"
#include "ir/file_io.h"

namespace moejit {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- config.json ----

struct JsonReader {
  const json& j;
  const std::string& source;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  std::int64_t integer(const char* key, std::optional<std::int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw Error(fmt::format("{}: {}: expected an integer, found no such key", source, key));
    }
    if (!j[key].is_number_integer())
      throw Error(fmt::format("{}: {}: expected an integer, found {}", source, key, j[key].dump()));
    return j[key].get<std::int64_t>();
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_number()) throw Error(fmt::format("{}: {}: expected a number, found {}", source, key, j[key].dump()));
    return j[key].get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j[key].is_boolean()) throw Error(fmt::format("{}: {}: expected true or false, found {}", source, key, j[key].dump()));
    return j[key].get<bool>();
  }
};

// rope_scaling (transformers 4) or rope_parameters (5) -> RopeConfig fields.
void read_rope_scaling(const json& scaling, const std::string& source, const char* key, RopeConfig& rope) {
  if (!scaling.is_object()) throw Error(fmt::format("{}: {}: expected an object, found {}", source, key, scaling.dump()));
  JsonReader r{scaling, source};
  std::string type = "default";
  for (const char* name : {"rope_type", "type"})
    if (r.has(name)) type = scaling[name].is_string() ? scaling[name].get<std::string>() : scaling[name].dump();
  if (type != "default" && type != "linear" && type != "llama3")
    throw Error(fmt::format("{}: {}.rope_type: expected default, linear or llama3 (the kinds moejit implements), "
                            "found '{}'",
                            source, key, type));
  rope.scaling = type;
  if (r.has("rope_theta")) rope.theta = r.number("rope_theta", rope.theta);
  if (type == "default") return;
  if (!r.has("factor")) throw Error(fmt::format("{}: {}.factor: expected a number, found no such key", source, key));
  rope.factor = r.number("factor", 1.0);
  if (type == "llama3") {
    rope.low_freq_factor = r.number("low_freq_factor", rope.low_freq_factor);
    rope.high_freq_factor = r.number("high_freq_factor", rope.high_freq_factor);
    rope.original_max_position_embeddings =
        r.integer("original_max_position_embeddings", rope.original_max_position_embeddings);
  }
}

json rope_scaling_json(const RopeConfig& rope, bool with_theta) {
  json s = json::object();
  s["rope_type"] = rope.scaling;
  if (with_theta) s["rope_theta"] = rope.theta;
  if (rope.scaling != "default") s["factor"] = rope.factor;
  if (rope.scaling == "llama3") {
    s["low_freq_factor"] = rope.low_freq_factor;
    s["high_freq_factor"] = rope.high_freq_factor;
    s["original_max_position_embeddings"] = rope.original_max_position_embeddings;
  }
  return s;
}

// ---- tensors ----

HostTensor to_dtype(const HostTensor& t, const std::string& source, const std::string& name, DType dtype) {
  if (!is_float(t.dtype()))
    throw Error(fmt::format("{}: tensor {}: expected a float tensor (F32, BF16, F16, F64), found {}", source, name,
                            dtype_name(t.dtype())));
  return t.dtype() == dtype ? t : t.cast(dtype);
}

// [E, A, B] from E tensors [B, A] (each transposed), or back.
HostTensor stack_transposed(const std::vector<HostTensor>& parts) {
  const std::int64_t E = static_cast<std::int64_t>(parts.size()), B = parts[0].shape()[0], A = parts[0].shape()[1];
  HostTensor out(TensorType{parts[0].dtype(), {E, A, B}});
  for (std::int64_t e = 0; e < E; ++e)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t a = 0; a < A; ++a) out.set((e * A + a) * B + b, parts[e].get(b * A + a));
  return out;
}

// Rows [row_begin, row_begin + rows) of expert e of [E, R, C] as [rows, C],
// optionally transposed to [C, rows].
HostTensor expert_slice(const HostTensor& w, std::int64_t e, std::int64_t row_begin, std::int64_t rows, bool transpose) {
  const std::int64_t R = w.shape()[1], C = w.shape()[2];
  HostTensor out(TensorType{w.dtype(), transpose ? Shape{C, rows} : Shape{rows, C}});
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      double v = w.get((e * R + row_begin + r) * C + c);
      out.set(transpose ? c * rows + r : r * C + c, v);
    }
  return out;
}

class TensorTaker {
 public:
  TensorTaker(std::map<std::string, HostTensor>& tensors, const std::string& source, DType dtype)
      : tensors_(tensors), source_(source), dtype_(dtype) {}
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Removes and returns the tensor, converted; checks the shape when given.
  HostTensor take(const std::string& name, const Shape* expected = nullptr) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      std::string shape = expected ? " " + shape_str(*expected) : "";
      throw Error(fmt::format("{}: tensor {}: expected{} (from config.json), found no such tensor", source_, name, shape));
    }
    HostTensor t = to_dtype(it->second, source_, name, dtype_);
    if (expected && t.shape() != *expected)
      throw Error(fmt::format("{}: tensor {}: expected {} (from config.json), found {} {}", source_, name,
                              shape_str(*expected), shape_str(it->second.shape()), dtype_name(it->second.dtype())));
    tensors_.erase(it);
    return t;
  }

 private:
  std::map<std::string, HostTensor>& tensors_;
  const std::string& source_;
  DType dtype_;
};

bool is_expert_param(const std::string& name) { return name.find(".block_sparse_moe.") != std::string::npos; }

}  // namespace

LlamaConfig llama_config_from_hf_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: expected JSON, found a parse error ({})", source, e.what()));
  }
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object, found {}", source, j.type_name()));
  JsonReader r{j, source};
  LlamaConfig c;
  if (r.has("architectures")) {
    if (!j["architectures"].is_array() || j["architectures"].size() != 1 || !j["architectures"][0].is_string())
      throw Error(fmt::format("{}: architectures: expected one name, found {}", source, j["architectures"].dump()));
    c.architecture = j["architectures"][0].get<std::string>();
  } else if (r.has("model_type") && j["model_type"] == "mixtral") {
    c.architecture = "MixtralForCausalLM";
  }
  const bool mixtral = c.architecture == "MixtralForCausalLM";
  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  c.head_dim = r.integer("head_dim", 0);
  c.max_position_embeddings = r.integer("max_position_embeddings", 2048);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.initializer_range = r.number("initializer_range", 0.02);
  c.rope.theta = r.number("rope_theta", mixtral ? 1e6 : 10000.0);
  if (r.has("rope_scaling")) read_rope_scaling(j["rope_scaling"], source, "rope_scaling", c.rope);
  if (r.has("rope_parameters")) read_rope_scaling(j["rope_parameters"], source, "rope_parameters", c.rope);
  if (mixtral) {
    c.num_local_experts = r.integer("num_local_experts", 8);
    c.num_experts_per_tok = r.integer("num_experts_per_tok", 2);
    c.sliding_window = r.integer("sliding_window", 0);
  }
  if (r.boolean("attention_bias", false))
    throw Error(fmt::format("{}: attention_bias: expected false (moejit's Llama has no attention biases), found true",
                            source));
  if (r.boolean("mlp_bias", false))
    throw Error(fmt::format("{}: mlp_bias: expected false (moejit's Llama has no MLP biases), found true", source));
  if (r.has("hidden_act") && j["hidden_act"] != "silu")
    throw Error(fmt::format("{}: hidden_act: expected \"silu\", found {}", source, j["hidden_act"].dump()));
  try {
    validate_llama_config(c);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", source, e.what()));
  }
  return c;
}

std::string llama_config_to_hf_json(const LlamaConfig& c) {
  const bool mixtral = c.is_moe();
  nlohmann::ordered_json j;
  j["architectures"] = {mixtral ? "MixtralForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = mixtral ? "mixtral" : "llama";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_size();
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["hidden_act"] = "silu";
  j["initializer_range"] = c.initializer_range;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  // transformers 4 reads rope_theta and rope_scaling, 5 reads rope_parameters.
  j["rope_theta"] = c.rope.theta;
  j["rope_scaling"] = c.rope.scaling == "default" ? json(nullptr) : rope_scaling_json(c.rope, false);
  j["rope_parameters"] = rope_scaling_json(c.rope, true);
  if (mixtral) {
    j["num_local_experts"] = c.num_local_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["router_jitter_noise"] = 0.0;
    j["router_aux_loss_coef"] = 0.0;
    j["output_router_logits"] = false;
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  } else {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  j["torch_dtype"] = "float32";
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::map<std::string, HostTensor> params_from_hf_tensors(const LlamaConfig& c, std::map<std::string, HostTensor> tensors,
                                                        const std::string& source, const HfLoadOptions& options) {
  std::vector<ParamSpec> specs = llama_param_specs(c);
  TensorTaker taker(tensors, source, options.dtype);
  std::map<std::string, HostTensor> out;
  for (const ParamSpec& spec : specs)
    if (!is_expert_param(spec.name)) out[spec.name] = taker.take(spec.name, &spec.type.shape);

  const std::int64_t E = c.num_local_experts, D = c.hidden_size, F = c.intermediate_size;
  for (std::int64_t layer = 0; c.is_moe() && layer < c.num_hidden_layers; ++layer) {
    const std::string hf = fmt::format("model.layers.{}.", layer);
    const std::string ours = hf + "block_sparse_moe.";
    const Shape router_shape{E, D};
    out[ours + "router.weight"] = taker.take(
        taker.has(hf + "mlp.gate.weight") ? hf + "mlp.gate.weight" : hf + "block_sparse_moe.gate.weight", &router_shape);
    if (taker.has(hf + "mlp.experts.gate_up_proj")) {
      // transformers 5: gate_up_proj [E, 2F, D] (gate rows first), down_proj [E, D, F].
      const Shape gate_up_shape{E, 2 * F, D}, down_shape{E, D, F};
      HostTensor gate_up = taker.take(hf + "mlp.experts.gate_up_proj", &gate_up_shape);
      HostTensor down = taker.take(hf + "mlp.experts.down_proj", &down_shape);
      std::vector<HostTensor> gate, up, w2;
      for (std::int64_t e = 0; e < E; ++e) {
        gate.push_back(expert_slice(gate_up, e, 0, F, false));
        up.push_back(expert_slice(gate_up, e, F, F, false));
        w2.push_back(expert_slice(down, e, 0, D, false));
      }
      out[ours + "experts.w_gate"] = stack_transposed(gate);
      out[ours + "experts.w_up"] = stack_transposed(up);
      out[ours + "experts.w_down"] = stack_transposed(w2);
    } else {
      const Shape in_shape{F, D}, out_shape{D, F};
      std::vector<HostTensor> w1, w2, w3;
      for (std::int64_t e = 0; e < E; ++e) {
        const std::string p = fmt::format("{}block_sparse_moe.experts.{}.", hf, e);
        w1.push_back(taker.take(p + "w1.weight", &in_shape));
        w2.push_back(taker.take(p + "w2.weight", &out_shape));
        w3.push_back(taker.take(p + "w3.weight", &in_shape));
      }
      out[ours + "experts.w_gate"] = stack_transposed(w1);  // [E, D, F]
      out[ours + "experts.w_up"] = stack_transposed(w3);    // [E, D, F]
      out[ours + "experts.w_down"] = stack_transposed(w2);  // [E, F, D]
    }
  }

  // What is left must be nothing, or what the model recomputes or shares.
  for (auto it = tensors.begin(); it != tensors.end();) {
    const std::string& name = it->first;
    if (name.ends_with("rotary_emb.inv_freq")) {  // a buffer old versions saved; recomputed from config.json
      it = tensors.erase(it);
    } else if (name == "lm_head.weight" && c.tie_word_embeddings) {
      HostTensor head = to_dtype(it->second, source, name, options.dtype);
      const HostTensor& embed = out.at("model.embed_tokens.weight");
      if (head.type() != embed.type() || head.to_doubles() != embed.to_doubles())
        throw Error(fmt::format("{}: tensor lm_head.weight: expected none or a copy of model.embed_tokens.weight "
                                "(tie_word_embeddings is true), found a different {} tensor",
                                source, shape_str(head.shape())));
      it = tensors.erase(it);
    } else {
      throw Error(fmt::format("{}: tensor {}: expected no such tensor (the model config.json describes has none), "
                              "found {} {}",
                              source, name, shape_str(it->second.shape()), dtype_name(it->second.dtype())));
    }
  }
  check_parameters(out, specs, source);
  return out;
}

std::map<std::string, HostTensor> hf_tensors_from_params(const LlamaConfig& c,
                                                        const std::map<std::string, HostTensor>& params) {
  check_parameters(params, llama_param_specs(c), "export");
  std::map<std::string, HostTensor> out;
  for (const auto& [name, t] : params)
    if (!is_expert_param(name)) out[name] = t;
  // Tied: the lm head written out as well, a copy of the embedding, so a
  // reader that does not tie (or ties the other way) still gets the head.
  if (c.tie_word_embeddings) out["lm_head.weight"] = params.at("model.embed_tokens.weight");
  for (std::int64_t layer = 0; c.is_moe() && layer < c.num_hidden_layers; ++layer) {
    const std::string hf = fmt::format("model.layers.{}.block_sparse_moe.", layer);
    out[hf + "gate.weight"] = params.at(hf + "router.weight");
    const HostTensor& gate = params.at(hf + "experts.w_gate");  // [E, D, F]
    const HostTensor& up = params.at(hf + "experts.w_up");      // [E, D, F]
    const HostTensor& down = params.at(hf + "experts.w_down");  // [E, F, D]
    const std::int64_t D = c.hidden_size, F = c.intermediate_size;
    for (std::int64_t e = 0; e < c.num_local_experts; ++e) {
      const std::string p = fmt::format("{}experts.{}.", hf, e);
      out[p + "w1.weight"] = expert_slice(gate, e, 0, D, true);  // [F, D]
      out[p + "w3.weight"] = expert_slice(up, e, 0, D, true);    // [F, D]
      out[p + "w2.weight"] = expert_slice(down, e, 0, F, true);  // [D, F]
    }
  }
  return out;
}

HfModel load_hf_model(const std::string& dir, const HfLoadOptions& options) {
  const fs::path root(dir);
  std::string config_text;
  if (!read_whole_file((root / "config.json").string(), &config_text))
    throw Error(fmt::format("{}: expected a Hugging Face model directory with config.json, found none", dir));
  HfModel model;
  model.config = llama_config_from_hf_json(config_text, (root / "config.json").string());

  std::map<std::string, HostTensor> tensors;
  const fs::path single = root / "model.safetensors", index = root / "model.safetensors.index.json";
  std::string source = single.string();
  if (fs::exists(index)) {
    source = index.string();
    std::string index_text;
    if (!read_whole_file(index.string(), &index_text)) throw Error(fmt::format("{}: cannot read", source));
    json j;
    try {
      j = json::parse(index_text);
    } catch (const json::exception& e) {
      throw Error(fmt::format("{}: expected JSON, found a parse error ({})", source, e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(fmt::format("{}: expected an object with \"weight_map\": {{tensor: file}}, found {}", source,
                              j.dump().substr(0, 200)));
    std::map<std::string, std::set<std::string>> names_of_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw Error(fmt::format("{}: weight_map.{}: expected a file name, found {}", source, it.key(), it.value().dump()));
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file.starts_with("."))
        throw Error(fmt::format("{}: weight_map.{}: expected a file name in the directory, found '{}'", source, it.key(),
                                file));
      names_of_file[file].insert(it.key());
    }
    for (const auto& [file, names] : names_of_file) {
      const std::string path = (root / file).string();
      if (!fs::exists(path))
        throw Error(fmt::format("{}: shard {} (holding {} tensors, e.g. {}): expected a file, found none", source, file,
                                names.size(), *names.begin()));
      Checkpoint shard = load_safetensors(path);
      for (auto& [name, t] : shard.tensors) {
        if (!names.count(name))
          throw Error(fmt::format("{}: tensor {}: expected in the shard the index names for it, found it in {} too",
                                  source, name, file));
        tensors.emplace(name, std::move(t));
      }
      for (const std::string& name : names)
        if (!tensors.count(name))
          throw Error(fmt::format("{}: tensor {}: expected in shard {} (the index says so), found no such tensor", source,
                                  name, file));
    }
  } else if (fs::exists(single)) {
    tensors = load_safetensors(single.string()).tensors;
  } else {
    throw Error(fmt::format("{}: expected model.safetensors or model.safetensors.index.json, found neither", dir));
  }
  model.params = params_from_hf_tensors(model.config, std::move(tensors), source, options);
  return model;
}

void export_mixtral(const std::string& dir, const LlamaConfig& config, const std::map<std::string, HostTensor>& params) {
  if (!config.is_moe())
    throw Error(fmt::format("export_mixtral {}: expected a mixture-of-experts model (num_local_experts > 0), found a "
                            "dense one",
                            dir));
  LlamaConfig mixtral = config;
  mixtral.architecture = "MixtralForCausalLM";
  validate_llama_config(mixtral);
  Checkpoint checkpoint;
  for (auto& [name, t] : hf_tensors_from_params(mixtral, params)) checkpoint.tensors[name] = t.cast(DType::f32);
  checkpoint.metadata["format"] = "pt";  // what transformers checks before loading
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("export_mixtral: cannot create directory {}: {}", dir, ec.message()));
  save_safetensors((fs::path(dir) / "model.safetensors").string(), checkpoint);
  write_file_atomically((fs::path(dir) / "config.json").string(), llama_config_to_hf_json(mixtral), "config.json");
}

void save_llama_checkpoint(const std::string& path, const LlamaConfig& config,
                           const std::map<std::string, HostTensor>& params,
                           const std::map<std::string, std::string>& extra_metadata) {
  check_parameters(params, llama_param_specs(config), path);
  Checkpoint checkpoint{params, extra_metadata, {}};
  checkpoint.metadata["format"] = kLlamaCheckpointFormat;
  LlamaConfig stored = config;
  stored.architecture = config.is_moe() ? "MixtralForCausalLM" : "LlamaForCausalLM";
  checkpoint.metadata["config"] = llama_config_to_hf_json(stored);
  save_safetensors(path, checkpoint);
}

HfModel load_llama_checkpoint(const std::string& path) {
  Checkpoint checkpoint = load_safetensors(path);
  auto format = checkpoint.metadata.find("format");
  if (format == checkpoint.metadata.end() || format->second != kLlamaCheckpointFormat)
    throw Error(fmt::format("{}: metadata format: expected \"{}\", found {}", path, kLlamaCheckpointFormat,
                            format == checkpoint.metadata.end() ? "none" : "\"" + format->second + "\""));
  auto config = checkpoint.metadata.find("config");
  if (config == checkpoint.metadata.end())
    throw Error(fmt::format("{}: metadata config: expected the model's config.json, found none", path));
  HfModel model;
  model.config = llama_config_from_hf_json(config->second, path + " (metadata config)");
  check_parameters(checkpoint.tensors, llama_param_specs(model.config), path);
  model.params = std::move(checkpoint.tensors);
  return model;
}

}  // namespace moejit
