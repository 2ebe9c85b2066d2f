// Expert statistics (runtime/expert_stats.h) from a real dispatch, and the
// noisy top-k gating helper (frontends/moe_gating.h) against a reference
// built from the same noise.
#include <catch2/catch.hpp>

#include "frontends/moe_gating.h"
#include "ir/error.h"
#include "moe_test_util.h"
#include "runtime/expert_stats.h"

using namespace moetest;

TEST_CASE("expert stats from a dispatch: routed, kept, dropped, imbalance", "[moe][stats]") {
  // T = 6, K = 2, E = 3, capacity 1.0 -> C = 4, block 2. Expert 0 gets 6
  // slots (2 dropped), expert 1 gets 3, expert 2 gets 3.
  Ints experts = {0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2};
  Graph g("stats");
  Builder b(g);
  auto d = b.moe_dispatch(b.input("experts", {6, 2}, DType::i32), {.num_experts = 3, .capacity_factor = 1.0, .block = 2});
  b.output(d[1], "offsets");
  b.output(d[2], "positions");
  b.output(d[3], "counts");
  Values out = run_cpu(g, {{"experts", ints_tensor({6, 2}, experts)}});
  MoeLayerStats s = moe_layer_stats("moe.0", out["counts"], &out["positions"], &out["offsets"]);
  CHECK(s.routed == std::vector<std::int64_t>{6, 3, 3});
  CHECK(s.kept == std::vector<std::int64_t>{4, 3, 3});
  CHECK(s.slots == 12);
  CHECK(s.dropped == 2);
  CHECK(s.drop_rate() == Approx(2.0 / 12));
  CHECK(s.imbalance() == Approx(6.0 / 4.0));  // max 6 over mean 4

  MoeLayerStats counts_only = moe_layer_stats("moe.1", out["counts"]);
  CHECK(counts_only.kept.empty());
  CHECK(counts_only.dropped == 0);
  MoeLayerStats seg = moe_layer_stats_from_offsets("moe.2", out["offsets"]);
  CHECK(seg.routed == std::vector<std::int64_t>{4, 4, 4});  // segments include padding rows (block 2)

  MoeLayerStats empty = moe_layer_stats("empty", ints_tensor({2}, {0, 0}));
  CHECK(std::isnan(empty.imbalance()));

  std::vector<MoeLayerStats> layers = {s, seg, empty};
  std::string table = format_moe_stats(layers);
  INFO(table);
  CHECK(table.find("moe.0") != std::string::npos);
  CHECK(table.find("2 (16.7%)") != std::string::npos);
  CHECK(table.find("1.50") != std::string::npos);
  CHECK(table.find("n/a") != std::string::npos);
  CHECK(std::count(table.begin(), table.end(), '\n') == 5);  // header, 2 rows, header (E = 2), 1 row

  CHECK_THROWS_AS(moe_layer_stats("bad", out["counts"], &out["counts"]), moejit::Error);  // positions of the wrong rank
  CHECK_THROWS_AS(moe_layer_stats("bad", ints_tensor({3}, {1, 1, 1}), &out["positions"]), moejit::Error);  // 3 != 12 slots
}

TEST_CASE("noisy top-k gating: logits + randn * softplus(noise logits), then the gate", "[moe][gating]") {
  const int t_count = 8, d = 5, e_count = 4;
  auto f = [](Shape sh) { return TensorType{DType::f64, std::move(sh)}; };
  Values v = {{"x", random_tensor(f({t_count, d}), 1)},
              {"w_router", random_tensor(f({d, e_count}), 2)},
              {"w_noise", random_tensor(f({d, e_count}), 3)},
              {"bias", random_tensor(f({e_count}), 4, -0.3, 0.3)}};
  for (bool noisy : {false, true})
    for (bool with_bias : {false, true}) {
      Graph g("gating");
      Builder b(g);
      Tensor x = b.input("x", {t_count, d}, DType::f64), wr = b.param("w_router", {d, e_count}, DType::f64);
      Tensor wn = b.param("w_noise", {d, e_count}, DType::f64), bias = b.input("bias", {e_count}, DType::f64);
      NoisyGateOptions o;
      o.noisy = noisy;
      o.seed = 42;
      o.selection_bias = with_bias;
      auto gate = noisy_top_k_gate(b, x, wr, wn, o, with_bias ? std::optional<Tensor>(bias) : std::nullopt);
      b.output(gate.weights, "weights");
      b.output(gate.experts, "experts");
      b.output(b.random_normal({t_count, e_count}, 42, 0, DType::f64), "noise");  // the same Philox numbers
      Values out = run_cpu(g, v);
      Doubles x_v = v["x"].to_doubles(), wr_v = v["w_router"].to_doubles(), wn_v = v["w_noise"].to_doubles();
      Doubles noise = out["noise"].to_doubles(), bias_v = with_bias ? v["bias"].to_doubles() : Doubles{};
      Doubles weights = out["weights"].to_doubles();
      Ints experts = ints_of(out["experts"]);
      for (int t = 0; t < t_count; ++t) {
        Doubles row(e_count, 0.0);
        for (int e = 0; e < e_count; ++e) {
          double clean = 0.0, noise_logit = 0.0;
          for (int k = 0; k < d; ++k) {
            clean += x_v[static_cast<std::size_t>(t * d + k)] * wr_v[static_cast<std::size_t>(k * e_count + e)];
            noise_logit += x_v[static_cast<std::size_t>(t * d + k)] * wn_v[static_cast<std::size_t>(k * e_count + e)];
          }
          double softplus = std::log1p(std::exp(noise_logit));
          row[static_cast<std::size_t>(e)] = clean + (noisy ? noise[static_cast<std::size_t>(t * e_count + e)] * softplus : 0.0);
        }
        RefGate want = ref_gate(row, bias_v, 2, "softmax", "topk_then_softmax", false);
        for (int k = 0; k < 2; ++k) {
          INFO("noisy " << noisy << " bias " << with_bias << " token " << t << " k " << k);
          CHECK(experts[static_cast<std::size_t>(t * 2 + k)] == want.experts[static_cast<std::size_t>(k)]);
          CHECK(weights[static_cast<std::size_t>(t * 2 + k)] == Approx(want.weights[static_cast<std::size_t>(k)]).epsilon(1e-12));
        }
      }
    }
}

TEST_CASE("noisy top-k gating: the bias switch and w_noise are checked", "[moe][gating][errors]") {
  Graph g("gating");
  Builder b(g);
  Tensor x = b.input("x", {4, 3}), wr = b.param("w_router", {3, 2}), bias = b.input("bias", {2});
  NoisyGateOptions o;
  o.gate.top_k = 1;
  CHECK_THROWS_AS(noisy_top_k_gate(b, x, wr, std::nullopt, o), moejit::Error);  // noisy without w_noise
  o.noisy = false;
  CHECK_THROWS_AS(noisy_top_k_gate(b, x, wr, std::nullopt, o, bias), moejit::Error);  // bias while the switch is off
  o.selection_bias = true;
  CHECK_THROWS_AS(noisy_top_k_gate(b, x, wr, std::nullopt, o), moejit::Error);  // switch on, no bias
  CHECK_NOTHROW(noisy_top_k_gate(b, x, wr, std::nullopt, o, bias));
}
