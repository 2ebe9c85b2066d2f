// mixed-precision: which ops it puts in bf16 and which it keeps in f32 on the
// GPT-MoE model, that autodiff then gives f32 weight gradients, that the bf16
// step stays close to the f32 one, and that the CPU backend rounds each bf16
// result exactly once, to nearest even, after accumulating in f32.
#include <catch2/catch.hpp>

#include <bit>
#include <cstring>

#include "frontends/tiny_config.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "ir/error.h"
#include "ir/verifier.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/tensor_compare.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;

GptMoeConfig tiny_config() { return testing::tiny_graph_config(); }

Values run_cpu(const Graph& graph, const Values& args) {
  auto backend = make_cpu_backend();
  auto exe = backend->compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  Values out;
  for (const auto& o : graph.outputs()) out.emplace(o.name, exe->get(o.name));
  return out;
}

Values model_args(const GptMoeConfig& config) {
  Values args;
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 4)) args.emplace(name, value);
  HostTensor idx({DType::i32, {config.batch_size, config.block_size}}), targets = idx;
  for (std::int64_t i = 0; i < idx.numel(); ++i) {
    idx.set(i, static_cast<double>((i * 7 + 2) % config.vocab_size));
    targets.set(i, static_cast<double>((i * 3 + 1) % config.vocab_size));
  }
  args.emplace("idx", idx);
  args.emplace("targets", targets);
  return args;
}

// Forward graph, the forward pipeline for `precision`, then the backward of every param.
Graph gradient_graph(const GptMoeConfig& config, DType precision) {
  Graph graph("gpt_moe_grads");
  GptMoeGraph model = build_gpt_moe(graph, config, {.batch = config.batch_size, .training = true, .with_loss = true});
  run_pipeline(graph, forward_pipeline(precision));
  std::vector<std::string> wrt;
  for (const ParamSpec& s : model.params)
    if (s.role == ArgRole::param) wrt.push_back(s.name);
  append_backward(graph, {.loss = "loss", .wrt = wrt});
  return graph;
}

DType first_float_operand_dtype(const Graph& g, const Op& op) {
  for (ValueId v : op.operands)
    if (is_float(g.type(v).dtype)) return g.type(v).dtype;
  return DType::i1;
}

// Round to nearest even, written from the definition (not the library's float_to_bf16).
double round_to_bf16(double exact_in_f32) {
  float f = static_cast<float>(exact_in_f32);
  std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  std::uint32_t low = bits & 0xFFFFu, keep = bits & 0xFFFF0000u;
  bool odd = (keep >> 16) & 1u;
  if (low > 0x8000u || (low == 0x8000u && odd)) keep += 0x10000u;
  return static_cast<double>(std::bit_cast<float>(keep));
}

}  // namespace

TEST_CASE("mixed-precision puts the matmuls in bf16 and keeps norms, router, losses and weights in f32", "[passes][mixed_precision]") {
  GptMoeConfig config = tiny_config();
  Graph graph("gpt_moe");
  build_gpt_moe(graph, config, {.batch = config.batch_size, .training = true, .with_loss = true});
  Graph f32_graph = graph;
  PassManager manager;
  manager.add_pipeline(forward_pipeline(DType::bf16));
  manager.run(graph);
  verify_or_throw(graph);

  int bf16_matmuls = 0;
  for (const Op& op : graph.ops()) {
    INFO(op_name(op.kind));
    switch (op.kind) {
      case OpKind::GatherMatmul:
      case OpKind::MatmulCombine:
      case OpKind::Attention:
      case OpKind::AttentionQkv:  // the trainer's pipeline packs the attention (fuse-attention-qkv)
        for (ValueId v : op.operands)
          if (is_float(graph.type(v).dtype)) CHECK(graph.type(v).dtype == DType::bf16);
        for (std::size_t r = 0; r < op.results.size(); ++r) {
          // Attention's second result, lse, keeps f32 softmax statistics.
          const bool lse = (op.kind == OpKind::Attention || op.kind == OpKind::AttentionQkv) && r == 1;
          const DType want = lse ? DType::f32 : DType::bf16;
          CHECK(graph.type(op.results[r]).dtype == want);
        }
        ++bf16_matmuls;
        break;
      case OpKind::Matmul:  // qkv, attention output, lm head: the router is inside moe.route
        CHECK(first_float_operand_dtype(graph, op) == DType::bf16);
        ++bf16_matmuls;
        break;
      case OpKind::Route:
      case OpKind::LayerNorm:
      case OpKind::CrossEntropy:
      case OpKind::Softmax:
      case OpKind::Embedding:
      case OpKind::ZLoss:
      case OpKind::LoadBalanceLoss:
        CHECK(first_float_operand_dtype(graph, op) == DType::f32);
        for (ValueId r : op.results)
          if (is_float(graph.type(r).dtype)) CHECK(graph.type(r).dtype == DType::f32);
        break;
      default: break;
    }
  }
  // Per layer: qkv, proj, attention, gather_matmul, matmul_combine; plus the lm head.
  CHECK(bf16_matmuls == 5 * static_cast<int>(config.n_layer) + 1);
  // The expert hidden activation (gelu) stays bf16 between the two expert matmuls.
  for (const Op& op : graph.ops())
    if (op.kind == OpKind::Gelu) CHECK(graph.type(op.results[0]).dtype == DType::bf16);
  // Arguments (master weights) and outputs keep their types.
  REQUIRE(graph.args().size() == f32_graph.args().size());
  for (std::size_t i = 0; i < graph.args().size(); ++i)
    CHECK(graph.type(graph.args()[i].value) == f32_graph.type(f32_graph.args()[i].value));
  REQUIRE(graph.outputs().size() == f32_graph.outputs().size());
  for (std::size_t i = 0; i < graph.outputs().size(); ++i)
    CHECK(graph.type(graph.outputs()[i].value) == f32_graph.type(f32_graph.outputs()[i].value));
  std::int64_t in_bf16 = 0;
  for (const auto& stats : manager.statistics())
    if (stats.pass == "mixed-precision")
      for (const auto& [name, n] : stats.counters)
        if (name == "ops-in-bf16") in_bf16 = n;
  CHECK(in_bf16 > bf16_matmuls);  // the matmuls and the layout ops and activations between them
}

TEST_CASE("the bf16 training graph gives f32 gradients close to the f32 graph's", "[passes][mixed_precision]") {
  GptMoeConfig config = tiny_config();
  Graph f32_graph = gradient_graph(config, DType::f32);
  Graph bf16_graph = gradient_graph(config, DType::bf16);
  Values args = model_args(config);
  Values want = run_cpu(f32_graph, args), got = run_cpu(bf16_graph, args);
  CHECK(std::abs(got.at("loss").get(0) - want.at("loss").get(0)) < 0.02);
  int grads = 0;
  double worst = 0;
  for (const auto& [name, value] : want) {
    if (name.rfind("grad.", 0) != 0) continue;
    INFO("gradient " << name);
    CHECK(got.at(name).dtype() == DType::f32);
    double err = normalized_error(got.at(name), value);
    worst = std::max(worst, err);
    CHECK(err < 0.1);
    ++grads;
  }
  CHECK(grads > 10);
  CHECK(worst > 0.0);  // bf16 really changed the numbers
}

TEST_CASE("the CPU rounds a bf16 matmul's f32 accumulation once, to nearest even", "[passes][mixed_precision][cpu]") {
  // Operands exactly representable in bf16 whose products and sums are exact
  // in f32 (sixteenths times integers), so the only rounding is the final one.
  const std::int64_t m = 6, k = 37, n = 9;
  Graph graph("bf16_matmul");
  Builder b(graph);
  Tensor x = b.input("x", {m, k}, DType::bf16), w = b.input("w", {k, n}, DType::bf16);
  Tensor e = b.input("e", {3, k, n}, DType::bf16), offsets = b.input("offsets", {4}, DType::i32);
  b.output(b.matmul(x, w), "y");
  b.output(b.moe_grouped_matmul(x, e, offsets), "ys");
  HostTensor xv(graph.type(x.id)), wv(graph.type(w.id)), ev(graph.type(e.id));
  for (std::int64_t i = 0; i < xv.numel(); ++i) xv.set(i, static_cast<double>((i * 7) % 31 - 15) / 16.0);
  for (std::int64_t i = 0; i < wv.numel(); ++i) wv.set(i, static_cast<double>((i * 13) % 201 - 100));
  for (std::int64_t i = 0; i < ev.numel(); ++i) ev.set(i, static_cast<double>((i * 11) % 255 - 127));
  const std::vector<std::int32_t> offset_values = {0, 2, 2, 6};  // expert 0: rows 0-1, expert 2: rows 2-5
  Values out = run_cpu(graph, {{"x", xv}, {"w", wv}, {"e", ev}, {"offsets", HostTensor::from_ints({4}, offset_values)}});
  int rounded = 0, ties = 0;
  for (std::int64_t r = 0; r < m; ++r) {
    const std::int64_t expert = r < 2 ? 0 : 2;
    for (std::int64_t c = 0; c < n; ++c) {
      double exact = 0, exact_e = 0;
      for (std::int64_t p = 0; p < k; ++p) {
        exact += xv.get(r * k + p) * wv.get(p * n + c);
        exact_e += xv.get(r * k + p) * ev.get((expert * k + p) * n + c);
      }
      INFO("row " << r << " col " << c << ": exact " << exact << ", " << exact_e);
      CHECK(out.at("y").get(r * n + c) == round_to_bf16(exact));
      CHECK(out.at("ys").get(r * n + c) == round_to_bf16(exact_e));
      rounded += round_to_bf16(exact) != exact;
      float f = static_cast<float>(exact);
      ties += (std::bit_cast<std::uint32_t>(f) & 0xFFFFu) == 0x8000u;
    }
  }
  CHECK(rounded > m * n / 2);  // the final rounding really happened
  CHECK(ties > 0);  // halfway cases, which must go to the even neighbour
}

TEST_CASE("mixed-precision rejects a dtype other than bf16 and leaves f64 graphs alone", "[passes][mixed_precision]") {
  CHECK_THROWS_WITH(create_pass("mixed-precision", {{"dtype", "f16"}}),
                    Catch::Contains("expected bf16") && Catch::Contains("found 'f16'"));
  Graph graph("f64");
  Builder b(graph);
  Tensor x = b.input("x", {2, 3}, DType::f64), w = b.param("w", {3, 4}, DType::f64);
  b.output(b.matmul(x, w), "y");
  run_pipeline(graph, "mixed-precision");
  CHECK(graph.ops().size() == 1);
  CHECK(graph.type(graph.ops()[0].results[0]).dtype == DType::f64);
}

TEST_CASE("gpt_moe trains in bf16 on the CPU: f32 master weights, losses close to the f32 run", "[passes][mixed_precision][train]") {
  GptMoeConfig config = tiny_config();
  config.warmup_iters = 2;
  config.max_iters = 4;
  auto cpu = make_cpu_backend();
  CHECK(training_precision(config, *cpu) == DType::f32);  // auto is f32 on the CPU
  auto params = init_parameters(gpt_moe_param_specs(config), 5);
  GptMoeConfig bf16_config = config;
  bf16_config.dtype = "bf16";
  GptMoeTrainer f32_trainer(config, *cpu, params), bf16_trainer(bf16_config, *cpu, params);
  REQUIRE(bf16_trainer.precision() == DType::bf16);
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 400; ++i) tokens.push_back(static_cast<std::int32_t>((i * i + 3 * i) % config.vocab_size));
  BatchSampler a(tokens, config.batch_size, config.block_size, 1), b(tokens, config.batch_size, config.block_size, 1);
  for (std::int64_t iter = 0; iter < config.max_iters; ++iter) {
    StepStats want = f32_trainer.step(a.next(), iter), got = bf16_trainer.step(b.next(), iter);
    INFO("step " << iter << ": f32 loss " << want.loss << ", bf16 loss " << got.loss);
    CHECK(std::abs(got.loss - want.loss) < 0.03);
  }
  for (const auto& [name, value] : bf16_trainer.parameters()) CHECK(value.dtype() == DType::f32);
  set_config_value(config, "dtype", "bf16");
  CHECK(config.dtype == "bf16");
  CHECK_THROWS_WITH(set_config_value(config, "dtype", "f16"), Catch::Contains("auto | f32 | bf16"));
}
