// fuse-gemm-epilogue's cast fold (passes/fuse_gemm_epilogue.cpp) on the CPU:
// the marks it sets on a bf16 mixed-precision training graph, and the marked
// graph on the CPU interpreter against the unmarked one, bit for bit (the
// marks are discardable attributes: the folded cast keeps its meaning, the
// CUDA backend's GEMM epilogue must reproduce it; tests/cuda/cast_fold_test.cpp
// compares the GPU with this).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <random>
#include <string>

#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/graph_test_util.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

// A pre-norm residual block trained through mixed-precision{dtype=bf16}:
// x + f32(relu(bf16(ln(x)) w1) w2), loss = mean(y * target).
Graph block(std::int64_t tokens, std::int64_t d, std::int64_t f) {
  Graph g("cast_fold_block");
  Builder b(g);
  Tensor x = b.input("x", {tokens, d});
  Tensor gamma = b.param("gamma", {d}), beta = b.param("beta", {d});
  Tensor w1 = b.param("w1", {d, f}), w2 = b.param("w2", {f, d});
  Tensor target = b.input("target", {tokens, d});
  Tensor y = b.add(x, b.matmul(b.relu(b.matmul(b.layer_norm(x, gamma, beta), w1)), w2));
  b.output(b.mean(b.mul(y, target), {0, 1}), "loss");
  run_pipeline(g, "mixed-precision{dtype=bf16}");
  append_backward(g, {.loss = "loss", .wrt = {"x", "gamma", "beta", "w1", "w2"}});
  return g;
}

}  // namespace

TEST_CASE("fuse-gemm-epilogue's cast fold marks the casts of GEMM products and keeps the CPU results bit for bit", "[passes][casts]") {
  const Graph plain = block(48, 16, 24);
  Graph marked = plain;
  PassManager manager;
  manager.add_pipeline("fuse-gemm-epilogue");
  manager.run(marked);
  // Backward: ln(x)'s input gradient (read by layer_norm_grad), dw1, dw2. The
  // forward's f32(... w2) is read only by the residual add: it stays in the
  // add's elementwise chain, unmarked.
  int casts = 0;
  for (const Op& op : marked.ops()) {
    if (op.kind != OpKind::Cast || !op.attrs.has("mj.gemm_epilogue")) continue;
    ++casts;
    CHECK(marked.type(op.results[0]).dtype == DType::f32);
  }
  CHECK(casts == 3);
  std::int64_t counted = -1;
  for (const auto& stats : manager.statistics())
    for (const auto& [counter, value] : stats.counters)
      if (counter == "cast-folded") counted = value;
  CHECK(counted == 3);

  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::map<std::string, HostTensor> args;
  for (const Arg& arg : plain.args()) {
    HostTensor t(plain.type(arg.value));
    for (std::int64_t i = 0; i < t.numel(); ++i) t.set(i, normal(rng));
    args.emplace(plain.value(arg.value).name, std::move(t));
  }
  const auto want = pass_test::run_cpu(plain, args), got = pass_test::run_cpu(marked, args);
  for (const auto& [name, value] : want) {
    INFO(name);
    CHECK(value.type() == got.at(name).type());
    CHECK(std::memcmp(value.raw(), got.at(name).raw(), value.bytes()) == 0);
  }
}
