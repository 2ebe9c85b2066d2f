// Helpers of the CUDA tests: a small GPT-MoE training graph (forward,
// backward, clipping, AdamW), random argument values, and the normalized
// error ||a - b|| / ||b|| used to compare the GPU with the CPU reference.
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
#include "runtime/host_tensor.h"

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

// ||a - b|| / max(||b||, 0.01 sqrt(n)) over every element (as doubles): the
// relative error, except that a reference whose RMS is under 0.01 (a
// gradient that nearly cancels) is judged against RMS 0.01. NaN must match.
inline double normalized_error(const HostTensor& a, const HostTensor& b) {
  double diff = 0.0, norm = 0.0;
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    double x = a.get(i), y = b.get(i);
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    if (std::isnan(x)) continue;
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  double floor = 1e-4 * static_cast<double>(b.numel());  // (0.01 sqrt(n))^2
  return std::sqrt(diff / std::max(norm, floor));
}

// Tolerances for GPU vs CPU, by dtype (integers must match exactly).
inline double tolerance(DType dtype) {
  switch (dtype) {
    case DType::f32: return 1e-4;
    case DType::f64: return 1e-10;
    case DType::bf16: return 2e-2;
    case DType::f16: return 5e-3;
    default: return 0.0;
  }
}

}  // namespace moejit::cuda_test
