// gpt_moe: train a character-level GPT whose feed-forward layers are
// mixtures of experts, sample from it, and see what each expert learned —
// nanoGPT's shakespeare_char run, on moejit.
//
//   gpt_moe train                         # built-in tagged corpus, default config
//   gpt_moe train --data input.txt --max_iters 2000 --n_layer 4
//   gpt_moe sample --out_dir out-gpt-moe --prompt "let x" --num_samples 3
//   gpt_moe report --ckpt out-gpt-moe/ckpt.safetensors
//   gpt_moe train --resume                # continue out-gpt-moe/ckpt.safetensors
//   gpt_moe train --nproc 2               # expert + data parallel on 2 ranks (docs/scale.md)
//   gpt_moe eval                          # val loss of the checkpoint, per kind of text
//   gpt_moe eval --dump d.safetensors --text "let x"   # logits and router outputs
//   gpt_moe upcycle --ckpt dense.safetensors --out moe.safetensors   (hf_commands.h)
//   gpt_moe train --init_from moe.safetensors --max_iters 200
//
// Every config key (frontends/config.h) is a train flag; --help lists them.
// Exit codes: 0 ok, 1 runtime error (bad checkpoint, bad data, no GPU for
// --device cuda, a diverged run, a failed final save), 2 bad command line,
// 130 / 143 stopped by SIGINT / SIGTERM (after saving ckpt.safetensors).
// With --nproc N the launcher exits with the ranks' status: 1 when a rank
// failed or was killed (its last line names it), 130 / 143 when a stop
// signal was passed on to every rank.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <optional>
#include <chrono>
#include <climits>
#include <cmath>
#include <filesystem>
#include <map>
#include <new>
#include <random>

#include "frontends/config.h"
#include "frontends/corpus.h"
#include "runtime/device.h"
#include "frontends/expert_report.h"
#include "frontends/generate.h"
#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/tokenizer.h"
#include "frontends/rope.h"
#include "frontends/safetensors.h"
#include "frontends/trainer.h"
#include "frontends/training_run.h"
#include "frontends/launcher.h"
#include "ir/error.h"
#include "runtime/socket_communicator.h"
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
  std::int64_t corpus_bytes = 300000;
  std::int64_t report_tokens = 8192;
  bool no_report = false;
  bool prompt_given = false;  // --prompt was on the command line
  bool corpus_bytes_given = false;
  bool resume = false;        // continue <out_dir>/ckpt.safetensors (or --ckpt)
  std::string resume_ckpt;
  std::string init_from;  // a checkpoint whose config and parameters a new run starts from
  std::string tokenizer;  // tokenizer.json, for a Llama-family init_from
  int nproc = 1;          // ranks to start on this host (docs/scale.md)
  SamplingFlags sampling;
  std::map<std::string, std::string> overrides;  // config key -> text, filled by CLI11
};

struct SampleFlags {
  std::string ckpt, out_dir = "out-gpt-moe", device = "auto";
  SamplingFlags sampling;
};

struct EvalFlags {
  std::string ckpt, out_dir = "out-gpt-moe", device = "auto", data, dump, tokens, text;
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

// The data of a run: the text, its tokenizer, every token, and the split
// (the first 90% of the tokens train, the rest is held out).
struct RunData {
  TaggedText text;
  CharTokenizer tokenizer;
  std::vector<std::int32_t> all_tokens;
  std::size_t split = 0;
  std::string label;  // for messages: the file, or "(built-in corpus)"
  TrainingData tokens() const {
    return {std::vector<std::int32_t>(all_tokens.begin(), all_tokens.begin() + static_cast<std::ptrdiff_t>(split)),
            std::vector<std::int32_t>(all_tokens.begin() + static_cast<std::ptrdiff_t>(split), all_tokens.end())};
  }
};

RunData load_run_data(const std::string& data_file, std::int64_t corpus_bytes, std::int64_t seed) {
  RunData data;
  data.text = load_data(data_file, corpus_bytes, seed);
  data.tokenizer = CharTokenizer::from_text(data.text.text);
  data.all_tokens = data.tokenizer.encode(data.text.text);
  data.split = data.all_tokens.size() * 9 / 10;
  data.label = data_file.empty() ? "(built-in corpus)" : data_file;
  return data;
}

// The data a checkpoint was trained on, from its metadata ("data",
// "corpus_seed", "corpus_bytes"), checked against "data_crc32" when present.
RunData checkpoint_data(const GptMoeCheckpoint& ckpt, const std::string& path);
std::string data_crc(const std::string& text);


// The keys a resumed run may change: how long it runs and how often it
// reports. Everything else comes from the checkpoint, so the run continues
// the one that was interrupted.
bool may_change_on_resume(const std::string& key) {
  return key == "max_iters" || key == "eval_interval" || key == "eval_iters" || key == "log_interval" ||
         key == "checkpoint_interval";
}

std::string checkpoint_path(const std::string& ckpt, const std::string& out_dir) {
  return ckpt.empty() ? (std::filesystem::path(out_dir) / "ckpt.safetensors").string() : ckpt;
}

// load_gpt_checkpoint, but a missing file names the checkpoints that do
// exist next to it (an interrupted run may have only best.safetensors), and
// an unverified file gets a note on stderr.
GptMoeCheckpoint load_checkpoint_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    std::vector<std::string> others;
    const std::filesystem::path dir = std::filesystem::path(path).parent_path().empty()
                                          ? std::filesystem::path(".")
                                          : std::filesystem::path(path).parent_path();
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
      if (entry.path().extension() == ".safetensors") others.push_back(entry.path().string());
    std::sort(others.begin(), others.end());
    std::string hint = others.empty() ? "" : " (--ckpt " + others.front() + " exists";
    for (std::size_t i = 1; i < others.size(); ++i) hint += ", " + others[i];
    if (!others.empty()) hint += ")";
    throw Error(fmt::format("{}: expected a checkpoint, found no such file{}", path, hint));
  }
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(path);
  if (!ckpt.note.empty()) fmt::print(stderr, "gpt_moe: note: {}: {}\n", path, ckpt.note);
  return ckpt;
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

std::string data_crc(const std::string& text) { return fmt::format("{:08x}", crc32(text.data(), text.size())); }

RunData checkpoint_data(const GptMoeCheckpoint& ckpt, const std::string& path) {
  const std::string data = meta_or(ckpt, "data", "builtin");
  const std::int64_t seed = meta_int_or(ckpt, path, "corpus_seed", ckpt.config.seed);
  const std::int64_t bytes = meta_int_or(ckpt, path, "corpus_bytes", 300000, 100000000);
  RunData out = load_run_data(data == "builtin" ? "" : data, bytes, seed);
  auto crc = ckpt.metadata.find("data_crc32");
  if (crc != ckpt.metadata.end() && crc->second != data_crc(out.text.text))
    throw Error(fmt::format("{}: the training data {} has CRC-32 {} now, the checkpoint says {} (the data changed "
                            "since it was trained)",
                            path, out.label, data_crc(out.text.text), crc->second));
  return out;
}

// The command line as given (`--nproc` starts it again once per rank).
std::vector<std::string> g_command_line;

// "rank 2: " in a process of a multi-rank run, else "".
std::string rank_prefix() {
  const char* rank = std::getenv("RANK");
  try {
    return multi_rank_environment() && rank ? fmt::format("rank {}: ", rank) : "";
  } catch (const Error&) {
    return "";  // a malformed WORLD_SIZE: the error itself says so
  }
}

// An error line of a rank: "gpt_moe: rank 1: error: ..." (the rank once).
std::string error_line(const std::string& what) {
  const std::string prefix = rank_prefix();
  return fmt::format("gpt_moe: {}error: {}\n", prefix, what.starts_with(prefix) ? what.substr(prefix.size()) : what);
}

// gpt_moe train --nproc N: this same command line without --nproc, once per
// rank (frontends/launcher.h), meeting at a Unix socket in a fresh temporary
// directory (MOEJIT_RENDEZVOUS; NCCL's id file goes there too). SIGINT and
// SIGTERM are passed on: the ranks stop together at a step boundary and save.
int launch_train_ranks(const TrainFlags& flags) {
  namespace fs = std::filesystem;
  std::string dir = (fs::temp_directory_path() / "moejit-nproc-XXXXXX").string();
  if (!::mkdtemp(dir.data()))
    throw Error(fmt::format("--nproc: cannot make a temporary directory {}: {}", dir, std::strerror(errno)));
  LaunchOptions launch;
  launch.nproc = flags.nproc;
  launch.command.push_back(fs::read_symlink("/proc/self/exe").string());
  for (std::size_t i = 1; i < g_command_line.size(); ++i) {
    const std::string& arg = g_command_line[i];
    if (arg == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (arg.starts_with("--nproc=")) continue;
    launch.command.push_back(arg);
  }
  launch.environment = {{"MOEJIT_RENDEZVOUS", "unix:" + dir + "/hub.sock"}, {"MOEJIT_NCCL_ID_FILE", dir + "/nccl.id"}};
  launch.gpu_per_rank = flags.device != "cpu";
  launch.stop_requested = [] { return stop_signal_received(); };
  LaunchResult result;
  try {
    result = launch_local_ranks(launch);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    throw;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!result.message.empty())
    fmt::print(stderr, "gpt_moe train --nproc {}: {}\n", flags.nproc, result.message);
  return result.exit_code;
}

int run_train(TrainFlags& flags) {
  // SIGINT/SIGTERM from here on save a checkpoint at the next step boundary.
  install_stop_signal_handlers();
  if (flags.nproc < 1) {
    fmt::print(stderr, "gpt_moe train: --nproc: expected a number of ranks >= 1, found {}\n", flags.nproc);
    return 2;
  }
  if (flags.nproc > 1 && multi_rank_environment()) {
    fmt::print(stderr, "gpt_moe train: --nproc: expected either --nproc or a launcher's WORLD_SIZE (torchrun, srun), "
                       "found both (WORLD_SIZE={})\n",
               std::getenv("WORLD_SIZE"));
    return 2;
  }
  if (flags.nproc > 1) return launch_train_ranks(flags);
  if (!flags.init_from.empty() && flags.resume) {
    fmt::print(stderr, "gpt_moe train: --init_from: expected no --resume with it (a new run from a checkpoint's "
                       "parameters, or the same run continued), found both\n");
    return 2;
  }
  const bool llama = !flags.init_from.empty() && gpt_moe_cli::is_llama_checkpoint(flags.init_from);
  if (llama && (flags.nproc > 1 || multi_rank_environment())) {
    fmt::print(stderr, "gpt_moe train: {}--init_from {}: expected a GPT-MoE checkpoint for several ranks, found a "
                       "Llama-family one (it trains on one rank only)\n",
               rank_prefix(), flags.init_from);
    return 2;
  }
  if (llama)
    return gpt_moe_cli::run_train_llama({.init_from = flags.init_from, .tokenizer = flags.tokenizer,
                                         .data = flags.data, .out_dir = flags.out_dir, .device = flags.device,
                                         .corpus_bytes = flags.corpus_bytes, .overrides = flags.overrides});
  // ---- config: defaults <- JSON file <- flags (or the checkpoint's, on --resume) ----
  GptMoeConfig config;
  std::optional<GptMoeCheckpoint> init;  // --init_from: its config is the base the file and flags change
  if (!flags.init_from.empty()) {
    init = load_checkpoint_file(flags.init_from);
    config = init->config;
  }
  std::optional<GptMoeCheckpoint> resumed;
  const std::string resume_path = checkpoint_path(flags.resume_ckpt, flags.out_dir);
  if (!flags.resume && !flags.resume_ckpt.empty()) {
    fmt::print(stderr, "gpt_moe train: --ckpt: expected --resume with it (the checkpoint to continue), found none\n");
    return 2;
  }
  if (flags.resume) {
    resumed = load_checkpoint_file(resume_path);
    if (resumed->optimizer.empty())
      throw Error(fmt::format("--resume: {}: expected a resumable checkpoint (with AdamW moments), found only the "
                              "model's tensors",
                              resume_path));
    config = resumed->config;
    if (!flags.config_file.empty()) {
      fmt::print(stderr, "gpt_moe train: --resume: expected no --config (the config is the checkpoint's), found {}\n",
                 flags.config_file);
      return 2;
    }
  }
  try {
    if (!flags.config_file.empty()) config = load_config_file(flags.config_file, config);
    for (const auto& [key, text] : flags.overrides) {
      if (resumed && !may_change_on_resume(key)) {
        GptMoeConfig changed = config;
        set_config_value(changed, key, text);
        if (get_config_value(changed, key) != get_config_value(config, key))
          throw Error(fmt::format("--resume: {}: expected the checkpoint's value {} (only max_iters, eval_interval, "
                                  "eval_iters, log_interval and checkpoint_interval may change), found {}",
                                  key, get_config_value(config, key), text));
      }
      set_config_value(config, key, text);
    }
    validate_config(config);
  } catch (const Error& err) {
    fmt::print(stderr, "gpt_moe train: {}{}\n", rank_prefix(), err.what());
    return 2;
  }

  // ---- several ranks (RANK, WORLD_SIZE from --nproc or another launcher) ----
  std::unique_ptr<Communicator> world;
  if (multi_rank_environment()) {
    world = connect_socket_world(socket_world_options_from_env());
    check_parallelism(config, {world->rank(), world->world_size()});
    if (world->rank() != 0 && !std::freopen("/dev/null", "w", stdout))  // rank 0 alone prints
      throw Error("several ranks: cannot silence stdout of a rank other than 0");
  }

  // ---- data ----
  RunData data;
  if (resumed) {
    if (!flags.data.empty() || flags.corpus_bytes_given)
      throw Error("--resume: expected no --data or --corpus_bytes (the data is the checkpoint's), found one");
    data = checkpoint_data(*resumed, resume_path);
    if (data.tokenizer.bytes() != resumed->tokenizer.bytes())
      throw Error(fmt::format("--resume: {}: the data's vocabulary differs from the checkpoint's", resume_path));
  } else {
    data = load_run_data(flags.data, flags.corpus_bytes, config.seed);
  }
  if (init && data.tokenizer.bytes() != init->tokenizer.bytes()) {  // the checkpoint's vocabulary, not the data's
    data.tokenizer = init->tokenizer;
    try {
      data.all_tokens = data.tokenizer.encode(data.text.text);
    } catch (const Error& err) {
      throw Error(fmt::format("--init_from {}: the data must use the checkpoint's vocabulary: {}", flags.init_from,
                              err.what()));
    }
  }
  const CharTokenizer& tokenizer = data.tokenizer;
  if (config.vocab_size != 0 && config.vocab_size != tokenizer.vocab_size())
    throw Error(fmt::format("config: vocab_size: expected 0 or {} (distinct bytes of the data), found {}",
                            tokenizer.vocab_size(), config.vocab_size));
  config.vocab_size = tokenizer.vocab_size();
  const TrainingData tokens = data.tokens();
  const TaggedText held_out = split_tail(data.text, 0.1);
  // Batches are checked against the data before anything is compiled.
  auto check_batches = [&](const std::vector<std::int32_t>& split_tokens, const char* split) {
    try {
      BatchSampler(split_tokens, config.batch_size, config.block_size, 0);
    } catch (const Error& err) {
      throw Error(fmt::format("data {}: the {} split: {}", flags.data.empty() ? data.label : flags.data, split,
                              err.what()));
    }
  };
  check_batches(tokens.train_tokens, "training (first 90%)");
  check_batches(tokens.val_tokens, "validation (last 10%)");
  // The samples after training start from --prompt: check it now, not after
  // the run. The default "\n" falls back to the data's first character when
  // the data has no newline.
  if (flags.sampling.num_samples > 0) {
    try {
      encode_prompt(tokenizer, flags.sampling.prompt);
    } catch (const Error&) {
      if (flags.prompt_given) throw;
      flags.sampling.prompt = data.text.text.substr(0, 1);
    }
  }
  // The output directory is proven writable before anything is compiled.
  for (const std::string& line : prepare_out_dir(flags.out_dir)) fmt::print("{}\n", line);

  std::string note;
  std::unique_ptr<Backend> backend = make_backend(flags.device, &note);
  std::optional<ScopedCommunicator> cpu_comm;  // the CPU backend's comm ops go through the socket world
  if (world) {
    // Every rank on the same kind of device: a CPU rank cannot join NCCL.
    HostTensor mine(TensorType{DType::i32, {1}});
    mine.values<std::int32_t>()[0] = backend->name() == "cuda" ? 1 : 0;
    HostTensor all(TensorType{DType::i32, {world->world_size()}});
    world->all_gather(mine, all);
    std::vector<std::string> kinds;
    bool same = true;
    for (int r = 0; r < world->world_size(); ++r) {
      kinds.push_back(fmt::format("rank {} {}", r, all.values<std::int32_t>()[r] ? "cuda" : "cpu"));
      same &= all.values<std::int32_t>()[r] == mine.values<std::int32_t>()[0];
    }
    if (!same)
      throw Error(fmt::format("several ranks: expected every rank on the same kind of device, found {} (give each rank "
                              "a GPU, or --device cpu)",
                              fmt::join(kinds, ", ")));
    if (backend->name() != "cuda") cpu_comm.emplace(world.get());
    note += fmt::format("; rank {} of {} (expert + data parallel, docs/scale.md)", world->rank(), world->world_size());
  }
  fmt::print("data: {} ({} bytes, {} distinct characters; train {} / val {} tokens)\n",
             data.label == "(built-in corpus)" ? "built-in corpus (arithmetic, code, prose)" : data.label,
             with_commas(static_cast<std::int64_t>(data.text.text.size())), tokenizer.vocab_size(),
             with_commas(static_cast<std::int64_t>(tokens.train_tokens.size())),
             with_commas(static_cast<std::int64_t>(tokens.val_tokens.size())));
  fmt::print("unigram entropy of the training text: {:.3f} nats (a model that ignores context), uniform: {:.3f}\n",
             unigram_entropy(tokens.train_tokens, tokenizer.vocab_size()),
             std::log(static_cast<double>(tokenizer.vocab_size())));
  fmt::print("device: {}\n", note);
  fmt::print("precision: {}\n", training_precision(config, *backend) == DType::bf16
                                     ? "bf16 mixed precision (bf16 matmuls, f32 weights, norms, router and losses)"
                                     : "f32");
  fmt::print("{}", format_effective_config(config));

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
  TrainingState state;
  std::unique_ptr<GptMoeTrainer> trainer;
  TrainerOptions trainer_options;
  trainer_options.world = world.get();
  if (resumed) {
    state = training_state_from_metadata(resume_path, resumed->metadata);
    trainer = std::make_unique<GptMoeTrainer>(config, *backend, resumed->params, trainer_options);
    trainer->set_optimizer_state(resumed->optimizer);
  } else if (init) {
    check_parameters(init->params, specs, flags.init_from + " (--init_from, with this run's config)");
    trainer = std::make_unique<GptMoeTrainer>(config, *backend, init->params, trainer_options);
  } else {
    trainer = std::make_unique<GptMoeTrainer>(config, *backend, init_parameters(specs, static_cast<std::uint64_t>(config.seed)),
                                              trainer_options);
  }
  fmt::print("built and compiled the training and evaluation graphs in {:.2f}s\n",
             std::chrono::duration<double>(Clock::now() - start).count());
  if (trainer->replays_cuda_graph())
    fmt::print("training step: one CUDA graph, captured at the first step and replayed every step (MOEJIT_CUDA_GRAPH=0: "
               "eager launches)\n");
  if (resumed) fmt::print("resuming {} at step {} of {}\n", resume_path, state.steps_done, config.max_iters);
  fmt::print("\n");
  std::fflush(stdout);

  const std::map<std::string, std::string> data_meta = {
      {"data", resumed ? meta_or(*resumed, "data", "builtin")
                       : flags.data.empty() ? "builtin" : std::filesystem::absolute(flags.data).string()},
      {"corpus_seed", std::to_string(config.seed)},
      {"corpus_bytes", std::to_string(resumed ? static_cast<std::int64_t>(data.text.text.size()) : flags.corpus_bytes)},
      {"data_crc32", data_crc(data.text.text)}};
  const Clock::time_point train_start = Clock::now();
  const TrainingRunResult run =
      run_training(*trainer, tokenizer, tokens, state,
                   {.out_dir = flags.out_dir, .data_metadata = data_meta, .print = !world || world->rank() == 0});
  const std::string ckpt_path = (std::filesystem::path(flags.out_dir) / "ckpt.safetensors").string();
  if (run.end == RunEnd::diverged) {
    fmt::print(stderr, "gpt_moe: error: {}\n", run.message);
    return 1;
  }
  if (run.end == RunEnd::stopped) {
    const char* name = run.signal == SIGTERM ? "SIGTERM" : "SIGINT";
    if (run.last_save_failed)
      fmt::print(stderr, "gpt_moe: {} at step {}: could not save {} (see above); the previous one is kept\n", name,
                 run.steps_done, ckpt_path);
    else
      fmt::print(stderr, "gpt_moe: {} at step {}: saved {}; continue with: gpt_moe train --resume --out_dir {}\n",
                 name, run.steps_done, ckpt_path, flags.out_dir);
    return 128 + (run.signal != 0 ? run.signal : SIGINT);
  }
  const double train_seconds = std::chrono::duration<double>(Clock::now() - train_start).count();
  fmt::print("\ntrained {} steps in {} ({} tokens); final train loss {:.4f}, val loss {:.4f}\n"
             "final val loss (full precision, `gpt_moe eval` reproduces it): {}\n",
             config.max_iters - state.steps_done, format_duration(train_seconds),
             with_commas((config.max_iters - state.steps_done) * trainer->tokens_per_step()), run.train_loss,
             run.val_loss, run.val_loss);
  if (run.last_save_failed) {
    fmt::print(stderr, "gpt_moe: error: could not save the final {} (see above); the previous checkpoint is kept\n",
               ckpt_path);
    return 1;
  }
  fmt::print("saved {}\n", ckpt_path);

  const std::map<std::string, HostTensor> params = trainer->parameters();  // several ranks: gathered on every rank
  if (world && world->rank() != 0) return 0;  // rank 0 samples and reports, on one device
  cpu_comm.reset();                            // ... as one rank
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

int run_sample(const SampleFlags& flags) {
  const std::string path = checkpoint_path(flags.ckpt, flags.out_dir);
  GptMoeCheckpoint ckpt = load_checkpoint_file(path);
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
  GptMoeCheckpoint ckpt = load_checkpoint_file(path);
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

// Mean cross-entropy in double, from the model's f32 logits, over every
// window [i, i + T) with i = 0, T, 2T, ... of `tokens` (targets shifted by
// one), per kind of the target's text (kinds[j] for token j).
struct SplitLoss {
  double total = 0;
  std::int64_t count = 0;
  std::vector<double> kind_total;
  std::vector<std::int64_t> kind_count;
};

SplitLoss window_losses(const GptMoeConfig& config, Backend& backend, const std::map<std::string, HostTensor>& params,
                        const std::vector<std::int32_t>& tokens, const std::vector<std::uint8_t>& kinds,
                        std::size_t num_kinds) {
  const std::int64_t B = config.batch_size, T = config.block_size, V = config.vocab_size;
  Graph graph("gpt_moe_logits");
  build_gpt_moe(graph, config, {.batch = B, .training = false, .with_loss = false, .output_logits = true});
  std::unique_ptr<Executable> exe = backend.compile(graph);
  bind_rope_tables(*exe, {.theta = config.rope_theta});  // graphs without RoPE are left alone
  for (const ParamSpec& s : gpt_moe_param_specs(config)) exe->set(s.name, params.at(s.name));
  SplitLoss out;
  out.kind_total.assign(num_kinds, 0.0);
  out.kind_count.assign(num_kinds, 0);
  const std::int64_t n = static_cast<std::int64_t>(tokens.size());
  const std::int64_t windows = n > T ? (n - 1) / T : 0;
  if (windows == 0)
    throw Error(fmt::format("eval: expected at least block_size + 1 = {} tokens, found {}", T + 1, n));
  for (std::int64_t first = 0; first < windows; first += B) {
    HostTensor idx({DType::i32, {B, T}});
    std::span<std::int32_t> x = idx.values<std::int32_t>();
    const std::int64_t used = std::min(B, windows - first);
    for (std::int64_t b = 0; b < B; ++b)  // a short last batch repeats its first window (ignored)
      for (std::int64_t t = 0; t < T; ++t)
        x[static_cast<std::size_t>(b * T + t)] = tokens[static_cast<std::size_t>((first + (b < used ? b : 0)) * T + t)];
    exe->set("idx", idx);
    exe->run();
    const HostTensor logits = exe->get("logits");
    for (std::int64_t b = 0; b < used; ++b) {
      for (std::int64_t t = 0; t < T; ++t) {
        const std::size_t target_pos = static_cast<std::size_t>((first + b) * T + t + 1);
        const std::int64_t row = (b * T + t) * V;
        double max = -INFINITY;
        for (std::int64_t v = 0; v < V; ++v) max = std::max(max, logits.get(row + v));
        double sum = 0;
        for (std::int64_t v = 0; v < V; ++v) sum += std::exp(logits.get(row + v) - max);
        const double loss = max + std::log(sum) - logits.get(row + tokens[target_pos]);
        out.total += loss;
        ++out.count;
        const std::size_t kind = kinds.empty() ? 0 : kinds[target_pos];
        out.kind_total[kind] += loss;
        ++out.kind_count[kind];
      }
    }
  }
  return out;
}

// The token ids of --tokens "3,1,4" or --text, for --dump.
std::vector<std::int32_t> dump_tokens(const EvalFlags& flags, const CharTokenizer& tokenizer) {
  if (!flags.text.empty()) {
    try {
      return tokenizer.encode(unescape(flags.text));
    } catch (const Error& err) {
      throw Error(fmt::format("--text: {}", err.what()));
    }
  }
  std::vector<std::int32_t> ids;
  std::size_t at = 0;
  while (at <= flags.tokens.size()) {
    const std::size_t comma = std::min(flags.tokens.find(',', at), flags.tokens.size());
    const std::string item = flags.tokens.substr(at, comma - at);
    std::int32_t id = -1;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (ec != std::errc() || end != item.data() + item.size() || item.empty() || id < 0 || id >= tokenizer.vocab_size())
      throw Error(fmt::format("--tokens: expected comma-separated token ids in [0, {}), found '{}'",
                              tokenizer.vocab_size(), item));
    ids.push_back(id);
    at = comma + 1;
  }
  return ids;
}

// --dump: logits, per-layer router logits, chosen experts, counts and aux
// losses of one sequence, as safetensors (docs/checkpoints.md).
void write_dump(const EvalFlags& flags, const GptMoeCheckpoint& ckpt, const std::string& path, Backend& backend) {
  const std::vector<std::int32_t> ids = dump_tokens(flags, ckpt.tokenizer);
  const std::int64_t n = static_cast<std::int64_t>(ids.size());
  if (n == 0 || n > ckpt.config.block_size)
    throw Error(fmt::format("--dump: expected 1 to block_size = {} tokens, found {}", ckpt.config.block_size, n));
  Graph graph("gpt_moe_dump");
  GptMoeGraph model = build_gpt_moe(graph, ckpt.config,
                                    {.batch = 1, .seq_len = n, .training = false, .with_loss = false,
                                     .output_logits = true, .output_routing = true, .output_router = true});
  std::unique_ptr<Executable> exe = backend.compile(graph);
  bind_rope_tables(*exe, {.theta = ckpt.config.rope_theta});
  for (const ParamSpec& s : model.params) exe->set(s.name, ckpt.params.at(s.name));
  exe->set("idx", HostTensor::from_ints({1, n}, ids));
  exe->run();
  Checkpoint dump;
  dump.tensors["idx"] = HostTensor::from_ints({n}, ids);
  dump.tensors["logits"] = exe->get("logits");
  double aux_total = 0;
  bool has_aux = false;
  for (std::int64_t layer : model.moe_layers) {
    for (const char* what : {"router_logits", "experts", "counts"}) {
      const std::string name = fmt::format("{}.{}", what, layer);
      dump.tensors[name] = exe->get(name);
    }
    const std::string aux = fmt::format("aux_loss.{}", layer);
    if (graph.find_output(aux) != nullptr) {
      dump.tensors[aux] = exe->get(aux);
      aux_total += dump.tensors[aux].get(0);
      has_aux = true;
    }
  }
  if (has_aux) dump.tensors["aux_loss"] = HostTensor::scalar(aux_total);
  dump.metadata = {{"format", "moejit.gpt_moe.dump.v1"}, {"checkpoint", path},
                   {"step", meta_or(ckpt, "step", "?")}, {"config", config_to_json(ckpt.config)}};
  save_safetensors(flags.dump, dump);
  fmt::print("dump of {} tokens: {} ({} tensors: idx, logits{})\n", n, flags.dump, dump.tensors.size(),
             model.moe_layers.empty() ? "" : ", router_logits.<layer>, experts.<layer>, counts.<layer>, aux_loss...");
}

int run_eval(const EvalFlags& flags) {
  const std::string path = checkpoint_path(flags.ckpt, flags.out_dir);
  GptMoeCheckpoint ckpt = load_checkpoint_file(path);
  std::string note;
  std::unique_ptr<Backend> backend = make_backend(flags.device, &note);
  fmt::print("checkpoint {} (step {}); device: {}\n", path, meta_or(ckpt, "step", "?"), note);
  if (!flags.dump.empty()) {
    if (flags.tokens.empty() == flags.text.empty())
      throw Error("--dump: expected exactly one of --tokens or --text, found " +
                  std::string(flags.tokens.empty() ? "neither" : "both"));
    write_dump(flags, ckpt, path, *backend);
    return 0;
  }
  const GptMoeConfig& config = ckpt.config;
  if (!flags.data.empty()) {
    const std::string text = read_text_file(flags.data);
    std::vector<std::int32_t> tokens;
    try {
      tokens = ckpt.tokenizer.encode(text);
    } catch (const Error& err) {
      throw Error(fmt::format("--data {}: {}", flags.data, err.what()));
    }
    const SplitLoss loss = window_losses(config, *backend, ckpt.params, tokens, {}, 1);
    fmt::print("{}: {} tokens in windows of {}: loss {} nats/token\n", flags.data, with_commas(loss.count),
               config.block_size, loss.total / static_cast<double>(loss.count));
    return 0;
  }
  // The held-out split of the training data: first the training run's own
  // estimate (same batches, same graph: it reproduces the printed val loss),
  // then every held-out token, per kind of text.
  const RunData data = checkpoint_data(ckpt, path);
  const TrainingData tokens = data.tokens();
  BatchSampler val_batches(tokens.val_tokens, config.batch_size, config.block_size, val_estimate_seed(config));
  std::unique_ptr<Executable> eval = compile_eval_graph(config, *backend, training_precision(config, *backend));
  for (const ParamSpec& s : gpt_moe_param_specs(config)) eval->set(s.name, ckpt.params.at(s.name));
  const double estimate = mean_lm_loss(*eval, val_batches, config.eval_iters);
  fmt::print("val loss (the training run's estimate: {} batches of {} x {}, seed {}): {}\n", config.eval_iters,
             config.batch_size, config.block_size, val_estimate_seed(config), estimate);
  const std::vector<std::uint8_t> kinds(data.text.kinds.begin() + static_cast<std::ptrdiff_t>(data.split),
                                        data.text.kinds.end());
  const SplitLoss loss = window_losses(config, *backend, ckpt.params, tokens.val_tokens, kinds, data.text.kind_names.size());
  fmt::print("held-out split, every token ({} in windows of {}): loss {} nats/token\n", with_commas(loss.count),
             config.block_size, loss.total / static_cast<double>(loss.count));
  for (std::size_t k = 0; k < data.text.kind_names.size() && data.text.kind_names.size() > 1; ++k)
    if (loss.kind_count[k] > 0)
      fmt::print("  {:<12} {:>8} tokens: loss {}\n", data.text.kind_names[k], with_commas(loss.kind_count[k]),
                 loss.kind_total[k] / static_cast<double>(loss.kind_count[k]));
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
  train_cmd->add_flag("--resume", train.resume,
                      "continue the run saved in <out_dir>/ckpt.safetensors (or --ckpt): same config, data, "
                      "optimizer and sampler state; only max_iters, eval_interval, eval_iters, log_interval and "
                      "checkpoint_interval may be given");
  train_cmd->add_option("--ckpt", train.resume_ckpt, "with --resume: the checkpoint to continue (default "
                                                    "<out_dir>/ckpt.safetensors)");
  train_cmd->add_option("--init_from", train.init_from,
                        "start a new run from this checkpoint's parameters and config (e.g. from `gpt_moe "
                        "upcycle`); the data must fit its vocabulary")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--tokenizer", train.tokenizer,
                        "Hugging Face tokenizer.json of a Llama-family --init_from checkpoint")
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--nproc", train.nproc,
                        "train on N ranks of this host (expert + data parallel, one GPU each on the CUDA backend; "
                        "docs/scale.md); RANK/WORLD_SIZE from torchrun or srun also work");
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

  EvalFlags eval;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "the loss of a checkpoint on its held-out split (per kind of text) or a text file; --dump writes logits "
              "and router outputs");
  eval_cmd->add_option("--ckpt", eval.ckpt, "checkpoint file (default <out_dir>/ckpt.safetensors)");
  eval_cmd->add_option("--out_dir", eval.out_dir, "directory of ckpt.safetensors (default out-gpt-moe)");
  eval_cmd->add_option("--device", eval.device, "auto | cpu | cuda (default auto)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  eval_cmd->add_option("--data", eval.data, "text file to evaluate (default: the held-out split of the training data)")
      ->check(CLI::ExistingFile);
  eval_cmd->add_option("--dump", eval.dump, "write logits, router logits, experts, counts and aux losses to this "
                                            "safetensors file, for --tokens or --text");
  eval_cmd->add_option("--tokens", eval.tokens, "token ids for --dump, comma-separated");
  eval_cmd->add_option("--text", eval.text, "text for --dump (\\n and \\t are escapes)");

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

  g_command_line.assign(argv, argv + argc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    const int code = app.exit(err);
    return code == 0 ? 0 : 2;
  }
  train.prompt_given = train_cmd->count("--prompt") > 0;
  train.corpus_bytes_given = train_cmd->count("--corpus_bytes") > 0;
  try {
    if (train_cmd->parsed()) return run_train(train);
    if (sample_cmd->parsed()) return run_sample(sample);
    if (report_cmd->parsed()) return run_report(report);
    if (eval_cmd->parsed()) return run_eval(eval);
    if (int code = gpt_moe_cli::run_hf_commands(hf_commands); code >= 0) return code;
  } catch (const moejit::Error& err) {
    fmt::print(stderr, "{}", error_line(err.what()));
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "gpt_moe: error: out of memory: expected the model and data to fit in host memory, found an "
                       "allocation that failed (try a smaller n_embd, n_layer, num_experts, d_expert or batch_size)\n");
    return 1;
  } catch (const std::exception& err) {
    fmt::print(stderr, "{}", error_line(err.what()));
    return 1;
  }
  return 2;
}
