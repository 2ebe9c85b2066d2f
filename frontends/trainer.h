// Training a GPT-MoE the nanoGPT way, on any backend: random batches,
// AdamW with linear warmup and cosine decay to min_lr, global-norm gradient
// clipping, and loss estimates on a forward-only graph.
//
// The training graph is built ONCE: forward + append_backward + clip +
// AdamW whose outputs update the parameters and moments in place; it is
// compiled once, and each step only sets the batch, lr, step and, when it
// has dropout or noisy gating, "rng_offset" = iter · (Philox positions per
// step): mj.dropout and mj.random_normal add it to their offsets at run
// time, so every step draws fresh masks and noise, the same on every backend
// and reproducible from iter. The evaluation graph is built and compiled
// once too and gets the current parameters before each estimate.
//
// On the CUDA backend the whole step (forward, backward, clipping, AdamW and
// the copies of the updated parameters and moments) is captured as one CUDA
// graph at the first step, once every input is bound, and each step then
// copies its batch, lr, step and rng_offset into the bound device buffers
// and replays that graph: one launch instead of hundreds. Replay equals
// eager bit for bit (tests/cuda/trainer_graph_gpu_test.cpp).
// TrainerOptions::cuda_graph = false, MOEJIT_CUDA_GRAPH=0 or MOEJIT_PROFILE=1
// (so that every launch is timed) run it eagerly.
//
//   GptMoeTrainer trainer(config, *backend, init_parameters(specs, seed));
//   BatchSampler train(tokens, config.batch_size, config.block_size, seed);
//   for (iter...) { auto batch = train.next(); trainer.step(batch, iter); }
//   double val = trainer.estimate_loss(val_sampler, config.eval_iters);
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "frontends/config.h"
#include "frontends/gpt_moe.h"
#include "runtime/backend.h"
#include "runtime/communicator.h"

namespace moejit {

// nanoGPT's get_lr: linear warmup over warmup_iters, then cosine decay to
// min_lr at decay_iters(), then min_lr (constant learning_rate when
// decay_lr is off). `iter` is 0-based.
double learning_rate_at(const GptMoeConfig& config, std::int64_t iter);

struct Batch {
  HostTensor idx;      // [B, T] i32
  HostTensor targets;  // [B, T] i32, idx shifted by one
};

// Random windows of a token sequence: x = tokens[i : i+T], y = tokens[i+1 : i+T+1],
// i uniform in [0, n - T - 1], from a seeded generator.
class BatchSampler {
 public:
  BatchSampler(const std::vector<std::int32_t>& tokens, std::int64_t batch, std::int64_t seq_len, std::uint64_t seed);
  Batch next();
  // The generator's whole state as text (std::mt19937_64's stream form), and
  // back: a resumed run draws the same batches an uninterrupted one would.
  std::string state() const;
  void set_state(const std::string& text);  // moejit::Error on malformed text

 private:
  const std::vector<std::int32_t>* tokens_;
  std::int64_t batch_, seq_len_;
  std::mt19937_64 rng_;
};

// The whole training step as one graph: the model's forward pass and loss,
// append_backward, the global gradient norm (output "grad_norm", before
// clipping) and global-norm clipping when config.grad_clip > 0, and two AdamW groups (weight decay on matrices and
// embeddings only, as nanoGPT) whose outputs update the parameters and
// moments. Inputs: idx, targets, lr, step (and rng_offset when the model has
// random ops).
//
// Before autodiff the forward graph goes through forward_pipeline(precision):
// fuse-attention-qkv (the attention reads the qkv projection packed, and
// its gradient writes one d_qkv), the MoE fusions (so the backward is built
// from the fused ops' gradients) and, for bf16, the mixed-precision pass
// (docs/mixed_precision.md).
//
// Expert + data parallelism (docs/scale.md), for rank r of N > 1: the global
// batch of config.batch_size sequences is split in N slices of batch_size / N
// (rank r gets slice r), the forward graph goes through
// shard-experts{rank=r world_size=N} before forward_pipeline (rank r keeps
// experts r*E/N .. (r+1)*E/N - 1: those parameters and their moments have
// E/N rows), the gradients through all-reduce-grads{world_size=N} after
// autodiff (output "loss" is the mean over ranks), and the global gradient
// norm adds the all_reduce of the expert gradients' squares, so every rank
// clips and updates alike.
struct Parallelism {
  int rank = 0;
  int world_size = 1;
};
// Throws moejit::Error when the config cannot be split over world_size ranks
// (num_experts or batch_size not divisible, expert-choice routing, SwitchHead
// attention), naming what is expected and found.
void check_parallelism(const GptMoeConfig& config, const Parallelism& parallel);
// Rank parallel.rank's sequences of a global batch (the batch itself for one rank).
Batch rank_batch(const Batch& global, const Parallelism& parallel);

struct TrainingGraph {
  Graph graph{"gpt_moe_train"};
  GptMoeGraph model;  // the unsharded model's params (full shapes)
};
TrainingGraph build_training_graph(const GptMoeConfig& config, DType precision = DType::f32,
                                   const Parallelism& parallel = {});

// The pass pipeline run on the model's forward graph (training and
// evaluation) before anything else: "fuse-attention-qkv,moe-fusions" (none
// with MOEJIT_FUSIONS=0), plus "mixed-precision{dtype=bf16}" when precision
// is bf16.
std::string forward_pipeline(DType precision);
// The config's dtype on this backend: f32 or bf16 as given; auto is bf16 on
// the CUDA backend and f32 elsewhere.
DType training_precision(const GptMoeConfig& config, const Backend& backend);

// The forward-only graph of the loss estimates (batch_size sequences of
// block_size, outputs "loss", "lm_loss", through forward_pipeline(precision)),
// compiled; and the mean lm_loss over
// `iters` batches of `sampler` on it, once its parameters are set. The
// trainer's estimate_loss and `gpt_moe eval` share both, so they agree bit
// for bit.
// With N > 1 ranks (`world` given, world->world_size() > 1) the evaluation
// graph is sharded like the training graph, each rank evaluates its slice of
// every batch and the per-batch lm_loss is the mean over ranks (host-side,
// through `world`): the same estimate as one rank's, up to float rounding.
std::unique_ptr<Executable> compile_eval_graph(const GptMoeConfig& config, Backend& backend, DType precision,
                                               const Parallelism& parallel = {});
double mean_lm_loss(Executable& eval, BatchSampler& sampler, std::int64_t iters, Communicator* world = nullptr);

struct StepStats {
  double loss = 0, lm_loss = 0, aux_loss = 0, grad_norm = 0, lr = 0;
};

struct TrainerOptions {
  // CUDA backend: replay one captured CUDA graph per step (see the top of
  // this file); ignored on other backends. MOEJIT_CUDA_GRAPH=0 turns it off.
  bool cuda_graph = true;
  // Several ranks (docs/scale.md): this process's communicator with the
  // others (the host-side collectives: gathering the experts, the losses);
  // nullptr or world_size 1: one rank. On the CPU backend the comm ops of
  // the graphs go through it too (installed on the calling thread by the
  // caller); on the CUDA backend through NCCL.
  Communicator* world = nullptr;
};

class GptMoeTrainer {
 public:
  // `params` holds a value for every spec of the config's model (parameters
  // and state); checked by name, dtype and shape. With several ranks they
  // are the whole model's (full shapes): each rank binds its experts' rows.
  GptMoeTrainer(const GptMoeConfig& config, Backend& backend, const std::map<std::string, HostTensor>& params,
                const TrainerOptions& options = {});

  // One optimizer step at iteration `iter` (0-based): lr from the schedule,
  // AdamW step iter + 1. A non-finite loss is returned, not thrown: the
  // caller decides (the training loop stops without saving).
  StepStats step(const Batch& batch, std::int64_t iter);
  // Mean cross-entropy over `iters` batches, on the forward-only graph.
  double estimate_loss(BatchSampler& sampler, std::int64_t iters);

  // Current values of every spec (parameters and state), full shapes. With
  // several ranks this is a collective (every rank must call it): the expert
  // slices are gathered from every rank.
  std::map<std::string, HostTensor> parameters() const;
  // Replaces every spec's value (checked like the constructor's).
  void set_parameters(const std::map<std::string, HostTensor>& params);
  // The AdamW moments, "m.<name>" and "v.<name>" per trained parameter, and
  // back (every one of them, checked by name and type; full shapes, gathered
  // from every rank like parameters()).
  std::map<std::string, HostTensor> optimizer_state() const;
  void set_optimizer_state(const std::map<std::string, HostTensor>& moments);
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const GptMoeConfig& config() const { return config_; }
  DType precision() const { return precision_; }
  // The global batch's tokens (all ranks together).
  std::int64_t tokens_per_step() const { return config_.batch_size * config_.block_size; }
  const Parallelism& parallelism() const { return parallel_; }
  Communicator* world() const { return world_; }
  // Whether steps replay a captured CUDA graph (CUDA backend, cuda_graph on).
  bool replays_cuda_graph() const { return use_cuda_graph_; }
  bool captured() const { return captured_; }

 private:
  void update_selection_bias();
  std::unique_ptr<Executable> compile_train_graph();
  // A full tensor -> this rank's part as the training graph's argument `name` holds it.
  HostTensor local_part(const std::string& name, const HostTensor& full) const;
  // This rank's value of `name` -> the full tensor (gathered when sharded).
  HostTensor gather(const std::string& name, const HostTensor& local) const;

  GptMoeConfig config_;
  Backend* backend_;
  Communicator* world_ = nullptr;
  Parallelism parallel_;
  std::map<std::string, TensorType> local_types_;  // sharded specs: this rank's type
  DType precision_ = DType::f32;
  std::vector<ParamSpec> specs_;
  std::vector<std::int64_t> moe_layers_;
  std::unique_ptr<Executable> train_;
  std::unique_ptr<Executable> eval_;
  bool has_aux_loss_ = false;
  bool has_grad_norm_ = false;
  std::int64_t rng_positions_per_step_ = 0;  // 0: the graph has no random ops
  bool use_cuda_graph_ = false;
  bool captured_ = false;  // the step's CUDA graph exists (captured at the first step)
};

}  // namespace moejit
