// moe.gate and moe.dispatch against the per-token references of
// moe_test_util.h: every score/order/normalize/bias combination, ties, E = 1,
// K = E; dispatch with every expert hit, empty experts, capacity drops, block
// padding. Plus gate's gradient by finite differences.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <random>
#include <set>

#include "ir/error.h"
#include "moe_test_util.h"

using namespace moetest;

namespace {

struct GateRun {
  Doubles weights;
  Ints experts;
};

GateRun run_gate(const Doubles& logits, int tokens, int num_experts, const Doubles& bias, const GateOptions& options,
                 DType dtype = DType::f64) {
  Graph g("gate");
  Builder b(g);
  Tensor l = b.input("logits", {tokens, num_experts}, dtype);
  Tensor bias_t;
  if (!bias.empty()) bias_t = b.input("bias", {num_experts}, dtype);
  auto [w, e] = b.moe_gate(l, options, bias.empty() ? nullptr : &bias_t);
  b.output(w, "weights");
  b.output(e, "experts");
  Values in{{"logits", doubles_tensor({tokens, num_experts}, logits, dtype)}};
  if (!bias.empty()) in["bias"] = doubles_tensor({num_experts}, bias, dtype);
  auto out = run_cpu(g, in);
  return {out["weights"].to_doubles(), ints_of(out["experts"])};
}

void check_gate_against_reference(const Doubles& logits, int tokens, int num_experts, const Doubles& bias,
                                  const GateOptions& o, double tolerance = 1e-12, DType dtype = DType::f64) {
  GateRun got = run_gate(logits, tokens, num_experts, bias, o, dtype);
  for (int t = 0; t < tokens; ++t) {
    Doubles row(logits.begin() + t * num_experts, logits.begin() + (t + 1) * num_experts);
    RefGate want = ref_gate(row, bias, static_cast<int>(o.top_k), o.score, o.order, o.normalize);
    for (int k = 0; k < o.top_k; ++k) {
      auto s = static_cast<std::size_t>(t * o.top_k + k);
      INFO(fmt::format("token {} k {} score {} order {} normalize {} bias {}", t, k, o.score, o.order, o.normalize, !bias.empty()));
      CHECK(got.experts[s] == want.experts[static_cast<std::size_t>(k)]);
      CHECK(std::abs(got.weights[s] - want.weights[static_cast<std::size_t>(k)]) <= tolerance);
    }
  }
}

Doubles random_doubles(std::size_t n, unsigned seed, double lo = -2.0, double hi = 2.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Doubles v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

const char* kScores[] = {"softmax", "sigmoid"};
const char* kOrders[] = {"softmax_then_topk", "topk_then_softmax"};

}  // namespace

TEST_CASE("moe.gate matches the per-token reference in every score/order/normalize/bias combination", "[moe][gate]") {
  const int tokens = 16, num_experts = 6;
  Doubles logits = random_doubles(tokens * num_experts, 1);
  Doubles bias = random_doubles(num_experts, 2, -0.4, 0.4);
  std::set<int> hit;
  for (const char* score : kScores)
    for (const char* order : kOrders)
      for (bool normalize : {false, true})
        for (bool with_bias : {false, true}) {
          GateOptions o{.top_k = 3, .score = score, .order = order, .normalize = normalize};
          check_gate_against_reference(logits, tokens, num_experts, with_bias ? bias : Doubles{}, o);
          for (int e : run_gate(logits, tokens, num_experts, {}, o).experts) hit.insert(e);
        }
  CHECK(hit.size() == static_cast<std::size_t>(num_experts));  // the inputs reach every expert
}

TEST_CASE("moe.gate: the bias changes the choice but not the weights' formula", "[moe][gate]") {
  // Token logits favour expert 0; a large bias on expert 3 makes it chosen
  // (first), yet its weight is its unbiased softmax probability.
  Doubles logits = {3.0, 1.0, 0.5, 0.0};
  Doubles bias = {0.0, 0.0, 0.0, 10.0};
  GateRun r = run_gate(logits, 1, 4, bias, {.top_k = 2, .score = "softmax", .order = "softmax_then_topk"});
  REQUIRE(r.experts == Ints{3, 0});
  Doubles p = ref_softmax(logits);
  CHECK(r.weights[0] == Approx(p[3]).epsilon(1e-12));
  CHECK(r.weights[1] == Approx(p[0]).epsilon(1e-12));
}

TEST_CASE("moe.gate: ties go to the lower expert index, experts listed in descending score", "[moe][gate]") {
  // Worked out by hand: row 0 all equal -> 0,1,2; row 1 ties among 1,2,4 (value 2)
  // -> 1,2,4; row 2: 0.5 at 0 and 3, 1.5 at 5 -> 5,0,3.
  Doubles logits = {1, 1, 1, 1, 1, 1,  //
                    0.5, 2, 2, 0.5, 2, 0,  //
                    0.5, -1, 0, 0.5, -2, 1.5};
  for (const char* score : kScores)
    for (const char* order : kOrders) {
      GateRun r = run_gate(logits, 3, 6, {}, {.top_k = 3, .score = score, .order = order});
      INFO(fmt::format("{} {}", score, order));
      CHECK(r.experts == Ints{0, 1, 2, 1, 2, 4, 5, 0, 3});
      CHECK(r.weights[0] == Approx(r.weights[1]).epsilon(1e-15));  // equal logits, equal weights
      check_gate_against_reference(logits, 3, 6, {}, {.top_k = 3, .score = score, .order = order});
    }
  // A tie made by the bias: keys 0.5 + 0 and 0 + 0.5 are equal; expert 0 ranks first.
  GateRun r = run_gate({0.5, 0.0, -1.0}, 1, 3, {0.0, 0.5, 0.0}, {.top_k = 2, .score = "softmax", .order = "topk_then_softmax"});
  CHECK(r.experts == Ints{0, 1});
}

TEST_CASE("moe.gate: E = 1 and K = E", "[moe][gate]") {
  Doubles one = {0.3, -1.2, 2.0};
  for (const char* score : kScores)
    for (const char* order : kOrders)
      for (bool normalize : {false, true}) {
        GateOptions o{.top_k = 1, .score = score, .order = order, .normalize = normalize};
        GateRun r = run_gate(one, 3, 1, {}, o);
        CHECK(r.experts == Ints{0, 0, 0});
        check_gate_against_reference(one, 3, 1, {}, o);
      }
  // K = E: every expert, sorted by score; normalized weights sum to 1.
  Doubles logits = random_doubles(4 * 5, 3);
  for (const char* score : kScores)
    for (const char* order : kOrders) {
      GateOptions o{.top_k = 5, .score = score, .order = order, .normalize = true};
      GateRun r = run_gate(logits, 4, 5, {}, o);
      for (int t = 0; t < 4; ++t) {
        std::set<int> chosen(r.experts.begin() + t * 5, r.experts.begin() + t * 5 + 5);
        CHECK(chosen.size() == 5u);
        CHECK(std::accumulate(r.weights.begin() + t * 5, r.weights.begin() + t * 5 + 5, 0.0) == Approx(1.0).epsilon(1e-12));
      }
      check_gate_against_reference(logits, 4, 5, {}, o);
    }
}

TEST_CASE("moe.gate in f32 agrees with the f64 reference", "[moe][gate]") {
  Doubles logits = random_doubles(8 * 5, 4);
  check_gate_against_reference(logits, 8, 5, {}, {.top_k = 2, .score = "softmax", .order = "softmax_then_topk", .normalize = true},
                               1e-6, DType::f32);
}

TEST_CASE("moe.gate gradient matches finite differences (f64) in every combination", "[moe][gate][grad]") {
  const int tokens = 6, num_experts = 5;
  for (const char* score : kScores)
    for (const char* order : kOrders)
      for (bool normalize : {false, true})
        for (bool with_bias : {false, true}) {
          Graph g("gate_grad");
          Builder b(g);
          Tensor logits = b.input("logits", {tokens, num_experts}, DType::f64);
          Tensor bias = b.input("bias", {num_experts}, DType::f64);
          auto [w, e] = b.moe_gate(logits, {.top_k = 2, .score = score, .order = order, .normalize = normalize},
                                   with_bias ? &bias : nullptr);
          probe_loss(b, w);
          Values v{{"logits", doubles_tensor({tokens, num_experts}, random_doubles(tokens * num_experts, 5))},
                   {"bias", doubles_tensor({num_experts}, random_doubles(num_experts, 6, -0.3, 0.3))}};
          auto report = check_gradients(g, v, {"logits", "bias"});
          INFO(fmt::format("{} {} normalize {} bias {}: {}", score, order, normalize, with_bias, report.str()));
          CHECK(report.at("logits").max_rel_error < 1e-6);
          CHECK(report.at("logits").max_abs_numeric > 1e-3);  // the check saw a signal
          CHECK(report.at("bias").max_abs_numeric == 0.0);     // selection only: no gradient
          CHECK(report.at("bias").max_rel_error == 0.0);
        }
}

// ---- dispatch ----

namespace {

RefDispatch run_dispatch(const Ints& experts, int top_k, int num_experts, double capacity_factor, int block) {
  const int tokens = static_cast<int>(experts.size()) / top_k;
  Graph g("dispatch");
  Builder b(g);
  Tensor e = b.input("experts", {tokens, top_k}, DType::i32);
  auto [slots, offsets, positions, counts] =
      b.moe_dispatch(e, {.num_experts = num_experts, .capacity_factor = capacity_factor, .block = block});
  CHECK(slots.dim(0) == ref_rows(tokens, top_k, num_experts, capacity_factor, block));
  b.output(slots, "slots");
  b.output(offsets, "offsets");
  b.output(positions, "positions");
  b.output(counts, "counts");
  auto out = run_cpu(g, {{"experts", ints_tensor({tokens, top_k}, experts)}});
  return {ints_of(out["slots"]), ints_of(out["offsets"]), ints_of(out["positions"]), ints_of(out["counts"])};
}

// Distinct random experts per token from `allowed`.
Ints random_routing(int tokens, int top_k, const Ints& allowed, unsigned seed) {
  std::mt19937 rng(seed);
  Ints experts;
  for (int t = 0; t < tokens; ++t) {
    Ints pool = allowed;
    std::shuffle(pool.begin(), pool.end(), rng);
    experts.insert(experts.end(), pool.begin(), pool.begin() + top_k);
  }
  return experts;
}

void check_dispatch(const Ints& experts, int top_k, int num_experts, double capacity_factor, int block) {
  INFO(fmt::format("K {} E {} capacity_factor {} block {}", top_k, num_experts, capacity_factor, block));
  RefDispatch want = ref_dispatch(experts, top_k, num_experts, capacity_factor, block);
  RefDispatch got = run_dispatch(experts, top_k, num_experts, capacity_factor, block);
  CHECK(got.slots == want.slots);
  CHECK(got.offsets == want.offsets);
  CHECK(got.positions == want.positions);
  CHECK(got.counts == want.counts);
  // positions and slots are inverse maps; every segment is block-aligned.
  for (std::size_t s = 0; s < got.positions.size(); ++s)
    if (got.positions[s] >= 0) CHECK(got.slots[static_cast<std::size_t>(got.positions[s])] == static_cast<int>(s));
  for (auto o : got.offsets) CHECK(o % block == 0);
}

}  // namespace

TEST_CASE("moe.dispatch matches the reference: every expert hit, empty experts, drops, padding", "[moe][dispatch]") {
  Ints all = {0, 1, 2, 3, 4};
  Ints experts = random_routing(11, 2, all, 7);
  REQUIRE(std::set<int>(experts.begin(), experts.end()).size() == 5u);
  for (double cf : {0.0, 1.0, 0.6, 2.0})
    for (int block : {1, 3, 4}) check_dispatch(experts, 2, 5, cf, block);

  // Experts 1 and 4 get nothing: empty segments (zero-length, even with padding).
  Ints some = random_routing(9, 2, {0, 2, 3}, 8);
  for (double cf : {0.0, 1.0})
    for (int block : {1, 4}) check_dispatch(some, 2, 5, cf, block);
  RefDispatch r = run_dispatch(some, 2, 5, 0.0, 4);
  CHECK(r.offsets[1] == r.offsets[2]);
  CHECK(r.counts[1] == 0);
  CHECK(r.counts[4] == 0);
}

TEST_CASE("moe.dispatch drops the slots past capacity in token order", "[moe][dispatch]") {
  // Every token picks expert 0 first: C = ceil(1.0 * 6*2 / 3) = 4, so tokens
  // 0..3 keep their expert-0 slot and tokens 4, 5 lose it (worked by hand).
  Ints experts = {0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2};
  RefDispatch r = run_dispatch(experts, 2, 3, 1.0, 1);
  CHECK(r.counts == Ints{6, 3, 3});
  CHECK(r.offsets == Ints{0, 4, 7, 10});
  CHECK(r.positions == Ints{0, 4, 1, 7, 2, 5, 3, 8, -1, 6, -1, 9});
  CHECK(r.slots == Ints{0, 2, 4, 6, 1, 5, 9, 3, 7, 11, -1, -1});  // N = min(T*K, E*C) = 12
  check_dispatch(experts, 2, 3, 1.0, 1);
  check_dispatch(experts, 2, 3, 1.0, 2);
}

TEST_CASE("moe.dispatch: E = 1 and K = E", "[moe][dispatch]") {
  check_dispatch({0, 0, 0, 0, 0}, 1, 1, 0.0, 1);
  check_dispatch({0, 0, 0, 0, 0}, 1, 1, 0.5, 2);
  Ints all_experts = random_routing(5, 4, {0, 1, 2, 3}, 9);
  for (double cf : {0.0, 1.0, 0.5})
    for (int block : {1, 2}) check_dispatch(all_experts, 4, 4, cf, block);
  RefDispatch r = run_dispatch(all_experts, 4, 4, 0.0, 1);
  CHECK(r.counts == Ints{5, 5, 5, 5});
}

TEST_CASE("moe.dispatch rejects expert ids out of range with a moejit::Error", "[moe][dispatch][errors]") {
  CHECK_THROWS_AS(run_dispatch({0, 1, 7, 2}, 2, 4, 0.0, 1), moejit::Error);
  CHECK_THROWS_WITH(run_dispatch({0, 1, -1, 2}, 2, 4, 0.0, 1), Catch::Contains("moe.dispatch") && Catch::Contains("expert id"));
}
