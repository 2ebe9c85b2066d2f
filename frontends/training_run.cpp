// The GPT-MoE training loop with checkpoints, resume and its safety nets
// (see training_run.h).
#include "frontends/training_run.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "frontends/gpt_checkpoint.h"
#include "ir/error.h"
#include "ir/file_io.h"

namespace moejit {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int signal) {
  g_stop_signal = signal;
  // A second Ctrl-C should not wait for the step boundary.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

// The pid in "<name>.tmp.<pid>.<random>" (write_file_atomically's names), or -1.
long temporary_owner(const std::string& filename) {
  const std::size_t at = filename.rfind(".tmp.");
  if (at == std::string::npos) return -1;
  const char* begin = filename.data() + at + 5;
  const char* end = filename.data() + filename.size();
  long pid = -1;
  auto [next, ec] = std::from_chars(begin, end, pid);
  if (ec != std::errc() || next == begin || next == end || *next != '.' || pid <= 0) return -1;
  return pid;
}

bool process_is_gone(long pid) { return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

std::string with_commas(std::int64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<std::int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

// "{}" is the shortest text that reads back to the same double.
std::string exact(double value) { return fmt::format("{}", value); }

// Every rank's `value` (one rank: just its own), through the communicator.
std::vector<int> gather_ints(Communicator* world, int value) {
  if (!world || world->world_size() == 1) return {value};
  HostTensor mine(TensorType{DType::i32, {1}});
  mine.values<std::int32_t>()[0] = value;
  HostTensor all(TensorType{DType::i32, {world->world_size()}});
  world->all_gather(mine, all);
  auto values = all.values<std::int32_t>();
  return {values.begin(), values.end()};
}

}  // namespace

std::vector<std::string> prepare_out_dir(const std::string& out_dir) {
  std::error_code ec;
  if (!out_dir.empty()) fs::create_directories(out_dir, ec);
  if (out_dir.empty() || !fs::is_directory(out_dir))
    throw Error(fmt::format("--out_dir: expected a directory that exists or can be created, found '{}'{}", out_dir,
                            ec ? " (" + ec.message() + ")" : ""));
  std::vector<std::string> removed;
  for (const fs::directory_entry& entry : fs::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const long pid = temporary_owner(name);
    if (pid < 0 || !entry.is_regular_file(ec) || !process_is_gone(pid)) continue;
    std::error_code remove_ec;
    if (fs::remove(entry.path(), remove_ec))
      removed.push_back(fmt::format("removed {}, a temporary file of process {} that is gone (killed during a save)",
                                    entry.path().string(), pid));
  }
  // A run must not train for an hour and then fail at its first save.
  const std::string probe = (fs::path(out_dir) / fmt::format(".write-probe.{}", static_cast<long>(::getpid()))).string();
  try {
    write_file_atomically(probe, "moejit: can this directory be written?\n", "probe file");
  } catch (const Error& err) {
    throw Error(fmt::format("--out_dir: expected a writable directory, found '{}' cannot be written: {}", out_dir,
                            err.what()));
  }
  fs::remove(probe, ec);
  return removed;
}

void install_stop_signal_handlers() {
  g_stop_signal = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

int stop_signal_received() { return g_stop_signal; }

std::map<std::string, std::string> training_state_metadata(const TrainingState& state) {
  return {{"step", std::to_string(state.steps_done)},
          {"best_val_loss", exact(state.best_val_loss)},
          {"first_loss", exact(state.first_loss)},
          {"sampler_state", state.sampler_state}};
}

TrainingState training_state_from_metadata(const std::string& path, const std::map<std::string, std::string>& metadata) {
  auto entry = [&](const char* key) -> const std::string& {
    auto it = metadata.find(key);
    if (it == metadata.end())
      throw Error(fmt::format("{}: expected metadata entry '{}' of a resumable checkpoint, found none (best.safetensors "
                              "of an older version, or another tool's file)",
                              path, key));
    return it->second;
  };
  auto number = [&](const char* key) {
    const std::string& text = entry(key);
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size())
      throw Error(fmt::format("{}: metadata '{}': expected a number, found '{}'", path, key, text));
    return value;
  };
  TrainingState state;
  const std::string& step = entry("step");
  auto [end, ec] = std::from_chars(step.data(), step.data() + step.size(), state.steps_done);
  if (ec != std::errc() || end != step.data() + step.size() || step.empty() || state.steps_done < 0)
    throw Error(fmt::format("{}: metadata 'step': expected an integer >= 0, found '{}'", path, step));
  state.best_val_loss = number("best_val_loss");
  state.first_loss = number("first_loss");
  state.sampler_state = entry("sampler_state");
  return state;
}

std::uint64_t train_estimate_seed(const GptMoeConfig& config) { return static_cast<std::uint64_t>(config.seed) + 1; }
std::uint64_t val_estimate_seed(const GptMoeConfig& config) { return static_cast<std::uint64_t>(config.seed) + 2; }

std::string format_effective_config(const GptMoeConfig& config) {
  std::map<std::string, std::string> lines;  // group -> "key=value ..."
  std::vector<std::string> groups;
  for (const ConfigField& field : config_fields()) {
    const std::string group(field.group);
    if (!lines.count(group)) groups.push_back(group);
    std::string& line = lines[group];
    line += fmt::format("{}{}={}", line.empty() ? "" : " ", field.name, get_config_value(config, field.name));
  }
  std::string out;
  for (const std::string& group : groups) out += fmt::format("config [{}] {}\n", group, lines[group]);
  return out;
}

TrainingRunResult run_training(GptMoeTrainer& trainer, const CharTokenizer& tokenizer, const TrainingData& data,
                               const TrainingState& start, const TrainingRunOptions& options) {
  const GptMoeConfig& config = trainer.config();
  // Several ranks: every rank runs this loop in step (the losses it decides
  // on are the same bits everywhere); rank 0 alone writes the files.
  Communicator* world = trainer.world();
  const bool writer = trainer.parallelism().rank == 0;
  BatchSampler train_batches(data.train_tokens, config.batch_size, config.block_size,
                             static_cast<std::uint64_t>(config.seed));
  if (!start.sampler_state.empty()) train_batches.set_state(start.sampler_state);
  TrainingState state = start;
  TrainingRunResult result;
  const std::string ckpt_path = (fs::path(options.out_dir) / "ckpt.safetensors").string();
  const std::string best_path = (fs::path(options.out_dir) / "best.safetensors").string();

  std::int64_t last_saved_step = -1;
  // A failed save is reported and survived: the previous file is intact
  // (write_file_atomically), and the next interval tries again.
  // With several ranks the parameters and moments are gathered from every
  // rank (a collective: every rank saves at the same points), rank 0 writes
  // the single-process format, and every rank learns whether it worked.
  auto save = [&](const std::string& path) {
    std::map<std::string, std::string> meta = options.data_metadata;
    for (auto& [key, value] : training_state_metadata(state)) meta[key] = value;
    meta["train_loss"] = exact(result.train_loss);
    meta["val_loss"] = exact(result.val_loss);
    meta["next_lr"] = exact(learning_rate_at(config, state.steps_done));
    const std::map<std::string, HostTensor> params = trainer.parameters();
    const std::map<std::string, HostTensor> moments = trainer.optimizer_state();
    bool saved = true;
    if (writer) {
      try {
        save_gpt_checkpoint(path, config, tokenizer, params, meta, moments);
      } catch (const Error& err) {
        saved = false;
        fmt::print(stderr, "gpt_moe: warning: step {}: could not save {}: {}{}\n", state.steps_done, path, err.what(),
                   state.steps_done < config.max_iters ? "; training goes on" : "");
        std::fflush(stderr);
      }
    }
    saved = gather_ints(world, saved ? 1 : 0)[0] == 1;  // rank 0's outcome
    if (!saved) {
      ++result.failed_saves;
      return false;
    }
    if (path == ckpt_path) last_saved_step = state.steps_done;
    return true;
  };
  auto diverged = [&](const std::string& what) {
    result.end = RunEnd::diverged;
    result.message = fmt::format(
        "training diverged at step {}: {}; nothing of this state was saved: {} and {} keep the last good one{}. "
        "Try a lower learning_rate, a grad_clip > 0 or more warmup_iters",
        state.steps_done, what, ckpt_path, best_path,
        last_saved_step >= 0 ? fmt::format(" (ckpt: step {})", last_saved_step) : "");
    result.steps_done = state.steps_done;
  };
  auto estimate = [&](std::uint64_t seed, const std::vector<std::int32_t>& tokens) {
    BatchSampler batches(tokens, config.batch_size, config.block_size, seed);
    return trainer.estimate_loss(batches, config.eval_iters);
  };
  // Returns false when the estimate is not finite (a diverged run).
  auto evaluate = [&]() {
    result.train_loss = estimate(train_estimate_seed(config), data.train_tokens);
    result.val_loss = estimate(val_estimate_seed(config), data.val_tokens);
    if (!std::isfinite(result.val_loss) || !std::isfinite(result.train_loss)) {
      diverged(fmt::format("the loss estimates are train {}, val {}", result.train_loss, result.val_loss));
      return false;
    }
    std::string saved;
    if (result.val_loss < state.best_val_loss && state.steps_done > 0) {
      state.best_val_loss = result.val_loss;
      saved = save(best_path) ? " (best so far, saved)" : " (best so far, NOT saved)";
    }
    if (options.print) {
      fmt::print("step {:>5}: train loss {:.4f}, val loss {:.4f}{}\n", state.steps_done, result.train_loss,
                 result.val_loss, saved);
      std::fflush(stdout);
    }
    return true;
  };

  const Clock::time_point train_start = Clock::now();
  Clock::time_point interval_start = train_start;
  std::int64_t interval_steps = 0;
  const std::int64_t first_step = state.steps_done;
  for (;; ++state.steps_done) {
    const std::int64_t iter = state.steps_done;  // steps done = the next step's 0-based index
    // ---- step boundary: evaluate, checkpoint, honour a stop request ----
    if (iter % config.eval_interval == 0 && iter < config.max_iters && !evaluate()) return result;
    if (config.checkpoint_interval > 0 && iter % config.checkpoint_interval == 0 && iter > first_step &&
        iter < config.max_iters)
      save(ckpt_path);
    // A stop request reaching any rank stops all of them at this boundary.
    int signal = 0;
    for (int received : gather_ints(world, stop_signal_received()))
      if (signal == 0) signal = received;
    if (signal != 0 || (options.stop_after_steps >= 0 && iter >= options.stop_after_steps)) {
      result.end = RunEnd::stopped;
      result.signal = signal;
      result.steps_done = iter;
      result.last_save_failed = !save(ckpt_path);
      return result;
    }
    if (iter >= config.max_iters) break;

    const StepStats stats = trainer.step(train_batches.next(), iter);
    state.sampler_state = train_batches.state();
    if (std::isnan(state.first_loss)) state.first_loss = stats.loss;
    if (!std::isfinite(stats.loss)) {
      diverged(fmt::format("the loss is {}", stats.loss));
      return result;
    }
    if (stats.loss > 4 * state.first_loss) {
      diverged(fmt::format("the loss is {}, above 4x the first step's ({})", stats.loss, state.first_loss));
      return result;
    }
    ++interval_steps;
    if (options.print && ((iter + 1) % config.log_interval == 0 || iter + 1 == config.max_iters)) {
      const Clock::time_point now = Clock::now();
      const double interval = std::chrono::duration<double>(now - interval_start).count();
      const double elapsed = std::chrono::duration<double>(now - train_start).count();
      const double tokens_per_s = static_cast<double>(interval_steps * trainer.tokens_per_step()) / interval;
      const double left = elapsed / static_cast<double>(iter + 1 - first_step) *
                          static_cast<double>(config.max_iters - iter - 1);
      fmt::print("step {:>5}/{} | loss {:.4f} (lm {:.4f}, aux {:.4f}) | grad norm {:.2f} | lr {:.2e} | {} tok/s | "
                 "{} elapsed, ~{} left\n",
                 iter + 1, config.max_iters, stats.loss, stats.lm_loss, stats.aux_loss, stats.grad_norm, stats.lr,
                 with_commas(static_cast<std::int64_t>(tokens_per_s)), format_duration(elapsed),
                 format_duration(left));
      std::fflush(stdout);
      interval_start = now;
      interval_steps = 0;
    }
  }
  if (!evaluate()) return result;
  result.steps_done = state.steps_done;
  result.last_save_failed = !save(ckpt_path);
  return result;
}

}  // namespace moejit
