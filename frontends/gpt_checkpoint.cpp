// GPT-MoE checkpoint save and load (see gpt_checkpoint.h).
#include "frontends/gpt_checkpoint.h"

#include <fmt/format.h>

#include <cmath>

#include "frontends/gpt_moe.h"
#include "frontends/safetensors.h"
#include "ir/error.h"

namespace moejit {

void save_gpt_checkpoint(const std::string& path, const GptMoeConfig& config, const CharTokenizer& tokenizer,
                         const std::map<std::string, HostTensor>& params,
                         const std::map<std::string, std::string>& extra_metadata) {
  check_parameters(params, gpt_moe_param_specs(config), path);
  Checkpoint checkpoint;
  checkpoint.tensors = params;
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
  check_parameters(checkpoint.tensors, gpt_moe_param_specs(out.config), path);
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
  return out;
}

}  // namespace moejit
