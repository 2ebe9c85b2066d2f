// gpt_moe upcycle / export (see hf_commands.h).
#include "hf_commands.h"

#include <fmt/format.h>

#include <filesystem>

#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/hf_checkpoint.h"
#include "frontends/safetensors.h"
#include "frontends/upcycle.h"
#include "ir/error.h"
#include "runtime/backend.h"

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

HostTensor gpt_logits(const GptMoeConfig& c, const std::map<std::string, HostTensor>& params, const HostTensor& idx) {
  Graph graph("logits");
  GptMoeGraph model = build_gpt_moe(graph, c,
                                    {.batch = 1, .seq_len = idx.shape()[1], .training = false, .with_loss = false,
                                     .output_logits = true});
  auto exe = make_cpu_backend()->compile(graph);
  for (const ParamSpec& s : model.params) exe->set(s.name, params.at(s.name));
  exe->set("idx", idx);
  exe->run();
  return exe->get("logits");
}

double max_relative(const HostTensor& a, const HostTensor& b) {
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    diff = std::max(diff, std::abs(a.get(i) - b.get(i)));
    scale = std::max(scale, std::abs(b.get(i)));
  }
  return scale > 0 ? diff / scale : diff;
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
    err = max_relative(gpt_logits(moe.config, moe.params, ids), gpt_logits(dense.config, dense.params, ids));
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
    err = max_relative(llama_logits(*cpu, moe.config, moe.params, ids),
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
