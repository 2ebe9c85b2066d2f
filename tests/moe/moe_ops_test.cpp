// The row ops (permute, grouped matmul, combine and their backward helpers),
// the auxiliary losses and the fused ops: values against plain per-token /
// per-row loops, gradients against finite differences in f64.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <random>

#include "ir/error.h"
#include "moe_test_util.h"

using namespace moetest;

namespace {

constexpr DType F64 = DType::f64;

Doubles random_doubles(std::size_t n, unsigned seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Doubles v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A routing with every case in it: T = 7, K = 2, E = 4, expert 2 empty,
// capacity 1.0 (expert 0 overflows: drops), block 2 (padding rows).
struct Routing {
  int tokens = 7, top_k = 2, num_experts = 4;
  double capacity_factor = 1.0;
  int block = 2;
  Ints experts = {0, 1, 0, 3, 0, 1, 0, 3, 1, 0, 3, 0, 0, 1};
  RefDispatch dispatch = ref_dispatch(experts, top_k, num_experts, capacity_factor, block);
  int rows() const { return static_cast<int>(dispatch.slots.size()); }
};

Values run1(Graph& g, const Values& in) { return run_cpu(g, in); }

}  // namespace

TEST_CASE("the test routing has drops, an empty expert and padding", "[moe][ops]") {
  Routing r;
  CHECK(std::count(r.dispatch.positions.begin(), r.dispatch.positions.end(), -1) > 0);
  CHECK(r.dispatch.counts[2] == 0);
  CHECK(std::count(r.dispatch.slots.begin(), r.dispatch.slots.end(), -1) > 0);
}

TEST_CASE("moe.permute and moe.permute_grad match per-row loops", "[moe][ops]") {
  Routing r;
  const int d = 5, n = r.rows();
  Doubles x = random_doubles(static_cast<std::size_t>(r.tokens * d), 1), dxs = random_doubles(static_cast<std::size_t>(n * d), 2);
  Graph g("permute");
  Builder b(g);
  Tensor xt = b.input("x", {r.tokens, d}, F64), slots = b.input("slots", {n}, DType::i32);
  Tensor dxst = b.input("dxs", {n, d}, F64), positions = b.input("positions", {r.tokens, r.top_k}, DType::i32);
  b.output(b.moe_permute(xt, slots, r.top_k), "xs");
  b.output(b.op1(OpKind::PermuteGrad, {dxst, positions}), "dx");
  auto out = run1(g, {{"x", doubles_tensor({r.tokens, d}, x)},
                      {"slots", ints_tensor({n}, r.dispatch.slots)},
                      {"dxs", doubles_tensor({n, d}, dxs)},
                      {"positions", ints_tensor({r.tokens, r.top_k}, r.dispatch.positions)}});
  Doubles want_xs(static_cast<std::size_t>(n * d), 0.0);
  for (int i = 0; i < n; ++i)
    if (int s = r.dispatch.slots[static_cast<std::size_t>(i)]; s >= 0)
      for (int j = 0; j < d; ++j) want_xs[static_cast<std::size_t>(i * d + j)] = x[static_cast<std::size_t>((s / r.top_k) * d + j)];
  CHECK(out["xs"].to_doubles() == want_xs);
  // dx[t] = sum over t's kept slots of dxs[row]: loop over the rows this time.
  Doubles want_dx(static_cast<std::size_t>(r.tokens * d), 0.0);
  for (int i = 0; i < n; ++i)
    if (int s = r.dispatch.slots[static_cast<std::size_t>(i)]; s >= 0)
      for (int j = 0; j < d; ++j) want_dx[static_cast<std::size_t>((s / r.top_k) * d + j)] += dxs[static_cast<std::size_t>(i * d + j)];
  CHECK(max_rel_diff(out["dx"].to_doubles(), want_dx) < 1e-14);
}

TEST_CASE("moe.grouped_matmul (both layouts) and its weight gradient match per-row loops", "[moe][ops]") {
  Routing r;
  const int d = 5, f = 3, n = r.rows(), e_count = r.num_experts;
  Doubles xs = random_doubles(static_cast<std::size_t>(n * d), 3), w = random_doubles(static_cast<std::size_t>(e_count * d * f), 4);
  Doubles dys = random_doubles(static_cast<std::size_t>(n * f), 5);
  // Offsets with rows before the first segment and after the last one.
  Ints offsets = {2, 5, 5, 9, n - 1};
  for (const Ints& off : {r.dispatch.offsets, offsets}) {
    Graph g("gmm");
    Builder b(g);
    Tensor xt = b.input("xs", {n, d}, F64), wt = b.input("w", {e_count, d, f}, F64), ot = b.input("offsets", {e_count + 1}, DType::i32);
    Tensor wtt = b.input("w_t", {e_count, f, d}, F64), dyt = b.input("dys", {n, f}, F64);
    b.output(b.moe_grouped_matmul(xt, wt, ot), "y");
    b.output(b.moe_grouped_matmul(xt, wtt, ot, true), "y_t");
    b.output(b.op1(OpKind::GroupedMatmulWgrad, {xt, dyt, ot}), "dw");
    Doubles w_t(w.size());  // w_t[e, j, k] = w[e, k, j]
    for (int e = 0; e < e_count; ++e)
      for (int k = 0; k < d; ++k)
        for (int j = 0; j < f; ++j) w_t[static_cast<std::size_t>((e * f + j) * d + k)] = w[static_cast<std::size_t>((e * d + k) * f + j)];
    auto out = run1(g, {{"xs", doubles_tensor({n, d}, xs)},
                        {"w", doubles_tensor({e_count, d, f}, w)},
                        {"w_t", doubles_tensor({e_count, f, d}, w_t)},
                        {"dys", doubles_tensor({n, f}, dys)},
                        {"offsets", ints_tensor({e_count + 1}, off)}});
    Doubles want(static_cast<std::size_t>(n * f), 0.0), want_dw(w.size(), 0.0);
    for (int i = 0; i < n; ++i) {
      int e = ref_row_expert(off, i);
      if (e < 0) continue;
      for (int j = 0; j < f; ++j)
        for (int k = 0; k < d; ++k) {
          want[static_cast<std::size_t>(i * f + j)] += xs[static_cast<std::size_t>(i * d + k)] * w[static_cast<std::size_t>((e * d + k) * f + j)];
          want_dw[static_cast<std::size_t>((e * d + k) * f + j)] += xs[static_cast<std::size_t>(i * d + k)] * dys[static_cast<std::size_t>(i * f + j)];
        }
    }
    CHECK(max_rel_diff(out["y"].to_doubles(), want) < 1e-13);
    CHECK(max_rel_diff(out["y_t"].to_doubles(), want) < 1e-13);
    CHECK(max_rel_diff(out["dw"].to_doubles(), want_dw) < 1e-13);
  }
}

TEST_CASE("moe.combine and moe.combine_grad match per-token loops", "[moe][ops]") {
  Routing r;
  const int d = 4, n = r.rows(), t_count = r.tokens, k_count = r.top_k;
  Doubles ys = random_doubles(static_cast<std::size_t>(n * d), 6), weights = random_doubles(static_cast<std::size_t>(t_count * k_count), 7, 0.1, 1.0);
  Doubles dout = random_doubles(static_cast<std::size_t>(t_count * d), 8);
  Graph g("combine");
  Builder b(g);
  Tensor yt = b.input("ys", {n, d}, F64), wt = b.input("weights", {t_count, k_count}, F64);
  Tensor pt = b.input("positions", {t_count, k_count}, DType::i32), dt = b.input("dout", {t_count, d}, F64);
  b.output(b.moe_combine(yt, wt, pt), "y");
  auto grads = b.op(OpKind::CombineGrad, {yt, wt, pt, dt});
  b.output(grads[0], "dys");
  b.output(grads[1], "dweights");
  auto out = run1(g, {{"ys", doubles_tensor({n, d}, ys)},
                      {"weights", doubles_tensor({t_count, k_count}, weights)},
                      {"positions", ints_tensor({t_count, k_count}, r.dispatch.positions)},
                      {"dout", doubles_tensor({t_count, d}, dout)}});
  Doubles want(static_cast<std::size_t>(t_count * d), 0.0), want_dys(ys.size(), 0.0), want_dw(weights.size(), 0.0);
  for (int t = 0; t < t_count; ++t)
    for (int k = 0; k < k_count; ++k) {
      int row = r.dispatch.positions[static_cast<std::size_t>(t * k_count + k)];
      if (row < 0) continue;  // dropped: adds nothing, gets nothing
      double wk = weights[static_cast<std::size_t>(t * k_count + k)];
      for (int j = 0; j < d; ++j) {
        want[static_cast<std::size_t>(t * d + j)] += wk * ys[static_cast<std::size_t>(row * d + j)];
        want_dys[static_cast<std::size_t>(row * d + j)] = wk * dout[static_cast<std::size_t>(t * d + j)];
        want_dw[static_cast<std::size_t>(t * k_count + k)] += dout[static_cast<std::size_t>(t * d + j)] * ys[static_cast<std::size_t>(row * d + j)];
      }
    }
  CHECK(max_rel_diff(out["y"].to_doubles(), want) < 1e-14);
  CHECK(max_rel_diff(out["dys"].to_doubles(), want_dys) < 1e-14);  // padding rows: 0
  CHECK(max_rel_diff(out["dweights"].to_doubles(), want_dw) < 1e-14);
}

TEST_CASE("the auxiliary losses match their formulas", "[moe][ops][loss]") {
  const int t_count = 6, e_count = 4, k_count = 2;
  Doubles logits = random_doubles(static_cast<std::size_t>(t_count * e_count), 9, -3.0, 3.0);
  Doubles probs(logits.size());
  for (int t = 0; t < t_count; ++t) {
    Doubles row(logits.begin() + t * e_count, logits.begin() + (t + 1) * e_count);
    Doubles p = ref_softmax(row);
    std::copy(p.begin(), p.end(), probs.begin() + t * e_count);
  }
  // Expert 3 never chosen; probs of a column forced to 0 for the entropy's 0 log 0.
  Ints experts = {0, 1, 1, 2, 0, 2, 1, 0, 2, 1, 0, 1};
  Doubles probs_zero_col = probs;
  for (int t = 0; t < t_count; ++t) probs_zero_col[static_cast<std::size_t>(t * e_count + 3)] = 0.0;
  Graph g("losses");
  Builder b(g);
  Tensor lt = b.input("logits", {t_count, e_count}, F64), pt = b.input("probs", {t_count, e_count}, F64);
  Tensor zt = b.input("probs0", {t_count, e_count}, F64), et = b.input("experts", {t_count, k_count}, DType::i32);
  b.output(b.moe_load_balance_loss(pt, et, 0.5), "lb");
  b.output(b.moe_z_loss(lt, 0.25), "z");
  b.output(b.moe_entropy_reg(pt, 2.0), "ent");
  b.output(b.moe_entropy_reg(zt, 1.0), "ent0");
  auto out = run1(g, {{"logits", doubles_tensor({t_count, e_count}, logits)},
                      {"probs", doubles_tensor({t_count, e_count}, probs)},
                      {"probs0", doubles_tensor({t_count, e_count}, probs_zero_col)},
                      {"experts", ints_tensor({t_count, k_count}, experts)}});
  double lb = 0.0, z = 0.0, ent = 0.0, ent0 = 0.0;
  for (int e = 0; e < e_count; ++e) {
    double f = 0.0, p = 0.0, p0 = 0.0;
    for (int s = 0; s < t_count * k_count; ++s) f += experts[static_cast<std::size_t>(s)] == e ? 1.0 / (t_count * k_count) : 0.0;
    for (int t = 0; t < t_count; ++t) {
      p += probs[static_cast<std::size_t>(t * e_count + e)] / t_count;
      p0 += probs_zero_col[static_cast<std::size_t>(t * e_count + e)] / t_count;
    }
    lb += f * p;
    ent += p * std::log(p);
    if (p0 > 0) ent0 += p0 * std::log(p0);
  }
  for (int t = 0; t < t_count; ++t) {
    double s = 0.0;
    for (int e = 0; e < e_count; ++e) s += std::exp(logits[static_cast<std::size_t>(t * e_count + e)]);
    z += std::log(s) * std::log(s) / t_count;
  }
  CHECK(out["lb"].get(0) == Approx(0.5 * e_count * lb).epsilon(1e-12));
  CHECK(out["z"].get(0) == Approx(0.25 * z).epsilon(1e-12));
  CHECK(out["ent"].get(0) == Approx(2.0 * ent).epsilon(1e-12));
  CHECK(out["ent0"].get(0) == Approx(ent0).epsilon(1e-12));
}

// ---- gradients (f64 finite differences) ----

namespace {
void require_gradients(const Graph& g, const Values& v, const std::vector<std::string>& wrt, double tolerance = 1e-6) {
  auto report = check_gradients(g, v, wrt);
  INFO(report.str());
  CHECK(report.max_rel_error() < tolerance);
  for (const auto& entry : report.args) CHECK(entry.max_abs_numeric > 1e-4);  // each saw a signal
}
}  // namespace

TEST_CASE("gradients of permute, grouped_matmul, combine by finite differences", "[moe][grad]") {
  Routing r;
  const int d = 4, f = 3;
  Graph g("rows");
  Builder b(g);
  Tensor x = b.input("x", {r.tokens, d}, F64), experts = b.input("experts", {r.tokens, r.top_k}, DType::i32);
  Tensor w_up = b.param("w_up", {r.num_experts, d, f}, F64), w_down = b.param("w_down", {r.num_experts, d, f}, F64);
  Tensor weights = b.input("weights", {r.tokens, r.top_k}, F64);
  auto [slots, offsets, positions, counts] =
      b.moe_dispatch(experts, {.num_experts = r.num_experts, .capacity_factor = r.capacity_factor, .block = r.block});
  Tensor h = b.moe_grouped_matmul(b.moe_permute(x, slots, r.top_k), w_up, offsets);   // [N, F]
  Tensor ys = b.moe_grouped_matmul(b.tanh(h), w_down, offsets, /*transpose_w=*/true);  // [N, D]
  probe_loss(b, b.moe_combine(ys, weights, positions));
  require_gradients(g, {{"experts", ints_tensor({r.tokens, r.top_k}, r.experts)}}, {"x", "w_up", "w_down", "weights"});
}

TEST_CASE("gradients of the auxiliary losses by finite differences", "[moe][grad][loss]") {
  Graph g("aux");
  Builder b(g);
  Tensor logits = b.input("logits", {6, 4}, F64), experts = b.input("experts", {6, 2}, DType::i32);
  Tensor probs = b.softmax(logits);
  Tensor loss = b.add(b.add(b.moe_load_balance_loss(probs, experts, 0.7), b.moe_z_loss(logits, 0.3)), b.moe_entropy_reg(probs, 0.5));
  b.output(loss, "loss");
  require_gradients(g, {{"experts", ints_tensor({6, 2}, {0, 1, 1, 2, 0, 2, 1, 0, 2, 1, 0, 1})}}, {"logits"});
}

TEST_CASE("gradients of the fused ops route, gather_matmul, matmul_combine by finite differences", "[moe][grad][fused]") {
  const int t_count = 7, d = 4, f = 3, e_count = 4, k_count = 2;
  AttrList route_attrs{{"top_k", k_count}, {"score", "softmax"}, {"order", "softmax_then_topk"}, {"normalize", true},
                       {"num_experts", e_count}, {"capacity_factor", 1.0}, {"block", 2}};
  {
    Graph g("route");
    Builder b(g);
    Tensor x = b.input("x", {t_count, d}, F64), w = b.param("w_router", {d, e_count}, F64), bias = b.input("bias", {e_count}, F64);
    auto r = b.op(OpKind::Route, {x, w, bias}, route_attrs);
    Tensor loss = b.add(b.add(probe_loss(b, r[1], "p1", "l1"), probe_loss(b, r[7], "p7", "l7")), probe_loss(b, r[0], "p0", "l0"));
    b.output(loss, "loss");
    require_gradients(g, {}, {"x", "w_router"});
  }
  {
    Graph g("gather_combine");
    Builder b(g);
    Tensor x = b.input("x", {t_count, d}, F64), experts = b.input("experts", {t_count, k_count}, DType::i32);
    Tensor w_up = b.param("w_up", {e_count, d, f}, F64), w_down = b.param("w_down", {e_count, f, d}, F64);
    Tensor weights = b.input("weights", {t_count, k_count}, F64);
    auto disp = b.moe_dispatch(experts, {.num_experts = e_count, .capacity_factor = 1.0, .block = 2});
    Tensor h = b.op1(OpKind::GatherMatmul, {x, w_up, disp[0], disp[1], disp[2]}, {{"top_k", k_count}});
    Tensor y = b.op(OpKind::MatmulCombine, {b.tanh(h), w_down, disp[1], weights, disp[2]})[0];
    probe_loss(b, y);
    Routing r;
    require_gradients(g, {{"experts", ints_tensor({t_count, k_count}, r.experts)}}, {"x", "w_up", "w_down", "weights"});
  }
  {
    // A loss that also reads matmul_combine's saved expert outputs ys (result #1).
    Graph g("combine_and_ys");
    Builder b(g);
    Tensor hs = b.input("hs", {t_count * k_count, f}, F64), experts = b.input("experts", {t_count, k_count}, DType::i32);
    Tensor w_down = b.param("w_down", {e_count, f, d}, F64), weights = b.input("weights", {t_count, k_count}, F64);
    auto disp = b.moe_dispatch(experts, {.num_experts = e_count});
    auto mc = b.op(OpKind::MatmulCombine, {b.tanh(hs), w_down, disp[1], weights, disp[2]});
    b.output(b.add(probe_loss(b, mc[0], "p0", "l0"), probe_loss(b, mc[1], "p1", "l1")), "loss");
    Routing r;
    require_gradients(g, {{"experts", ints_tensor({t_count, k_count}, r.experts)}}, {"hs", "w_down", "weights"});
  }
}

TEST_CASE("bad index data is a moejit::Error naming the op, never a crash", "[moe][errors]") {
  auto run_one = [](OpKind kind, std::vector<std::pair<std::string, HostTensor>> inputs, AttrList attrs) {
    Graph g("bad");
    Builder b(g);
    std::vector<Tensor> operands;
    Values v;
    for (auto& [name, value] : inputs) {
      operands.push_back(b.input(name, value.shape(), value.dtype()));
      v[name] = value;
    }
    b.output(b.op(kind, operands, std::move(attrs))[0], "out");
    run_cpu(g, v);
  };
  HostTensor x = doubles_tensor({3, 2}, random_doubles(6, 1));
  CHECK_THROWS_WITH(run_one(OpKind::Permute, {{"x", x}, {"slots", ints_tensor({4}, {0, 6, 1, -1})}}, {{"top_k", 2}}),
                    Catch::Contains("moe.permute") && Catch::Contains("slots[1] = 6"));
  HostTensor w = doubles_tensor({2, 2, 2}, random_doubles(8, 2));
  CHECK_THROWS_WITH(run_one(OpKind::GroupedMatmul, {{"xs", x}, {"w", w}, {"offsets", ints_tensor({3}, {0, 2, 1})}}, {{"transpose_w", false}}),
                    Catch::Contains("moe.grouped_matmul") && Catch::Contains("offsets[2]"));
  CHECK_THROWS_WITH(run_one(OpKind::Combine, {{"ys", x}, {"weights", doubles_tensor({1, 2}, {0.5, 0.5})}, {"positions", ints_tensor({1, 2}, {0, 3})}}, {}),
                    Catch::Contains("moe.combine") && Catch::Contains("positions[0, 1] = 3"));
}

TEST_CASE("moe.grouped_matmul and its weight gradient on enough rows to use threads", "[moe][ops]") {
  // 300 x 32 x 32 per matrix: past the kernels' threshold for splitting work over threads.
  const int n = 300, d = 32, f = 32, e_count = 5;
  Ints offsets = {0, 70, 70, 190, 260, 290};  // expert 1 empty, rows 290.. outside
  Doubles xs = random_doubles(static_cast<std::size_t>(n * d), 11), w = random_doubles(static_cast<std::size_t>(e_count * d * f), 12);
  Doubles dys = random_doubles(static_cast<std::size_t>(n * f), 13);
  Graph g("big");
  Builder b(g);
  Tensor xt = b.input("xs", {n, d}, F64), wt = b.input("w", {e_count, d, f}, F64), ot = b.input("offsets", {e_count + 1}, DType::i32);
  Tensor dyt = b.input("dys", {n, f}, F64);
  b.output(b.moe_grouped_matmul(xt, wt, ot), "y");
  b.output(b.op1(OpKind::GroupedMatmulWgrad, {xt, dyt, ot}), "dw");
  auto out = run1(g, {{"xs", doubles_tensor({n, d}, xs)},
                      {"w", doubles_tensor({e_count, d, f}, w)},
                      {"dys", doubles_tensor({n, f}, dys)},
                      {"offsets", ints_tensor({e_count + 1}, offsets)}});
  Doubles want(static_cast<std::size_t>(n * f), 0.0), want_dw(w.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    int e = ref_row_expert(offsets, i);
    if (e < 0) continue;
    for (int j = 0; j < f; ++j)
      for (int k = 0; k < d; ++k) {
        want[static_cast<std::size_t>(i * f + j)] += xs[static_cast<std::size_t>(i * d + k)] * w[static_cast<std::size_t>((e * d + k) * f + j)];
        want_dw[static_cast<std::size_t>((e * d + k) * f + j)] += xs[static_cast<std::size_t>(i * d + k)] * dys[static_cast<std::size_t>(i * f + j)];
      }
  }
  CHECK(max_rel_diff(out["y"].to_doubles(), want) < 1e-12);
  CHECK(max_rel_diff(out["dw"].to_doubles(), want_dw) < 1e-12);
}
