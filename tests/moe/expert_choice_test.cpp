// moe.expert_choice: the CPU kernel against an independent float64
// reference (rank counting instead of the kernel's partial sort), its edge
// cases (ties, NaN, tokens with zero or several experts, capacity rounding),
// and the expert-choice MoE layer's gradient by finite differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "frontends/nn.h"
#include "ir/error.h"
#include "ir/expert_choice.h"
#include "moe_test_util.h"

using namespace moetest;

namespace {

struct ChoiceRef {
  Ints slots, offsets, positions, counts;
};

// Reference: expert e takes token t iff fewer than C tokens rank before it,
// where u ranks before t when its score is larger (NaN counts as -infinity
// but below a real -infinity) or equal with u < t.
ChoiceRef reference_choice(const Doubles& scores, std::int64_t T, std::int64_t E, std::int64_t C) {
  auto key = [&](std::int64_t t, std::int64_t e) {
    double s = scores[static_cast<std::size_t>(t * E + e)];
    return std::isnan(s) ? std::pair<int, double>{0, 0.0} : std::pair<int, double>{1, s};
  };
  ChoiceRef r;
  r.slots.assign(static_cast<std::size_t>(E * C), -7);
  r.positions.assign(static_cast<std::size_t>(T * E), -1);
  for (std::int64_t e = 0; e < E; ++e) {
    for (std::int64_t t = 0; t < T; ++t) {
      std::int64_t rank = 0;
      for (std::int64_t u = 0; u < T; ++u)
        if (key(u, e) > key(t, e) || (key(u, e) == key(t, e) && u < t)) ++rank;
      if (rank < C) {
        r.slots[static_cast<std::size_t>(e * C + rank)] = static_cast<std::int32_t>(t * E + e);
        r.positions[static_cast<std::size_t>(t * E + e)] = static_cast<std::int32_t>(e * C + rank);
      }
    }
    r.offsets.push_back(static_cast<std::int32_t>(e * C));
    r.counts.push_back(static_cast<std::int32_t>(C));
  }
  r.offsets.push_back(static_cast<std::int32_t>(E * C));
  return r;
}

Values run_choice(const HostTensor& scores, double capacity_factor, std::int64_t top_k) {
  Graph g("ec");
  Builder b(g);
  Tensor s = b.input("scores", scores.shape(), scores.dtype());
  auto r = b.op(OpKind::ExpertChoice, {s}, {{"capacity_factor", capacity_factor}, {"top_k", top_k}});
  b.output(r[0], "slots");
  b.output(r[1], "offsets");
  b.output(r[2], "positions");
  b.output(r[3], "counts");
  return run_cpu(g, {{"scores", scores}});
}

void check_against_reference(const HostTensor& scores, double capacity_factor, std::int64_t top_k) {
  const std::int64_t T = scores.shape()[0], E = scores.shape()[1];
  const std::int64_t C = expert_choice_capacity(T, top_k, E, capacity_factor);
  Values out = run_choice(scores, capacity_factor, top_k);
  ChoiceRef ref = reference_choice(scores.to_doubles(), T, E, C);
  CHECK(ints_of(out.at("slots")) == ref.slots);
  CHECK(ints_of(out.at("offsets")) == ref.offsets);
  CHECK(ints_of(out.at("positions")) == ref.positions);
  CHECK(ints_of(out.at("counts")) == ref.counts);
}

}  // namespace

TEST_CASE("moe: expert_choice capacity is ceil(cf * T * k / E) clamped to 1..T", "[moe]") {
  CHECK(expert_choice_capacity(64, 2, 8, 1.0) == 16);
  CHECK(expert_choice_capacity(10, 1, 3, 1.0) == 4);      // ceil(10/3)
  CHECK(expert_choice_capacity(10, 1, 3, 100.0) == 10);   // at most T
  CHECK(expert_choice_capacity(10, 1, 1000, 0.01) == 1);  // at least 1
}

TEST_CASE("moe: expert_choice CPU kernel matches a float64 reference (random scores with ties and NaN)", "[moe]") {
  for (DType dtype : {DType::f32, DType::f64}) {
    for (auto [T, E, k, cf] : {std::tuple{37, 5, 2, 1.0}, std::tuple{16, 4, 1, 0.5}, std::tuple{9, 3, 3, 2.0}}) {
      HostTensor scores = random_tensor({dtype, {T, E}}, static_cast<std::uint64_t>(T * 10 + E), -1.0, 1.0);
      // Plant exact ties (the lower token wins) and a NaN (ranks last).
      scores.set(3 * E + 1, 0.25);
      scores.set(7 * E + 1, 0.25);
      scores.set(1 * E + 1, 0.25);
      scores.set(2 * E + 0, std::numeric_limits<double>::quiet_NaN());
      check_against_reference(scores, cf, k);
    }
  }
}

TEST_CASE("moe: expert_choice gives a token zero or several experts with segments in rank order", "[moe]") {
  // 4 tokens, 2 experts, C = 2: token 0 is best for both experts, token 3
  // worst for both; tokens 1 and 2 tie at expert 1 (token 1 wins).
  HostTensor scores = doubles_tensor({4, 2}, {0.9, 0.8,  //
                                              0.5, 0.3,  //
                                              0.7, 0.3,  //
                                              0.1, 0.2});
  Values out = run_choice(scores, 1.0, 1);  // C = ceil(1 * 4 * 1 / 2) = 2
  CHECK(ints_of(out.at("slots")) == Ints{0 * 2 + 0, 2 * 2 + 0, 0 * 2 + 1, 1 * 2 + 1});
  CHECK(ints_of(out.at("positions")) == Ints{0, 2, -1, 3, 1, -1, -1, -1});
  CHECK(ints_of(out.at("offsets")) == Ints{0, 2, 4});
  CHECK(ints_of(out.at("counts")) == Ints{2, 2});
}

TEST_CASE("moe: expert_choice rejects a bad capacity_factor or top_k or operand", "[moe]") {
  Graph g("bad");
  Builder b(g);
  Tensor s = b.input("scores", {8, 4});
  Tensor ids = b.input("ids", {8, 4}, DType::i32);
  auto message = [&](Tensor x, double cf, std::int64_t k) {
    try {
      b.op(OpKind::ExpertChoice, {x}, {{"capacity_factor", cf}, {"top_k", k}});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(message(s, 0.0, 1).find("attribute 'capacity_factor': expected a finite value > 0") != std::string::npos);
  CHECK(message(s, 1.0, 5).find("attribute 'top_k': expected 1 <= top_k <= 4 (the experts), found 5") != std::string::npos);
  CHECK(message(ids, 1.0, 1).find("scores") != std::string::npos);
}

TEST_CASE("moe: the expert-choice MoE layer's gradient matches finite differences", "[moe]") {
  // nn::moe_block with router_type expert_choice, built in f64 by hand-made
  // parameters: gradient w.r.t. x (through the experts and the router) and
  // every weight. The choice is piecewise constant; random inputs keep away
  // from ties.
  for (std::string score : {"softmax", "sigmoid"}) {
    auto build = [&](Builder& b) {
      const std::int64_t T = 12, D = 5, E = 3, F = 4, K = 1;
      Tensor x = b.input("x", {T, D}, DType::f64);
      Tensor w_router = b.param("w_router", {D, E}, DType::f64);
      Tensor w_up = b.param("w_up", {E, D, F}, DType::f64);
      Tensor w_down = b.param("w_down", {E, F, D}, DType::f64);
      Tensor logits = b.matmul(x, w_router);
      Tensor scores = score == "sigmoid" ? b.sigmoid(logits) : b.softmax(logits);
      auto r = b.op(OpKind::ExpertChoice, {scores}, {{"capacity_factor", 1.0}, {"top_k", K}});
      Tensor taken = b.compare(r[2], b.constant(0.0, {T, E}, DType::i32), "ge");
      Tensor weights = b.where(taken, scores, b.full_like(scores, 0.0));
      Tensor xs = b.moe_permute(x, r[0], E);
      Tensor h = b.gelu(b.moe_grouped_matmul(xs, w_up, r[1]));
      Tensor y = b.moe_combine(b.moe_grouped_matmul(h, w_down, r[1]), weights, r[2]);
      probe_loss(b, y);
    };
    GradCheckReport report = check_gradients(build, {}, {"x", "w_router", "w_up", "w_down"});
    INFO(report.str());
    CHECK(report.max_rel_error() < 1e-6);
    CHECK(report.at("w_router").max_abs_numeric > 0);  // the router gets a gradient through the weights
  }
}
