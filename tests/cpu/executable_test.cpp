// The Executable API on the CPU backend: the few lines from graph to outputs,
// binding errors, unbound arguments, outputs that are arguments or
// intermediates, kernel errors naming the op; and the completeness test: every
// op of the table runs on the CPU backend on sample inputs.
#include <fstream>
#include <numbers>
#include <optional>
#include <sstream>

#include "cpu_test_util.h"

using namespace moejit;
using namespace moejit::cpu_test;

TEST_CASE("graph to outputs in a few lines", "[cpu][executable]") {
  // y = sum(gelu(x @ w), axis 1)
  Graph graph("mlp");
  Builder b(graph);
  Tensor x = b.input("x", {2, 3});
  Tensor w = b.param("w", {3, 4});
  b.output(b.sum(b.gelu(b.matmul(x, w)), {1}), "y");

  auto exe = make_cpu_backend()->compile(graph);
  std::vector<float> w_values = {1, 0, -1, 2, 0.5f, 1, 0, -1, 0, 2, 1, 0.25f};
  std::vector<float> x_values = {1, 2, 3, -1, 0, 0.5f};
  exe->set("w", HostTensor::from_floats({3, 4}, w_values));
  exe->set("x", HostTensor::from_floats({2, 3}, x_values));
  exe->run();
  HostTensor y = exe->get("y");

  REQUIRE(y.type() == TensorType{DType::f32, {2}});
  for (int row = 0; row < 2; ++row) {
    double want = 0;
    for (int col = 0; col < 4; ++col) {
      double h = 0;
      for (int k = 0; k < 3; ++k) h += x_values[static_cast<std::size_t>(row * 3 + k)] * w_values[static_cast<std::size_t>(k * 4 + col)];
      want += 0.5 * h * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (h + 0.044715 * h * h * h)));
    }
    CHECK(y.get(row) == Approx(want).epsilon(1e-5));
  }
  // Params stay bound: a new input alone is enough for the next run.
  exe->set("x", HostTensor::from_floats({2, 3}, std::vector<float>(6, 0.0f)));
  exe->run();
  CHECK(exe->get("y").get(0) == 0.0);
  CHECK(exe->get("w").get(3) == 2.0);  // arguments read back too
}

TEST_CASE("bad bindings and unbound arguments are errors that name them", "[cpu][executable]") {
  Graph graph("g");
  Builder b(graph);
  Tensor x = b.input("x", {2, 3});
  Tensor w = b.param("w", {2, 3});
  b.output(b.add(x, w), "y");
  auto exe = make_cpu_backend()->compile(graph);

  CHECK_THROWS_WITH(exe->set("x", HostTensor(TensorType{DType::f64, {2, 3}})),
                    Catch::Contains("'x'") && Catch::Contains("tensor<2x3xf32>") && Catch::Contains("tensor<2x3xf64>"));
  CHECK_THROWS_WITH(exe->set("w", HostTensor(TensorType{DType::f32, {3, 2}})),
                    Catch::Contains("'w'") && Catch::Contains("tensor<2x3xf32>") && Catch::Contains("tensor<3x2xf32>"));
  CHECK_THROWS_WITH(exe->set("nope", HostTensor(TensorType{DType::f32, {2, 3}})), Catch::Contains("'nope'"));
  CHECK_THROWS_WITH(exe->get("y"), Catch::Contains("'y'") && Catch::Contains("run"));
  CHECK_THROWS_WITH(exe->run(), Catch::Contains("'x'") && Catch::Contains("not bound"));
  exe->set("x", HostTensor(TensorType{DType::f32, {2, 3}}));
  CHECK_THROWS_WITH(exe->run(), Catch::Contains("'w'") && Catch::Contains("not bound"));
  CHECK_THROWS_WITH(exe->get("w"), Catch::Contains("'w'") && Catch::Contains("not bound"));
  exe->set("w", HostTensor(TensorType{DType::f32, {2, 3}}));
  CHECK_NOTHROW(exe->run());
  CHECK_THROWS_WITH(exe->get("missing"), Catch::Contains("'missing'"));

  // An invalid graph does not compile.
  Graph bad("bad");
  Builder bb(bad);
  Tensor a = bb.input("a", {2});
  bad.add_op(OpKind::Exp, {a.id}, {}, {TensorType{DType::f32, {3}}});
  CHECK_THROWS_AS(make_cpu_backend()->compile(bad), Error);
}

TEST_CASE("outputs may be arguments, intermediates, or repeated, and unused results are dropped", "[cpu][executable]") {
  Graph graph("g");
  Builder b(graph);
  Tensor x = b.input("x", {3});
  Tensor e = b.exp(x);
  Tensor twice = b.add(e, e);          // e is used again after being an output
  Tensor n = b.neg(twice);
  b.output(x, "x_again");
  b.output(e, "e");
  b.output(n, "n1");
  b.output(n, "n2");
  Tensor unused = b.log(e);            // computed and freed, never read
  (void)unused;
  b.output(b.sqrt(e), "s");
  auto exe = make_cpu_backend()->compile(graph);
  std::vector<double> xs = {0.0, 1.0, -1.0};
  exe->set("x", HostTensor::from_doubles(TensorType{DType::f32, {3}}, xs));
  for (int run = 0; run < 2; ++run) {
    exe->run();
    std::vector<double> ev, nv, sv;
    for (double v : xs) {
      ev.push_back(std::exp(v));
      nv.push_back(-2 * std::exp(v));
      sv.push_back(std::sqrt(std::exp(v)));
    }
    check_close(exe->get("x_again"), xs, 0.0);
    check_close(exe->get("e"), ev, 1e-6);
    check_close(exe->get("n1"), nv, 1e-6);
    check_close(exe->get("n2"), nv, 1e-6);
    check_close(exe->get("s"), sv, 1e-6);
  }
}

TEST_CASE("kernel errors name the op", "[cpu][executable]") {
  Graph graph("g");
  Builder b(graph);
  Tensor table = b.param("table", {4, 2});
  Tensor ids = b.input("ids", {3}, DType::i32);
  b.output(b.embedding(table, ids), "y");
  auto exe = make_cpu_backend()->compile(graph);
  exe->set("table", HostTensor(TensorType{DType::f32, {4, 2}}));
  std::vector<std::int32_t> bad = {0, 7, 1};
  exe->set("ids", HostTensor::from_ints({3}, bad));
  CHECK_THROWS_WITH(exe->run(), Catch::Contains("\"mj.embedding\"") && Catch::Contains("ids[1]") && Catch::Contains("found 7"));
}

// On the CPU backend (one rank) the collectives are the identity; a graph
// built for several ranks is refused, naming the op, and bad counts are
// caught as a real exchange would catch them.
TEST_CASE("comm ops are the identity on one rank and refuse several", "[cpu][executable][comm]") {
  std::vector<std::int32_t> row_values = {1, 2, 3, 4, 5, 6};
  auto run_all_to_all = [&](std::int64_t world_size, std::vector<std::int32_t> counts) {
    Graph graph("a2a");
    Builder b(graph);
    Tensor x = b.input("x", {3, 2});
    Tensor send = b.input("send", {world_size}, DType::i32);
    auto r = b.op(OpKind::AllToAll, {x, send}, {{"world_size", world_size}});
    b.output(b.op1(OpKind::AllReduce, {b.op1(OpKind::AllGather, {r[0]}, {{"world_size", world_size}})},
                   {{"world_size", world_size}}),
             "y");
    b.output(r[1], "recv");
    auto exe = make_cpu_backend()->compile(graph);
    exe->set("x", HostTensor::from_ints({3, 2}, row_values).cast(DType::f32));
    exe->set("send", HostTensor::from_ints({world_size}, counts));
    exe->run();
    return std::pair{exe->get("y"), exe->get("recv")};
  };
  auto [y, recv] = run_all_to_all(1, {2});
  CHECK(y.to_doubles() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(recv.to_doubles() == std::vector<double>{2});
  CHECK_THROWS_WITH(run_all_to_all(1, {4}), Catch::Contains("\"comm.all_to_all\"") && Catch::Contains("at most 3") &&
                                                Catch::Contains("found 4"));
  CHECK_THROWS_WITH(run_all_to_all(1, {-1}), Catch::Contains("\"comm.all_to_all\"") && Catch::Contains("found -1"));
  CHECK_THROWS_WITH(run_all_to_all(2, {1, 1}), Catch::Contains("\"comm.all_to_all\"") && Catch::Contains("world_size 2") &&
                                                   Catch::Contains("single rank"));
}

// ---- completeness: every op runs on sample inputs ----

namespace {

// A sample use of one op: its operands as graph inputs with values, and attributes.
struct Sample {
  std::vector<HostTensor> operands;
  AttrList attrs;
};

HostTensor floats(Shape shape, double lo = -1.0, double hi = 1.0) {
  static std::mt19937 rng(99);
  return random_tensor(TensorType{DType::f32, std::move(shape)}, rng, lo, hi);
}
HostTensor ints(Shape shape, std::vector<std::int32_t> values) { return HostTensor::from_ints(std::move(shape), values); }
HostTensor scalar(double v) { return HostTensor::scalar(v); }

// A consistent small routing: T = 4 tokens, K = 2, E = 3 experts.
//   experts   [[0,1],[2,0],[1,2],[0,2]]
//   slots     sorted by expert: [0,3,6 | 1,4 | 2,5,7], offsets [0,3,5,8]
//   positions the row of slot t*K+k: [[0,3],[5,1],[4,6],[2,7]]
HostTensor experts() { return ints({4, 2}, {0, 1, 2, 0, 1, 2, 0, 2}); }
HostTensor slots() { return ints({8}, {0, 3, 6, 1, 4, 2, 5, 7}); }
HostTensor offsets() { return ints({4}, {0, 3, 5, 8}); }
HostTensor positions() { return ints({4, 2}, {0, 3, 5, 1, 4, 6, 2, 7}); }

std::optional<Sample> sample_for(OpKind kind) {
  using V = std::vector<std::int64_t>;
  const AttrList gate{{"top_k", std::int64_t{2}}, {"score", std::string("softmax")}, {"order", std::string("softmax_then_topk")},
                      {"normalize", true}};
  switch (kind) {
    case OpKind::Neg: case OpKind::Exp: case OpKind::Tanh: case OpKind::Relu: case OpKind::Gelu: case OpKind::Silu:
    case OpKind::Sigmoid: case OpKind::Softplus: case OpKind::Softmax: case OpKind::LogSoftmax:
      return Sample{{floats({2, 3})}, {}};
    case OpKind::Log: case OpKind::Sqrt: case OpKind::Rsqrt: return Sample{{floats({2, 3}, 0.5, 2)}, {}};
    case OpKind::Add: case OpKind::Sub: case OpKind::Mul: case OpKind::Maximum: case OpKind::Minimum:
    case OpKind::GeluGrad:
      return Sample{{floats({2, 3}), floats({2, 3})}, {}};
    case OpKind::Div: return Sample{{floats({2, 3}), floats({2, 3}, 0.5, 2)}, {}};
    case OpKind::Compare: return Sample{{floats({2, 3}), floats({2, 3})}, {{"predicate", std::string("lt")}}};
    case OpKind::Where: return Sample{{ints({2}, {1, 0}).cast(DType::i1), floats({2}), floats({2})}, {}};
    case OpKind::Cast: return Sample{{floats({2, 3})}, {{"dtype", DType::bf16}}};
    case OpKind::Constant: return Sample{{}, {{"dtype", DType::f32}, {"shape", V{2}}, {"value", 1.0}}};
    case OpKind::Sum: case OpKind::Mean: case OpKind::Max:
      return Sample{{floats({2, 3})}, {{"axes", V{-1}}, {"keepdims", false}}};
    case OpKind::LayerNorm: return Sample{{floats({2, 3}), floats({3}), floats({3})}, {{"eps", 1e-5}}};
    case OpKind::RmsNorm: return Sample{{floats({2, 3}), floats({3})}, {{"eps", 1e-5}}};
    case OpKind::LayerNormGrad: case OpKind::RmsNormGrad:
      return Sample{{floats({2, 3}), floats({3}), floats({2, 3})}, {{"eps", 1e-5}}};
    case OpKind::Matmul: return Sample{{floats({2, 3}), floats({3, 4})}, {{"transpose_a", false}, {"transpose_b", false}}};
    case OpKind::Embedding: return Sample{{floats({5, 3}), ints({2}, {4, 0})}, {}};
    case OpKind::EmbeddingGrad: return Sample{{ints({2}, {4, 0}), floats({2, 3})}, {{"num_embeddings", std::int64_t{5}}}};
    case OpKind::Reshape: return Sample{{floats({2, 3})}, {{"shape", V{3, 2}}}};
    case OpKind::Transpose: return Sample{{floats({2, 3})}, {{"perm", V{1, 0}}}};
    case OpKind::Broadcast: return Sample{{floats({3})}, {{"shape", V{2, 3}}}};
    case OpKind::Slice: return Sample{{floats({2, 3})}, {{"start", V{0, 1}}, {"limit", V{2, 3}}}};
    case OpKind::Pad: return Sample{{floats({2, 3})}, {{"low", V{1, 0}}, {"high", V{0, 2}}}};
    case OpKind::Concat: return Sample{{floats({2, 3}), floats({1, 3})}, {{"axis", std::int64_t{0}}}};
    case OpKind::Attention: return Sample{{floats({1, 2, 3, 4}), floats({1, 2, 3, 4}), floats({1, 2, 3, 4})}, {{"scale", 0.0}}};
    case OpKind::AttentionGrad:
      return Sample{{floats({1, 2, 3, 4}), floats({1, 2, 3, 4}), floats({1, 2, 3, 4}), floats({1, 2, 3, 4}), floats({1, 2, 3}),
                     floats({1, 2, 3, 4})},
                    {{"scale", 0.0}}};
    case OpKind::AttentionQkv: return Sample{{floats({1, 3, 3, 2, 4})}, {{"scale", 0.0}}};  // qkv [B, T, 3, H, Dh]
    case OpKind::AttentionQkvGrad:  // qkv, out [B, T, H, Dh], lse [B, H, T], dout
      return Sample{{floats({1, 3, 3, 2, 4}), floats({1, 3, 2, 4}), floats({1, 2, 3}), floats({1, 3, 2, 4})}, {{"scale", 0.0}}};
    case OpKind::CrossEntropy: return Sample{{floats({2, 3}), ints({2}, {2, 0})}, {}};
    case OpKind::CrossEntropyGrad: return Sample{{floats({2, 3}), ints({2}, {2, 0}), scalar(1.0)}, {}};
    case OpKind::Dropout: return Sample{{floats({2, 3})}, {{"p", 0.5}, {"seed", std::int64_t{1}}, {"offset", std::int64_t{0}}}};
    case OpKind::RandomNormal:
      return Sample{{}, {{"dtype", DType::f32}, {"shape", V{2, 3}}, {"seed", std::int64_t{1}}, {"offset", std::int64_t{0}}}};
    case OpKind::AdamW:
      return Sample{{floats({3}), floats({3}), floats({3}), floats({3}, 0.1, 1), scalar(0.01), scalar(1.0)},
                    {{"beta1", 0.9}, {"beta2", 0.95}, {"eps", 1e-8}, {"weight_decay", 0.1}}};
    // ---- MoE (T = 4, K = 2, E = 3, D = 5, F = 6) ----
    case OpKind::Gate: return Sample{{floats({4, 3})}, gate};
    case OpKind::GateGrad: {
      AttrList attrs = gate;
      attrs.erase("top_k");
      return Sample{{floats({4, 3}), experts(), floats({4, 2})}, attrs};
    }
    case OpKind::Dispatch:
      return Sample{{experts()}, {{"num_experts", std::int64_t{3}}, {"capacity_factor", 0.0}, {"block", std::int64_t{1}}}};
    case OpKind::Permute: return Sample{{floats({4, 5}), slots()}, {{"top_k", std::int64_t{2}}}};
    case OpKind::PermuteGrad: return Sample{{floats({8, 5}), positions()}, {}};
    case OpKind::GroupedMatmul: return Sample{{floats({8, 5}), floats({3, 5, 6}), offsets()}, {{"transpose_w", false}}};
    case OpKind::GroupedMatmulWgrad: return Sample{{floats({8, 5}), floats({8, 6}), offsets()}, {}};
    case OpKind::Combine: return Sample{{floats({8, 5}), floats({4, 2}), positions()}, {}};
    case OpKind::CombineGrad: return Sample{{floats({8, 5}), floats({4, 2}), positions(), floats({4, 5})}, {}};
    case OpKind::LoadBalanceLoss: return Sample{{floats({4, 3}, 0.1, 1), experts()}, {{"coeff", 0.01}}};
    case OpKind::LoadBalanceLossGrad: return Sample{{floats({4, 3}, 0.1, 1), experts(), scalar(1.0)}, {{"coeff", 0.01}}};
    case OpKind::ZLoss: return Sample{{floats({4, 3})}, {{"coeff", 0.01}}};
    case OpKind::ZLossGrad: return Sample{{floats({4, 3}), scalar(1.0)}, {{"coeff", 0.01}}};
    case OpKind::EntropyReg: return Sample{{floats({4, 3}, 0.1, 1)}, {{"coeff", 0.01}}};
    case OpKind::EntropyRegGrad: return Sample{{floats({4, 3}, 0.1, 1), scalar(1.0)}, {{"coeff", 0.01}}};
    case OpKind::Route: {
      AttrList attrs = gate;
      attrs.set("num_experts", std::int64_t{3});
      attrs.set("capacity_factor", 0.0);
      attrs.set("block", std::int64_t{1});
      return Sample{{floats({4, 5}), floats({5, 3})}, attrs};
    }
    case OpKind::GatherMatmul:
      return Sample{{floats({4, 5}), floats({3, 5, 6}), slots(), offsets(), positions()}, {{"top_k", std::int64_t{2}}}};
    case OpKind::ExpertChoice: return Sample{{floats({4, 3})}, {{"capacity_factor", 1.0}, {"top_k", std::int64_t{2}}}};
    case OpKind::MatmulCombine: return Sample{{floats({8, 6}), floats({3, 6, 5}), offsets(), floats({4, 2}), positions()}, {}};
    // ---- communication, one rank ----
    case OpKind::AllReduce: case OpKind::AllGather: case OpKind::ReduceScatter:
      return Sample{{floats({2, 3})}, {{"world_size", std::int64_t{1}}}};
    case OpKind::AllToAll: return Sample{{floats({4, 3}), ints({1}, {3})}, {{"world_size", std::int64_t{1}}}};
    default: return std::nullopt;  // a new op: the test asks for a sample
  }
}

bool moe_kernels_are_placeholders() {
  std::ifstream file(std::string(MOEJIT_SOURCE_DIR) + "/runtime/cpu/cpu_moe.cpp");
  std::stringstream text;
  text << file.rdbuf();
  return text.str().find("PLACEHOLDER") != std::string::npos;
}

}  // namespace

TEST_CASE("every op of the table has a CPU kernel that runs on sample inputs", "[cpu][completeness]") {
  const bool placeholders = moe_kernels_are_placeholders();
  std::vector<std::string> not_implemented;
  int ran = 0;
  for (const OpInfo& info : all_ops()) {
    INFO("op " << info.name);
    std::optional<Sample> sample = sample_for(info.kind);
    if (!sample) FAIL("no sample inputs for " << info.name << " in tests/cpu/executable_test.cpp: add one");
    std::vector<HostTensor> results;
    try {
      results = run_op(info.kind, sample->operands, sample->attrs);
    } catch (const Error& e) {
      std::string message = e.what();
      bool placeholder = placeholders && info.name.starts_with("moe.") && message.find("not implemented") != std::string::npos;
      if (!placeholder) FAIL("running " << info.name << " threw: " << message);
      not_implemented.emplace_back(info.name);
      continue;
    }
    ++ran;
    REQUIRE(static_cast<int>(results.size()) == info.num_results);
    for (const HostTensor& r : results)
      if (is_float(r.dtype()))
        for (double v : r.to_doubles()) REQUIRE(std::isfinite(v));
  }
  if (!not_implemented.empty()) {
    std::string list;
    for (const auto& name : not_implemented) list += " " + name;
    WARN("cpu_moe.cpp still has PLACEHOLDER kernels; not implemented yet:" << list);
  }
  CHECK(ran + static_cast<int>(not_implemented.size()) == kNumOps);
  if (!placeholders) CHECK(not_implemented.empty());
}
