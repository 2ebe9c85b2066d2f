// Upcycling a dense model into a mixture of experts (Komatsuzaki et al.,
// "Sparse Upcycling", 2022; fine-grained experts as in Megatron-Core's
// upcycling with granularity): every dense MLP becomes a MoE layer whose
// experts are copies of it.
//
//   num_copies C copies of the MLP, each split along its hidden width into
//   granularity G pieces -> E = C·G experts of width F = H / G; expert
//   e = c·G + g holds hidden units g·F .. (g+1)·F-1 of copy c, its down
//   projection multiplied by G.
//   router [E, D]: rows drawn N(0, router_std) per copy and shared by the G
//   pieces of that copy, so the top (top_k·G) experts are always whole copies.
//   top-k is top_k·G, softmax then top-k with renormalized weights, dropless.
//
// Then, with noise_std = 0, every token's output is Σ over its k chosen
// copies of (p_c / Σp) · MLP(x) = MLP(x): the MoE model computes the dense
// model's logits up to f32 rounding (tests/frontends/upcycle_test.cpp). With
// noise_std > 0 each expert's weights get w += noise_std · rms(w) · N(0, 1),
// breaking the symmetry between copies. Training separates the copies anyway,
// since each one is trained on the tokens routed to it.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "frontends/config.h"
#include "frontends/llama.h"
#include "runtime/host_tensor.h"

namespace moejit {

struct UpcycleOptions {
  std::int64_t num_copies = 4;   // copies of each MLP
  std::int64_t top_k = 2;        // copies chosen per token
  std::int64_t granularity = 1;  // pieces each copy is split into
  double router_std = 0.02;
  double noise_std = 0.0;        // relative to each weight matrix's rms
  std::uint64_t seed = 0;
};

// Throws moejit::Error naming the option unless 1 <= top_k <= num_copies,
// granularity >= 1 divides `hidden`, router_std > 0, noise_std >= 0.
void validate_upcycle(const UpcycleOptions& options, std::int64_t hidden);

struct UpcycledGptMoe {
  GptMoeConfig config;
  std::map<std::string, HostTensor> params;
};
// A GPT-MoE without MoE layers (moe_every 0) -> every layer MoE, token-choice
// routing. The dense model must have no linear biases (experts have none) and
// pre-LN (peri-LN experts read another input than the dense MLP).
UpcycledGptMoe upcycle_gpt_moe(const GptMoeConfig& dense, const std::map<std::string, HostTensor>& params,
                               const UpcycleOptions& options);

struct UpcycledLlama {
  LlamaConfig config;  // MixtralForCausalLM
  std::map<std::string, HostTensor> params;
};
// A dense Llama-family model -> a Mixtral-shaped one (exportable with
// export_mixtral).
UpcycledLlama upcycle_llama(const LlamaConfig& dense, const std::map<std::string, HostTensor>& params,
                            const UpcycleOptions& options);

}  // namespace moejit
