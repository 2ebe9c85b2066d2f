// The GPT-MoE example's training step as step_bench and compile_bench use it:
// the graph frontends/trainer.cpp builds (forward + loss, append_backward
// over every parameter, global-norm clipping, AdamW in two groups: weight
// decay on matrices and embeddings only), named "gpt_moe_train" like the
// trainer's, so its generated module is the example's, and values for every
// argument.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "frontends/config.h"
#include "ir/graph.h"
#include "runtime/host_tensor.h"

namespace moejit::bench {

// The example's default model (GptMoeConfig's defaults) with the vocabulary
// of tinyshakespeare (65 distinct bytes), as `gpt_moe train --data
// tinyshakespeare.txt` runs it.
GptMoeConfig example_config();

// Applies "key=value" overrides (config keys of frontends/config.h) and
// validates; throws moejit::Error naming a bad key or value.
void apply_overrides(GptMoeConfig& config, const std::vector<std::string>& overrides);

// The trainer's graph in `precision` (f32, or bf16 as the trainer runs on
// the GPU by default: training_precision in frontends/trainer.h).
Graph build_gpt_train_graph(const GptMoeConfig& config, DType precision = DType::f32);

// Every argument of `graph`: parameters from init_parameters(seed), moments
// "m.*"/"v.*" zero, "idx"/"targets" uniform in [0, vocab_size), "lr" 1e-3,
// "step" 1, "rng_offset" (dropout or noisy gating) 0, "rope.cos"/"rope.sin"
// zeros (bind_rope_tables, frontends/rope.h, fills them once compiled).
// Throws moejit::Error naming an argument it has no value for.
std::map<std::string, HostTensor> gpt_train_args(const Graph& graph, const GptMoeConfig& config, std::uint64_t seed);

}  // namespace moejit::bench
