// The GPT-MoE model itself (two layers, attention, nn::moe_block) sharded over
// 2 and 4 in-process ranks on the CPU: every rank's loss and every gradient
// equal the unsharded model's means over the ranks' batches (an expert
// weight: the rank's rows of it). The model of shard_experts_test.cpp is one
// layer built by hand; this one is what `gpt_moe train` builds.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <random>

#include "examples/shard_check/shard_model.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/tiny_config.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "scale/in_process_world.h"

using namespace moejit;
using namespace moejit::scale_test;

namespace {

HostTensor random_ids(std::int64_t batch, std::int64_t block, std::int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int> id(0, static_cast<int>(vocab) - 1);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * block));
  for (auto& v : ids) v = id(rng);
  return HostTensor::from_ints({batch, block}, ids);
}

void check_gpt_sharded(int world_size, int bucket_mib = 25) {
  GptMoeConfig config = testing::tiny_graph_config();
  config.num_experts = 4;
  Graph model("gpt");
  const GptMoeGraph built = build_gpt_moe(model, config, {.batch = config.batch_size, .with_loss = true});
  const std::map<std::string, HostTensor> params = init_parameters(built.params, 11);
  std::mt19937 rng(5 + static_cast<unsigned>(world_size));
  std::vector<std::pair<HostTensor, HostTensor>> batches;
  for (int r = 0; r < world_size; ++r)
    batches.emplace_back(random_ids(config.batch_size, config.block_size, config.vocab_size, rng),
                         random_ids(config.batch_size, config.block_size, config.vocab_size, rng));

  // The unsharded reference: means over the batches.
  Graph reference_graph = model;
  run_pipeline(reference_graph, "autodiff{loss=loss}");
  auto reference = make_cpu_backend()->compile(reference_graph);
  for (const auto& [name, value] : params) reference->set(name, value);
  double mean_loss = 0.0;
  std::map<std::string, std::vector<double>> mean_grads;
  for (const auto& [idx, targets] : batches) {
    reference->set("idx", idx);
    reference->set("targets", targets);
    reference->run();
    mean_loss += reference->get("loss").get(0) / world_size;
    for (const ParamSpec& spec : built.params) {
      if (spec.role != ArgRole::param) continue;
      HostTensor g = reference->get("grad." + spec.name);
      auto& sum = mean_grads[spec.name];
      sum.resize(static_cast<std::size_t>(g.numel()), 0.0);
      for (std::int64_t i = 0; i < g.numel(); ++i) sum[static_cast<std::size_t>(i)] += g.get(i) / world_size;
    }
  }

  std::vector<double> losses(static_cast<std::size_t>(world_size));
  std::vector<std::map<std::string, HostTensor>> grads(static_cast<std::size_t>(world_size));
  std::vector<int> sharded_weights(static_cast<std::size_t>(world_size), 0);
  run_ranks(world_size, [&](int r) {
    Graph sharded = model;
    run_pipeline(sharded, shard_model::sharded_pipeline(r, world_size, bucket_mib));
    auto exe = make_cpu_backend()->compile(sharded);
    for (const auto& [name, value] : params) {
      const Shape& local = sharded.type(sharded.find_arg(name)).shape;
      if (local == value.shape()) {
        exe->set(name, value);
      } else {  // an expert weight: rank r's rows
        exe->set(name, shard_model::rows(value, r * local[0], local[0]));
        ++sharded_weights[static_cast<std::size_t>(r)];
      }
    }
    exe->set("idx", batches[static_cast<std::size_t>(r)].first);
    exe->set("targets", batches[static_cast<std::size_t>(r)].second);
    exe->run();
    losses[static_cast<std::size_t>(r)] = exe->get("loss").get(0);
    for (const ParamSpec& spec : built.params)
      if (spec.role == ArgRole::param) grads[static_cast<std::size_t>(r)].emplace(spec.name, exe->get("grad." + spec.name));
  });

  for (int r = 0; r < world_size; ++r) {
    INFO("rank " << r << " of " << world_size);
    CHECK(sharded_weights[static_cast<std::size_t>(r)] == 2 * config.n_layer);  // w_up, w_down per MoE layer
    CHECK(losses[static_cast<std::size_t>(r)] == Approx(mean_loss).epsilon(1e-5));
    for (const ParamSpec& spec : built.params) {
      if (spec.role != ArgRole::param) continue;
      INFO("grad." << spec.name);
      HostTensor want = HostTensor::from_doubles(spec.type, mean_grads[spec.name]);
      const HostTensor& got = grads[static_cast<std::size_t>(r)].at(spec.name);
      if (got.shape() != want.shape()) want = shard_model::rows(want, r * got.shape()[0], got.shape()[0]);
      const double worst = shard_model::worst_relative_difference(got, want, 1e-4);
      INFO("worst relative difference " << worst);
      CHECK(worst < 1e-3);
    }
  }
}

}  // namespace

TEST_CASE("shard-experts on the GPT-MoE model: 2 and 4 CPU ranks equal the unsharded model", "[scale][gpt]") {
  SECTION("2 ranks") { check_gpt_sharded(2); }
  SECTION("4 ranks") { check_gpt_sharded(4); }
  SECTION("2 ranks, one all_reduce per gradient (bucket_mib 0)") { check_gpt_sharded(2, 0); }
}
