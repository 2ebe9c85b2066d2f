// gpt_moe: train a character-level GPT whose feed-forward layers are
// mixtures of experts, sample from it, and see what each expert learned —
// nanoGPT's shakespeare_char run, on moejit.
//
//   gpt_moe train                         # built-in tagged corpus, default config
//   gpt_moe train --data input.txt --max_iters 2000 --n_layer 4
//   gpt_moe sample --out_dir out-gpt-moe --prompt "let x" --num_samples 3
//   gpt_moe report --ckpt out-gpt-moe/ckpt.safetensors
//   gpt_moe upcycle --ckpt dense.safetensors --out moe.safetensors   (hf_commands.h)
//   gpt_moe train --init_from moe.safetensors --max_iters 200
//
// Every config key (frontends/config.h) is a train flag; --help lists them.
// Exit codes: 0 ok, 1 runtime error (bad checkpoint, bad data, no GPU for
// --device cuda), 2 bad command line.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <filesystem>
#include <map>
#include <new>
#include <optional>
#include <random>

#include "frontends/config.h"
#include "frontends/corpus.h"
#include "runtime/device.h"
#include "frontends/expert_report.h"
#include "frontends/generate.h"
#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/tokenizer.h"
#include "frontends/trainer.h"
#include "ir/error.h"
#include "hf_commands.h"

namespace {

using namespace moejit;
using Clock = std::chrono::steady_clock;

struct SamplingFlags {
  std::string prompt = "\\n";
  std::int64_t num_samples = 2;
  std::int64_t max_new_tokens = 300;
  double temperature = 0.8;
  std::int64_t top_k = 0;
  std::int64_t seed = 1337;
};

struct TrainFlags {
  std::string config_file, data, out_dir = "out-gpt-moe", device = "auto";
  std::string init_from;  // a checkpoint whose config and parameters the run starts from
  std::string tokenizer;  // tokenizer.json, for a Llama-family init_from
  std::int64_t corpus_bytes = 300000;
  std::int64_t report_tokens = 8192;
  bool no_report = false;
  bool prompt_given = false;  // --prompt was on the command line
  SamplingFlags sampling;
  std::map<std::string, std::string> overrides;  // config key -> text, filled by CLI11
};

struct SampleFlags {
  std::string ckpt, out_dir = "out-gpt-moe", device = "auto";
  SamplingFlags sampling;
};

struct ReportFlags {
  std::string ckpt, out_dir = "out-gpt-moe", device = "auto", data;
  std::int64_t report_tokens = 8192;
};

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<std::int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string with_commas(std::int64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// "\n" and "\t" in a flag's text become a newline and a tab; "\\" a backslash.
std::string unescape(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) {
      const char next = text[i + 1];
      if (next == 'n' || next == 't' || next == '\\') {
        out += next == 'n' ? '\n' : next == 't' ? '\t' : '\\';
        ++i;
        continue;
      }
    }
    out += text[i];
  }
  return out;
}

void add_sampling_flags(CLI::App* app, SamplingFlags& f) {
  app->add_option("--prompt", f.prompt, "text the samples start from; \\n and \\t are escapes (default \"\\n\")");
  app->add_option("--num_samples", f.num_samples, "samples to print (default 2)")->check(CLI::NonNegativeNumber);
  app->add_option("--max_new_tokens", f.max_new_tokens, "characters generated per sample (default 300)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--temperature", f.temperature, "softmax temperature, > 0 (default 0.8)")
      ->check(CLI::PositiveNumber);
  app->add_option("--sample_top_k", f.top_k, "sample only among the k most likely characters; 0 = all (default 0)")
      ->check(CLI::NonNegativeNumber);
}

// Data: the built-in tagged corpus, or a text file (one kind, "text").
TaggedText load_data(const std::string& data_file, std::int64_t corpus_bytes, std::int64_t seed) {
  if (data_file.empty()) return generate_corpus(static_cast<std::uint64_t>(seed), static_cast<std::size_t>(corpus_bytes));
  return untagged_text(read_text_file(data_file), std::filesystem::path(data_file).filename().string());
}

double unigram_entropy(const std::vector<std::int32_t>& tokens, std::int64_t vocab) {
  std::vector<double> counts(static_cast<std::size_t>(vocab), 0.0);
  for (std::int32_t t : tokens) counts[static_cast<std::size_t>(t)] += 1;
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c / static_cast<double>(tokens.size()) * std::log(c / static_cast<double>(tokens.size()));
  return h;
}

// The prompt's tokens: --prompt unescaped, non-empty, every byte in the vocabulary.
std::vector<std::int32_t> encode_prompt(const CharTokenizer& tokenizer, const std::string& flag_text) {
  const std::string prompt = unescape(flag_text);
  if (prompt.empty()) throw Error("--prompt: expected at least one character, found an empty prompt");
  try {
    return tokenizer.encode(prompt);
  } catch (const Error& err) {
    throw Error(fmt::format("--prompt: {}", err.what()));
  }
}

void print_samples(GptMoeSampler& sampler, const CharTokenizer& tokenizer, const SamplingFlags& f) {
  const std::vector<std::int32_t> prompt_tokens = encode_prompt(tokenizer, f.prompt);
  std::mt19937_64 rng(static_cast<std::uint64_t>(f.seed));
  for (std::int64_t i = 0; i < f.num_samples; ++i) {
    std::vector<std::int32_t> tokens = sampler.generate(
        prompt_tokens, {.max_new_tokens = f.max_new_tokens, .temperature = f.temperature, .top_k = f.top_k}, rng);
    fmt::print("---------------- sample {} ----------------\n{}\n", i + 1, tokenizer.decode(tokens));
  }
  fmt::print("-------------------------------------------\n");
}

void print_report(const GptMoeConfig& config, Backend& backend, const std::map<std::string, HostTensor>& params,
                  const CharTokenizer& tokenizer, const TaggedText& held_out, std::int64_t tokens,
                  const std::string& svg_path) {
  ExpertReport report = collect_expert_report(config, backend, params, tokenizer, held_out, tokens);
  fmt::print("\n{}", format_expert_report(report));
  if (!report.layers.empty()) {
    write_text_file_atomic(svg_path, expert_report_svg(report));
    fmt::print("\nheat map (experts x kinds, per layer): {}\n", svg_path);
  }
}

int run_train(TrainFlags& flags) {
  if (!flags.init_from.empty() && gpt_moe_cli::is_llama_checkpoint(flags.init_from))
    return gpt_moe_cli::run_train_llama({.init_from = flags.init_from, .tokenizer = flags.tokenizer,
                                         .data = flags.data, .out_dir = flags.out_dir, .device = flags.device,
                                         .corpus_bytes = flags.corpus_bytes, .overrides = flags.overrides});
  // ---- config: defaults <- JSON file <- flags ----
  GptMoeConfig config;
  std::optional<GptMoeCheckpoint> init;
  if (!flags.init_from.empty()) {  // its config is the base the file and flags change
    init = load_gpt_checkpoint(flags.init_from);
    config = init->config;
  }
  try {
    if (!flags.config_file.empty()) config = load_config_file(flags.config_file, config);
    for (const auto& [key, text] : flags.overrides) set_config_value(config, key, text);
    validate_config(config);
  } catch (const Error& err) {
    fmt::print(stderr, "gpt_moe train: {}\n", err.what());
    return 2;
  }

  // ---- data ----
  TaggedText data = load_data(flags.data, flags.corpus_bytes, config.seed);
  const CharTokenizer tokenizer = init ? init->tokenizer : CharTokenizer::from_text(data.text);
  if (config.vocab_size != 0 && config.vocab_size != tokenizer.vocab_size())
    throw Error(fmt::format("config: vocab_size: expected 0 or {} (distinct bytes of the data), found {}",
                            tokenizer.vocab_size(), config.vocab_size));
  config.vocab_size = tokenizer.vocab_size();
  std::vector<std::int32_t> all_tokens;
  try {
    all_tokens = tokenizer.encode(data.text);
  } catch (const Error& err) {
    if (!init) throw;
    throw Error(fmt::format("--init_from {}: the data must use the checkpoint's vocabulary: {}", flags.init_from,
                            err.what()));
  }
  const std::size_t split = all_tokens.size() * 9 / 10;
  const std::vector<std::int32_t> train_tokens(all_tokens.begin(), all_tokens.begin() + static_cast<std::ptrdiff_t>(split));
  const std::vector<std::int32_t> val_tokens(all_tokens.begin() + static_cast<std::ptrdiff_t>(split), all_tokens.end());
  const TaggedText held_out = split_tail(data, 0.1);
  // Batches are checked against the data before anything is compiled.
  auto batches = [&](const std::vector<std::int32_t>& tokens, const char* split, std::uint64_t seed) {
    try {
      return BatchSampler(tokens, config.batch_size, config.block_size, seed);
    } catch (const Error& err) {
      throw Error(fmt::format("data {}: the {} split: {}", flags.data.empty() ? "(built-in corpus)" : flags.data,
                              split, err.what()));
    }
  };
  BatchSampler train_batches = batches(train_tokens, "training (first 90%)", static_cast<std::uint64_t>(config.seed));
  BatchSampler train_eval_batches =
      batches(train_tokens, "training (first 90%)", static_cast<std::uint64_t>(config.seed) + 1);
  BatchSampler val_batches = batches(val_tokens, "validation (last 10%)", static_cast<std::uint64_t>(config.seed) + 2);
  // The samples after training start from --prompt: check it now, not after
  // the run. The default "\n" falls back to the data's first character when
  // the data has no newline.
  if (flags.sampling.num_samples > 0) {
    try {
      encode_prompt(tokenizer, flags.sampling.prompt);
    } catch (const Error&) {
      if (flags.prompt_given) throw;
      flags.sampling.prompt = data.text.substr(0, 1);
    }
  }

  std::string note;
  std::unique_ptr<Backend> backend = make_backend(flags.device, &note);
  {
    std::error_code ec;
    if (!flags.out_dir.empty()) std::filesystem::create_directories(flags.out_dir, ec);
    if (flags.out_dir.empty() || !std::filesystem::is_directory(flags.out_dir))
      throw Error(fmt::format("--out_dir: expected a directory that exists or can be created, found '{}'{}",
                              flags.out_dir, ec ? " (" + ec.message() + ")" : ""));
  }

  fmt::print("data: {} ({} bytes, {} distinct characters; train {} / val {} tokens)\n",
             flags.data.empty() ? "built-in corpus (arithmetic, code, prose)" : flags.data,
             with_commas(static_cast<std::int64_t>(data.text.size())), tokenizer.vocab_size(),
             with_commas(static_cast<std::int64_t>(train_tokens.size())),
             with_commas(static_cast<std::int64_t>(val_tokens.size())));
  fmt::print("unigram entropy of the training text: {:.3f} nats (a model that ignores context), uniform: {:.3f}\n",
             unigram_entropy(train_tokens, tokenizer.vocab_size()), std::log(static_cast<double>(tokenizer.vocab_size())));
  fmt::print("device: {}\n", note);
  fmt::print("precision: {}\n", training_precision(config, *backend) == DType::bf16
                                     ? "bf16 mixed precision (bf16 matmuls, f32 weights, norms, router and losses)"
                                     : "f32");

  const std::vector<ParamSpec> specs = gpt_moe_param_specs(config);
  fmt::print("model: {} layers, n_embd {}, {} heads, block {}, {} experts top-{} (d_expert {}) in {} MoE layer(s); "
             "{} parameters\n",
             config.n_layer, config.n_embd, config.n_head, config.block_size, config.num_experts, config.top_k,
             config.d_expert, config.num_moe_layers(), with_commas(count_parameters(specs)));
  if (config.group_size > 0 || config.attention == "switchhead")
    fmt::print("moeut: {} distinct layer(s) repeated to {}, attention {} ({} expert(s) per head, top-{}), layer norm {}, "
               "positions {}\n",
               config.distinct_layers(), config.n_layer, config.attention, config.att_n_experts, config.att_k,
               config.layer_norm, config.position_embedding);
  if (config.router_type == "expert_choice")
    fmt::print(stderr,
               "warning: router_type expert_choice chooses tokens over the whole batch, so a position's routing depends "
               "on later positions: it fits encoders and non-causal uses; for causal language modeling it leaks the "
               "future at training time and differs at generation (docs/moe.md)\n");

  const Clock::time_point start = Clock::now();
  if (init) check_parameters(init->params, specs, flags.init_from + " (--init_from, with this run's config)");
  GptMoeTrainer trainer(config, *backend,
                        init ? init->params : init_parameters(specs, static_cast<std::uint64_t>(config.seed)));
  fmt::print("built and compiled the training and evaluation graphs in {:.2f}s\n\n",
             std::chrono::duration<double>(Clock::now() - start).count());

  const std::string ckpt_path = (std::filesystem::path(flags.out_dir) / "ckpt.safetensors").string();
  const std::string best_path = (std::filesystem::path(flags.out_dir) / "best.safetensors").string();
  std::map<std::string, std::string> data_meta = {
      {"data", flags.data.empty() ? "builtin" : std::filesystem::absolute(flags.data).string()},
      {"corpus_seed", std::to_string(config.seed)},
      {"corpus_bytes", std::to_string(flags.corpus_bytes)}};
  auto save = [&](const std::string& path, std::int64_t step, double train_loss, double val_loss) {
    std::map<std::string, std::string> meta = data_meta;
    meta["step"] = std::to_string(step);
    meta["train_loss"] = fmt::format("{:.4f}", train_loss);
    meta["val_loss"] = fmt::format("{:.4f}", val_loss);
    save_gpt_checkpoint(path, config, tokenizer, trainer.parameters(), meta);
  };

  double best_val = INFINITY, last_train = NAN, last_val = NAN;
  auto evaluate = [&](std::int64_t step) {
    last_train = trainer.estimate_loss(train_eval_batches, config.eval_iters);
    last_val = trainer.estimate_loss(val_batches, config.eval_iters);
    std::string saved;
    if (last_val < best_val && step > 0) {
      best_val = last_val;
      save(best_path, step, last_train, last_val);
      saved = " (best so far, saved)";
    }
    fmt::print("step {:>5}: train loss {:.4f}, val loss {:.4f}{}\n", step, last_train, last_val, saved);
    std::fflush(stdout);
  };

  const Clock::time_point train_start = Clock::now();
  Clock::time_point interval_start = train_start;
  std::int64_t interval_steps = 0;
  for (std::int64_t iter = 0; iter < config.max_iters; ++iter) {
    if (iter % config.eval_interval == 0) evaluate(iter);
    const StepStats stats = trainer.step(train_batches.next(), iter);
    ++interval_steps;
    if ((iter + 1) % config.log_interval == 0 || iter + 1 == config.max_iters) {
      const Clock::time_point now = Clock::now();
      const double interval = std::chrono::duration<double>(now - interval_start).count();
      const double elapsed = std::chrono::duration<double>(now - train_start).count();
      const double tokens_per_s = static_cast<double>(interval_steps * trainer.tokens_per_step()) / interval;
      const double left = elapsed / static_cast<double>(iter + 1) * static_cast<double>(config.max_iters - iter - 1);
      fmt::print("step {:>5}/{} | loss {:.4f} (lm {:.4f}, aux {:.4f}) | grad norm {:.2f} | lr {:.2e} | {} tok/s | "
                 "{} elapsed, ~{} left\n",
                 iter + 1, config.max_iters, stats.loss, stats.lm_loss, stats.aux_loss, stats.grad_norm, stats.lr,
                 with_commas(static_cast<std::int64_t>(tokens_per_s)), format_duration(elapsed), format_duration(left));
      std::fflush(stdout);
      interval_start = now;
      interval_steps = 0;
    }
  }
  evaluate(config.max_iters);
  save(ckpt_path, config.max_iters, last_train, last_val);
  const double train_seconds = std::chrono::duration<double>(Clock::now() - train_start).count();
  fmt::print("\ntrained {} steps in {} ({} tokens); final train loss {:.4f}, val loss {:.4f}\nsaved {}\n",
             config.max_iters, format_duration(train_seconds),
             with_commas(config.max_iters * trainer.tokens_per_step()), last_train, last_val, ckpt_path);

  const std::map<std::string, HostTensor> params = trainer.parameters();
  if (flags.sampling.num_samples > 0) {
    fmt::print("\n");
    GptMoeSampler sampler(config, *backend, params);
    flags.sampling.seed = config.seed;
    print_samples(sampler, tokenizer, flags.sampling);
  }
  if (!flags.no_report)
    print_report(config, *backend, params, tokenizer, held_out, flags.report_tokens,
                 (std::filesystem::path(flags.out_dir) / "experts.svg").string());
  fmt::print("\ntotal wall time {}\n", format_duration(std::chrono::duration<double>(Clock::now() - start).count()));
  return 0;
}

std::string checkpoint_path(const std::string& ckpt, const std::string& out_dir) {
  return ckpt.empty() ? (std::filesystem::path(out_dir) / "ckpt.safetensors").string() : ckpt;
}

std::string meta_or(const GptMoeCheckpoint& ckpt, const std::string& key, const std::string& fallback) {
  auto it = ckpt.metadata.find(key);
  return it == ckpt.metadata.end() ? fallback : it->second;
}

// An integer metadata entry in [0, max], or `fallback` when the checkpoint has none.
std::int64_t meta_int_or(const GptMoeCheckpoint& ckpt, const std::string& path, const std::string& key,
                         std::int64_t fallback, std::int64_t max = INT64_MAX) {
  auto it = ckpt.metadata.find(key);
  if (it == ckpt.metadata.end()) return fallback;
  std::int64_t value = 0;
  const std::string& text = it->second;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || value < 0 || value > max)
    throw Error(fmt::format("{}: metadata '{}': expected an integer in [0, {}], found '{}'", path, key, max, text));
  return value;
}

int run_sample(const SampleFlags& flags) {
  const std::string path = checkpoint_path(flags.ckpt, flags.out_dir);
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(path);
  std::string note;
  std::unique_ptr<Backend> backend = make_backend(flags.device, &note);
  fmt::print("checkpoint {} (step {}, val loss {}); device: {}\n", path, meta_or(ckpt, "step", "?"),
             meta_or(ckpt, "val_loss", "?"), note);
  GptMoeSampler sampler(ckpt.config, *backend, ckpt.params);
  print_samples(sampler, ckpt.tokenizer, flags.sampling);
  return 0;
}

int run_report(const ReportFlags& flags) {
  const std::string path = checkpoint_path(flags.ckpt, flags.out_dir);
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(path);
  std::string note;
  std::unique_ptr<Backend> backend = make_backend(flags.device, &note);
  // Held-out text: --data, else the validation split of the training data.
  TaggedText held_out;
  if (!flags.data.empty()) {
    held_out = untagged_text(read_text_file(flags.data), std::filesystem::path(flags.data).filename().string());
  } else {
    const std::string data = meta_or(ckpt, "data", "builtin");
    const std::int64_t seed = meta_int_or(ckpt, path, "corpus_seed", ckpt.config.seed);
    const std::int64_t bytes = meta_int_or(ckpt, path, "corpus_bytes", 300000, 100000000);
    held_out = split_tail(load_data(data == "builtin" ? "" : data, bytes, seed), 0.1);
  }
  fmt::print("checkpoint {} (step {}, val loss {}); device: {}\n", path, meta_or(ckpt, "step", "?"),
             meta_or(ckpt, "val_loss", "?"), note);
  print_report(ckpt.config, *backend, ckpt.params, ckpt.tokenizer, held_out, flags.report_tokens,
               (std::filesystem::path(path).parent_path() / "experts.svg").string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "gpt_moe: train a character-level GPT with mixture-of-experts layers on a text corpus (the built-in tagged "
      "corpus of arithmetic, code and prose, or --data FILE), sample from it, and report what each expert learned."};
  app.require_subcommand(1);

  TrainFlags train;
  CLI::App* train_cmd = app.add_subcommand("train", "train a model, save it, print samples and the expert report");
  train_cmd->add_option("--config", train.config_file, "JSON file of config keys (flags override it)")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--data", train.data, "train on this text file instead of the built-in corpus")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--corpus_bytes", train.corpus_bytes, "size of the built-in corpus (default 300000)")
      ->check(CLI::Range(std::int64_t{1000}, std::int64_t{100000000}));
  train_cmd->add_option("--out_dir", train.out_dir, "where checkpoints and experts.svg go (default out-gpt-moe)");
  train_cmd->add_option("--device", train.device, "auto | cpu | cuda (default auto: CUDA when a GPU is usable)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  train_cmd->add_option("--report_tokens", train.report_tokens, "held-out tokens the expert report routes (default 8192)")
      ->check(CLI::PositiveNumber);
  train_cmd->add_flag("--no_report", train.no_report, "skip the expert report");
  train_cmd->add_option("--init_from", train.init_from,
                        "start from this checkpoint's parameters and config (e.g. from `gpt_moe upcycle`); "
                        "the data must fit its vocabulary")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--tokenizer", train.tokenizer,
                        "Hugging Face tokenizer.json of a Llama-family --init_from checkpoint")
      ->check(CLI::ExistingFile);
  add_sampling_flags(train_cmd, train.sampling);
  const GptMoeConfig defaults;
  for (const ConfigField& field : config_fields()) {
    std::string name(field.name);
    std::string help = fmt::format("[{}] {} (default {})", field.group, field.help, get_config_value(defaults, name));
    std::string type = field.kind == ConfigKind::Int     ? "INT"
                       : field.kind == ConfigKind::Float ? "FLOAT"
                       : field.kind == ConfigKind::Bool  ? "true|false"
                                                         : "TEXT";
    if (!field.choices.empty()) {
      type.clear();
      for (std::string_view choice : field.choices) type += (type.empty() ? "" : "|") + std::string(choice);
    }
    train_cmd
        ->add_option_function<std::string>(
            "--" + name, [&train, name](const std::string& value) { train.overrides[name] = value; }, help)
        ->type_name(type);
  }

  SampleFlags sample;
  CLI::App* sample_cmd = app.add_subcommand("sample", "print samples from a checkpoint");
  sample_cmd->add_option("--ckpt", sample.ckpt, "checkpoint file (default <out_dir>/ckpt.safetensors)");
  sample_cmd->add_option("--out_dir", sample.out_dir, "directory of ckpt.safetensors (default out-gpt-moe)");
  sample_cmd->add_option("--device", sample.device, "auto | cpu | cuda (default auto)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sample_cmd->add_option("--seed", sample.sampling.seed, "seed of the sampling (default 1337)");
  add_sampling_flags(sample_cmd, sample.sampling);

  ReportFlags report;
  CLI::App* report_cmd = app.add_subcommand("report", "route held-out text through a checkpoint and report the experts");
  report_cmd->add_option("--ckpt", report.ckpt, "checkpoint file (default <out_dir>/ckpt.safetensors)");
  report_cmd->add_option("--out_dir", report.out_dir, "directory of ckpt.safetensors (default out-gpt-moe)");
  report_cmd->add_option("--device", report.device, "auto | cpu | cuda (default auto)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  report_cmd->add_option("--data", report.data,
                         "held-out text file (default: the validation split of the checkpoint's training data)")
      ->check(CLI::ExistingFile);
  report_cmd->add_option("--report_tokens", report.report_tokens, "tokens to route (default 8192)")
      ->check(CLI::PositiveNumber);

  gpt_moe_cli::HfCommands hf_commands;
  gpt_moe_cli::add_hf_commands(app, hf_commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    const int code = app.exit(err);
    return code == 0 ? 0 : 2;
  }
  train.prompt_given = train_cmd->count("--prompt") > 0;
  try {
    if (train_cmd->parsed()) return run_train(train);
    if (sample_cmd->parsed()) return run_sample(sample);
    if (report_cmd->parsed()) return run_report(report);
    if (int code = gpt_moe_cli::run_hf_commands(hf_commands); code >= 0) return code;
  } catch (const moejit::Error& err) {
    fmt::print(stderr, "gpt_moe: error: {}\n", err.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "gpt_moe: error: out of memory: expected the model and data to fit in host memory, found an "
                       "allocation that failed (try a smaller n_embd, n_layer, num_experts, d_expert or batch_size)\n");
    return 1;
  } catch (const std::exception& err) {
    fmt::print(stderr, "gpt_moe: error: {}\n", err.what());
    return 1;
  }
  return 2;
}
