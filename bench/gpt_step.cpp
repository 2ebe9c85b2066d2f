// The example's training graph and its arguments (bench/gpt_step.h).
#include "bench/gpt_step.h"

#include <fmt/format.h>

#include <random>

#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/trainer.h"
#include "ir/error.h"

namespace moejit::bench {

GptMoeConfig example_config() {
  GptMoeConfig config;
  config.vocab_size = 65;
  return config;
}

void apply_overrides(GptMoeConfig& config, const std::vector<std::string>& overrides) {
  for (const auto& text : overrides) {
    auto eq = text.find('=');
    if (eq == std::string::npos) throw Error(fmt::format("--set '{}': expected key=value (a config key of frontends/config.h)", text));
    set_config_value(config, text.substr(0, eq), text.substr(eq + 1));
  }
  validate_config(config);
}

Graph build_gpt_train_graph(const GptMoeConfig& config, DType precision) {
  return build_training_graph(config, precision).graph;
}

std::map<std::string, HostTensor> gpt_train_args(const Graph& graph, const GptMoeConfig& config, std::uint64_t seed) {
  std::map<std::string, HostTensor> init = init_parameters(gpt_moe_param_specs(config), seed);
  std::mt19937_64 rng(seed + 1);
  std::uniform_int_distribution<std::int64_t> token(0, config.vocab_size - 1);
  std::map<std::string, HostTensor> args;
  for (const auto& arg : graph.args()) {
    const std::string& name = graph.value(arg.value).name;
    const TensorType& type = graph.type(arg.value);
    HostTensor value(type);  // zeros
    if (auto it = init.find(name); it != init.end()) {
      value = it->second;
    } else if (name == "idx" || name == "targets") {
      for (std::int64_t i = 0; i < value.numel(); ++i) value.set(i, static_cast<double>(token(rng)));
    } else if (name == "lr") {
      value.set(0, 1e-3);
    } else if (name == "step") {
      value.set(0, 1.0);
    } else if (name == "rng_offset") {
      // 0: the random numbers of step 0 (dropout, gating noise)
    } else if (name == "rope.cos" || name == "rope.sin") {
      // zeros here; bind_rope_tables sets the tables on the executable
    } else if (name.rfind("m.", 0) != 0 && name.rfind("v.", 0) != 0) {
      throw Error(fmt::format("gpt_train_args: no value for argument '{}' {} of @{}", name, type.str(), graph.name()));
    }
    args.emplace(name, std::move(value));
  }
  return args;
}

}  // namespace moejit::bench
