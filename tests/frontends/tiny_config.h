// The tiny GPT-MoE config the frontends tests train for a few steps: two
// layers, 4 experts top-2, a 12-symbol vocabulary (small enough for
// milliseconds per step on the CPU backend).
#pragma once
#include "frontends/config.h"

namespace moejit::testing {

inline GptMoeConfig tiny_training_config() {
  GptMoeConfig c;
  c.vocab_size = 12;
  c.n_layer = 2;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 8;
  c.batch_size = 4;
  c.num_experts = 4;
  c.top_k = 2;
  c.d_expert = 16;
  c.learning_rate = 1e-2;
  c.min_lr = 1e-3;
  c.warmup_iters = 0;
  c.max_iters = 12;
  return c;
}

// A smaller one for tests that only build and compare graphs (no training
// loop): 11 symbols, batch 2, experts of 24.
inline GptMoeConfig tiny_graph_config() {
  GptMoeConfig c;
  c.vocab_size = 11;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.block_size = 8;
  c.num_experts = 4;
  c.top_k = 2;
  c.d_expert = 24;
  c.batch_size = 2;
  return c;
}

}  // namespace moejit::testing
