// mj.attention's head layout "bthd" on the CPU backend (the reference: it
// must mean the bhtd op between two transposes), and the attention-layout
// pass: exact on the GPT-MoE forward + backward, and no head transposes
// left around the attention of the default and config B training graphs,
// nor of SwitchHead, after the CUDA backend's pipeline.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <random>
#include <string>

#include "frontends/config.h"
#include "frontends/gpt_moe.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "ir/error.h"
#include "passes/autodiff.h"
#include "passes/graph_test_util.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

using pass_test::random_tensor;
using pass_test::run_cpu;
using pass_test::same_bits;

const std::vector<std::int64_t> kHeadPerm = {0, 2, 1, 3};

// q, k, v, dout in [B, T, H, D]: attention and its gradient once in layout
// bthd, once in bhtd between head transposes (outputs transposed back).
Graph both_layouts_graph(DType dtype, std::int64_t batch, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim) {
  Graph graph("both_layouts");
  Builder b(graph);
  const Shape shape{batch, tokens, heads, head_dim};
  Tensor q = b.input("q", shape, dtype), k = b.input("k", shape, dtype), v = b.input("v", shape, dtype), dout = b.input("dout", shape, dtype);
  AttrList bthd{{"scale", 0.0}};
  set_head_layout(bthd, HeadLayout::bthd);
  std::vector<Tensor> fwd = b.op(OpKind::Attention, {q, k, v}, bthd);
  std::vector<Tensor> grads = b.op(OpKind::AttentionGrad, {q, k, v, fwd[0], fwd[1], dout}, bthd);
  auto t = [&](Tensor x) { return b.transpose(x, kHeadPerm); };
  std::vector<Tensor> ref = b.op(OpKind::Attention, {t(q), t(k), t(v)}, {{"scale", 0.0}});
  std::vector<Tensor> ref_grads = b.op(OpKind::AttentionGrad, {t(q), t(k), t(v), ref[0], ref[1], t(dout)}, {{"scale", 0.0}});
  b.output(fwd[0], "out");
  b.output(fwd[1], "lse");
  b.output(grads[0], "dq");
  b.output(grads[1], "dk");
  b.output(grads[2], "dv");
  b.output(t(ref[0]), "ref.out");
  b.output(ref[1], "ref.lse");
  b.output(t(ref_grads[0]), "ref.dq");
  b.output(t(ref_grads[1]), "ref.dk");
  b.output(t(ref_grads[2]), "ref.dv");
  return graph;
}

GptMoeConfig small_config() {
  GptMoeConfig c;
  c.vocab_size = 17;
  c.n_layer = 2;
  c.n_head = 3;
  c.n_embd = 24;
  c.block_size = 7;
  c.num_experts = 4;
  c.top_k = 2;
  c.d_expert = 16;
  c.moe_every = 2;  // layer 0 dense, layer 1 MoE
  return c;
}

// Every mj.attention / mj.attention_grad of `graph`: its layout, and how
// many of its q/k/v/out/dout operands and results a head transpose produces
// or reads. The packed mj.attention_qkv / mj.attention_qkv_grad (the
// trainer's graphs without RoPE) count as in-place (bthd) attention ops.
struct AttentionCensus {
  int ops = 0, bthd = 0, packed = 0, transposes_next_to = 0, head_transposes = 0;
};
AttentionCensus census(const Graph& graph) {
  AttentionCensus c;
  const std::vector<int> producers = graph.producers();
  std::vector<bool> attention_result(static_cast<std::size_t>(graph.num_values()), false);
  auto is_head_transpose = [](const Op& op) { return op.kind == OpKind::Transpose && op.attrs.get_ints("perm") == kHeadPerm; };
  for (const Op& op : graph.ops()) {
    if (is_head_transpose(op)) {
      ++c.head_transposes;
      if (attention_result[static_cast<std::size_t>(op.operands[0])]) ++c.transposes_next_to;
    }
    const bool packed = op.kind == OpKind::AttentionQkv || op.kind == OpKind::AttentionQkvGrad;
    if (op.kind != OpKind::Attention && op.kind != OpKind::AttentionGrad && !packed) continue;
    ++c.ops;
    c.packed += packed ? 1 : 0;
    c.bthd += packed || head_layout(op.attrs) == HeadLayout::bthd ? 1 : 0;
    for (ValueId v : op.operands) {
      const int p = producers[static_cast<std::size_t>(v)];
      if (p >= 0 && is_head_transpose(graph.ops()[static_cast<std::size_t>(p)])) ++c.transposes_next_to;
    }
    for (ValueId r : op.results) attention_result[static_cast<std::size_t>(r)] = true;
  }
  return c;
}

Graph after_cuda_pipeline(Graph graph) {
  PassManager manager;
  manager.add_pipeline(kCudaPipeline);
  manager.run(graph);
  return graph;
}

}  // namespace

TEST_CASE("attention in layout bthd equals bhtd between head transposes, bit for bit", "[passes][attention][layout]") {
  struct Case {
    DType dtype;
    std::int64_t batch, tokens, heads, head_dim;
  };
  const Case cases[] = {{DType::f32, 2, 5, 3, 4}, {DType::f64, 1, 9, 2, 3}, {DType::bf16, 2, 4, 4, 8}, {DType::f32, 1, 1, 2, 5}};
  std::mt19937 rng(5);
  for (const Case& c : cases) {
    Graph graph = both_layouts_graph(c.dtype, c.batch, c.tokens, c.heads, c.head_dim);
    INFO(fmt::format("{} B{} T{} H{} D{}", dtype_name(c.dtype), c.batch, c.tokens, c.heads, c.head_dim));
    std::map<std::string, HostTensor> args;
    for (const char* name : {"q", "k", "v", "dout"})
      args.emplace(name, random_tensor(graph.type(graph.find_arg(name)), rng));
    const auto results = run_cpu(graph, args);
    for (const char* name : {"out", "lse", "dq", "dk", "dv"}) {
      INFO(name);
      CHECK(same_bits(results.at(name), results.at(std::string("ref.") + name)));
    }
  }
}

TEST_CASE("attention layout: the shape rule reads heads and tokens from the layout", "[passes][attention][layout]") {
  Graph graph("rule");
  Builder b(graph);
  Tensor q = b.input("q", {2, 5, 3, 4}, DType::bf16);  // [B, T, H, D]
  std::vector<Tensor> r = b.op(OpKind::Attention, {q, q, q}, {{"layout", std::string("bthd")}, {"scale", 0.0}});
  CHECK(r[0].type() == q.type());
  CHECK(r[1].type() == TensorType{DType::f32, {2, 3, 5}});  // lse [B, H, T]
  try {
    b.op(OpKind::Attention, {q, q, q}, {{"layout", std::string("bhdt")}, {"scale", 0.0}});
    FAIL("an unknown layout was accepted");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("attribute 'layout': expected one of \"bhtd\", \"bthd\", found \"bhdt\""));
  }
  // The gradient in bthd wants that lse, not the [B, T, H] of a misread layout.
  Tensor wrong_lse = b.input("lse", {2, 5, 3}, DType::f32);
  try {
    b.op(OpKind::AttentionGrad, {q, q, q, q, wrong_lse, q}, {{"layout", std::string("bthd")}, {"scale", 0.0}});
    FAIL("a [B, T, H] lse was accepted");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("expected tensor<2x3x5xf32>"));
  }
}

TEST_CASE("attention-layout keeps the GPT-MoE loss and gradients bit for bit and removes the head transposes", "[passes][attention][layout]") {
  const GptMoeConfig config = small_config();
  Graph graph("gpt");
  build_gpt_moe(graph, config, {.batch = 2, .seq_len = config.block_size});
  std::vector<std::string> params;
  for (const Arg& arg : graph.args())
    if (arg.role == ArgRole::param) params.push_back(graph.value(arg.value).name);
  append_backward(graph, {.loss = "loss", .wrt = params});
  const AttentionCensus before = census(graph);
  REQUIRE(before.ops == 2 * config.n_layer);
  CHECK(before.bthd == 0);
  // A layer: q, k, v and out's transpose around the forward; q, k, v (shared), dout and dq, dk, dv's around the gradient.
  CHECK(before.transposes_next_to == 11 * config.n_layer);

  Graph relaid = graph;
  PassManager manager;
  manager.add_pipeline("attention-layout");
  manager.run(relaid);
  const AttentionCensus after = census(relaid);
  CHECK(after.ops == before.ops);
  CHECK(after.bthd == after.ops);
  CHECK(after.transposes_next_to == 0);
  CHECK(after.head_transposes == before.head_transposes - 8 * config.n_layer);
  const auto& stats = manager.statistics().at(0).counters;
  CHECK(stats == std::vector<std::pair<std::string, std::int64_t>>{{"attentions-relaid", 2 * config.n_layer},
                                                                    {"transposes-removed", 8 * config.n_layer}});

  std::mt19937 rng(3);
  std::uniform_int_distribution<int> token(0, static_cast<int>(config.vocab_size) - 1);
  std::map<std::string, HostTensor> args;
  for (const Arg& arg : graph.args()) {
    const TensorType& type = graph.type(arg.value);
    if (type.dtype == DType::i32) {
      std::vector<double> ids(static_cast<std::size_t>(type.numel()));
      for (auto& id : ids) id = token(rng);
      args.emplace(graph.value(arg.value).name, HostTensor::from_doubles(type, ids));
    } else {
      args.emplace(graph.value(arg.value).name, random_tensor(type, rng, 0.3));
    }
  }
  const auto want = run_cpu(graph, args), got = run_cpu(relaid, args);
  REQUIRE(want.size() == got.size());
  for (const auto& [name, value] : want) {
    INFO(name);
    CHECK(same_bits(got.at(name), value));
  }
}

TEST_CASE("the default and config B training graphs hold no head transpose around attention after the CUDA pipeline",
          "[passes][attention][layout]") {
  GptMoeConfig config_b = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config_b.vocab_size = 65;
  GptMoeConfig defaults;
  defaults.vocab_size = 65;
  for (const auto& [name, config] : {std::pair{"config B", config_b}, std::pair{"default", defaults}}) {
    INFO(name);
    for (DType precision : {DType::bf16, DType::f32}) {
      INFO(dtype_name(precision));
      const Graph graph = after_cuda_pipeline(build_training_graph(config, precision).graph);
      const AttentionCensus c = census(graph);
      CHECK(c.ops == 2 * config.n_layer);
      CHECK(c.packed == c.ops);  // no RoPE: every attention reads the qkv projection packed
      CHECK(c.bthd == c.ops);
      CHECK(c.transposes_next_to == 0);
      CHECK(c.head_transposes == 0);
    }
  }
}

TEST_CASE("attention-layout folds the head transposes of RoPE attention and SwitchHead too", "[passes][attention][layout]") {
  // RoPE rotates q and k before their head transpose (in bf16 between casts: f32 RoPE, bf16 attention).
  GptMoeConfig rope = small_config();
  rope.position_embedding = "rope";
  GptMoeConfig switchhead = rope;
  switchhead.attention = "switchhead";
  switchhead.att_n_experts = 2;
  switchhead.att_k = 1;
  for (const auto& [name, config] : {std::pair{"rope", rope}, std::pair{"switchhead", switchhead}}) {
    for (DType precision : {DType::f32, DType::bf16}) {
      INFO(name << " " << dtype_name(precision));
      const Graph graph = after_cuda_pipeline(build_training_graph(config, precision).graph);
      const AttentionCensus c = census(graph);
      CHECK(c.ops == 2 * config.n_layer);
      CHECK(c.packed == 0);  // q and k rotated after the slice: three slices, bthd
      CHECK(c.bthd == c.ops);
      CHECK(c.transposes_next_to == 0);
      CHECK(c.head_transposes == 0);
    }
  }
}

TEST_CASE("attention-layout keeps a RoPE model's bf16 loss and gradients bit for bit", "[passes][attention][layout]") {
  GptMoeConfig config = small_config();
  config.position_embedding = "rope";
  Graph graph("gpt_rope");
  build_gpt_moe(graph, config, {.batch = 2, .seq_len = config.block_size});
  PassManager bf16;
  bf16.add_pipeline("mixed-precision{dtype=bf16}");
  bf16.run(graph);
  std::vector<std::string> params;
  for (const Arg& arg : graph.args())
    if (arg.role == ArgRole::param) params.push_back(graph.value(arg.value).name);
  append_backward(graph, {.loss = "loss", .wrt = params});
  Graph relaid = graph;
  PassManager manager;
  manager.add_pipeline("attention-layout");
  manager.run(relaid);
  CHECK(census(relaid).head_transposes == 0);
  CHECK(census(relaid).bthd == 2 * config.n_layer);
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> token(0, static_cast<int>(config.vocab_size) - 1);
  std::map<std::string, HostTensor> args;
  for (const Arg& arg : graph.args()) {
    const TensorType& type = graph.type(arg.value);
    const std::string& name = graph.value(arg.value).name;
    if (type.dtype == DType::i32) {
      std::vector<double> ids(static_cast<std::size_t>(type.numel()));
      for (auto& id : ids) id = token(rng);
      args.emplace(name, HostTensor::from_doubles(type, ids));
    } else {
      args.emplace(name, random_tensor(type, rng, 0.3));  // the RoPE tables too: any values, both graphs read the same
    }
  }
  const auto want = run_cpu(graph, args), got = run_cpu(relaid, args);
  for (const auto& [name, value] : want) {
    INFO(name);
    CHECK(same_bits(got.at(name), value));
  }
}
