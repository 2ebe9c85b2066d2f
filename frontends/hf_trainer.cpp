// Llama-family training step (see hf_trainer.h).
#include "frontends/hf_trainer.h"

#include <fmt/format.h>

#include <cmath>

#include "frontends/optim.h"
#include "ir/error.h"
#include "passes/autodiff.h"

namespace moejit {

LlamaTrainer::LlamaTrainer(const LlamaConfig& config, Backend& backend,
                           const std::map<std::string, HostTensor>& params, const LlamaTrainingOptions& options)
    : config_(config), options_(options) {
  Graph graph("llama_train");
  LlamaGraph model = build_llama(graph, config, {.batch = options.batch, .seq_len = options.seq_len,
                                                 .with_loss = true, .output_logits = false,
                                                 .aux_loss_coeff = options.aux_loss_coeff});
  specs_ = model.params;
  check_parameters(params, specs_, "LlamaTrainer: initial parameters");
  std::vector<std::string> names;
  for (const ParamSpec& s : specs_) names.push_back(s.name);
  Builder b(graph);
  std::vector<Tensor> grads = as_tensors(graph, append_backward(graph, {.loss = "loss", .wrt = names}));
  if (options.grad_clip > 0) {
    ClippedGrads clipped = clip_grad_norm(b, grads, options.grad_clip);
    grads = clipped.grads;
    b.output(clipped.norm, "grad_norm");
  }
  std::vector<Tensor> decay_params, decay_grads, plain_params, plain_grads;
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    Tensor p{&graph, graph.find_arg(specs_[i].name)};
    (specs_[i].weight_decay ? decay_params : plain_params).push_back(p);
    (specs_[i].weight_decay ? decay_grads : plain_grads).push_back(grads[i]);
  }
  AdamWOptions adam{.beta1 = options.beta1, .beta2 = options.beta2, .eps = 1e-8, .weight_decay = options.weight_decay};
  if (!decay_params.empty()) append_adamw(b, decay_params, decay_grads, adam);
  adam.weight_decay = 0.0;
  if (!plain_params.empty()) append_adamw(b, plain_params, plain_grads, adam);
  has_aux_ = graph.find_output("aux_loss") != nullptr;
  has_grad_norm_ = graph.find_output("grad_norm") != nullptr;

  train_ = backend.compile(graph);
  Graph eval_graph("llama_eval");
  build_llama(eval_graph, config, {.batch = options.batch, .seq_len = options.seq_len, .with_loss = true,
                                   .output_logits = false, .output_routing = config.is_moe()});
  eval_ = backend.compile(eval_graph);
  bind_rope_tables(*eval_, config.rope);
  bind_rope_tables(*train_, config.rope);
  for (const ParamSpec& s : specs_) {
    train_->set(s.name, params.at(s.name));
    HostTensor zeros(s.type);
    train_->set("m." + s.name, zeros);
    train_->set("v." + s.name, zeros);
  }
}

LlamaStepStats LlamaTrainer::step(const Batch& batch, std::int64_t iter, double lr) {
  train_->set("idx", batch.idx);
  train_->set("targets", batch.targets);
  train_->set("lr", HostTensor::scalar(lr));
  train_->set("step", HostTensor::scalar(static_cast<double>(iter + 1)));
  train_->run();
  LlamaStepStats stats;
  stats.loss = train_->get("loss").get(0);
  stats.lm_loss = has_aux_ ? train_->get("lm_loss").get(0) : stats.loss;
  if (has_aux_) stats.aux_loss = train_->get("aux_loss").get(0);
  if (has_grad_norm_) stats.grad_norm = train_->get("grad_norm").get(0);
  if (!std::isfinite(stats.loss))
    throw Error(fmt::format("llama training diverged at step {}: loss is {} (try a lower learning rate)", iter,
                            stats.loss));
  return stats;
}

LlamaTrainer::Evaluation LlamaTrainer::evaluate(BatchSampler& sampler, std::int64_t iters) {
  for (const ParamSpec& s : specs_) eval_->set(s.name, train_->get(s.name));
  Evaluation result;
  const std::int64_t layers = config_.is_moe() ? config_.num_hidden_layers : 0;
  result.expert_slots.assign(static_cast<std::size_t>(layers),
                             std::vector<std::int64_t>(static_cast<std::size_t>(config_.num_local_experts), 0));
  for (std::int64_t i = 0; i < iters; ++i) {
    Batch batch = sampler.next();
    eval_->set("idx", batch.idx);
    eval_->set("targets", batch.targets);
    eval_->run();
    result.lm_loss += eval_->get("loss").get(0) / static_cast<double>(iters);
    for (std::int64_t l = 0; l < layers; ++l) {
      HostTensor counts = eval_->get(fmt::format("counts.{}", l));
      for (std::int64_t e = 0; e < counts.numel(); ++e)
        result.expert_slots[static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] +=
            static_cast<std::int64_t>(counts.get(e));
    }
  }
  return result;
}

std::map<std::string, HostTensor> LlamaTrainer::parameters() const {
  std::map<std::string, HostTensor> values;
  for (const ParamSpec& s : specs_) values.emplace(s.name, train_->get(s.name));
  return values;
}

}  // namespace moejit
