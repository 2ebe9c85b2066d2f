// GPT-MoE training loop pieces (see trainer.h).
#include "frontends/trainer.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numbers>
#include <numeric>
#include <optional>
#include <sstream>
#include <string_view>

#include "ir/error.h"
#include "passes/autodiff.h"
#include "runtime/device.h"
#include "passes/pass_manager.h"
#include "passes/passes.h"
#include "frontends/optim.h"
#include "frontends/rope.h"

namespace moejit {

double learning_rate_at(const GptMoeConfig& c, std::int64_t iter) {
  if (iter < c.warmup_iters)
    return c.learning_rate * static_cast<double>(iter + 1) / static_cast<double>(c.warmup_iters + 1);
  if (!c.decay_lr) return c.learning_rate;
  const std::int64_t decay_iters = c.decay_iters();
  if (iter >= decay_iters || decay_iters <= c.warmup_iters) return c.min_lr;
  const double ratio =
      static_cast<double>(iter - c.warmup_iters) / static_cast<double>(decay_iters - c.warmup_iters);
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * ratio));  // 1 -> 0
  return c.min_lr + coeff * (c.learning_rate - c.min_lr);
}

BatchSampler::BatchSampler(const std::vector<std::int32_t>& tokens, std::int64_t batch, std::int64_t seq_len,
                           std::uint64_t seed)
    : tokens_(&tokens), batch_(batch), seq_len_(seq_len), rng_(seed) {
  if (static_cast<std::int64_t>(tokens.size()) < seq_len + 2)
    throw Error(fmt::format("batches: expected a text of at least block_size + 2 = {} tokens, found {}", seq_len + 2,
                            tokens.size()));
}

std::string BatchSampler::state() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

void BatchSampler::set_state(const std::string& text) {
  std::istringstream in(text);
  std::mt19937_64 rng;
  in >> rng;
  if (!in) throw Error(fmt::format("batch sampler state: expected 313 integers (std::mt19937_64's state), found '{}'",
                                   text.substr(0, 40) + (text.size() > 40 ? "..." : "")));
  rng_ = rng;
}

Batch BatchSampler::next() {
  Batch batch{HostTensor({DType::i32, {batch_, seq_len_}}), HostTensor({DType::i32, {batch_, seq_len_}})};
  std::span<std::int32_t> x = batch.idx.values<std::int32_t>(), y = batch.targets.values<std::int32_t>();
  const std::uint64_t starts = tokens_->size() - static_cast<std::size_t>(seq_len_) - 1;  // i in [0, starts)
  for (std::int64_t b = 0; b < batch_; ++b) {
    const std::size_t i = static_cast<std::size_t>(rng_() % starts);
    for (std::int64_t t = 0; t < seq_len_; ++t) {
      x[static_cast<std::size_t>(b * seq_len_ + t)] = (*tokens_)[i + static_cast<std::size_t>(t)];
      y[static_cast<std::size_t>(b * seq_len_ + t)] = (*tokens_)[i + static_cast<std::size_t>(t) + 1];
    }
  }
  return batch;
}

namespace {

// Rows first .. first + n - 1 of a tensor [R, ...].
HostTensor leading_rows(const HostTensor& t, std::int64_t first, std::int64_t n) {
  Shape shape = t.shape();
  const std::size_t row_bytes = t.bytes() / static_cast<std::size_t>(shape[0]);
  shape[0] = n;
  HostTensor out(TensorType{t.dtype(), shape});
  std::memcpy(out.raw(), t.raw() + static_cast<std::size_t>(first) * row_bytes, static_cast<std::size_t>(n) * row_bytes);
  return out;
}

std::string shard_pipeline(const Parallelism& p) {
  return fmt::format("shard-experts{{rank={} world_size={}}}", p.rank, p.world_size);
}

// The mean over ranks of host scalars (the same bits on every rank).
void mean_over_ranks(Communicator* world, std::vector<double*> values) {
  if (!world || world->world_size() == 1) return;
  HostTensor x(TensorType{DType::f64, {static_cast<std::int64_t>(values.size())}}), y = x;
  for (std::size_t i = 0; i < values.size(); ++i) x.set(static_cast<std::int64_t>(i), *values[i]);
  world->all_reduce_sum(x, y);
  for (std::size_t i = 0; i < values.size(); ++i)
    *values[i] = y.get(static_cast<std::int64_t>(i)) / static_cast<double>(world->world_size());
}

}  // namespace

void check_parallelism(const GptMoeConfig& c, const Parallelism& p) {
  if (p.world_size < 1 || p.rank < 0 || p.rank >= p.world_size)
    throw Error(fmt::format("parallel training: expected 0 <= rank < world_size, found rank {} of {}", p.rank,
                            p.world_size));
  if (p.world_size == 1) return;
  const int n = p.world_size;
  if (c.batch_size % n != 0)
    throw Error(fmt::format("--nproc {}: batch_size: expected a multiple of {} (the global batch is split evenly over "
                            "the ranks), found {}",
                            n, n, c.batch_size));
  if (c.num_moe_layers() > 0 && c.num_experts % n != 0)
    throw Error(fmt::format("--nproc {}: num_experts: expected a multiple of {} (each rank holds num_experts / {} "
                            "experts), found {}",
                            n, n, n, c.num_experts));
  if (c.router_type != "token_choice")
    throw Error(fmt::format("--nproc {}: router_type: expected token_choice (shard-experts exchanges a token-choice "
                            "dispatch), found {}",
                            n, c.router_type));
  if (c.attention != "dense")
    throw Error(fmt::format("--nproc {}: attention: expected dense (SwitchHead's attention experts are not sharded), "
                            "found {}",
                            n, c.attention));
}

Batch rank_batch(const Batch& global, const Parallelism& p) {
  if (p.world_size == 1) return global;
  const std::int64_t rows = global.idx.shape()[0] / p.world_size;
  return {leading_rows(global.idx, p.rank * rows, rows), leading_rows(global.targets, p.rank * rows, rows)};
}

namespace {
// MOEJIT_CUDA_GRAPH=0 (debug knob): run the training step eagerly on the GPU.
// So does MOEJIT_PROFILE (the executor's per-launch events), so that a
// profile of `gpt_moe train` times every kernel.
bool cuda_graph_disabled_by_env() {
  const char* graph = std::getenv("MOEJIT_CUDA_GRAPH");
  const char* profile = std::getenv("MOEJIT_PROFILE");
  return (graph != nullptr && std::string_view(graph) == "0") ||
         (profile != nullptr && *profile != '\0' && std::string_view(profile) != "0");
}
}  // namespace

GptMoeTrainer::GptMoeTrainer(const GptMoeConfig& config, Backend& backend,
                             const std::map<std::string, HostTensor>& params, const TrainerOptions& options)
    : config_(config),
      backend_(&backend),
      world_(options.world),
      parallel_{options.world ? options.world->rank() : 0, options.world ? options.world->world_size() : 1},
      precision_(training_precision(config, backend)),
      use_cuda_graph_(options.cuda_graph && backend.name() == "cuda" && !cuda_graph_disabled_by_env()) {
  check_parallelism(config_, parallel_);
  check_parameters(params, gpt_moe_param_specs(config_), "initial parameters");
  train_ = compile_train_graph();

  eval_ = compile_eval_graph(config_, backend, precision_, parallel_);
  bind_rope_tables(*train_, {.theta = config_.rope_theta});  // graphs without RoPE are left alone

  for (const ParamSpec& s : specs_) {
    train_->set(s.name, local_part(s.name, params.at(s.name)));
    if (s.role == ArgRole::param) {
      auto local = local_types_.find(s.name);
      HostTensor zeros(local == local_types_.end() ? s.type : local->second);
      train_->set("m." + s.name, zeros);
      train_->set("v." + s.name, zeros);
    }
  }
}

std::string forward_pipeline(DType precision) {
  MOEJIT_ASSERT(precision == DType::f32 || precision == DType::bf16, "forward_pipeline: precision is f32 or bf16");
  const std::string fusions = fusions_enabled() ? "fuse-attention-qkv,moe-fusions" : "";
  if (precision == DType::f32) return fusions;
  return fusions.empty() ? "mixed-precision{dtype=bf16}" : fusions + ",mixed-precision{dtype=bf16}";
}

DType training_precision(const GptMoeConfig& config, const Backend& backend) {
  if (config.dtype == "f32") return DType::f32;
  if (config.dtype == "bf16") return DType::bf16;
  if (config.dtype == "auto") return backend.name() == "cuda" ? DType::bf16 : DType::f32;
  throw Error(fmt::format("config: dtype: expected one of auto | f32 | bf16, found '{}'", config.dtype));
}

TrainingGraph build_training_graph(const GptMoeConfig& config, DType precision, const Parallelism& parallel) {
  check_parallelism(config, parallel);
  const int n = parallel.world_size;
  TrainingGraph out;
  Graph& graph = out.graph;
  out.model = build_gpt_moe(graph, config,
                            {.batch = config.batch_size / n, .training = true, .with_loss = true,
                             .output_routing = config.selection_bias});
  if (n > 1) run_pipeline(graph, shard_pipeline(parallel));  // before the fusions: it rewrites the unfused chain
  run_pipeline(graph, forward_pipeline(precision));
  std::vector<std::string> trained;
  for (const ParamSpec& s : out.model.params)
    if (s.role == ArgRole::param) trained.push_back(s.name);
  std::vector<ValueId> grad_ids = append_backward(graph, {.loss = "loss", .wrt = trained});
  GradSharding sharding;
  if (n > 1) {
    // Dense gradients all-reduced / N, expert ones / N; the pass rebuilds the
    // graph, so the gradients are found again by their outputs' names.
    run_pipeline(graph, fmt::format("all-reduce-grads{{world_size={}}}", n));
    grad_ids.clear();
    sharding.world_size = n;
    for (const ParamSpec& s : out.model.params) {
      if (s.role != ArgRole::param) continue;
      grad_ids.push_back(graph.find_output("grad." + s.name)->value);
      sharding.sharded.push_back(graph.type(graph.find_arg(s.name)) != s.type);
    }
  }
  Builder b(graph);
  std::vector<Tensor> grads = as_tensors(graph, grad_ids);
  if (config.grad_clip > 0) {
    ClippedGrads clipped = clip_grad_norm(b, grads, config.grad_clip, sharding);
    grads = clipped.grads;
    b.output(clipped.norm, "grad_norm");
  } else if (!grads.empty()) {
    // No clipping, but the norm is still worth printing: sqrt(sum_g sum(g^2)).
    b.output(global_grad_norm(b, grads, sharding), "grad_norm");
  }
  // Two AdamW groups, as nanoGPT: weight decay on matrices and embeddings only.
  std::vector<Tensor> decay_params, decay_grads, plain_params, plain_grads;
  std::size_t g = 0;
  for (const ParamSpec& s : out.model.params) {
    if (s.role != ArgRole::param) continue;
    Tensor p{&graph, graph.find_arg(s.name)};
    (s.weight_decay ? decay_params : plain_params).push_back(p);
    (s.weight_decay ? decay_grads : plain_grads).push_back(grads[g++]);
  }
  AdamWOptions adam{.beta1 = config.beta1, .beta2 = config.beta2, .eps = 1e-8, .weight_decay = config.weight_decay};
  if (!decay_params.empty()) append_adamw(b, decay_params, decay_grads, adam);
  adam.weight_decay = 0.0;
  if (!plain_params.empty()) append_adamw(b, plain_params, plain_grads, adam);
  return out;
}

// The training graph, built and compiled once.
std::unique_ptr<Executable> GptMoeTrainer::compile_train_graph() {
  TrainingGraph training = build_training_graph(config_, precision_, parallel_);
  specs_ = training.model.params;
  for (const ParamSpec& s : specs_) {
    const TensorType& local = training.graph.type(training.graph.find_arg(s.name));
    if (local != s.type) local_types_.emplace(s.name, local);
  }
  moe_layers_ = training.model.moe_layers;
  rng_positions_per_step_ = training.model.rng_positions_per_step;
  has_aux_loss_ = training.graph.find_output("aux_loss") != nullptr;
  has_grad_norm_ = training.graph.find_output("grad_norm") != nullptr;
  return backend_->compile(training.graph);
}

StepStats GptMoeTrainer::step(const Batch& batch, std::int64_t iter) {
  StepStats stats;
  stats.lr = learning_rate_at(config_, iter);
  const Batch local = rank_batch(batch, parallel_);
  train_->set("idx", local.idx);
  train_->set("targets", local.targets);
  train_->set("lr", HostTensor::scalar(stats.lr));
  train_->set("step", HostTensor::scalar(static_cast<double>(iter + 1)));
  if (rng_positions_per_step_ > 0) {
    // Step iter takes Philox positions [iter · per_step, (iter + 1) · per_step):
    // fresh dropout masks and gating noise, never shared with another step.
    if (iter < 0 || iter > std::numeric_limits<std::int64_t>::max() / rng_positions_per_step_)
      throw Error(fmt::format("training step: expected 0 <= iter <= {} (Philox positions per step: {}), found {}",
                              std::numeric_limits<std::int64_t>::max() / rng_positions_per_step_,
                              rng_positions_per_step_, iter));
    // With several ranks, rank r of N takes the positions of step iter * N + r:
    // every rank draws its own masks (one rank: iter, as before).
    const std::int64_t draw = iter * parallel_.world_size + parallel_.rank;
    if (draw > std::numeric_limits<std::int64_t>::max() / rng_positions_per_step_)
      throw Error(fmt::format("training step: iter {} of rank {} of {} is past the Philox positions", iter,
                              parallel_.rank, parallel_.world_size));
    HostTensor rng_offset(TensorType{DType::i64, {}});
    rng_offset.values<std::int64_t>()[0] = draw * rng_positions_per_step_;
    train_->set("rng_offset", rng_offset);
  }
  // The first step has bound every input, so the step can be captured now;
  // later steps' set() calls above write into the same device buffers the
  // graph reads.
  if (use_cuda_graph_ && !captured_) {
    capture_cuda_graph(*train_);
    captured_ = true;
  }
  train_->run();
  stats.loss = train_->get("loss").get(0);
  stats.lm_loss = train_->get("lm_loss").get(0);
  if (has_aux_loss_) stats.aux_loss = train_->get("aux_loss").get(0);
  if (has_grad_norm_) stats.grad_norm = train_->get("grad_norm").get(0);
  // "loss" is the global mean already (all-reduce-grads); its parts are each
  // rank's, averaged here for the log.
  mean_over_ranks(world_, {&stats.lm_loss, &stats.aux_loss});
  if (config_.selection_bias && std::isfinite(stats.loss)) update_selection_bias();
  return stats;
}

// Aux-loss-free balancing (DeepSeek-V3): after each step, raise the bias of
// experts that got fewer slots than the mean and lower it for those that got
// more, by bias_update_rate.
void GptMoeTrainer::update_selection_bias() {
  for (std::int64_t layer : moe_layers_) {
    HostTensor counts = train_->get(fmt::format("counts.{}", layer));
    if (world_ && world_->world_size() > 1) {  // every rank's tokens: the same update everywhere
      HostTensor local = counts;
      world_->all_reduce_sum(local, counts);
    }
    const std::string name = fmt::format("h.{}.moe.router.selection_bias", layer);
    HostTensor bias = train_->get(name);
    double mean = 0;
    for (std::int64_t e = 0; e < counts.numel(); ++e) mean += counts.get(e);
    mean /= static_cast<double>(counts.numel());
    for (std::int64_t e = 0; e < counts.numel(); ++e) {
      const double error = mean - counts.get(e);
      const double sign = error > 0 ? 1.0 : error < 0 ? -1.0 : 0.0;
      bias.set(e, bias.get(e) + config_.bias_update_rate * sign);
    }
    train_->set(name, bias);
  }
}

std::unique_ptr<Executable> compile_eval_graph(const GptMoeConfig& config, Backend& backend, DType precision,
                                               const Parallelism& parallel) {
  // Forward and loss only, in the training precision.
  check_parallelism(config, parallel);
  Graph eval_graph("gpt_moe_eval");
  build_gpt_moe(eval_graph, config,
                {.batch = config.batch_size / parallel.world_size, .training = false, .with_loss = true});
  if (parallel.world_size > 1) run_pipeline(eval_graph, shard_pipeline(parallel));
  run_pipeline(eval_graph, forward_pipeline(precision));
  std::unique_ptr<Executable> eval = backend.compile(eval_graph);
  bind_rope_tables(*eval, {.theta = config.rope_theta});  // graphs without RoPE are left alone
  return eval;
}

double mean_lm_loss(Executable& eval, BatchSampler& sampler, std::int64_t iters, Communicator* world) {
  const Parallelism parallel{world ? world->rank() : 0, world ? world->world_size() : 1};
  double total = 0;
  for (std::int64_t i = 0; i < iters; ++i) {
    Batch batch = rank_batch(sampler.next(), parallel);
    eval.set("idx", batch.idx);
    eval.set("targets", batch.targets);
    eval.run();
    double lm_loss = eval.get("lm_loss").get(0);
    mean_over_ranks(world, {&lm_loss});
    total += lm_loss;
  }
  return total / static_cast<double>(iters);
}

double GptMoeTrainer::estimate_loss(BatchSampler& sampler, std::int64_t iters) {
  for (const ParamSpec& s : specs_) eval_->set(s.name, train_->get(s.name));
  return mean_lm_loss(*eval_, sampler, iters, world_);
}

HostTensor GptMoeTrainer::local_part(const std::string& name, const HostTensor& full) const {
  auto it = local_types_.find(name);
  if (it == local_types_.end()) return full;
  const std::int64_t rows = it->second.shape[0];
  return leading_rows(full, parallel_.rank * rows, rows);
}

HostTensor GptMoeTrainer::gather(const std::string& name, const HostTensor& local) const {
  auto it = local_types_.find(name);
  if (it == local_types_.end()) return local;
  Shape shape = local.shape();
  shape[0] *= parallel_.world_size;
  HostTensor full(TensorType{local.dtype(), shape});
  world_->all_gather(local, full);  // rank r's rows at r * rows: the experts in order
  return full;
}

void GptMoeTrainer::set_parameters(const std::map<std::string, HostTensor>& params) {
  check_parameters(params, specs_, "parameters");
  for (const ParamSpec& s : specs_) train_->set(s.name, local_part(s.name, params.at(s.name)));
}

std::map<std::string, HostTensor> GptMoeTrainer::optimizer_state() const {
  std::map<std::string, HostTensor> moments;
  for (const ParamSpec& s : specs_) {
    if (s.role != ArgRole::param) continue;
    moments.emplace("m." + s.name, gather(s.name, train_->get("m." + s.name)));
    moments.emplace("v." + s.name, gather(s.name, train_->get("v." + s.name)));
  }
  return moments;
}

void GptMoeTrainer::set_optimizer_state(const std::map<std::string, HostTensor>& moments) {
  std::size_t expected = 0;
  for (const ParamSpec& s : specs_) {
    if (s.role != ArgRole::param) continue;
    for (const char* prefix : {"m.", "v."}) {
      const std::string name = prefix + s.name;
      auto it = moments.find(name);
      if (it == moments.end())
        throw Error(fmt::format("optimizer state: expected AdamW moment {}, found none", name));
      if (it->second.type() != s.type)
        throw Error(fmt::format("optimizer state: {}: expected {}, found {}", name, s.type.str(),
                                it->second.type().str()));
      ++expected;
    }
  }
  if (moments.size() != expected)
    throw Error(fmt::format("optimizer state: expected {} AdamW moments, found {}", expected, moments.size()));
  for (const auto& [name, value] : moments) train_->set(name, local_part(name.substr(2), value));
}

std::map<std::string, HostTensor> GptMoeTrainer::parameters() const {
  std::map<std::string, HostTensor> values;
  for (const ParamSpec& s : specs_) values.emplace(s.name, gather(s.name, train_->get(s.name)));
  return values;
}

}  // namespace moejit
