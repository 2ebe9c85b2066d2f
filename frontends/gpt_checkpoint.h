// GPT-MoE checkpoints: the model's tensors (names in docs/checkpoints.md) in
// a safetensors file whose metadata holds what rebuilding the model needs:
//   "format"  "moejit.gpt_moe.v1"
//   "config"  the GptMoeConfig as JSON (every field)
//   "vocab"   the tokenizer's bytes, "10,32,33,..."
// plus free-form entries the caller adds ("step", "val_loss", "data", the
// training state of docs/checkpoints.md, ...), and safetensors' checksums.
// A resumable checkpoint also holds the AdamW moments of every trained
// parameter as tensors "adamw.m.<name>" and "adamw.v.<name>".
#pragma once
#include <map>
#include <string>

#include "frontends/config.h"
#include "frontends/tokenizer.h"
#include "runtime/host_tensor.h"

namespace moejit {

inline constexpr const char* kGptMoeCheckpointFormat = "moejit.gpt_moe.v1";

struct GptMoeCheckpoint {
  GptMoeConfig config;
  CharTokenizer tokenizer;
  std::map<std::string, HostTensor> params;      // parameters and state
  // AdamW moments "m.<name>", "v.<name>" (the trainer's names); empty when the
  // file has none (best.safetensors, files of other tools).
  std::map<std::string, HostTensor> optimizer;
  std::map<std::string, std::string> metadata;  // every metadata entry, the three above included
  std::string note;  // safetensors' note when the checksums could not be verified (else empty)
};

// Writes atomically (temporary file + rename). `optimizer`, when given,
// holds every moment the trainer has (GptMoeTrainer::optimizer_state()).
void save_gpt_checkpoint(const std::string& path, const GptMoeConfig& config, const CharTokenizer& tokenizer,
                         const std::map<std::string, HostTensor>& params,
                         const std::map<std::string, std::string>& extra_metadata = {},
                         const std::map<std::string, HostTensor>& optimizer = {});

// Reads and checks: the checksums (safetensors.h), the format tag, a valid
// config whose vocab_size matches the vocabulary, and exactly the tensors
// that config's model has (names, dtypes, shapes), with either no AdamW
// moments or all of them. Throws moejit::Error naming the file and what is
// wrong.
GptMoeCheckpoint load_gpt_checkpoint(const std::string& path);

}  // namespace moejit
