// The MoE fusions on the shipped model: the GPT-MoE training graph the
// trainer builds (default config), after the CUDA backend's pipeline, holds
// moe.route, moe.gather_matmul and moe.matmul_combine, its backward comes
// from the fused ops' gradient rules, and it does no more expert-matmul work
// than the unfused graph while computing the same loss and gradients.
#include <catch2/catch.hpp>

#include "frontends/tiny_config.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/trainer.h"
#include "ir/verifier.h"
#include "moe_test_util.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/tensor_compare.h"

using namespace moetest;

namespace {

int count_kind(const Graph& g, OpKind kind) {
  return static_cast<int>(std::count_if(g.ops().begin(), g.ops().end(), [&](const Op& op) { return op.kind == kind; }));
}

// The op defining `value` (nullptr for arguments).
const Op* producer_of(const Graph& g, ValueId value) {
  for (const Op& op : g.ops())
    for (ValueId r : op.results)
      if (r == value) return &op;
  return nullptr;
}

// Multiply-adds of the expert matmuls (forward and backward), from the shapes:
// routed rows N times the two widths of the expert weight [E, a, b].
std::int64_t expert_matmul_macs(const Graph& g) {
  std::int64_t macs = 0;
  for (const Op& op : g.ops()) {
    auto per_expert = [&](int w) { return g.type(op.operands[static_cast<std::size_t>(w)]).numel() / g.type(op.operands[static_cast<std::size_t>(w)]).dim(0); };
    switch (op.kind) {
      case OpKind::GroupedMatmul:  // xs [N, a], w [E, a, b] (or [E, b, a])
      case OpKind::MatmulCombine:  // hs [N, F], w [E, F, D]
        macs += g.type(op.operands[0]).dim(0) * per_expert(1);
        break;
      case OpKind::GatherMatmul:  // slots [N], w [E, D, F]
        macs += g.type(op.operands[2]).dim(0) * per_expert(1);
        break;
      case OpKind::GroupedMatmulWgrad:  // xs [N, D], dys [N, F]
        macs += g.type(op.operands[0]).numel() * g.type(op.operands[1]).dim(1);
        break;
      default: break;
    }
  }
  return macs;
}

GptMoeConfig tiny_config() { return testing::tiny_graph_config(); }

// Forward graph of `config` with the loss, then (optionally) the MoE fusions, then the backward.
Graph forward_and_backward(const GptMoeConfig& config, bool fused) {
  Graph graph("gpt_moe_grads");
  GptMoeGraph model = build_gpt_moe(graph, config, {.batch = config.batch_size, .training = true, .with_loss = true});
  if (fused) run_pipeline(graph, "moe-fusions");
  std::vector<std::string> wrt;
  for (const ParamSpec& s : model.params)
    if (s.role == ArgRole::param) wrt.push_back(s.name);
  append_backward(graph, {.loss = "loss", .wrt = wrt});
  return graph;
}

}  // namespace

TEST_CASE("after the CUDA pipeline the example's training graph (default config) runs the fused MoE ops, forward and backward",
          "[moe][passes][pipeline]") {
  GptMoeConfig config;     // the example's default config
  config.vocab_size = 65;  // what the tokenizer fills in
  Graph graph = build_training_graph(config).graph;
  run_pipeline(graph, kCudaPipeline);
  verify_or_throw(graph);
  const int layers = static_cast<int>(config.num_moe_layers());
  REQUIRE(layers == 2);
  CHECK(count_kind(graph, OpKind::Route) == layers);
  CHECK(count_kind(graph, OpKind::GatherMatmul) == layers);
  CHECK(count_kind(graph, OpKind::MatmulCombine) == layers);
  // Nothing of the unfused forward is left.
  CHECK(count_kind(graph, OpKind::Gate) == 0);
  CHECK(count_kind(graph, OpKind::Dispatch) == 0);
  CHECK(count_kind(graph, OpKind::Combine) == 0);
  // The rows are gathered once per layer, by the route (its xs, #7), which
  // the weight gradient of moe.gather_matmul reads: no second permute.
  CHECK(count_kind(graph, OpKind::Permute) == 0);
  for (const Op& op : graph.ops()) {
    if (op.kind == OpKind::GroupedMatmulWgrad && producer_of(graph, op.operands[0])->kind == OpKind::Route)
      CHECK(producer_of(graph, op.operands[0])->results[7] == op.operands[0]);
    // The only grouped matmuls are the backward's (dy · wᵀ: rule_GatherMatmul and rule_MatmulCombine).
    if (op.kind == OpKind::GroupedMatmul) CHECK(op.attrs.get_bool("transpose_w"));
    // combine_grad reads the expert outputs the fused forward saved (result #1), not a recomputed matmul.
    if (op.kind == OpKind::CombineGrad) {
      const Op* ys = producer_of(graph, op.operands[0]);
      REQUIRE(ys != nullptr);
      CHECK(ys->kind == OpKind::MatmulCombine);
      CHECK(ys->results[1] == op.operands[0]);
    }
    // The router's backward reads the logits and experts of moe.route (rule_Route).
    if (op.kind == OpKind::GateGrad) {
      const Op* route = producer_of(graph, op.operands[0]);
      REQUIRE(route != nullptr);
      CHECK(route->kind == OpKind::Route);
    }
  }
  CHECK(count_kind(graph, OpKind::CombineGrad) == layers);
  CHECK(count_kind(graph, OpKind::GateGrad) == layers);
}

TEST_CASE("the fused training graph computes the unfused loss and gradients with no more expert-matmul work",
          "[moe][passes][pipeline]") {
  GptMoeConfig config = tiny_config();
  Graph unfused = forward_and_backward(config, false);
  Graph fused = forward_and_backward(config, true);
  CHECK(count_kind(fused, OpKind::MatmulCombine) == 2);
  CHECK(count_kind(fused, OpKind::GatherMatmul) == 2);
  // The same multiply-adds: the fused backward reads the saved ys instead of recomputing them.
  CHECK(expert_matmul_macs(fused) == expert_matmul_macs(unfused));
  CHECK(expert_matmul_macs(fused) > 0);

  Values args;
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 3)) args.emplace(name, value);
  HostTensor idx({DType::i32, {config.batch_size, config.block_size}}), targets = idx;
  for (std::int64_t i = 0; i < idx.numel(); ++i) {
    idx.set(i, static_cast<double>((i * 7 + 3) % config.vocab_size));
    targets.set(i, static_cast<double>((i * 5 + 1) % config.vocab_size));
  }
  args.emplace("idx", idx);
  args.emplace("targets", targets);
  Values want = run_cpu(unfused, args), got = run_cpu(fused, args);
  int grads = 0;
  for (const auto& [name, value] : want) {
    INFO("output " << name);
    CHECK(normalized_error(got.at(name), value) < 1e-5);
    grads += name.rfind("grad.", 0) == 0;
  }
  CHECK(grads > 10);
}
