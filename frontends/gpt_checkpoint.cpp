// GPT-MoE checkpoint save and load (see gpt_checkpoint.h).
#include "frontends/gpt_checkpoint.h"

#include <fmt/format.h>

#include <cmath>
#include <string_view>

#include "frontends/gpt_moe.h"
#include "frontends/safetensors.h"
#include "ir/error.h"

namespace moejit {
namespace {

constexpr std::string_view kOptimizerPrefix = "adamw.";

// Moves the "adamw.*" tensors out of `tensors` into the result (names without
// the prefix) and checks they are exactly "m.<p>" and "v.<p>" for every
// trained parameter p, or none.
std::map<std::string, HostTensor> take_optimizer_state(const std::string& path, std::map<std::string, HostTensor>& tensors,
                                                      const std::vector<ParamSpec>& specs) {
  std::map<std::string, HostTensor> moments;
  for (auto it = tensors.begin(); it != tensors.end();) {
    if (it->first.starts_with(kOptimizerPrefix)) {
      moments.emplace(it->first.substr(kOptimizerPrefix.size()), std::move(it->second));
      it = tensors.erase(it);
    } else {
      ++it;
    }
  }
  if (moments.empty()) return moments;
  std::size_t expected = 0;
  for (const ParamSpec& s : specs) {
    if (s.role != ArgRole::param) continue;
    for (const char* prefix : {"m.", "v."}) {
      const std::string name = prefix + s.name;
      auto it = moments.find(name);
      if (it == moments.end())
        throw Error(fmt::format("{}: expected tensor adamw.{} (the checkpoint has AdamW moments for other "
                                "parameters), found none",
                                path, name));
      if (it->second.type() != s.type)
        throw Error(fmt::format("{}: tensor adamw.{}: expected {}, found {}", path, name, s.type.str(),
                                it->second.type().str()));
      ++expected;
    }
  }
  if (moments.size() != expected) {
    for (const auto& [name, moment] : moments) {
      const std::string param = name.substr(name.find('.') + 1);
      bool known = false;
      for (const ParamSpec& s : specs) known |= s.role == ArgRole::param && s.name == param;
      if (!known) throw Error(fmt::format("{}: unexpected tensor adamw.{}: no trained parameter {}", path, name, param));
    }
  }
  return moments;
}

}  // namespace

void save_gpt_checkpoint(const std::string& path, const GptMoeConfig& config, const CharTokenizer& tokenizer,
                         const std::map<std::string, HostTensor>& params,
                         const std::map<std::string, std::string>& extra_metadata,
                         const std::map<std::string, HostTensor>& optimizer) {
  check_parameters(params, gpt_moe_param_specs(config), path);
  Checkpoint checkpoint;
  checkpoint.tensors = params;
  for (const auto& [name, moment] : optimizer) checkpoint.tensors.emplace(std::string(kOptimizerPrefix) + name, moment);
  checkpoint.metadata = extra_metadata;
  checkpoint.metadata["format"] = kGptMoeCheckpointFormat;
  checkpoint.metadata["config"] = config_to_json(config);
  checkpoint.metadata["vocab"] = tokenizer.to_string();
  save_safetensors(path, checkpoint);
}

GptMoeCheckpoint load_gpt_checkpoint(const std::string& path) {
  Checkpoint checkpoint = load_safetensors(path);
  auto meta = [&](const char* key) -> const std::string& {
    auto it = checkpoint.metadata.find(key);
    if (it == checkpoint.metadata.end())
      throw Error(fmt::format("{}: expected metadata entry '{}' of a GPT-MoE checkpoint, found none", path, key));
    return it->second;
  };
  if (meta("format") != kGptMoeCheckpointFormat)
    throw Error(fmt::format("{}: expected format '{}', found '{}'", path, kGptMoeCheckpointFormat, meta("format")));
  GptMoeCheckpoint out;
  try {
    out.config = config_from_json(meta("config"));
    validate_config(out.config);
    out.tokenizer = CharTokenizer::from_string(meta("vocab"));
  } catch (const Error& err) {
    throw Error(fmt::format("{}: metadata: {}", path, err.what()));
  }
  if (out.config.vocab_size != out.tokenizer.vocab_size())
    throw Error(fmt::format("{}: metadata: config vocab_size expected {} (the stored vocabulary), found {}", path,
                            out.tokenizer.vocab_size(), out.config.vocab_size));
  const std::vector<ParamSpec> specs = gpt_moe_param_specs(out.config);
  out.optimizer = take_optimizer_state(path, checkpoint.tensors, specs);
  check_parameters(checkpoint.tensors, specs, path);
  // A NaN or infinite weight would make every sample and report silently
  // meaningless: refuse it here, naming the tensor and the element.
  for (const auto& [name, tensor] : checkpoint.tensors) {
    if (!is_float(tensor.dtype())) continue;
    for (std::int64_t i = 0; i < tensor.numel(); ++i) {
      const double v = tensor.get(i);
      if (!std::isfinite(v))
        throw Error(fmt::format("{}: tensor {}: expected finite values, found {} at element {} (a diverged or "
                                "corrupted checkpoint)",
                                path, name, v, i));
    }
  }
  out.params = std::move(checkpoint.tensors);
  out.metadata = std::move(checkpoint.metadata);
  out.note = std::move(checkpoint.note);
  return out;
}

}  // namespace moejit
