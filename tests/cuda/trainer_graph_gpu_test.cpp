// The trainer's whole step as one CUDA graph (frontends/trainer.h): on the
// GPU a GptMoeTrainer captures its step at the first step and replays it
// afterwards; over several steps with new batches, a changing learning rate,
// fresh dropout offsets and the selection-bias update between steps, the
// replayed trainer must match an eager one (TrainerOptions::cuda_graph off)
// bit for bit: every loss and grad norm, every parameter, state tensor and
// AdamW moment. Without a GPU: "SKIPPED: no CUDA device".
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "cuda/cuda_test_util.h"
#include "frontends/trainer.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.type() == b.type() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("gpu: the trainer's step replayed as one CUDA graph equals the eager step bit for bit", "[cuda][gpu][trainer]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  GptMoeConfig config = cuda_test::small_gpt_config();
  config.dropout = 0.1;          // rng_offset changes every step
  config.selection_bias = true;  // the host updates a state tensor between steps
  config.warmup_iters = 2;       // lr changes every step
  auto cuda = make_cuda_backend();
  const auto init = init_parameters(gpt_moe_param_specs(config), 5);
  GptMoeTrainer replayed(config, *cuda, init);
  GptMoeTrainer eager(config, *cuda, init, {.cuda_graph = false});
  REQUIRE(replayed.replays_cuda_graph());
  REQUIRE_FALSE(eager.replays_cuda_graph());

  std::vector<std::int32_t> tokens(4096);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<std::int32_t>((i * 7 + i / 13) % static_cast<std::size_t>(config.vocab_size));
  BatchSampler batches(tokens, config.batch_size, config.block_size, 3);
  double first_loss = 0.0, last_loss = 0.0;
  for (std::int64_t iter = 0; iter < 4; ++iter) {
    const Batch batch = batches.next();
    const StepStats a = replayed.step(batch, iter);
    const StepStats b = eager.step(batch, iter);
    INFO(fmt::format("step {}: loss replayed {} eager {}, grad norm replayed {} eager {}", iter, a.loss, b.loss,
                     a.grad_norm, b.grad_norm));
    CHECK(replayed.captured());
    CHECK(std::isfinite(a.loss));
    CHECK(same_bits(a.loss, b.loss));
    CHECK(same_bits(a.lm_loss, b.lm_loss));
    CHECK(same_bits(a.aux_loss, b.aux_loss));
    CHECK(same_bits(a.grad_norm, b.grad_norm));
    if (iter == 0) first_loss = a.loss;
    last_loss = a.loss;
  }
  CHECK_FALSE(eager.captured());
  // The steps did train: the replay is not stuck on step 0's inputs.
  CHECK(last_loss != first_loss);
  const auto pa = replayed.parameters(), pb = eager.parameters();
  int moved = 0;
  for (const auto& [name, value] : pa) {
    INFO(name);
    CHECK(same_bits(value, pb.at(name)));
    moved += !same_bits(value, init.at(name));
  }
  CHECK(moved > 0);
  const auto ma = replayed.optimizer_state(), mb = eager.optimizer_state();
  REQUIRE(ma.size() == mb.size());
  for (const auto& [name, value] : ma) {
    INFO(name);
    CHECK(same_bits(value, mb.at(name)));
  }
}

TEST_CASE("the trainer runs eagerly on the CPU whatever cuda_graph says", "[trainer]") {
  GptMoeConfig config = cuda_test::small_gpt_config();
  auto cpu = make_cpu_backend();
  GptMoeTrainer trainer(config, *cpu, init_parameters(gpt_moe_param_specs(config), 5), {.cuda_graph = true});
  CHECK_FALSE(trainer.replays_cuda_graph());
  std::vector<std::int32_t> tokens(512);
  std::iota(tokens.begin(), tokens.end(), 0);
  for (auto& t : tokens) t %= static_cast<std::int32_t>(config.vocab_size);
  BatchSampler batches(tokens, config.batch_size, config.block_size, 3);
  const StepStats stats = trainer.step(batches.next(), 0);
  CHECK(std::isfinite(stats.loss));
  CHECK_FALSE(trainer.captured());
}
