// The GPT-MoE builders: parameter names and shapes (the checkpoint names),
// the MoE block against a naive reference written here, the learning-rate
// schedule, token sampling, the expert report's bookkeeping, and the
// unfused training step (MOEJIT_FUSIONS=0).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "tiny_config.h"
#include "frontends/expert_report.h"
#include "frontends/generate.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/trainer.h"
#include "ir/error.h"
#include "passes/pass_manager.h"
#include "passes/pass.h"
#include "runtime/backend.h"

using namespace moejit;

TEST_CASE("parameter names and shapes follow nanoGPT's naming", "[gpt]") {
  GptMoeConfig c;
  c.vocab_size = 30;
  c.n_layer = 2;
  c.n_embd = 8;
  c.n_head = 2;
  c.block_size = 6;
  c.num_experts = 3;
  c.top_k = 1;
  c.d_expert = 5;
  c.moe_every = 2;
  c.activation = "swiglu";
  c.shared_expert = true;
  std::map<std::string, Shape> expected = {
      {"wte.weight", {30, 8}},           {"wpe.weight", {6, 8}},
      {"ln_f.weight", {8}},              {"ln_f.bias", {8}},
  };
  for (int layer = 0; layer < 2; ++layer) {
    const std::string h = "h." + std::to_string(layer) + ".";
    for (const char* ln : {"ln_1", "ln_2"}) {
      expected[h + ln + ".weight"] = {8};
      expected[h + ln + ".bias"] = {8};
    }
    expected[h + "attn.c_attn.weight"] = {24, 8};
    expected[h + "attn.c_proj.weight"] = {8, 8};
  }
  expected["h.0.mlp.c_fc.weight"] = {32, 8};  // dense block: 4 * n_embd
  expected["h.0.mlp.c_gate.weight"] = {32, 8};
  expected["h.0.mlp.c_proj.weight"] = {8, 32};
  expected["h.1.moe.router.weight"] = {3, 8};
  expected["h.1.moe.experts.w_up"] = {3, 8, 5};
  expected["h.1.moe.experts.w_gate"] = {3, 8, 5};
  expected["h.1.moe.experts.w_down"] = {3, 5, 8};
  expected["h.1.moe.shared.c_fc.weight"] = {5, 8};
  expected["h.1.moe.shared.c_gate.weight"] = {5, 8};
  expected["h.1.moe.shared.c_proj.weight"] = {8, 5};

  std::vector<ParamSpec> specs = gpt_moe_param_specs(c);
  std::map<std::string, Shape> found;
  for (const ParamSpec& s : specs) {
    CHECK(s.type.dtype == DType::f32);
    CHECK(found.emplace(s.name, s.type.shape).second);  // unique names
  }
  CHECK(found == expected);
  std::int64_t total = 0;
  for (const auto& [name, shape] : expected)
    total += std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
  CHECK(count_parameters(specs) == total);
  // Weight decay on matrices and embeddings, not on norms and the router.
  for (const ParamSpec& s : specs) {
    INFO(s.name);
    const bool is_norm = s.name.find("ln_") != std::string::npos;
    const bool is_router = s.name.find("router") != std::string::npos;
    CHECK(s.weight_decay == (!is_norm && !is_router));
  }
}

namespace {

double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

}  // namespace

TEST_CASE("moe_block matches a naive per-token reference", "[nn][moe]") {
  const std::int64_t T = 7, D = 6, E = 4, K = 2, F = 5;
  Graph graph("moe_block");
  Builder b(graph);
  std::vector<ParamSpec> specs;
  Scope root(b, specs);
  Tensor x = b.input("x", {T, D});
  nn::MoeOutputs out = nn::moe_block(root.child("moe"), x,
                                     {.num_experts = E, .top_k = K, .d_expert = F, .normalize = true,
                                      .aux_loss_coeff = 0.0, .z_loss_coeff = 0.0});
  b.output(out.y, "y");
  b.output(out.experts, "experts");
  auto exe = make_cpu_backend()->compile(graph);
  std::map<std::string, HostTensor> params = init_parameters(specs, 3);
  // Larger router weights so the choice of experts is clear-cut.
  for (std::int64_t i = 0; i < params.at("moe.router.weight").numel(); ++i)
    params.at("moe.router.weight").set(i, params.at("moe.router.weight").get(i) * 40);
  for (const auto& [name, value] : params) exe->set(name, value);
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  HostTensor xv({DType::f32, {T, D}});
  for (std::int64_t i = 0; i < xv.numel(); ++i) xv.set(i, normal(rng));
  exe->set("x", xv);
  exe->run();
  HostTensor y = exe->get("y");
  HostTensor experts = exe->get("experts");

  const HostTensor& wr = params.at("moe.router.weight");  // [E, D]
  const HostTensor& up = params.at("moe.experts.w_up");   // [E, D, F]
  const HostTensor& down = params.at("moe.experts.w_down");  // [E, F, D]
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> logits(E), probs(E);
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t d = 0; d < D; ++d) logits[e] += xv.get(t * D + d) * wr.get(e * D + d);
    double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
    for (std::int64_t e = 0; e < E; ++e) z += probs[e] = std::exp(logits[e] - mx);
    std::vector<std::int64_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto c) { return probs[a] > probs[c]; });
    double chosen_sum = 0;
    for (std::int64_t k = 0; k < K; ++k) chosen_sum += probs[order[k]];
    std::vector<double> ref(D, 0.0);
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t e = order[k];
      CHECK(experts.get(t * K + k) == e);
      const double weight = probs[e] / chosen_sum;  // softmax then top-k, renormalized
      std::vector<double> hidden(F, 0.0);
      for (std::int64_t f = 0; f < F; ++f) {
        for (std::int64_t d = 0; d < D; ++d) hidden[f] += xv.get(t * D + d) * up.get((e * D + d) * F + f);
        hidden[f] = gelu_ref(hidden[f]);
      }
      for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t f = 0; f < F; ++f) ref[d] += weight * hidden[f] * down.get((e * F + f) * D + d);
    }
    for (std::int64_t d = 0; d < D; ++d) CHECK(y.get(t * D + d) == Approx(ref[d]).margin(1e-5));
  }
}

TEST_CASE("learning rate: linear warmup, cosine decay to min_lr", "[train]") {
  GptMoeConfig c;
  c.learning_rate = 1e-3;
  c.min_lr = 1e-4;
  c.warmup_iters = 10;
  c.max_iters = 110;
  CHECK(learning_rate_at(c, 0) == Approx(1e-3 * 1 / 11));
  CHECK(learning_rate_at(c, 9) == Approx(1e-3 * 10 / 11));
  CHECK(learning_rate_at(c, 10) == Approx(1e-3));
  CHECK(learning_rate_at(c, 60) == Approx((1e-3 + 1e-4) / 2));  // halfway through the decay
  CHECK(learning_rate_at(c, 110) == Approx(1e-4));
  CHECK(learning_rate_at(c, 500) == Approx(1e-4));
  for (std::int64_t i = 11; i < 110; ++i) CHECK(learning_rate_at(c, i) < learning_rate_at(c, i - 1));
  c.decay_lr = false;
  CHECK(learning_rate_at(c, 100) == Approx(1e-3));
}

TEST_CASE("batches are windows of the token stream shifted by one", "[train]") {
  std::vector<std::int32_t> tokens(100);
  std::iota(tokens.begin(), tokens.end(), 0);
  BatchSampler sampler(tokens, 3, 5, 42);
  Batch batch = sampler.next();
  for (std::int64_t r = 0; r < 3; ++r) {
    const std::int32_t first = static_cast<std::int32_t>(batch.idx.get(r * 5));
    CHECK(first + 5 + 1 <= 100);
    for (std::int64_t t = 0; t < 5; ++t) {
      CHECK(batch.idx.get(r * 5 + t) == first + t);
      CHECK(batch.targets.get(r * 5 + t) == first + t + 1);
    }
  }
  BatchSampler again(tokens, 3, 5, 42);
  CHECK(again.next().idx.to_doubles() == batch.idx.to_doubles());
}

TEST_CASE("sample_token follows temperature and top-k", "[sample]") {
  std::mt19937_64 rng(1);
  const std::vector<float> logits = {0.5f, 2.0f, 1.9f, -1.0f};
  for (int i = 0; i < 50; ++i) CHECK(sample_token(logits, {.temperature = 1.0, .top_k = 1}, rng) == 1);
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 4000; ++i) ++counts[static_cast<std::size_t>(sample_token(logits, {.temperature = 1.0, .top_k = 2}, rng))];
  CHECK(counts[0] == 0);
  CHECK(counts[3] == 0);
  // Between tokens 1 and 2 the odds are exp(0.1) ~ 1.105.
  CHECK(static_cast<double>(counts[1]) / counts[2] == Approx(std::exp(0.1)).epsilon(0.12));
}

TEST_CASE("sample_token: a tiny temperature is greedy; non-finite logits are an error", "[sample]") {
  std::mt19937_64 rng(2);
  // logit / 1e-300 overflows to inf; the largest logit must still win every time.
  const std::vector<float> logits = {3.0f, 5.0f, 4.0f};
  for (int i = 0; i < 20; ++i) CHECK(sample_token(logits, {.temperature = 1e-300}, rng) == 1);
  const std::vector<float> with_nan = {0.0f, std::nanf(""), 1.0f};
  std::string msg;
  try {
    sample_token(with_nan, {.temperature = 1.0}, rng);
  } catch (const Error& err) {
    msg = err.what();
  }
  CHECK(msg.find("expected finite logits, found nan for token 1") != std::string::npos);
}

TEST_CASE("the expert report counts every routed slot once", "[report]") {
  GptMoeConfig c;
  c.n_layer = 2;
  c.n_embd = 16;
  c.n_head = 2;
  c.block_size = 16;
  c.num_experts = 3;
  c.top_k = 2;
  c.d_expert = 8;
  TaggedText text = generate_corpus(9, 3000);
  CharTokenizer tok = CharTokenizer::from_text(text.text);
  c.vocab_size = tok.vocab_size();
  auto backend = make_cpu_backend();
  ExpertReport r = collect_expert_report(c, *backend, init_parameters(gpt_moe_param_specs(c), 5), tok, text, 1000);
  const std::int64_t tokens = 1000 / 16 * 16;
  CHECK(r.tokens == tokens);
  // Too little held-out text for one window is an error, not a report of 0 tokens.
  std::string short_msg;
  try {
    collect_expert_report(c, *backend, init_parameters(gpt_moe_param_specs(c), 5), tok, untagged_text("1+1", "text"), 1000);
  } catch (const Error& err) {
    short_msg = err.what();
  }
  CHECK(short_msg.find("expected at least block_size = 16 tokens to route, found 3") != std::string::npos);
  CHECK(std::accumulate(r.tokens_by_kind.begin(), r.tokens_by_kind.end(), std::int64_t{0}) == tokens);
  REQUIRE(r.layers.size() == 2);
  for (const ExpertLayerStats& s : r.layers) {
    CHECK(std::accumulate(s.slots_per_expert.begin(), s.slots_per_expert.end(), std::int64_t{0}) == tokens * 2);
    for (std::size_t k = 0; k < r.kind_names.size(); ++k) {
      double share = 0;
      for (std::size_t e = 0; e < 3; ++e) share += s.kind_share(e, k);
      CHECK(share == Approx(1.0));
    }
    CHECK(s.imbalance() >= 1.0);
    CHECK(s.imbalance() <= 3.0);
  }
  const std::string table = format_expert_report(r);
  CHECK(table.find("layer 1: load imbalance") != std::string::npos);
  const std::string svg = expert_report_svg(r);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(std::count(svg.begin(), svg.end(), '<') == std::count(svg.begin(), svg.end(), '>'));
}

TEST_CASE("every MoE option builds a training step that runs and lowers the loss", "[train]") {
  GptMoeConfig base = testing::tiny_training_config();
  base.entropy_coeff = 0.01;
  struct Variant {
    const char* name;
    void (*apply)(GptMoeConfig&);
  };
  const Variant variants[] = {
      {"defaults", [](GptMoeConfig&) {}},
      {"swiglu + shared expert + bias", [](GptMoeConfig& c) { c.activation = "swiglu"; c.shared_expert = true; c.bias = true; }},
      {"sigmoid router, unnormalized", [](GptMoeConfig& c) { c.router_score = "sigmoid"; c.normalize_topk = false; }},
      {"topk_then_softmax, top-1", [](GptMoeConfig& c) { c.router_order = "topk_then_softmax"; c.top_k = 1; }},
      {"capacity factor 1.0", [](GptMoeConfig& c) { c.capacity_factor = 1.0; }},
      {"noisy gating", [](GptMoeConfig& c) { c.noisy_gating = true; }},
      {"selection bias, no aux loss", [](GptMoeConfig& c) { c.selection_bias = true; c.aux_loss_coeff = 0; c.bias_update_rate = 0.05; }},
      {"dropout, moe_every 2", [](GptMoeConfig& c) { c.dropout = 0.1; c.moe_every = 2; }},
  };
  auto backend = make_cpu_backend();
  std::vector<std::int32_t> tokens(400);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int32_t>((i * i + i / 3) % 12);
  for (const Variant& v : variants) {
    INFO(v.name);
    GptMoeConfig c = base;
    v.apply(c);
    REQUIRE_NOTHROW(validate_config(c));
    GptMoeTrainer trainer(c, *backend, init_parameters(gpt_moe_param_specs(c), 3));
    BatchSampler batches(tokens, c.batch_size, c.block_size, 1);
    const Batch fixed = batches.next();
    double first = 0, last = 0;
    for (std::int64_t iter = 0; iter < c.max_iters; ++iter) {
      StepStats s = trainer.step(fixed, iter);  // one batch over and over: the loss must fall
      REQUIRE(std::isfinite(s.loss));
      if (c.aux_loss_coeff > 0 || c.entropy_coeff > 0) CHECK(s.aux_loss != 0.0);
      if (iter == 0) first = s.lm_loss;
      last = s.lm_loss;
    }
    CHECK(last < first - 0.3);
    if (c.selection_bias) {
      std::map<std::string, HostTensor> p = trainer.parameters();
      double moved = 0;
      for (std::int64_t e = 0; e < 4; ++e) moved += std::abs(p.at("h.0.moe.router.selection_bias").get(e));
      CHECK(moved > 0.0);  // the balancing update touched the bias
    }
  }
}

namespace {

int count_ops(const Graph& g, OpKind kind) {
  return static_cast<int>(std::count_if(g.ops().begin(), g.ops().end(), [&](const Op& op) { return op.kind == kind; }));
}

// MOEJIT_FUSIONS for one scope (unset again afterwards: the suite never sets it).
struct FusionsOff {
  FusionsOff() { ::setenv("MOEJIT_FUSIONS", "0", 1); }
  ~FusionsOff() { ::unsetenv("MOEJIT_FUSIONS"); }
};

}  // namespace

TEST_CASE("MOEJIT_FUSIONS=0: the training step without fusions trains like the fused one", "[train][passes]") {
  GptMoeConfig c = testing::tiny_training_config();
  const TrainingGraph fused = build_training_graph(c);
  CHECK(count_ops(fused.graph, OpKind::Route) == c.n_layer);  // what moe-fusions forms
  CHECK(count_ops(fused.graph, OpKind::GatherMatmul) > 0);
  CHECK(count_ops(fused.graph, OpKind::AttentionQkv) == c.n_layer);

  auto backend = make_cpu_backend();
  const auto init = init_parameters(gpt_moe_param_specs(c), 7);
  std::vector<std::int32_t> tokens(400);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int32_t>((i * 5 + i / 7) % 12);
  BatchSampler batches(tokens, c.batch_size, c.block_size, 2);
  std::vector<Batch> steps;
  for (int i = 0; i < 4; ++i) steps.push_back(batches.next());
  GptMoeTrainer fused_trainer(c, *backend, init);
  std::vector<StepStats> want;
  for (std::int64_t i = 0; i < 4; ++i) want.push_back(fused_trainer.step(steps[static_cast<std::size_t>(i)], i));
  {
    FusionsOff off;
    CHECK(forward_pipeline(DType::f32).empty());
    CHECK(forward_pipeline(DType::bf16) == "mixed-precision{dtype=bf16}");
    CHECK(find_named_pipeline("cuda-pipeline")->pipeline == "moe-tiling{pad-dispatch=false}");
    const TrainingGraph unfused = build_training_graph(c);
    CHECK(count_ops(unfused.graph, OpKind::Route) == 0);
    CHECK(count_ops(unfused.graph, OpKind::GatherMatmul) == 0);
    CHECK(count_ops(unfused.graph, OpKind::MatmulCombine) == 0);
    CHECK(count_ops(unfused.graph, OpKind::AttentionQkv) == 0);
    CHECK(unfused.graph.ops().size() > fused.graph.ops().size());
    GptMoeTrainer unfused_trainer(c, *backend, init);
    for (std::int64_t i = 0; i < 4; ++i) {
      const StepStats got = unfused_trainer.step(steps[static_cast<std::size_t>(i)], i);
      INFO("step " << i << ": loss fused " << want[static_cast<std::size_t>(i)].loss << " unfused " << got.loss);
      CHECK(got.loss == Approx(want[static_cast<std::size_t>(i)].loss).epsilon(1e-4));
      CHECK(got.grad_norm == Approx(want[static_cast<std::size_t>(i)].grad_norm).epsilon(1e-3));
    }
    ::setenv("MOEJIT_FUSIONS", "yes", 1);
    CHECK_THROWS_WITH(build_training_graph(c), Catch::Contains("MOEJIT_FUSIONS: expected 0 or 1, found 'yes'"));
  }
}
