// Resume on the GPU (issue 13): N steps on the CUDA backend, stopped and
// saved, then resumed from the file to 2N, against 2N uninterrupted steps.
// Both runs are on the GPU, so they should agree to rounding; the test
// asserts a normalized error below 1e-5 per tensor (and reports the largest),
// and that the resumed run really continued (step 8 in the last file).
// Without a GPU it prints "SKIPPED: no CUDA device" (ctest: skipped).
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "frontends/gpt_checkpoint.h"
#include "frontends/training_run.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

double normalized_error(const HostTensor& a, const HostTensor& b) {
  double diff = 0, norm = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    diff += (a.get(i) - b.get(i)) * (a.get(i) - b.get(i));
    norm += b.get(i) * b.get(i);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

}  // namespace

TEST_CASE("GPU: N steps, then resuming to 2N, matches 2N uninterrupted steps", "[gpu][resume]") {
  std::string why;
  if (!cuda_available(&why)) {
    WARN("SKIPPED: no CUDA device (" << why << ")");
    return;
  }
  GptMoeConfig config;
  config.vocab_size = 12;
  config.n_layer = 2;
  config.n_embd = 32;
  config.n_head = 2;
  config.block_size = 16;
  config.batch_size = 4;
  config.d_expert = 32;
  config.dropout = 0.1;
  config.noisy_gating = true;
  config.selection_bias = true;
  config.warmup_iters = 2;
  config.max_iters = 8;
  config.eval_interval = 4;
  config.eval_iters = 2;
  config.checkpoint_interval = 4;
  std::mt19937 rng(3);
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 2000; ++i) tokens.push_back(static_cast<std::int32_t>((i % 5 + rng() % 3) % 12));
  const TrainingData data{{tokens.begin(), tokens.begin() + 1800}, {tokens.begin() + 1800, tokens.end()}};
  const CharTokenizer tokenizer = CharTokenizer::from_text("abcdefghijk\n");
  auto backend = make_cuda_backend();
  const auto init = init_parameters(gpt_moe_param_specs(config), 11);
  const fs::path root = fs::temp_directory_path() / fmt::format("moejit-gpu-resume-{}", ::getpid());

  GptMoeTrainer whole(config, *backend, init);
  REQUIRE(run_training(whole, tokenizer, data, {}, {.out_dir = (root / "whole").string(), .print = false}).end ==
          RunEnd::finished);
  {
    GptMoeTrainer first(config, *backend, init);
    REQUIRE(run_training(first, tokenizer, data, {},
                         {.out_dir = (root / "split").string(), .print = false, .stop_after_steps = 4})
                .end == RunEnd::stopped);
  }
  const std::string path = (root / "split" / "ckpt.safetensors").string();
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(path);
  GptMoeTrainer second(ckpt.config, *backend, ckpt.params);
  second.set_optimizer_state(ckpt.optimizer);
  REQUIRE(run_training(second, tokenizer, data, training_state_from_metadata(path, ckpt.metadata),
                       {.out_dir = (root / "split").string(), .print = false})
              .end == RunEnd::finished);
  CHECK(load_gpt_checkpoint(path).metadata.at("step") == "8");

  double worst = 0;
  auto compare = [&](const std::map<std::string, HostTensor>& a, const std::map<std::string, HostTensor>& b) {
    REQUIRE(a.size() == b.size());
    for (const auto& [name, t] : a) {
      INFO(name);
      const double error = normalized_error(b.at(name), t);
      worst = std::max(worst, error);
      CHECK(error < 1e-5);
    }
  };
  compare(whole.parameters(), second.parameters());
  compare(whole.optimizer_state(), second.optimizer_state());
  WARN("largest normalized error, resumed vs uninterrupted on the GPU: " << worst);
  fs::remove_all(root);
}
