// The training loop people can trust (frontends/training_run.h): a resumed
// run is bit-identical to an uninterrupted one on the CPU; failed saves, a
// diverging loss and stale temporaries never cost the last good checkpoint.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/training_run.h"
#include "ir/error.h"
#include "runtime/backend.h"
#include "tiny_config.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const char* test) {
  fs::path dir = fs::path(MOEJIT_BINARY_DIR) / "tests_tmp" / "frontends" / "training_run" / test;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A token stream with some structure (so the loss moves), over the tiny vocabulary.
TrainingData tiny_data(std::int64_t vocab) {
  std::mt19937 rng(5);
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 600; ++i) tokens.push_back(static_cast<std::int32_t>((i % 7 + (rng() % 3)) % vocab));
  return {std::vector<std::int32_t>(tokens.begin(), tokens.begin() + 500),
          std::vector<std::int32_t>(tokens.begin() + 500, tokens.end())};
}

CharTokenizer tiny_tokenizer() { return CharTokenizer::from_text("abcdefghijk\n"); }

// Every random and stateful feature on, so the checkpoint must carry all of it.
GptMoeConfig resumable_config() {
  GptMoeConfig c = moejit::testing::tiny_training_config();
  c.dropout = 0.1;
  c.noisy_gating = true;
  c.selection_bias = true;
  c.warmup_iters = 2;
  c.max_iters = 8;
  c.eval_interval = 3;
  c.eval_iters = 2;
  c.checkpoint_interval = 3;
  return c;
}

void require_bit_equal(const std::map<std::string, HostTensor>& a, const std::map<std::string, HostTensor>& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) {
    INFO(name);
    REQUIRE(b.count(name) == 1);
    REQUIRE(b.at(name).type() == t.type());
    CHECK(std::memcmp(b.at(name).raw(), t.raw(), t.bytes()) == 0);
  }
}

}  // namespace

TEST_CASE("N steps, then resuming to 2N, is bit-identical to 2N uninterrupted steps", "[train][resume]") {
  const GptMoeConfig config = resumable_config();  // 2N = 8
  const TrainingData data = tiny_data(config.vocab_size);
  const CharTokenizer tokenizer = tiny_tokenizer();
  auto backend = make_cpu_backend();
  const auto init = init_parameters(gpt_moe_param_specs(config), 7);

  const fs::path whole_dir = fresh_dir("whole");
  GptMoeTrainer whole(config, *backend, init);
  const TrainingRunResult whole_run =
      run_training(whole, tokenizer, data, {}, {.out_dir = whole_dir.string(), .print = false});
  REQUIRE(whole_run.end == RunEnd::finished);
  REQUIRE(whole_run.steps_done == 8);

  // N = 4 steps, stopped as SIGINT would stop it: ckpt.safetensors at step 4.
  const fs::path split_dir = fresh_dir("split");
  {
    GptMoeTrainer first(config, *backend, init);
    const TrainingRunResult stopped = run_training(first, tokenizer, data, {},
                                                   {.out_dir = split_dir.string(), .print = false, .stop_after_steps = 4});
    REQUIRE(stopped.end == RunEnd::stopped);
    REQUIRE(stopped.steps_done == 4);
    REQUIRE_FALSE(stopped.last_save_failed);
  }
  // A new process, as it were: everything comes from the file.
  const std::string ckpt_path = (split_dir / "ckpt.safetensors").string();
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(ckpt_path);
  CHECK(ckpt.note.empty());  // checksums verified
  REQUIRE_FALSE(ckpt.optimizer.empty());
  const TrainingState state = training_state_from_metadata(ckpt_path, ckpt.metadata);
  CHECK(state.steps_done == 4);
  GptMoeTrainer second(ckpt.config, *backend, ckpt.params);
  second.set_optimizer_state(ckpt.optimizer);
  const TrainingRunResult resumed =
      run_training(second, tokenizer, data, state, {.out_dir = split_dir.string(), .print = false});
  REQUIRE(resumed.end == RunEnd::finished);
  CHECK(resumed.steps_done == 8);

  require_bit_equal(whole.parameters(), second.parameters());
  require_bit_equal(whole.optimizer_state(), second.optimizer_state());
  CHECK(resumed.val_loss == whole_run.val_loss);
  CHECK(resumed.train_loss == whole_run.train_loss);
  // The selection bias (state, not trained) moved, and is part of the match.
  CHECK(whole.parameters().at("h.1.moe.router.selection_bias").get(0) != 0.0);
  // The final checkpoints hold the same tensors.
  GptMoeCheckpoint a = load_gpt_checkpoint((whole_dir / "ckpt.safetensors").string());
  GptMoeCheckpoint b = load_gpt_checkpoint(ckpt_path);
  require_bit_equal(a.params, b.params);
  require_bit_equal(a.optimizer, b.optimizer);
  CHECK(a.metadata.at("sampler_state") == b.metadata.at("sampler_state"));
  CHECK(fs::exists(whole_dir / "best.safetensors"));
}

TEST_CASE("a save that fails is reported, training goes on, and the next one succeeds", "[train][resume]") {
  GptMoeConfig config = resumable_config();
  config.eval_interval = 100;  // no best.safetensors
  const TrainingData data = tiny_data(config.vocab_size);
  auto backend = make_cpu_backend();
  const fs::path dir = fresh_dir("failed_save");
  // ckpt.safetensors is a directory: every save of it fails.
  fs::create_directories(dir / "ckpt.safetensors");
  GptMoeTrainer trainer(config, *backend, init_parameters(gpt_moe_param_specs(config), 7));
  const TrainingRunResult run =
      run_training(trainer, tiny_tokenizer(), data, {}, {.out_dir = dir.string(), .print = false});
  CHECK(run.end == RunEnd::finished);
  CHECK(run.steps_done == config.max_iters);  // trained to the end
  CHECK(run.failed_saves == 3);               // steps 3, 6 and the final one
  CHECK(run.last_save_failed);
  CHECK(fs::is_directory(dir / "ckpt.safetensors"));
  for (const auto& entry : fs::directory_iterator(dir))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("a diverging run stops with a clear message and never overwrites a good checkpoint", "[train][resume]") {
  GptMoeConfig config = resumable_config();
  config.learning_rate = 50;  // AdamW moves every weight by ~50 per step
  config.min_lr = 1;
  config.warmup_iters = 0;
  config.grad_clip = 0;
  config.max_iters = 20;
  config.checkpoint_interval = 1;
  config.eval_interval = 1;
  const TrainingData data = tiny_data(config.vocab_size);
  auto backend = make_cpu_backend();
  const fs::path dir = fresh_dir("diverge");
  // A good checkpoint and a good best from an earlier run.
  const auto good_params = init_parameters(gpt_moe_param_specs(config), 3);
  save_gpt_checkpoint((dir / "ckpt.safetensors").string(), config, tiny_tokenizer(), good_params, {{"step", "0"}});
  fs::copy_file(dir / "ckpt.safetensors", dir / "best.safetensors");
  const std::string good_bytes = read_bytes(dir / "ckpt.safetensors");

  TrainingState start;
  start.best_val_loss = -1;  // the earlier run's best: nothing here beats it
  GptMoeTrainer trainer(config, *backend, good_params);
  const TrainingRunResult run =
      run_training(trainer, tiny_tokenizer(), data, start, {.out_dir = dir.string(), .print = false});
  REQUIRE(run.end == RunEnd::diverged);
  CHECK(run.steps_done < config.max_iters);
  CHECK_THAT(run.message, Catch::Contains("training diverged at step") && Catch::Contains("learning_rate"));
  // Checkpoints of the steps before it diverged may be saved (their losses
  // were finite and under the limit); the state after the diverging step
  // (step index run.steps_done) never is: the file loads (finite weights)
  // and is from at most that boundary.
  GptMoeCheckpoint last = load_gpt_checkpoint((dir / "ckpt.safetensors").string());
  const TrainingState saved = training_state_from_metadata((dir / "ckpt.safetensors").string(), last.metadata);
  CHECK(saved.steps_done <= run.steps_done);
  CHECK(read_bytes(dir / "best.safetensors") == good_bytes);

  // With checkpoint_interval 0 nothing is saved before the end: the good file stays byte for byte.
  fs::copy_file(dir / "best.safetensors", dir / "ckpt.safetensors", fs::copy_options::overwrite_existing);
  config.checkpoint_interval = 0;
  GptMoeTrainer again(config, *backend, good_params);
  const TrainingRunResult run2 =
      run_training(again, tiny_tokenizer(), data, start, {.out_dir = dir.string(), .print = false});
  REQUIRE(run2.end == RunEnd::diverged);
  CHECK(read_bytes(dir / "ckpt.safetensors") == good_bytes);
}

TEST_CASE("prepare_out_dir removes temporaries of dead processes only, and proves the directory writable", "[train][resume]") {
  const fs::path dir = fresh_dir("stale");
  // A pid above pid_max is never alive; our own pid is.
  const fs::path stale = dir / "ckpt.safetensors.tmp.99999999.1a2b";
  const fs::path live = dir / fmt::format("ckpt.safetensors.tmp.{}.3c4d", static_cast<long>(::getpid()));
  const fs::path unrelated = dir / "notes.tmp.txt";
  for (const fs::path& p : {stale, live, unrelated}) std::ofstream(p) << "x";
  const std::vector<std::string> removed = prepare_out_dir(dir.string());
  REQUIRE(removed.size() == 1);
  CHECK_THAT(removed[0], Catch::Contains("99999999"));
  CHECK_FALSE(fs::exists(stale));
  CHECK(fs::exists(live));
  CHECK(fs::exists(unrelated));
  for (const auto& entry : fs::directory_iterator(dir))
    CHECK(entry.path().filename().string().find("probe") == std::string::npos);
  // A file where the directory should be.
  std::ofstream(dir / "a_file") << "x";
  CHECK_THROWS_WITH(prepare_out_dir((dir / "a_file").string()), Catch::Contains("expected a directory"));
}

TEST_CASE("training state round-trips through checkpoint metadata; bad entries name the file", "[train][resume]") {
  TrainingState state;
  state.steps_done = 42;
  state.best_val_loss = 0.1 + 0.2;  // not exactly representable in short decimal
  state.first_loss = 3.25;
  state.sampler_state = "1 2 3";
  const TrainingState back = training_state_from_metadata("x.safetensors", training_state_metadata(state));
  CHECK(back.steps_done == 42);
  CHECK(back.best_val_loss == state.best_val_loss);
  CHECK(back.first_loss == 3.25);
  CHECK(back.sampler_state == "1 2 3");
  CHECK(std::isinf(training_state_from_metadata("x", training_state_metadata(TrainingState{})).best_val_loss));

  auto meta = training_state_metadata(state);
  meta["step"] = "4x";
  CHECK_THROWS_WITH(training_state_from_metadata("x.safetensors", meta),
                    Catch::Contains("x.safetensors: metadata 'step': expected an integer >= 0, found '4x'"));
  meta.erase("step");
  CHECK_THROWS_WITH(training_state_from_metadata("x.safetensors", meta), Catch::Contains("'step'"));
  BatchSampler sampler(std::vector<std::int32_t>(100, 1), 2, 4, 1);
  CHECK_THROWS_WITH(sampler.set_state("not a state"), Catch::Contains("batch sampler state"));
}
