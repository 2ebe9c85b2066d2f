// Sampling text from a trained GPT-MoE, and the inference graphs it and the
// expert report share.
//
// Generation recomputes the whole context for each new token (the simplest
// correct thing; no KV cache): the graph has batch 1 and block_size
// positions; the last block_size tokens sit at positions 0..n-1, the rest is
// right-padded with token 0, and the logits of position n-1 are sampled.
// Causal attention keeps the padding from touching earlier positions, and
// the inference graph routes dropless (capacity_factor 0) so padding cannot
// take an expert's capacity.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "frontends/config.h"
#include "runtime/backend.h"

namespace moejit {

// The config an inference graph uses: dropless routing (token choice; expert
// choice keeps its capacity, which is its routing), no dropout (noise is
// off anyway in a graph that is not for training).
GptMoeConfig inference_config(const GptMoeConfig& config);

// The logits [B, T, vocab_size] of `idx` [B, T] (i32) under `params`, from
// the inference graph (no loss, no dropout) on the CPU backend.
HostTensor gpt_moe_logits(const GptMoeConfig& config, const std::map<std::string, HostTensor>& params, const HostTensor& idx);

struct SampleOptions {
  std::int64_t max_new_tokens = 200;
  double temperature = 0.8;  // > 0; 1 = the model's distribution
  std::int64_t top_k = 0;    // keep only the top_k most likely tokens; 0 = all
};

class GptMoeSampler {
 public:
  GptMoeSampler(const GptMoeConfig& config, Backend& backend, const std::map<std::string, HostTensor>& params);
  // The prompt followed by max_new_tokens sampled tokens. The prompt must be
  // non-empty (moejit::Error otherwise).
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const SampleOptions& options,
                                     std::mt19937_64& rng);

 private:
  GptMoeConfig config_;
  std::unique_ptr<Executable> exe_;
};

// Picks a token from logits [V]: logits / temperature, top-k filter, softmax,
// one draw. Exposed for tests.
std::int32_t sample_token(const std::vector<float>& logits, const SampleOptions& options, std::mt19937_64& rng);

}  // namespace moejit
