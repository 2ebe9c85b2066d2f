// A whole GPT-MoE training run that can be trusted with hours of work:
// the loop of gpt_moe train (evaluate every eval_interval steps, save
// ckpt.safetensors every checkpoint_interval steps and at the end, keep
// best.safetensors), resumable bit-identically on the CPU, and careful with
// the disk and the loss:
//   - prepare_out_dir proves the directory writable before anything is
//     compiled and removes the temporaries of dead processes;
//   - a failed save says why, keeps the previous file and training goes on;
//   - SIGINT/SIGTERM set a flag; the loop saves ckpt at the next step
//     boundary and returns RunEnd::stopped (gpt_moe exits 130 / 143);
//   - a NaN/Inf loss, or one above 4x the first step's, stops the run
//     (RunEnd::diverged) without saving anything over the good checkpoints.
//
// Several ranks (the trainer's TrainerOptions::world, docs/scale.md): every
// rank runs this loop in step; a save gathers the expert slices from every
// rank (collective) and rank 0 alone writes the file, in the one-process
// format; a stop request reaching any rank stops all of them at the same
// step boundary (one all_gather of the flag per step); every other decision
// is taken on all-reduced values, the same bits on every rank.
//
// What a checkpoint holds to continue exactly (docs/checkpoints.md): the
// parameters and the selection-bias state, the AdamW moments, the number of
// steps done (the learning-rate schedule and the dropout/noise Philox offset
// are functions of it), the training batch sampler's generator state, the
// best validation loss and the first step's loss. The loss estimates use
// fresh generators with fixed seeds (the same batches at every estimate), so
// they carry no state and `gpt_moe eval` reproduces them.
//
//   prepare_out_dir(dir);
//   GptMoeTrainer trainer(config, backend, params);
//   TrainingRunResult r = run_training(trainer, tokenizer, data, TrainingState{}, {.out_dir = dir});
#pragma once
#include <csignal>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "frontends/tokenizer.h"
#include "frontends/trainer.h"

namespace moejit {

// Creates `out_dir` if needed, removes "*.tmp.<pid>.*" files whose process
// is gone (a run killed during a save), and writes and removes a probe file.
// Throws moejit::Error saying what was expected and what was found. Returns
// one line per removed file (for the log).
std::vector<std::string> prepare_out_dir(const std::string& out_dir);

// SIGINT and SIGTERM set stop_signal_received() to the signal's number
// (a second one of either kills the process at once, as usual).
void install_stop_signal_handlers();
int stop_signal_received();

struct TrainingData {
  std::vector<std::int32_t> train_tokens, val_tokens;
};

// Where a run starts from; a default-constructed state is a fresh run.
struct TrainingState {
  std::int64_t steps_done = 0;
  double best_val_loss = INFINITY;
  double first_loss = NAN;         // loss of step 0 (divergence threshold); NaN before it
  std::string sampler_state;       // the training sampler's generator; empty: seeded with config.seed
};
// The state as checkpoint metadata entries, and back (errors name `path`).
std::map<std::string, std::string> training_state_metadata(const TrainingState& state);
TrainingState training_state_from_metadata(const std::string& path, const std::map<std::string, std::string>& metadata);

struct TrainingRunOptions {
  std::string out_dir;                                // ckpt.safetensors and best.safetensors go here
  std::map<std::string, std::string> data_metadata;   // copied into every checkpoint ("data", "corpus_seed", ...)
  bool print = true;                                  // progress lines on stdout
  // Tests: behave as if SIGINT arrived once this many steps are done (-1: never).
  std::int64_t stop_after_steps = -1;
};

enum class RunEnd { finished, stopped, diverged };

struct TrainingRunResult {
  RunEnd end = RunEnd::finished;
  int signal = 0;                  // the signal that stopped it (RunEnd::stopped by a signal)
  std::int64_t steps_done = 0;
  double train_loss = NAN, val_loss = NAN;  // the last estimates
  int failed_saves = 0;
  bool last_save_failed = false;   // the final (or stop) save of ckpt failed: the previous one is kept
  std::string message;             // why it stopped, for RunEnd::diverged
};

// The loss estimates of the loop: config.eval_iters batches of a sampler
// seeded seed + 1 (training split) or seed + 2 (validation split).
std::uint64_t train_estimate_seed(const GptMoeConfig& config);
std::uint64_t val_estimate_seed(const GptMoeConfig& config);

// Runs from `start` to config.max_iters steps (see the top of this file).
TrainingRunResult run_training(GptMoeTrainer& trainer, const CharTokenizer& tokenizer, const TrainingData& data,
                               const TrainingState& start, const TrainingRunOptions& options);

// The effective config, a few lines of key=value per group, for the log.
std::string format_effective_config(const GptMoeConfig& config);

}  // namespace moejit
