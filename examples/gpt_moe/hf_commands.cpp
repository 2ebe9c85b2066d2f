// gpt_moe upcycle / export (see hf_commands.h).
#include "hf_commands.h"

#include <fmt/format.h>

#include <filesystem>

#include "runtime/tensor_compare.h"
#include "frontends/generate.h"
#include "frontends/bpe_tokenizer.h"
#include "frontends/config.h"
#include "frontends/corpus.h"
#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/hf_checkpoint.h"
#include "frontends/hf_trainer.h"
#include "frontends/safetensors.h"
#include "frontends/upcycle.h"
#include "ir/error.h"
#include "runtime/backend.h"
#include "runtime/device.h"

namespace gpt_moe_cli {
namespace {

using namespace moejit;
namespace fs = std::filesystem;

// Token ids 0, 7, 14, ... mod vocab: a fixed probe sequence.
HostTensor probe_ids(std::int64_t tokens, std::int64_t vocab) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens));
  for (std::int64_t i = 0; i < tokens; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7 + 3) % vocab);
  return HostTensor::from_ints({1, tokens}, ids);
}

int run_upcycle(const UpcycleFlags& f) {
  if (f.ckpt.empty() == f.hf.empty())
    throw Error("upcycle: expected exactly one of --ckpt (a dense gpt_moe checkpoint) and --hf (a Hugging Face "
                "Llama-family directory), found " + std::string(f.ckpt.empty() ? "neither" : "both"));
  UpcycleOptions options{.num_copies = f.num_experts, .top_k = f.top_k, .granularity = f.granularity,
                         .router_std = f.router_std, .noise_std = f.noise_std,
                         .seed = static_cast<std::uint64_t>(f.seed)};
  double err = 0;
  std::int64_t experts = 0, layers = 0, top_k = 0, width = 0, probe_tokens = 0;
  if (!f.ckpt.empty()) {
    GptMoeCheckpoint dense = load_gpt_checkpoint(f.ckpt);
    UpcycledGptMoe moe = upcycle_gpt_moe(dense.config, dense.params, options);
    HostTensor ids = probe_ids(std::min(f.check_tokens, dense.config.block_size), dense.config.vocab_size);
    probe_tokens = ids.shape()[1];
    err = max_relative_difference(gpt_moe_logits(moe.config, moe.params, ids), gpt_moe_logits(dense.config, dense.params, ids));
    std::map<std::string, std::string> meta = {{"upcycled_from", fs::absolute(f.ckpt).string()}};
    for (const char* key : {"data", "corpus_seed", "corpus_bytes"})
      if (dense.metadata.count(key)) meta[key] = dense.metadata.at(key);
    save_gpt_checkpoint(f.out, moe.config, dense.tokenizer, moe.params, meta);
    experts = moe.config.num_experts, layers = moe.config.n_layer, top_k = moe.config.top_k;
    width = moe.config.d_expert;
  } else {
    HfModel dense = load_hf_model(f.hf);
    UpcycledLlama moe = upcycle_llama(dense.config, dense.params, options);
    auto cpu = make_cpu_backend();
    HostTensor ids = probe_ids(std::min(f.check_tokens, dense.config.max_position_embeddings), dense.config.vocab_size);
    probe_tokens = ids.shape()[1];
    err = max_relative_difference(llama_logits(*cpu, moe.config, moe.params, ids),
                       llama_logits(*cpu, dense.config, dense.params, ids));
    save_llama_checkpoint(f.out, moe.config, moe.params, {{"upcycled_from", fs::absolute(f.hf).string()}});
    experts = moe.config.num_local_experts, layers = moe.config.num_hidden_layers;
    top_k = moe.config.num_experts_per_tok, width = moe.config.intermediate_size;
  }
  fmt::print("upcycled {} MLPs into {} layers of {} experts (width {}), top-{}; noise_std {}\n", layers, layers,
             experts, width, top_k, f.noise_std);
  fmt::print("max relative logit difference, MoE vs dense, on {} probe tokens: {:.3g}\n", probe_tokens, err);
  fmt::print("saved {}\n", f.out);
  return 0;
}

int run_export(const ExportFlags& f) {
  Checkpoint file = load_safetensors(f.ckpt);
  auto format = file.metadata.find("format");
  if (format != file.metadata.end() && format->second == kGptMoeCheckpointFormat)
    throw Error(fmt::format("export {}: expected a Llama-family MoE checkpoint (from `gpt_moe upcycle --hf`), found a "
                            "GPT-MoE one: its LayerNorms with biases, learned position embeddings and GELU experts "
                            "have no MixtralForCausalLM equivalent",
                            f.ckpt));
  HfModel model = load_llama_checkpoint(f.ckpt);
  export_mixtral(f.out, model.config, model.params);
  auto cpu = make_cpu_backend();
  HostTensor ids = probe_ids(std::min(f.tokens, model.config.max_position_embeddings), model.config.vocab_size);
  Checkpoint logits;
  logits.tensors["input_ids"] = ids;
  logits.tensors["logits"] = llama_logits(*cpu, model.config, model.params, ids);
  save_safetensors((fs::path(f.out) / "moejit_logits.safetensors").string(), logits);
  fmt::print("exported {} as MixtralForCausalLM: {}/config.json, {}/model.safetensors; moejit's logits of {} tokens "
             "in {}/moejit_logits.safetensors\n",
             f.ckpt, f.out, f.out, ids.shape()[1], f.out);
  return 0;
}

}  // namespace

bool is_llama_checkpoint(const std::string& path) {
  auto meta = load_safetensors(path).metadata;
  auto format = meta.find("format");
  return format != meta.end() && format->second == kLlamaCheckpointFormat;
}

int run_train_llama(const LlamaTrainFlags& f) {
  // Training keys on top of the defaults; a model key would contradict the checkpoint.
  GptMoeConfig training;
  for (const auto& [key, text] : f.overrides) {
    const ConfigField* field = find_config_field(key);
    // block_size is the training sequence length here, aux_loss_coeff the routers' balancing loss.
    if (field && field->group != "training" && key != "aux_loss_coeff" && key != "block_size")
      throw Error(fmt::format("--{}: expected only training keys with a Llama-family --init_from (the model comes "
                              "from {}), found a {} key",
                              key, f.init_from, field->group));
    set_config_value(training, key, text);
  }
  validate_config(training);  // ranges: batch_size, eval_interval, ... (the model keys are the defaults)
  if (f.tokenizer.empty())
    throw Error(fmt::format("--tokenizer: expected the model's tokenizer.json for the Llama-family checkpoint {}, "
                            "found none",
                            f.init_from));
  HfModel model = load_llama_checkpoint(f.init_from);
  BpeTokenizer tokenizer = BpeTokenizer::load(f.tokenizer);
  if (tokenizer.vocab_size() > model.config.vocab_size)
    throw Error(fmt::format("--tokenizer {}: expected at most the model's vocab_size {} ids, found {}", f.tokenizer,
                            model.config.vocab_size, tokenizer.vocab_size()));
  TaggedText data = f.data.empty() ? generate_corpus(static_cast<std::uint64_t>(training.seed),
                                                     static_cast<std::size_t>(f.corpus_bytes))
                                   : untagged_text(read_text_file(f.data), fs::path(f.data).filename().string());
  const std::vector<std::int32_t> tokens = tokenizer.encode(data.text);
  const std::size_t split = tokens.size() * 9 / 10;
  const std::vector<std::int32_t> train_tokens(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(split));
  const std::vector<std::int32_t> val_tokens(tokens.begin() + static_cast<std::ptrdiff_t>(split), tokens.end());
  const std::int64_t seq_len = std::min(training.block_size, model.config.max_position_embeddings);
  const auto seed = static_cast<std::uint64_t>(training.seed);
  BatchSampler train_batches(train_tokens, training.batch_size, seq_len, seed);
  BatchSampler val_batches(val_tokens, training.batch_size, seq_len, seed + 2);

  std::string note;
  std::unique_ptr<Backend> backend = make_backend(f.device, &note);
  std::error_code ec;
  fs::create_directories(f.out_dir, ec);
  if (!fs::is_directory(f.out_dir))
    throw Error(fmt::format("--out_dir: expected a directory that exists or can be created, found '{}'", f.out_dir));
  fmt::print("model: {} from {} ({} layers, hidden {}, {} experts top-{}); device: {}\n", model.config.architecture,
             f.init_from, model.config.num_hidden_layers, model.config.hidden_size, model.config.num_local_experts,
             model.config.num_experts_per_tok, note);
  fmt::print("data: {} tokens of {} ({} train / {} val), tokenizer {}\n", tokens.size(),
             f.data.empty() ? "the built-in corpus" : f.data, train_tokens.size(), val_tokens.size(), f.tokenizer);
  LlamaTrainer trainer(model.config, *backend, model.params,
                       {.batch = training.batch_size, .seq_len = seq_len, .aux_loss_coeff = training.aux_loss_coeff,
                        .weight_decay = training.weight_decay, .beta1 = training.beta1, .beta2 = training.beta2,
                        .grad_clip = training.grad_clip});
  LlamaTrainer::Evaluation eval;
  for (std::int64_t iter = 0; iter <= training.max_iters; ++iter) {
    if (iter % training.eval_interval == 0 || iter == training.max_iters) {
      eval = trainer.evaluate(val_batches, training.eval_iters);
      fmt::print("step {:>5}: val loss {:.4f}\n", iter, eval.lm_loss);
    }
    if (iter == training.max_iters) break;
    LlamaStepStats stats = trainer.step(train_batches.next(), iter, learning_rate_at(training, iter));
    if ((iter + 1) % training.log_interval == 0)
      fmt::print("step {:>5}/{} | loss {:.4f} (lm {:.4f}, aux {:.4f}) | grad norm {:.2f}\n", iter + 1,
                 training.max_iters, stats.loss, stats.lm_loss, stats.aux_loss, stats.grad_norm);
  }
  const std::string path = (fs::path(f.out_dir) / "ckpt.safetensors").string();
  save_llama_checkpoint(path, model.config, trainer.parameters(),
                        {{"step", std::to_string(training.max_iters)}, {"val_loss", fmt::format("{:.4f}", eval.lm_loss)},
                         {"init_from", fs::absolute(f.init_from).string()}});
  for (std::size_t l = 0; l < eval.expert_slots.size(); ++l) {
    std::int64_t total = 0;
    for (std::int64_t n : eval.expert_slots[l]) total += n;
    std::string loads;
    for (std::int64_t n : eval.expert_slots[l])
      loads += fmt::format(" {:.1f}%", 100.0 * static_cast<double>(n) / static_cast<double>(std::max<std::int64_t>(1, total)));
    fmt::print("layer {} expert loads (share of {} validation slots):{}\n", l, total, loads);
  }
  fmt::print("saved {}\n", path);
  return 0;
}

void add_hf_commands(CLI::App& app, HfCommands& c) {
  UpcycleFlags& u = c.upcycle_flags;
  c.upcycle = app.add_subcommand("upcycle", "turn a dense model into a mixture of experts whose experts copy its MLPs");
  c.upcycle->add_option("--ckpt", u.ckpt, "dense gpt_moe checkpoint (moe_every 0)")->check(CLI::ExistingFile);
  c.upcycle->add_option("--hf", u.hf, "Hugging Face LlamaForCausalLM directory")->check(CLI::ExistingDirectory);
  c.upcycle->add_option("--out", u.out, "MoE checkpoint to write")->required();
  c.upcycle->add_option("--num_experts", u.num_experts, "copies of each MLP (default 4)")->check(CLI::PositiveNumber);
  c.upcycle->add_option("--top_k", u.top_k, "copies each token uses (default 2)")->check(CLI::PositiveNumber);
  c.upcycle->add_option("--granularity", u.granularity,
                        "split each copy into this many fine-grained experts (default 1)")
      ->check(CLI::PositiveNumber);
  c.upcycle->add_option("--router_std", u.router_std, "std of the router's initial weights (default 0.02)");
  c.upcycle->add_option("--noise_std", u.noise_std, "noise on the copies, relative to each matrix's rms (default 0)");
  c.upcycle->add_option("--seed", u.seed, "seed of the router and the noise (default 0)");
  c.upcycle->add_option("--check_tokens", u.check_tokens, "probe tokens for the logit comparison (default 32)")
      ->check(CLI::PositiveNumber);

  ExportFlags& e = c.export_flags;
  c.export_mixtral = app.add_subcommand("export", "write a Llama-family MoE checkpoint as a Hugging Face Mixtral directory");
  c.export_mixtral->add_option("--ckpt", e.ckpt, "moejit Llama-MoE checkpoint")->required()->check(CLI::ExistingFile);
  c.export_mixtral->add_option("--out", e.out, "directory to write")->required();
  c.export_mixtral->add_option("--tokens", e.tokens, "tokens whose logits go to moejit_logits.safetensors (default 16)")
      ->check(CLI::PositiveNumber);
}

int run_hf_commands(const HfCommands& c) {
  if (c.upcycle && c.upcycle->parsed()) return run_upcycle(c.upcycle_flags);
  if (c.export_mixtral && c.export_mixtral->parsed()) return run_export(c.export_flags);
  return -1;
}

}  // namespace gpt_moe_cli
