// The packed attention mj.attention_qkv / mj.attention_qkv_grad on the CPU
// backend (the reference: it must mean the bthd attention of the three
// column thirds of qkv, and its gradient the three gradients side by side),
// and the fuse-attention-qkv pass: the GPT-MoE forward graph rewritten, its
// loss and every gradient unchanged (f32 and bf16), no slice or pad of the
// qkv projection left, and the graphs it must leave alone left alone.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <random>
#include <string>

#include "frontends/config.h"
#include "frontends/gpt_moe.h"
#include "frontends/trainer.h"
#include "ir/attention_layout.h"
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

// Equal values (a sum with the pads' zeros may turn -0 into +0).
bool same_values(const HostTensor& a, const HostTensor& b) {
  if (a.type() != b.type()) return false;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    if (a.get(i) != b.get(i)) return false;
  return true;
}

int count_ops(const Graph& graph, OpKind kind) {
  int n = 0;
  for (const Op& op : graph.ops()) n += op.kind == kind ? 1 : 0;
  return n;
}

std::int64_t counter(const PassManager& manager, const std::string& name) {
  for (const auto& pass : manager.statistics())
    for (const auto& [key, value] : pass.counters)
      if (key == name) return value;
  return 0;
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

std::map<std::string, HostTensor> random_args(const Graph& graph, std::int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> token(0, static_cast<int>(vocab) - 1);
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
  return args;
}

std::vector<std::string> trained(const Graph& graph) {
  std::vector<std::string> params;
  for (const Arg& arg : graph.args())
    if (arg.role == ArgRole::param) params.push_back(graph.value(arg.value).name);
  return params;
}

}  // namespace

TEST_CASE("mj.attention_qkv is the bthd attention of qkv's thirds, and its gradient their three gradients, bit for bit",
          "[passes][attention][qkv]") {
  struct Case {
    DType dtype;
    std::int64_t batch, tokens, heads, head_dim;
  };
  const Case cases[] = {{DType::f32, 2, 5, 3, 4}, {DType::f64, 1, 9, 2, 3}, {DType::bf16, 2, 4, 4, 8}, {DType::f32, 1, 1, 2, 5}};
  std::mt19937 rng(6);
  for (const Case& c : cases) {
    INFO(fmt::format("{} B{} T{} H{} D{}", dtype_name(c.dtype), c.batch, c.tokens, c.heads, c.head_dim));
    const std::int64_t rows = c.batch * c.tokens, width = c.heads * c.head_dim;
    const Shape heads{c.batch, c.tokens, c.heads, c.head_dim};
    Graph graph("packed");
    Builder b(graph);
    Tensor x = b.input("x", {rows, 3 * width}, c.dtype), dout = b.input("dout", heads, c.dtype);
    Tensor qkv = b.reshape(x, {c.batch, c.tokens, 3, c.heads, c.head_dim});
    std::vector<Tensor> packed = b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.0}});
    Tensor dqkv = b.op1(OpKind::AttentionQkvGrad, {qkv, packed[0], packed[1], dout}, {{"scale", 0.0}});
    b.output(packed[0], "out");
    b.output(packed[1], "lse");
    b.output(b.reshape(dqkv, {rows, 3 * width}), "dqkv");
    // The reference: three slices, mj.attention in bthd, the gradients concatenated.
    auto part = [&](int i) { return b.reshape(b.slice(x, {0, i * width}, {rows, (i + 1) * width}), heads); };
    AttrList bthd{{"scale", 0.0}};
    set_head_layout(bthd, HeadLayout::bthd);
    Tensor q = part(0), k = part(1), v = part(2);
    std::vector<Tensor> ref = b.op(OpKind::Attention, {q, k, v}, bthd);
    std::vector<Tensor> grads = b.op(OpKind::AttentionGrad, {q, k, v, ref[0], ref[1], dout}, bthd);
    auto flat = [&](Tensor t) { return b.reshape(t, {rows, width}); };
    b.output(ref[0], "ref.out");
    b.output(ref[1], "ref.lse");
    b.output(b.concat({flat(grads[0]), flat(grads[1]), flat(grads[2])}, 1), "ref.dqkv");
    std::map<std::string, HostTensor> args;
    for (const char* name : {"x", "dout"}) args.emplace(name, random_tensor(graph.type(graph.find_arg(name)), rng));
    const auto results = run_cpu(graph, args);
    for (const char* name : {"out", "lse", "dqkv"}) {
      INFO(name);
      CHECK(same_bits(results.at(name), results.at(std::string("ref.") + name)));
    }
  }
}

TEST_CASE("mj.attention_qkv: the shape rule wants [B, T, 3, H, Dh] and the gradient its out and lse",
          "[passes][attention][qkv]") {
  Graph graph("rule");
  Builder b(graph);
  Tensor qkv = b.input("qkv", {2, 5, 3, 4, 8}, DType::bf16);
  std::vector<Tensor> r = b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.0}});
  CHECK(r[0].type() == TensorType{DType::bf16, {2, 5, 4, 8}});
  CHECK(r[1].type() == TensorType{DType::f32, {2, 4, 5}});
  Tensor two = b.input("two", {2, 5, 2, 4, 8}, DType::bf16);
  CHECK_THROWS_WITH(b.op(OpKind::AttentionQkv, {two}, {{"scale", 0.0}}),
                    Catch::Contains("expected [B, T, 3, H, Dh] (q, k, v packed along axis 2), found tensor<2x5x2x4x8xbf16>"));
  Tensor flat = b.input("flat", {10, 96}, DType::bf16);
  CHECK_THROWS_WITH(b.op(OpKind::AttentionQkv, {flat}, {{"scale", 0.0}}), Catch::Contains("rank 5"));
  // The gradient: out [B, T, H, Dh], not the [B, H, T, Dh] of the unpacked default layout.
  Tensor bhtd_out = b.input("bhtd_out", {2, 4, 5, 8}, DType::bf16);
  CHECK_THROWS_WITH(b.op(OpKind::AttentionQkvGrad, {qkv, bhtd_out, r[1], r[0]}, {{"scale", 0.0}}),
                    Catch::Contains("expected tensor<2x5x4x8xbf16> (from qkv tensor<2x5x3x4x8xbf16>), found tensor<2x4x5x8xbf16>"));
  CHECK(b.op(OpKind::AttentionQkvGrad, {qkv, r[0], r[1], r[0]}, {{"scale", 0.0}})[0].type() == qkv.type());
}

TEST_CASE("fuse-attention-qkv keeps the GPT-MoE loss and every gradient and leaves no slice or pad of qkv",
          "[passes][attention][qkv]") {
  const GptMoeConfig config = small_config();
  for (DType precision : {DType::f32, DType::bf16}) {
    INFO(dtype_name(precision));
    Graph unfused("gpt");
    build_gpt_moe(unfused, config, {.batch = 2, .seq_len = config.block_size});
    Graph fused = unfused;
    PassManager manager;
    manager.add_pipeline("fuse-attention-qkv");
    manager.run(fused);
    CHECK(counter(manager, "attentions-packed") == config.n_layer);
    CHECK(count_ops(fused, OpKind::AttentionQkv) == config.n_layer);
    CHECK(count_ops(fused, OpKind::Attention) == 0);
    CHECK(count_ops(fused, OpKind::Slice) == count_ops(unfused, OpKind::Slice) - 3 * config.n_layer);
    CHECK(count_ops(fused, OpKind::Transpose) == count_ops(unfused, OpKind::Transpose) - 4 * config.n_layer);
    for (Graph* graph : {&unfused, &fused}) {
      if (precision == DType::bf16) {
        PassManager bf16;
        bf16.add_pipeline("mixed-precision{dtype=bf16}");
        bf16.run(*graph);
      }
      append_backward(*graph, {.loss = "loss", .wrt = trained(*graph)});
    }
    // The backward: one mj.attention_qkv_grad a layer and none of the three pads into d_qkv.
    CHECK(count_ops(fused, OpKind::AttentionQkvGrad) == config.n_layer);
    CHECK(count_ops(fused, OpKind::AttentionGrad) == 0);
    CHECK(count_ops(fused, OpKind::Pad) == count_ops(unfused, OpKind::Pad) - 3 * config.n_layer);
    const auto args = random_args(unfused, config.vocab_size, 3);
    const auto want = run_cpu(unfused, args), got = run_cpu(fused, args);
    REQUIRE(want.size() == got.size());
    for (const auto& [name, value] : want) {
      INFO(name);
      CHECK(same_values(got.at(name), value));
    }
  }
}

TEST_CASE("the trainer's graphs pack every attention of config B, and the CUDA pipeline keeps them packed",
          "[passes][attention][qkv]") {
  GptMoeConfig config_b = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config_b.vocab_size = 65;
  for (DType precision : {DType::bf16, DType::f32}) {
    INFO(dtype_name(precision));
    Graph graph = build_training_graph(config_b, precision).graph;
    PassManager manager;
    manager.add_pipeline(kCudaPipeline);
    manager.run(graph);
    CHECK(count_ops(graph, OpKind::AttentionQkv) == config_b.n_layer);
    CHECK(count_ops(graph, OpKind::AttentionQkvGrad) == config_b.n_layer);
    CHECK(count_ops(graph, OpKind::Attention) + count_ops(graph, OpKind::AttentionGrad) == 0);
    CHECK(count_ops(graph, OpKind::Slice) == 0);  // config B slices nothing else
    CHECK(count_ops(graph, OpKind::Pad) == 0);
    // bf16: the packed attention runs in bf16 (its one operand cast once where the projection is f32).
    if (precision == DType::bf16)
      for (const Op& op : graph.ops())
        if (op.kind == OpKind::AttentionQkv) CHECK(graph.type(op.operands[0]).dtype == DType::bf16);
  }
}

TEST_CASE("fuse-attention-qkv leaves RoPE attention, other slices and an attention already differentiated alone",
          "[passes][attention][qkv]") {
  auto packed_after_pass = [](Graph graph) {
    PassManager manager;
    manager.add_pipeline("fuse-attention-qkv");
    manager.run(graph);
    return std::pair{counter(manager, "attentions-packed"), graph};
  };
  GptMoeConfig rope = small_config();
  rope.position_embedding = "rope";
  Graph rope_graph("rope");
  build_gpt_moe(rope_graph, rope, {.batch = 2, .seq_len = rope.block_size});
  CHECK(packed_after_pass(rope_graph).first == 0);  // q and k are rotated between the slice and the attention

  // After autodiff the lse is read by the gradient: the pass does not rewrite half of the pair.
  const GptMoeConfig config = small_config();
  Graph differentiated("gpt");
  build_gpt_moe(differentiated, config, {.batch = 2, .seq_len = config.block_size});
  append_backward(differentiated, {.loss = "loss", .wrt = trained(differentiated)});
  CHECK(packed_after_pass(differentiated).first == 0);

  // q and k swapped, a slice of other rows, a different projection for v: not the packed layout.
  const std::int64_t B = 2, T = 3, H = 2, Dh = 4, D = H * Dh;
  auto graph_with = [&](auto&& choose) {
    Graph graph("slices");
    Builder b(graph);
    Tensor x = b.input("x", {B * T, 3 * D}, DType::f32), y = b.input("y", {B * T, 3 * D}, DType::f32);
    auto head = [&](Tensor from, std::int64_t r0, std::int64_t r1, int part) {
      Tensor s = b.slice(from, {r0, part * D}, {r1, (part + 1) * D});
      return b.transpose(b.reshape(s, {B, r1 - r0 == B * T ? T : 1, H, Dh}), {0, 2, 1, 3});
    };
    choose(b, x, y, head);
    return graph;
  };
  auto out = [](Builder& b, Tensor q, Tensor k, Tensor v) { b.output(b.attention(q, k, v), "out"); };
  CHECK(packed_after_pass(graph_with([&](Builder& b, Tensor x, Tensor, auto head) {
          out(b, head(x, 0, B * T, 1), head(x, 0, B * T, 0), head(x, 0, B * T, 2));
        })).first == 0);
  CHECK(packed_after_pass(graph_with([&](Builder& b, Tensor x, Tensor y, auto head) {
          out(b, head(x, 0, B * T, 0), head(x, 0, B * T, 1), head(y, 0, B * T, 2));
        })).first == 0);
  // The same graph with everything in place is packed, and means the same on the CPU.
  const Graph good = graph_with([&](Builder& b, Tensor x, Tensor, auto head) {
    out(b, head(x, 0, B * T, 0), head(x, 0, B * T, 1), head(x, 0, B * T, 2));
  });
  const auto [packed, rewritten] = packed_after_pass(good);
  CHECK(packed == 1);
  CHECK(count_ops(rewritten, OpKind::Slice) == 0);
  std::mt19937 rng(9);
  std::map<std::string, HostTensor> args;
  for (const char* name : {"x", "y"}) args.emplace(name, random_tensor(good.type(good.find_arg(name)), rng));
  CHECK(same_bits(run_cpu(rewritten, args).at("out"), run_cpu(good, args).at("out")));
}
