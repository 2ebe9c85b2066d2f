// gpt_moe's Hugging Face and upcycling subcommands:
//
//   gpt_moe upcycle --ckpt dense.safetensors --out moe.safetensors --num_experts 4 --top_k 2
//   gpt_moe upcycle --hf smollm_dir --out moe.safetensors --granularity 2 --noise_std 0.01
//   gpt_moe export --ckpt moe.safetensors --out mixtral_dir
//   gpt_moe train --init_from moe.safetensors --tokenizer smollm_dir/tokenizer.json --max_iters 200
//
// upcycle turns a dense GPT-MoE checkpoint (moe_every 0) into a GPT-MoE one,
// or a Hugging Face Llama-family directory into a moejit Llama-MoE
// checkpoint, and prints how far the MoE model's logits are from the dense
// model's. export writes a Llama-MoE checkpoint as a MixtralForCausalLM
// directory plus moejit_logits.safetensors for check_export.py. train with a
// Llama-family --init_from trains it (run_train_llama) and saves it in the
// same format.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <map>
#include <string>

namespace gpt_moe_cli {

struct UpcycleFlags {
  std::string ckpt, hf, out;
  std::int64_t num_experts = 4, top_k = 2, granularity = 1, seed = 0, check_tokens = 32;
  double router_std = 0.02, noise_std = 0.0;
};

struct ExportFlags {
  std::string ckpt, out;
  std::int64_t tokens = 16;
};

// `gpt_moe train --init_from` of a Llama-family checkpoint (moejit.llama.v1,
// from `upcycle --hf`): the train flags that reach it.
struct LlamaTrainFlags {
  std::string init_from, tokenizer, data, out_dir, device;
  std::int64_t corpus_bytes = 300000;
  std::map<std::string, std::string> overrides;  // config keys: training ones only
};

struct HfCommands {
  CLI::App* upcycle = nullptr;
  CLI::App* export_mixtral = nullptr;
  UpcycleFlags upcycle_flags;
  ExportFlags export_flags;
};

void add_hf_commands(CLI::App& app, HfCommands& commands);
// Whether `path` is a moejit Llama-family checkpoint (its metadata format).
bool is_llama_checkpoint(const std::string& path);
// Trains it on --data (or the built-in corpus) tokenized with --tokenizer
// (a Hugging Face tokenizer.json): the schedule, AdamW and logging keys of
// the train flags; model keys come from the checkpoint. Writes
// <out_dir>/ckpt.safetensors and prints each MoE layer's expert loads.
int run_train_llama(const LlamaTrainFlags& flags);
// Runs the parsed one; -1 when neither was given. Throws moejit::Error.
int run_hf_commands(const HfCommands& commands);

}  // namespace gpt_moe_cli
