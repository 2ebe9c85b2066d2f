// Text generation from a GPT-MoE (see generate.h).
#include "frontends/generate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "frontends/gpt_moe.h"
#include "frontends/rope.h"
#include "ir/error.h"

namespace moejit {

GptMoeConfig inference_config(const GptMoeConfig& config) {
  GptMoeConfig c = config;
  // Expert choice has no dropless form: its capacity is the routing itself.
  if (c.router_type != "expert_choice") c.capacity_factor = 0.0;
  c.dropout = 0.0;
  return c;
}

GptMoeSampler::GptMoeSampler(const GptMoeConfig& config, Backend& backend,
                             const std::map<std::string, HostTensor>& params)
    : config_(inference_config(config)) {
  Graph graph("gpt_moe_sample");
  GptMoeGraph model = build_gpt_moe(graph, config_, {.batch = 1, .with_loss = false, .output_logits = true});
  check_parameters(params, model.params, "sampler parameters");
  exe_ = backend.compile(graph);
  bind_rope_tables(*exe_, {.theta = config_.rope_theta});
  for (const ParamSpec& s : model.params) exe_->set(s.name, params.at(s.name));
}

std::int32_t sample_token(const std::vector<float>& logits, const SampleOptions& options, std::mt19937_64& rng) {
  if (!(options.temperature > 0))
    throw Error(fmt::format("sampling: temperature: expected a value > 0, found {}", options.temperature));
  const std::size_t V = logits.size();
  if (V == 0) throw Error("sampling: expected at least one logit, found none");
  for (std::size_t i = 0; i < V; ++i)
    if (!std::isfinite(logits[i]))
      throw Error(fmt::format("sampling: expected finite logits, found {} for token {}", logits[i], i));
  // Scale the distance to the largest logit, so that a tiny temperature gives
  // 0 and -large (greedy), never inf - inf = NaN weights.
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> scaled(V);
  for (std::size_t i = 0; i < V; ++i) scaled[i] = (static_cast<double>(logits[i]) - max_logit) / options.temperature;
  if (options.top_k > 0 && static_cast<std::size_t>(options.top_k) < V) {
    std::vector<double> sorted = scaled;
    std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<>());
    const double threshold = sorted[static_cast<std::size_t>(options.top_k - 1)];
    for (double& s : scaled)
      if (s < threshold) s = -INFINITY;
  }
  const double max = *std::max_element(scaled.begin(), scaled.end());
  std::vector<double> probs(V);
  for (std::size_t i = 0; i < V; ++i) probs[i] = std::exp(scaled[i] - max);
  std::discrete_distribution<std::int32_t> pick(probs.begin(), probs.end());
  return pick(rng);
}

std::vector<std::int32_t> GptMoeSampler::generate(const std::vector<std::int32_t>& prompt,
                                                  const SampleOptions& options, std::mt19937_64& rng) {
  if (prompt.empty()) throw Error("sampling: prompt: expected at least one token, found an empty prompt");
  const std::int64_t T = config_.block_size, V = config_.vocab_size;
  std::vector<std::int32_t> tokens = prompt;
  HostTensor idx({DType::i32, {1, T}});
  for (std::int64_t n = 0; n < options.max_new_tokens; ++n) {
    const std::int64_t context = std::min<std::int64_t>(T, static_cast<std::int64_t>(tokens.size()));
    std::span<std::int32_t> ids = idx.values<std::int32_t>();
    std::fill(ids.begin(), ids.end(), 0);
    std::copy(tokens.end() - context, tokens.end(), ids.begin());
    exe_->set("idx", idx);
    exe_->run();
    HostTensor logits = exe_->get("logits");  // [T, V]
    std::span<const float> row = logits.values<float>().subspan(static_cast<std::size_t>((context - 1) * V),
                                                                static_cast<std::size_t>(V));
    tokens.push_back(sample_token(std::vector<float>(row.begin(), row.end()), options, rng));
  }
  return tokens;
}

HostTensor gpt_moe_logits(const GptMoeConfig& config, const std::map<std::string, HostTensor>& params, const HostTensor& idx) {
  Graph graph("logits");
  GptMoeGraph model = build_gpt_moe(
      graph, config, {.batch = idx.shape()[0], .seq_len = idx.shape()[1], .training = false, .with_loss = false, .output_logits = true});
  auto exe = make_cpu_backend()->compile(graph);
  for (const ParamSpec& s : model.params) exe->set(s.name, params.at(s.name));
  bind_rope_tables(*exe, {.theta = config.rope_theta});  // position_embedding rope; else nothing to bind
  exe->set("idx", idx);
  exe->run();
  return exe->get("logits");
}

}  // namespace moejit
