// The MoEUT model and expert-choice routing in the GPT-MoE frontend: shared
// layer groups (one tensor per group layer, gradients summed over repeats),
// SwitchHead attention (finite differences; att_n_experts = 1 against a
// reference written here from dense ops), sigma-MoE expert dropout, the
// expert report of SwitchHead and expert-choice models, the example configs,
// and the new config keys' errors.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "frontends/config.h"
#include "frontends/corpus.h"
#include "frontends/expert_report.h"
#include "frontends/gpt_checkpoint.h"
#include "frontends/gpt_moe.h"
#include "frontends/nn.h"
#include "frontends/rope.h"
#include "frontends/tokenizer.h"
#include "frontends/trainer.h"
#include "ir/error.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/gradcheck.h"
#include "tiny_config.h"

using namespace moejit;

namespace {

// A tiny MoEUT: 4 layers from 2 distinct ones, SwitchHead (3 experts per
// head, top-2), sigma-MoE (sigmoid, top-3 of 8 without renormalization,
// relu experts, entropy regularizer), peri-LN, RoPE.
GptMoeConfig tiny_moeut_config() {
  GptMoeConfig c = testing::tiny_training_config();
  c.n_layer = 4;
  c.group_size = 2;
  c.num_experts = 8;
  c.top_k = 3;
  c.d_expert = 8;
  c.activation = "relu";
  c.router_score = "sigmoid";
  c.normalize_topk = false;
  c.aux_loss_coeff = 0.0;
  c.z_loss_coeff = 0.0;
  c.entropy_coeff = 0.01;
  c.attention = "switchhead";
  c.att_n_experts = 3;
  c.att_k = 2;
  c.head_dim = 6;
  c.layer_norm = "peri";
  c.position_embedding = "rope";
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// Loss and every parameter's gradient of `config`'s model on one batch (CPU).
std::map<std::string, HostTensor> loss_and_grads(const GptMoeConfig& config, const std::map<std::string, HostTensor>& params,
                                                 const HostTensor& idx, const HostTensor& targets) {
  Graph graph("grads");
  GptMoeGraph model = build_gpt_moe(graph, config, {.batch = idx.shape()[0], .training = false});
  std::vector<std::string> names;
  for (const ParamSpec& s : model.params) names.push_back(s.name);
  append_backward(graph, {.loss = "loss", .wrt = names});
  auto backend = make_cpu_backend();
  auto exe = backend->compile(graph);
  bind_rope_tables(*exe, {.theta = config.rope_theta});
  for (const auto& [name, value] : params) exe->set(name, value);
  exe->set("idx", idx);
  exe->set("targets", targets);
  exe->run();
  std::map<std::string, HostTensor> out;
  for (const auto& o : graph.outputs()) out.emplace(o.name, exe->get(o.name));
  return out;
}

HostTensor random_ids(Shape shape, std::int64_t vocab, std::uint64_t seed) {
  HostTensor t = random_tensor({DType::f32, shape}, seed, 0.0, static_cast<double>(vocab));
  std::vector<std::int32_t> ids;
  for (std::int64_t i = 0; i < t.numel(); ++i) ids.push_back(static_cast<std::int32_t>(t.get(i)));
  return HostTensor::from_ints(std::move(shape), ids);
}

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  double worst = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.get(i) - b.get(i)));
  return worst;
}

}  // namespace

TEST_CASE("moeut: layer groups keep one tensor per group layer in specs and checkpoints", "[moeut]") {
  GptMoeConfig c = tiny_moeut_config();
  std::vector<ParamSpec> shared = gpt_moe_param_specs(c);
  GptMoeConfig two = c;
  two.n_layer = 2;
  two.group_size = 0;
  // 4 layers from 2 distinct ones have exactly the parameters of 2 layers.
  CHECK(count_parameters(shared) == count_parameters(gpt_moe_param_specs(two)));
  for (const ParamSpec& s : shared) {
    INFO(s.name);
    CHECK(s.name.rfind("h.2.", 0) != 0);
    CHECK(s.name.rfind("h.3.", 0) != 0);
  }
  CHECK(std::any_of(shared.begin(), shared.end(), [](const ParamSpec& s) { return s.name == "h.1.attn.sel_v.weight"; }));
  CHECK(std::none_of(shared.begin(), shared.end(), [](const ParamSpec& s) { return s.name == "wpe.weight"; }));  // rope

  // The checkpoint holds those tensors, once each, and loads back.
  const std::string path = (std::filesystem::temp_directory_path() / fmt::format("moeut_{}.safetensors", ::getpid())).string();
  CharTokenizer tok = CharTokenizer::from_text("abcdefghijkl");
  save_gpt_checkpoint(path, c, tok, init_parameters(shared, 3));
  GptMoeCheckpoint ckpt = load_gpt_checkpoint(path);
  std::filesystem::remove(path);
  CHECK(ckpt.params.size() == shared.size());
  CHECK(ckpt.config.group_size == 2);
  CHECK(ckpt.params.count("h.0.moe.experts.w_up") == 1);
  CHECK(ckpt.params.count("h.3.moe.experts.w_up") == 0);
}

TEST_CASE("moeut: the gradient of a shared layer is the sum over its repeats", "[moeut]") {
  // The same network twice: n_layer 4 from group_size 2 (shared), and 4
  // distinct layers whose h.2 / h.3 weights are copies of h.0 / h.1.
  GptMoeConfig shared = tiny_moeut_config();
  GptMoeConfig unshared = shared;
  unshared.group_size = 0;
  std::map<std::string, HostTensor> shared_params = init_parameters(gpt_moe_param_specs(shared), 11);
  std::map<std::string, HostTensor> unshared_params;
  for (const ParamSpec& s : gpt_moe_param_specs(unshared)) {
    std::string source = s.name;
    if (s.name.rfind("h.2.", 0) == 0) source = "h.0." + s.name.substr(4);
    if (s.name.rfind("h.3.", 0) == 0) source = "h.1." + s.name.substr(4);
    unshared_params.emplace(s.name, shared_params.at(source));
  }
  HostTensor idx = random_ids({4, 8}, shared.vocab_size, 1), targets = random_ids({4, 8}, shared.vocab_size, 2);
  auto a = loss_and_grads(shared, shared_params, idx, targets);
  auto b = loss_and_grads(unshared, unshared_params, idx, targets);
  CHECK(a.at("loss").get(0) == Approx(b.at("loss").get(0)).epsilon(1e-6));
  int compared = 0;
  for (const auto& [name, value] : shared_params) {
    INFO(name);
    HostTensor want = b.at("grad." + name);
    if (name.rfind("h.", 0) == 0) {  // h.0 -> h.0 + h.2, h.1 -> h.1 + h.3
      const std::string repeat = fmt::format("h.{}.{}", name[2] - '0' + 2, name.substr(4));
      const HostTensor& other = b.at("grad." + repeat);
      for (std::int64_t i = 0; i < want.numel(); ++i) want.set(i, want.get(i) + other.get(i));
      ++compared;
    }
    double scale = 1e-6;
    for (std::int64_t i = 0; i < want.numel(); ++i) scale = std::max(scale, std::abs(want.get(i)));
    CHECK(max_abs_diff(a.at("grad." + name), want) <= 1e-4 * scale);
  }
  CHECK(compared > 20);
}

TEST_CASE("moeut: SwitchHead attention's gradient matches finite differences", "[moeut]") {
  for (std::int64_t experts : {1, 3}) {
    INFO("att_n_experts " << experts);
    auto build = [&](Builder& b) {
      std::vector<ParamSpec> specs;
      Scope root(b, specs);
      Tensor x = b.input("x", {2 * 5, 8});
      Tensor qk = b.input("qk", {2 * 5, 8});
      nn::SwitchHeadOutputs sh = nn::switchhead_attention(
          root.child("attn"), x, qk,
          {.batch = 2, .seq_len = 5, .n_head = 2, .head_dim = 4, .num_experts = experts, .top_k = experts > 1 ? 2 : 1,
           .rope = true, .init_std = 0.5, .proj_std = 0.5});
      probe_loss(b, sh.y);
    };
    Graph probe("names");
    Builder pb(probe);
    build(pb);
    std::map<std::string, HostTensor> values;
    RopeTables tables = rope_tables({}, 5, 4);
    values.emplace(kRopeCosInput, tables.cos);
    values.emplace(kRopeSinInput, tables.sin);
    std::vector<std::string> wrt = {"x", "qk"};
    for (const auto& arg : probe.args())
      if (arg.role == ArgRole::param) wrt.push_back(probe.value(arg.value).name);
    GradCheckReport report = check_gradients(build, values, wrt, {.step = 1e-2, .floor = 1e-2});
    INFO(report.str());
    CHECK(report.max_rel_error() < 1e-2);  // f32 (the nn builders' dtype): central differences with h = 1e-2
    CHECK(report.at("attn.sel_o.weight").max_abs_numeric > 0);
  }
}

TEST_CASE("moeut: att_n_experts = 1 is RoPE attention with a learned sigmoid output gate", "[moeut]") {
  const std::int64_t B = 2, T = 6, D = 8, H = 2, Dh = 4;
  Graph g("gated");
  Builder b(g);
  std::vector<ParamSpec> specs;
  Scope root(b, specs);
  Tensor x = b.input("x", {B * T, D});
  Tensor qk = b.input("qk", {B * T, D});
  nn::SwitchHeadOutputs sh = nn::switchhead_attention(root.child("attn"), x, qk,
                                                      {.batch = B, .seq_len = T, .n_head = H, .head_dim = Dh});
  b.output(sh.y, "y");
  CHECK(!sh.value_experts);
  auto arg = [&](const char* name) { return Tensor{&g, g.find_arg(name)}; };
  // Reference from dense ops: per head h, sigmoid(qk · sel_o[h]) * att_h · o[h].
  auto heads = [&](Tensor t) { return b.transpose(b.reshape(t, {B, T, H, Dh}), {0, 2, 1, 3}); };
  Tensor q = apply_rope(b, heads(b.matmul(qk, arg("attn.q.weight"), false, true)));
  Tensor k = apply_rope(b, heads(b.matmul(qk, arg("attn.k.weight"), false, true)));
  Tensor v = heads(b.matmul(x, arg("attn.v.weight"), false, true));
  Tensor att = b.transpose(b.attention(q, k, v), {1, 0, 2, 3});            // [H, B, T, Dh]
  att = b.reshape(att, {H, B * T, Dh});
  Tensor projected = b.matmul(att, arg("attn.o.experts"));                 // [H, BT, Dh] x [H, Dh, D]
  Tensor gate = b.sigmoid(b.matmul(qk, arg("attn.sel_o.weight"), false, true));  // [BT, H]
  gate = b.broadcast(b.reshape(b.transpose(gate, {1, 0}), {H, B * T, 1}), {H, B * T, D});
  b.output(b.sum(b.mul(gate, projected), {0}), "reference");

  auto backend = make_cpu_backend();
  auto exe = backend->compile(g);
  bind_rope_tables(*exe, {});
  for (auto& [name, value] : init_parameters(specs, 4)) exe->set(name, value);
  exe->set("x", random_tensor({DType::f32, {B * T, D}}, 1));
  exe->set("qk", random_tensor({DType::f32, {B * T, D}}, 2));
  exe->run();
  HostTensor y = exe->get("y"), ref = exe->get("reference");
  double scale = 0;
  for (std::int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, std::abs(ref.get(i)));
  CHECK(scale > 0);
  CHECK(max_abs_diff(y, ref) <= 1e-5 * scale);
}

TEST_CASE("moeut: expert dropout changes the selection while training but never the chosen experts' weights", "[moeut]") {
  const std::int64_t T = 64, D = 8, E = 8;
  auto build = [&](bool training, double p, Graph& g) {
    Builder b(g);
    std::vector<ParamSpec> specs;
    RandomStreams random{.seed = 3};
    Scope root(b, specs, {.training = training}, &random);
    Tensor x = b.input("x", {T, D});
    nn::MoeOutputs moe = nn::moe_block(root.child("moe"), x,
                                       {.num_experts = E, .top_k = 2, .d_expert = 4, .activation = "relu",
                                        .score = "sigmoid", .normalize = false, .aux_loss_coeff = 0,
                                        .init_std = 0.5, .proj_std = 0.5, .expert_dropout = p});
    b.output(moe.y, "y");
    b.output(moe.experts, "experts");
    return specs;
  };
  auto run = [&](bool training, double p) {
    Graph g("drop");
    auto specs = build(training, p, g);
    auto backend = make_cpu_backend();
    auto exe = backend->compile(g);
    for (auto& [name, value] : init_parameters(specs, 8)) exe->set(name, value);
    exe->set("x", random_tensor({DType::f32, {T, D}}, 5));
    if (g.find_arg("rng_offset") != kNoValue) exe->set("rng_offset", HostTensor::scalar(0.0, DType::i64));
    exe->run();
    return std::pair{exe->get("y"), exe->get("experts")};
  };
  auto [y_eval, experts_eval] = run(false, 0.5);  // no dropout outside training
  auto [y_zero, experts_zero] = run(true, 0.0);
  auto [y_drop, experts_drop] = run(true, 0.5);
  CHECK(max_abs_diff(y_eval, y_zero) == 0.0);
  int changed = 0, same = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    const bool equal = experts_drop.get(2 * t) == experts_eval.get(2 * t) && experts_drop.get(2 * t + 1) == experts_eval.get(2 * t + 1);
    double row_diff = 0;
    for (std::int64_t d = 0; d < D; ++d) row_diff = std::max(row_diff, std::abs(y_drop.get(t * D + d) - y_eval.get(t * D + d)));
    if (equal) {
      ++same;
      CHECK(row_diff == 0.0);  // same experts: same weights, same output
    } else {
      ++changed;
    }
  }
  CHECK(changed > 5);  // with p = 0.5 many tokens lose one of their experts
  CHECK(same > 0);
}

TEST_CASE("moeut: the expert report covers SwitchHead tables and expert choice is balanced (imbalance 1.0)", "[moeut][report]") {
  TaggedText text = generate_corpus(9, 4000);
  CharTokenizer tok = CharTokenizer::from_text(text.text);
  auto backend = make_cpu_backend();
  const std::int64_t tokens = 2048;  // 16 full batches of 8 windows of 16

  GptMoeConfig sh = tiny_moeut_config();
  sh.block_size = 16;
  sh.vocab_size = tok.vocab_size();
  ExpertReport r = collect_expert_report(sh, *backend, init_parameters(gpt_moe_param_specs(sh), 5), tok, text, tokens);
  // 4 feed-forward tables, then per layer attention values and output.
  REQUIRE(r.layers.size() == 4 + 8);
  for (const ExpertLayerStats& s : r.layers) {
    INFO(s.name);
    const std::int64_t total = std::accumulate(s.slots_per_expert.begin(), s.slots_per_expert.end(), std::int64_t{0});
    if (s.experts_per_head > 0) {
      CHECK(s.slots_per_expert.size() == 2 * 3);  // n_head * att_n_experts
      CHECK(total == r.tokens * 2 * 2);          // heads * att_k
    } else {
      CHECK(total == r.tokens * 3);
    }
  }
  std::string table = format_expert_report(r);
  CHECK(table.find("layer 3 attention output: load imbalance") != std::string::npos);
  CHECK(table.find("layer 0 attention values: load imbalance") != std::string::npos);
  CHECK(table.find("4 MoE layer(s), 8 SwitchHead table(s)") != std::string::npos);
  CHECK(expert_report_svg(r).find("attention output") != std::string::npos);

  GptMoeConfig ec = testing::tiny_training_config();
  ec.block_size = 16;
  ec.vocab_size = tok.vocab_size();
  ec.router_type = "expert_choice";
  ec.capacity_factor = 1.0;
  ec.aux_loss_coeff = 0.0;
  r = collect_expert_report(ec, *backend, init_parameters(gpt_moe_param_specs(ec), 5), tok, text, tokens);
  REQUIRE(r.layers.size() == 2);
  for (const ExpertLayerStats& s : r.layers) {
    CHECK(s.imbalance() == 1.0);
    CHECK(std::accumulate(s.slots_per_expert.begin(), s.slots_per_expert.end(), std::int64_t{0}) == r.tokens * 2);
  }
  CHECK(format_expert_report(r).find("4 experts, expert choice") != std::string::npos);
}

TEST_CASE("moeut: a tiny MoEUT and an expert-choice model train (the loss falls)", "[moeut][training]") {
  for (bool expert_choice : {false, true}) {
    GptMoeConfig c = expert_choice ? testing::tiny_training_config() : tiny_moeut_config();
    if (expert_choice) {
      c.router_type = "expert_choice";
      c.capacity_factor = 1.0;
      c.aux_loss_coeff = 0.0;
    }
    c.expert_dropout = 0.1;
    c.dropout = 0.1;
    INFO("expert_choice " << expert_choice);
    auto backend = make_cpu_backend();
    GptMoeTrainer trainer(c, *backend, init_parameters(gpt_moe_param_specs(c), 2));
    // A fixed batch: the loss on it must fall as the model fits it.
    Batch batch{random_ids({c.batch_size, c.block_size}, c.vocab_size, 7), {}};
    std::vector<std::int32_t> shifted;
    for (std::int64_t i = 0; i < batch.idx.numel(); ++i)
      shifted.push_back(static_cast<std::int32_t>((static_cast<std::int64_t>(batch.idx.get(i)) + 1) % c.vocab_size));
    batch.targets = HostTensor::from_ints(batch.idx.shape(), shifted);
    double first = trainer.step(batch, 0).loss, last = first;
    for (std::int64_t iter = 1; iter < 30; ++iter) last = trainer.step(batch, iter).loss;
    CHECK(std::isfinite(last));
    CHECK(last < first * 0.7);
  }
}

TEST_CASE("moeut: the example configs load and validate with the intended sizes", "[moeut][config]") {
  const std::string dir = std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/";
  for (const char* name : {"moeut_tiny.json", "dense_tiny.json", "moeut_44m.json", "expert_choice.json"}) {
    INFO(name);
    GptMoeConfig c = load_config_file(dir + name);
    c.vocab_size = 65;  // tiny Shakespeare
    CHECK_NOTHROW(validate_config(c));
    CHECK(count_parameters(gpt_moe_param_specs(c)) > 0);
  }
  GptMoeConfig big = load_config_file(dir + "moeut_44m.json");
  big.vocab_size = 65;
  CHECK(big.n_embd == 412);
  CHECK(big.n_layer == 16);
  CHECK(big.group_size == 2);
  CHECK(big.num_experts == 155);
  CHECK(big.top_k == 12);
  CHECK(big.att_n_experts == 8);
  CHECK(big.head_dim == 82);
  // Per group layer: LNs 1,648; q, k 270,272; routers 26,368; value and
  // output experts 2 x 1,081,088; sigma-MoE router 63,860 and experts
  // 2 x 8,174,080. Two group layers, plus wte 26,780 and ln_f 824.
  CHECK(count_parameters(gpt_moe_param_specs(big)) == 37'772'572);
  // The dense baseline has the parameter count of moeut_tiny.
  GptMoeConfig tiny = load_config_file(dir + "moeut_tiny.json"), dense = load_config_file(dir + "dense_tiny.json");
  tiny.vocab_size = dense.vocab_size = 65;
  CHECK(count_parameters(gpt_moe_param_specs(tiny)) == count_parameters(gpt_moe_param_specs(dense)));
  CHECK(tiny.max_iters == dense.max_iters);
}

TEST_CASE("config B of issue 11 (bench/train_step's default) loads with its sizes", "[config]") {
  GptMoeConfig c = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  c.vocab_size = 65;  // tiny Shakespeare
  CHECK_NOTHROW(validate_config(c));
  CHECK(c.n_layer == 6);
  CHECK(c.n_head == 6);
  CHECK(c.n_embd == 384);
  CHECK(c.block_size == 256);
  CHECK(c.batch_size == 64);
  CHECK(c.num_experts == 8);
  CHECK(c.top_k == 2);
  CHECK(c.d_expert == 1536);
  CHECK(c.dropout == 0.0);
  CHECK(c.moe_every == 1);  // every block is MoE
  // Per layer: layer norms 2 x 768, attention 4 x 384^2 = 589,824, router
  // 8 x 384 = 3,072, experts 2 x 8 x 384 x 1536 = 9,437,184 (10,031,616);
  // six layers, plus wte 24,960, wpe 98,304 and ln_f 768.
  CHECK(count_parameters(gpt_moe_param_specs(c)) == 60'313'728);
}

TEST_CASE("moeut: bad MoEUT and expert-choice keys are named with what was expected", "[moeut][config]") {
  GptMoeConfig c = tiny_moeut_config();
  auto with = [&](const char* key, const char* value) {
    GptMoeConfig d = c;
    set_config_value(d, key, value);
    return error_of([&] { validate_config(d); });
  };
  CHECK(with("group_size", "3").find("config: group_size: expected 0 (no sharing) or a divisor of n_layer (4), found 3") !=
        std::string::npos);
  CHECK(with("att_k", "4").find("config: att_k: expected 1..att_n_experts (3), found 4") != std::string::npos);
  CHECK(with("position_embedding", "learned").find("config: position_embedding: expected rope with attention switchhead") !=
        std::string::npos);
  CHECK(with("expert_dropout", "1").find("config: expert_dropout: expected a probability in [0, 1), found 1") !=
        std::string::npos);
  CHECK(with("router_type", "expert_choice").find("config: capacity_factor: expected a finite value > 0 with router_type expert_choice") !=
        std::string::npos);
  CHECK(error_of([&] { set_config_value(c, "router_type", "hash"); })
            .find("config: router_type: expected one of token_choice | expert_choice, found 'hash'") != std::string::npos);
  GptMoeConfig ec = c;
  ec.router_type = "expert_choice";
  ec.capacity_factor = 1.0;
  ec.aux_loss_coeff = 0.01;
  CHECK(error_of([&] { validate_config(ec); }).find("config: aux_loss_coeff: expected 0 with router_type expert_choice") !=
        std::string::npos);
}

TEST_CASE("moeut: bf16 mixed precision keeps every router in f32 (SwitchHead and expert dropout and expert choice)", "[moeut]") {
  for (bool expert_choice : {false, true}) {
    GptMoeConfig c = tiny_moeut_config();
    c.expert_dropout = 0.1;
    if (expert_choice) {
      c.router_type = "expert_choice";
      c.capacity_factor = 1.0;
    }
    Graph graph("bf16");
    build_gpt_moe(graph, c, {.batch = 2, .training = true});
    run_pipeline(graph, forward_pipeline(DType::bf16));
    const auto producers = graph.producers();
    int routers = 0, bf16_matmuls = 0;
    for (const Op& op : graph.ops()) {
      if (op.kind == OpKind::GroupedMatmul || op.kind == OpKind::GatherMatmul)
        bf16_matmuls += graph.type(op.results[0]).dtype == DType::bf16 ? 1 : 0;
      if (op.kind != OpKind::Gate && op.kind != OpKind::ExpertChoice) continue;
      // Walk back to the router matmul: every value on the way is f32.
      ValueId v = op.operands[0];
      while (true) {
        INFO(op_name(op.kind) << " selection path value " << v);
        CHECK(graph.type(v).dtype == DType::f32);
        const int p = producers[static_cast<std::size_t>(v)];
        REQUIRE(p >= 0);
        const Op& from = graph.ops()[static_cast<std::size_t>(p)];
        if (from.kind == OpKind::Matmul) {
          for (ValueId operand : from.operands) CHECK(graph.type(operand).dtype == DType::f32);
          ++routers;
          break;
        }
        v = from.kind == OpKind::Where ? from.operands[1] : from.operands[0];
      }
    }
    CHECK(routers == 4 + 2 * 2 * 2);  // 4 feed-forward layers, 2 distinct attention layers x (values, output) x 2 repeats
    CHECK(bf16_matmuls > 0);          // the experts do run in bf16
  }
}
