// Training a Llama-family model (a loaded Hugging Face one, or one upcycled
// into a Mixtral) with moejit: the training graph is the model's forward pass
// and loss (+ the routers' load-balancing loss for MoE), append_backward,
// global-norm clipping and AdamW (weight decay on matrices and embeddings,
// not on norm gains or routers), built and compiled once; each step binds the
// batch, lr and step.
//
//   LlamaTrainer trainer(config, *backend, params, {.batch = 4, .seq_len = 64});
//   for (iter...) trainer.step(sampler.next(), learning_rate);
//   save_llama_checkpoint(path, config, trainer.parameters());
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "frontends/llama.h"
#include "frontends/trainer.h"
#include "runtime/backend.h"

namespace moejit {

struct LlamaTrainingOptions {
  std::int64_t batch = 4;
  std::int64_t seq_len = 32;
  double aux_loss_coeff = 0.01;  // MoE models only
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95;
  double grad_clip = 1.0;        // 0: none
};

struct LlamaStepStats {
  double loss = 0, lm_loss = 0, aux_loss = 0, grad_norm = 0;
};

class LlamaTrainer {
 public:
  // `params` must hold every parameter of the config's model (checked).
  LlamaTrainer(const LlamaConfig& config, Backend& backend, const std::map<std::string, HostTensor>& params,
               const LlamaTrainingOptions& options);
  // One AdamW step (step number iter + 1) at learning rate lr. Throws
  // moejit::Error if the loss is not finite.
  LlamaStepStats step(const Batch& batch, std::int64_t iter, double lr);
  std::map<std::string, HostTensor> parameters() const;

  struct Evaluation {
    double lm_loss = 0;                                     // mean over the batches
    std::vector<std::vector<std::int64_t>> expert_slots;   // [MoE layer][expert], summed
  };
  // Mean cross-entropy of `iters` batches on a forward-only graph with the
  // current parameters, and (MoE) how many slots each expert got.
  Evaluation evaluate(BatchSampler& sampler, std::int64_t iters);

 private:
  LlamaConfig config_;
  LlamaTrainingOptions options_;
  std::vector<ParamSpec> specs_;
  std::unique_ptr<Executable> train_, eval_;
  bool has_aux_ = false, has_grad_norm_ = false;
};

}  // namespace moejit
