// Helpers of the CUDA tests: a small GPT-MoE training graph (forward,
// backward, clipping, AdamW), random argument values, and the normalized
// error and tolerances used to compare the GPU with the CPU reference.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>

#include "frontends/config.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "ir/graph.h"
#include "passes/autodiff.h"
#include "frontends/optim.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/host_tensor.h"
#include "runtime/tensor_compare.h"

// At the top of a [gpu] test: without a usable GPU, prints "SKIPPED: no CUDA
// device (<why>)" (ctest reports the test as skipped) and returns.
#define MOEJIT_SKIP_WITHOUT_GPU()                                   \
  do {                                                              \
    std::string why_no_gpu_;                                        \
    if (!::moejit::cuda_available(&why_no_gpu_)) {                  \
      WARN("SKIPPED: no CUDA device (" << why_no_gpu_ << ")");      \
      return;                                                       \
    }                                                               \
  } while (0)

namespace moejit::cuda_test {

inline GptMoeConfig small_gpt_config() {
  GptMoeConfig c;
  c.vocab_size = 17;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.block_size = 16;
  c.num_experts = 4;
  c.top_k = 2;
  c.d_expert = 48;
  c.moe_every = 2;  // layer 0 dense, layer 1 MoE
  c.batch_size = 2;
  return c;
}

// Forward + loss, append_backward over every param, global-norm clipping,
// and AdamW updating params and moments: one whole training step.
inline Graph make_gpt_training_graph(const GptMoeConfig& config, std::int64_t batch) {
  Graph graph("gpt_train");
  build_gpt_moe(graph, config, {.batch = batch, .seq_len = config.block_size, .training = true});
  std::vector<std::string> names;
  for (const auto& arg : graph.args())
    if (arg.role == ArgRole::param) names.push_back(graph.value(arg.value).name);
  auto grads = append_backward(graph, {.loss = "loss", .wrt = names});
  Builder b(graph);
  auto clipped = clip_grad_norm(b, as_tensors(graph, grads), config.grad_clip);
  b.output(clipped.norm, "grad_norm");
  std::vector<Tensor> params;
  for (const auto& name : names) params.push_back(Tensor{&graph, graph.find_arg(name)});
  append_adamw(b, params, clipped.grads,
               {.beta1 = config.beta1, .beta2 = config.beta2, .eps = 1e-8, .weight_decay = config.weight_decay});
  return graph;
}

// Values for every argument: int arguments uniform in [0, int_bound) (or
// `bounds` by name), "step" = 1, "lr" = 1e-3, moments ("m."/"v.", state
// named *_m/*_v) zero, float arguments normal(0, scale).
inline std::map<std::string, HostTensor> random_args(const Graph& graph, std::uint64_t seed, std::int64_t int_bound,
                                                     double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::map<std::string, HostTensor> values;
  for (const auto& arg : graph.args()) {
    const auto& info = graph.value(arg.value);
    HostTensor t(info.type);
    const std::string& name = info.name;
    bool moment = name.rfind("m.", 0) == 0 || name.rfind("v.", 0) == 0 || name == "w_m" || name == "w_v";
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      double v;
      if (name == "step") v = 1.0;
      else if (name == "lr") v = 1e-3;
      else if (moment) v = 0.0;
      else if (!is_float(info.type.dtype)) v = static_cast<double>(std::uniform_int_distribution<std::int64_t>(0, int_bound - 1)(rng));
      else v = normal(rng);
      t.set(i, v);
    }
    values.emplace(name, std::move(t));
  }
  return values;
}

// The normalized error and the per-dtype tolerances: one definition for the
// tests and the benches (runtime/tensor_compare.h).
using moejit::normalized_error;
using moejit::tolerance;

}  // namespace moejit::cuda_test
