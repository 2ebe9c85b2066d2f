// The f32 expert matmuls of runtime/cpu/cpu_moe.cpp (grouped_matmul in both
// layouts, its weight gradient, gather_matmul, matmul_combine): f32 with f32
// accumulation, checked against the f64 kernels (the reference the other MoE
// tests check against per-row loops) on the same inputs, and bit-identical
// whatever the number of threads.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <random>

#include "moe_test_util.h"

using namespace moetest;

namespace {

Doubles random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Doubles v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

// Every expert matmul form on one routing: T tokens, top-2 of E experts.
struct ExpertMatmuls {
  static constexpr int T = 96, K = 2, E = 4, D = 48, F = 40, N = T * K;
  Ints slots, offsets, positions;
  Doubles x, xs, w, w_t, w_down, dys, hs, weights;

  ExpertMatmuls() {
    // Token t goes to experts t % E and (t / E) % E (or the next one).
    std::vector<Ints> rows_of(E);
    positions.assign(T * K, -1);
    for (int t = 0; t < T; ++t) {
      int e0 = t % E, e1 = (t / E) % E;
      if (e1 == e0) e1 = (e0 + 1) % E;
      rows_of[static_cast<std::size_t>(e0)].push_back(t * K);
      rows_of[static_cast<std::size_t>(e1)].push_back(t * K + 1);
    }
    offsets.push_back(0);
    for (int e = 0; e < E; ++e) {
      for (int slot : rows_of[static_cast<std::size_t>(e)]) {
        positions[static_cast<std::size_t>(slot)] = static_cast<int>(slots.size());
        slots.push_back(slot);
      }
      offsets.push_back(static_cast<int>(slots.size()));
    }
    x = random_values(T * D, 1);
    xs.assign(N * D, 0.0);
    for (int i = 0; i < N; ++i)
      for (int k = 0; k < D; ++k) xs[static_cast<std::size_t>(i * D + k)] = x[static_cast<std::size_t>((slots[static_cast<std::size_t>(i)] / K) * D + k)];
    w = random_values(E * D * F, 2);
    w_t.assign(w.size(), 0.0);
    for (int e = 0; e < E; ++e)
      for (int k = 0; k < D; ++k)
        for (int j = 0; j < F; ++j) w_t[static_cast<std::size_t>((e * F + j) * D + k)] = w[static_cast<std::size_t>((e * D + k) * F + j)];
    w_down = random_values(E * F * D, 3);
    dys = random_values(N * F, 4);
    hs = random_values(N * F, 5);
    weights = random_values(T * K, 6);
  }

  // Runs every form in `dtype` with MOEJIT_CPU_THREADS = threads.
  Values run(DType dtype, const char* threads) const {
    Graph g("expert_matmuls");
    Builder b(g);
    Tensor xt = b.input("x", {T, D}, dtype), xst = b.input("xs", {N, D}, dtype);
    Tensor wt = b.input("w", {E, D, F}, dtype), wtt = b.input("w_t", {E, F, D}, dtype);
    Tensor wd = b.input("w_down", {E, F, D}, dtype), dyt = b.input("dys", {N, F}, dtype), ht = b.input("hs", {N, F}, dtype);
    Tensor wts = b.input("weights", {T, K}, dtype);
    Tensor st = b.input("slots", {N}, DType::i32), ot = b.input("offsets", {E + 1}, DType::i32);
    Tensor pt = b.input("positions", {T, K}, DType::i32);
    b.output(b.moe_grouped_matmul(xst, wt, ot), "y");
    b.output(b.moe_grouped_matmul(xst, wtt, ot, true), "y_t");
    b.output(b.op1(OpKind::GroupedMatmulWgrad, {xst, dyt, ot}), "dw");
    AttrList gather_attrs;
    gather_attrs.set("top_k", std::int64_t{K});
    b.output(b.op1(OpKind::GatherMatmul, {xt, wt, st, ot, pt}, gather_attrs), "gathered");
    auto matmul_combine = b.op(OpKind::MatmulCombine, {ht, wd, ot, wts, pt});
    b.output(matmul_combine[0], "combined");
    b.output(matmul_combine[1], "combined_rows");
    ::setenv("MOEJIT_CPU_THREADS", threads, 1);
    Values out = run_cpu(g, {{"x", doubles_tensor({T, D}, x, dtype)},
                             {"xs", doubles_tensor({N, D}, xs, dtype)},
                             {"w", doubles_tensor({E, D, F}, w, dtype)},
                             {"w_t", doubles_tensor({E, F, D}, w_t, dtype)},
                             {"w_down", doubles_tensor({E, F, D}, w_down, dtype)},
                             {"dys", doubles_tensor({N, F}, dys, dtype)},
                             {"hs", doubles_tensor({N, F}, hs, dtype)},
                             {"weights", doubles_tensor({T, K}, weights, dtype)},
                             {"slots", ints_tensor({N}, slots)},
                             {"offsets", ints_tensor({E + 1}, offsets)},
                             {"positions", ints_tensor({T, K}, positions)}});
    ::unsetenv("MOEJIT_CPU_THREADS");
    return out;
  }
};

}  // namespace

TEST_CASE("the f32 expert matmuls agree with the f64 ones, whatever the thread count", "[moe][ops][f32]") {
  const ExpertMatmuls m;
  // The f64 inputs are the f32 values, so only the arithmetic differs.
  ExpertMatmuls rounded = m;
  for (Doubles* v : {&rounded.x, &rounded.xs, &rounded.w, &rounded.w_t, &rounded.w_down, &rounded.dys, &rounded.hs,
                     &rounded.weights})
    for (double& value : *v) value = static_cast<double>(static_cast<float>(value));
  const Values f64 = rounded.run(DType::f64, "2");
  const Values one = m.run(DType::f32, "1");
  const Values two = m.run(DType::f32, "2");
  const Values three = m.run(DType::f32, "3");
  for (const char* name : {"y", "y_t", "dw", "gathered", "combined", "combined_rows"}) {
    INFO(name);
    REQUIRE(one.at(name).dtype() == DType::f32);
    // Sums of 40-200 products of unit normals, accumulated in f32.
    CHECK(max_rel_diff(one.at(name).to_doubles(), f64.at(name).to_doubles()) < 2e-5);
    CHECK(max_rel_diff(one.at(name).to_doubles(), f64.at(name).to_doubles()) > 0.0);  // really computed in f32
    CHECK(std::memcmp(one.at(name).raw(), two.at(name).raw(), one.at(name).bytes()) == 0);
    CHECK(std::memcmp(one.at(name).raw(), three.at(name).raw(), one.at(name).bytes()) == 0);
  }
  // bf16 runs through f32 copies: within bf16's rounding of the f32 result.
  const Values bf16 = m.run(DType::bf16, "2");
  for (const char* name : {"y", "dw", "gathered"}) {
    INFO(name);
    CHECK(max_rel_diff(bf16.at(name).to_doubles(), f64.at(name).to_doubles()) < 0.1);
  }
}
