// Per-step randomness of GPT-MoE training (dropout, noisy gating): the
// training graph's mj.dropout and mj.random_normal ops all add the graph
// input "rng_offset" at run time and take disjoint Philox ranges, so the
// trainer compiles the training graph ONCE (a counting backend checks it),
// every step gets fresh masks and noise (losses differ between iterations,
// repeat exactly for the same iteration), and the loss still falls.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tiny_config.h"
#include "frontends/gpt_moe.h"
#include "frontends/trainer.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

// A backend that counts how often each graph (by name) is compiled, then
// hands the graph to the CPU backend.
class CountingBackend final : public Backend {
 public:
  std::string name() const override { return "counting-cpu"; }
  std::unique_ptr<Executable> compile(const Graph& graph) override {
    ++compiles[graph.name()];
    return cpu_->compile(graph);
  }
  std::map<std::string, int> compiles;

 private:
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

GptMoeConfig small_config() { return testing::tiny_training_config(); }

std::vector<std::int32_t> toy_tokens() {
  std::vector<std::int32_t> tokens(400);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int32_t>((i * i + i / 3) % 12);
  return tokens;
}

}  // namespace

TEST_CASE("a training graph's random ops read rng_offset and take disjoint Philox ranges", "[train][random]") {
  GptMoeConfig c = small_config();
  c.dropout = 0.1;
  c.noisy_gating = true;
  c.moe_every = 1;  // both layers MoE: two noise sites
  Graph graph("train_forward");
  GptMoeGraph model = build_gpt_moe(graph, c, {.batch = c.batch_size, .training = true});
  const ValueId rng_offset = graph.find_arg("rng_offset");
  REQUIRE(rng_offset != kNoValue);
  CHECK(graph.type(rng_offset) == TensorType{DType::i64, {}});

  const std::int64_t rows = c.batch_size * c.block_size;
  // Independent count: dropout after the embeddings and after attention and
  // the feed-forward of every block, each [rows, n_embd]; noise [rows, E] per MoE layer.
  const std::int64_t dropout_sites = 1 + 2 * c.n_layer, noise_sites = c.n_layer;
  std::int64_t dropouts = 0, normals = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;  // [offset, offset + numel)
  std::int64_t seed = -1;
  for (const Op& op : graph.ops()) {
    if (op.kind != OpKind::Dropout && op.kind != OpKind::RandomNormal) continue;
    (op.kind == OpKind::Dropout ? dropouts : normals) += 1;
    REQUIRE(!op.operands.empty());
    CHECK(op.operands.back() == rng_offset);  // every random op takes the run-time step offset
    const std::int64_t offset = op.attrs.get_int("offset");
    ranges.emplace_back(offset, offset + graph.type(op.results[0]).numel());
    if (seed < 0) seed = op.attrs.get_int("seed");
    CHECK(op.attrs.get_int("seed") == seed);  // one stream
  }
  CHECK(dropouts == dropout_sites);
  CHECK(normals == noise_sites);
  CHECK(model.rng_positions_per_step == dropout_sites * rows * c.n_embd + noise_sites * rows * c.num_experts);
  // Disjoint, inside [0, positions per step): step s shifted by s · per_step
  // never meets another op or another step.
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    CHECK(ranges[i].first >= 0);
    CHECK(ranges[i].second <= model.rng_positions_per_step);
    if (i > 0) CHECK(ranges[i - 1].second <= ranges[i].first);
  }

  // A forward-only (evaluation) graph has no random op and no rng_offset input.
  Graph eval("eval");
  GptMoeGraph eval_model = build_gpt_moe(eval, c, {.batch = c.batch_size, .training = false});
  CHECK(eval.find_arg("rng_offset") == kNoValue);
  CHECK(eval_model.rng_positions_per_step == 0);
  for (const Op& op : eval.ops()) CHECK((op.kind != OpKind::Dropout && op.kind != OpKind::RandomNormal));
}

TEST_CASE("training with dropout or noisy gating compiles the training graph once and lowers the loss", "[train][random]") {
  struct Variant {
    const char* name;
    double dropout;
    bool noisy_gating;
  };
  const std::vector<std::int32_t> tokens = toy_tokens();
  for (const Variant& v : {Variant{"dropout 0.1", 0.1, false}, Variant{"noisy gating + dropout 0.1", 0.1, true}}) {
    INFO(v.name);
    GptMoeConfig c = small_config();
    c.dropout = v.dropout;
    c.noisy_gating = v.noisy_gating;
    CountingBackend backend;
    GptMoeTrainer trainer(c, backend, init_parameters(gpt_moe_param_specs(c), 3));
    BatchSampler batches(tokens, c.batch_size, c.block_size, 1);
    const Batch fixed = batches.next();
    double first = 0, last = 0;
    for (std::int64_t iter = 0; iter < c.max_iters; ++iter) {
      StepStats s = trainer.step(fixed, iter);  // one batch over and over: the loss must fall
      REQUIRE(std::isfinite(s.loss));
      if (iter == 0) first = s.lm_loss;
      last = s.lm_loss;
    }
    CHECK(last < first - 0.3);
    CHECK(backend.compiles["gpt_moe_train"] == 1);  // built and compiled once for all steps
    CHECK(backend.compiles["gpt_moe_eval"] == 1);
    CHECK(backend.compiles.size() == 2);
  }
}

TEST_CASE("each training step draws fresh dropout masks and gating noise, reproducibly from the iteration", "[train][random]") {
  const std::vector<std::int32_t> tokens = toy_tokens();
  struct Variant {
    const char* name;
    double dropout;
    bool noisy_gating;
  };
  for (const Variant& v : {Variant{"dropout only", 0.2, false}, Variant{"noisy gating only", 0.0, true}}) {
    INFO(v.name);
    GptMoeConfig c = small_config();
    c.dropout = v.dropout;
    c.noisy_gating = v.noisy_gating;
    const auto params = init_parameters(gpt_moe_param_specs(c), 5);
    BatchSampler batches(tokens, c.batch_size, c.block_size, 2);
    const Batch batch = batches.next();
    // The loss of a step is computed before its update, so on fresh trainers
    // it depends on the iteration only through the random numbers.
    auto first_loss_at = [&](std::int64_t iter) {
      auto backend = make_cpu_backend();
      GptMoeTrainer trainer(c, *backend, params);
      return trainer.step(batch, iter).loss;
    };
    const double at0 = first_loss_at(0), at0_again = first_loss_at(0), at1 = first_loss_at(1), at7 = first_loss_at(7);
    CHECK(at0 == at0_again);  // same iteration: the same masks and noise
    CHECK(at0 != at1);        // another iteration: other masks and noise
    CHECK(at1 != at7);
    CHECK(at0 != at7);
  }
}
