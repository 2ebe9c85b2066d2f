// A whole MoE layer
//   router matmul -> gate -> dispatch -> permute -> grouped matmul -> GELU
//   -> grouped matmul -> combine, + load-balance loss + z-loss
// against a per-token loop reference (values), against finite differences
// (gradients w.r.t. x, w_router, w_up, w_down, f64), and the fused graphs
// (fuse-router-permute, fuse-expert-gather-scatter, moe-tiling; before and
// after autodiff) against the unfused one: same outputs, same gradients.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "moe_test_util.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"

using namespace moetest;

namespace {

struct LayerConfig {
  int tokens = 10, d_model = 6, d_expert = 8, num_experts = 4, top_k = 2;
  GateOptions gate{.top_k = 2, .score = "softmax", .order = "softmax_then_topk", .normalize = true};
  double capacity_factor = 0.0;
  int block = 1;
  double lb_coeff = 0.05, z_coeff = 0.01;
};

// Builds the layer with outputs y, lb, z, loss = sum(y * probe) + lb + z, counts.
Graph build_layer(const LayerConfig& c) {
  Graph g("moe_layer");
  Builder b(g);
  Tensor x = b.input("x", {c.tokens, c.d_model}, DType::f64);
  Tensor w_router = b.param("w_router", {c.d_model, c.num_experts}, DType::f64);
  Tensor w_up = b.param("w_up", {c.num_experts, c.d_model, c.d_expert}, DType::f64);
  Tensor w_down = b.param("w_down", {c.num_experts, c.d_expert, c.d_model}, DType::f64);
  Tensor probe = b.input("probe", {c.tokens, c.d_model}, DType::f64);
  Tensor logits = b.matmul(x, w_router);
  auto [weights, experts] = b.moe_gate(logits, c.gate);
  auto [slots, offsets, positions, counts] =
      b.moe_dispatch(experts, {.num_experts = c.num_experts, .capacity_factor = c.capacity_factor, .block = c.block});
  Tensor xs = b.moe_permute(x, slots, c.top_k);
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);
  Tensor y = b.moe_combine(ys, weights, positions);
  Tensor lb = b.moe_load_balance_loss(b.softmax(logits), experts, c.lb_coeff);
  Tensor z = b.moe_z_loss(logits, c.z_coeff);
  Tensor loss = b.add(b.add(b.sum(b.mul(y, probe), {0, 1}), lb), z);
  b.output(y, "y");
  b.output(lb, "lb");
  b.output(z, "z");
  b.output(loss, "loss");
  b.output(counts, "counts");
  return g;
}

Values layer_inputs(const LayerConfig& c, std::uint64_t seed) {
  auto f = [](Shape s) { return TensorType{DType::f64, std::move(s)}; };
  return {{"x", random_tensor(f({c.tokens, c.d_model}), seed + 1)},
          {"w_router", random_tensor(f({c.d_model, c.num_experts}), seed + 2)},
          {"w_up", random_tensor(f({c.num_experts, c.d_model, c.d_expert}), seed + 3, -0.5, 0.5)},
          {"w_down", random_tensor(f({c.num_experts, c.d_expert, c.d_model}), seed + 4, -0.5, 0.5)},
          {"probe", random_tensor(f({c.tokens, c.d_model}), seed + 5)}};
}

struct LayerReference {
  Doubles y;
  double lb = 0, z = 0, loss = 0;
  Ints counts;
};

// Token by token: route, then run each of its k experts on its own row.
LayerReference reference_layer(const LayerConfig& c, const Values& v) {
  Doubles x = v.at("x").to_doubles(), wr = v.at("w_router").to_doubles(), wu = v.at("w_up").to_doubles(),
          wd = v.at("w_down").to_doubles(), probe = v.at("probe").to_doubles();
  const int T = c.tokens, D = c.d_model, F = c.d_expert, E = c.num_experts, K = c.top_k;
  std::int64_t capacity = T * K;
  if (c.capacity_factor > 0) capacity = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(c.capacity_factor * T * K / E)));
  LayerReference r;
  r.y.assign(static_cast<std::size_t>(T * D), 0.0);
  r.counts.assign(static_cast<std::size_t>(E), 0);
  Doubles mean_prob(static_cast<std::size_t>(E), 0.0), routed(static_cast<std::size_t>(E), 0.0);
  Ints kept_so_far(static_cast<std::size_t>(E), 0);
  for (int t = 0; t < T; ++t) {
    Doubles logits(static_cast<std::size_t>(E), 0.0);
    for (int e = 0; e < E; ++e)
      for (int k = 0; k < D; ++k) logits[static_cast<std::size_t>(e)] += x[static_cast<std::size_t>(t * D + k)] * wr[static_cast<std::size_t>(k * E + e)];
    Doubles p = ref_softmax(logits);
    double lse = std::log(std::accumulate(logits.begin(), logits.end(), 0.0, [](double s, double l) { return s + std::exp(l); }));
    r.z += c.z_coeff * lse * lse / T;
    for (int e = 0; e < E; ++e) mean_prob[static_cast<std::size_t>(e)] += p[static_cast<std::size_t>(e)] / T;
    RefGate g = ref_gate(logits, {}, K, c.gate.score, c.gate.order, c.gate.normalize);
    for (int k = 0; k < K; ++k) {
      int e = g.experts[static_cast<std::size_t>(k)];
      ++r.counts[static_cast<std::size_t>(e)];
      routed[static_cast<std::size_t>(e)] += 1.0 / (T * K);
      if (kept_so_far[static_cast<std::size_t>(e)]++ >= capacity) continue;  // dropped: adds nothing
      Doubles h(static_cast<std::size_t>(F), 0.0);
      for (int j = 0; j < F; ++j) {
        for (int i = 0; i < D; ++i) h[static_cast<std::size_t>(j)] += x[static_cast<std::size_t>(t * D + i)] * wu[static_cast<std::size_t>((e * D + i) * F + j)];
        h[static_cast<std::size_t>(j)] = ref_gelu(h[static_cast<std::size_t>(j)]);
      }
      for (int i = 0; i < D; ++i) {
        double out = 0.0;
        for (int j = 0; j < F; ++j) out += h[static_cast<std::size_t>(j)] * wd[static_cast<std::size_t>((e * F + j) * D + i)];
        r.y[static_cast<std::size_t>(t * D + i)] += g.weights[static_cast<std::size_t>(k)] * out;
      }
    }
  }
  for (int e = 0; e < E; ++e) r.lb += c.lb_coeff * E * routed[static_cast<std::size_t>(e)] * mean_prob[static_cast<std::size_t>(e)];
  r.loss = r.lb + r.z;
  for (int i = 0; i < T * D; ++i) r.loss += r.y[static_cast<std::size_t>(i)] * probe[static_cast<std::size_t>(i)];
  return r;
}

const std::vector<std::string> kWeights = {"x", "w_router", "w_up", "w_down"};

std::vector<LayerConfig> configs() {
  LayerConfig dropless;
  LayerConfig capacity;  // drops and padding, sigmoid scores, Mixtral order
  capacity.gate = {.top_k = 2, .score = "sigmoid", .order = "topk_then_softmax", .normalize = false};
  capacity.capacity_factor = 1.0;
  capacity.block = 4;
  LayerConfig all;  // K = E
  all.top_k = 4;
  all.gate = {.top_k = 4, .score = "softmax", .order = "softmax_then_topk", .normalize = false};
  return {dropless, capacity, all};
}

}  // namespace

TEST_CASE("MoE layer matches the per-token loop reference", "[moe][layer]") {
  int config_index = 0;
  for (const auto& c : configs()) {
    INFO("config " << config_index++);
    Graph g = build_layer(c);
    Values v = layer_inputs(c, 10);
    Values out = run_cpu(g, v);
    LayerReference want = reference_layer(c, v);
    CHECK(max_rel_diff(out["y"].to_doubles(), want.y) < 1e-12);
    CHECK(out["lb"].get(0) == Approx(want.lb).epsilon(1e-12));
    CHECK(out["z"].get(0) == Approx(want.z).epsilon(1e-12));
    CHECK(out["loss"].get(0) == Approx(want.loss).epsilon(1e-12));
    CHECK(ints_of(out["counts"]) == want.counts);
    if (c.capacity_factor > 0) {  // the capacity config really drops
      int routed_max = *std::max_element(want.counts.begin(), want.counts.end());
      CHECK(routed_max > static_cast<int>(std::ceil(c.capacity_factor * c.tokens * c.top_k / c.num_experts)));
    }
  }
}

TEST_CASE("MoE layer gradients match finite differences (f64)", "[moe][layer][grad]") {
  for (const auto& c : configs()) {
    Graph g = build_layer(c);
    Values v = layer_inputs(c, 20);
    auto report = check_gradients(g, v, kWeights);
    INFO(report.str());
    CHECK(report.max_rel_error() < 1e-6);
    for (const auto& name : kWeights) CHECK(report.at(name).max_abs_numeric > 1e-3);
  }
}

namespace {

int count_kind(const Graph& g, OpKind kind) {
  return static_cast<int>(std::count_if(g.ops().begin(), g.ops().end(), [&](const Op& op) { return op.kind == kind; }));
}

void compare_all_outputs(const Values& got, const Values& want, const std::string& what) {
  for (const auto& [name, value] : want) {
    INFO(what << ": output " << name);
    REQUIRE(got.count(name));
    CHECK(max_rel_diff(got.at(name).to_doubles(), value.to_doubles()) < 1e-12);
  }
}

const char* kFusion = "fuse-router-permute,fuse-expert-gather-scatter,moe-tiling";
// The two fusion passes in the other order reach the same graph.
const char* kFusionSwapped = "fuse-expert-gather-scatter,fuse-router-permute,moe-tiling";

}  // namespace

TEST_CASE("fused MoE layer gives the unfused outputs and gradients, fusing before autodiff", "[moe][layer][fusion]") {
  for (const char* pipeline : {kFusion, kFusionSwapped})
  for (const auto& c : configs()) {
    INFO(pipeline);
    Graph unfused = build_layer(c);
    append_backward(unfused, {.loss = "loss", .wrt = kWeights});
    Graph fused = build_layer(c);
    run_pipeline(fused, pipeline);
    CHECK(count_kind(fused, OpKind::Route) == 1);
    CHECK(count_kind(fused, OpKind::GatherMatmul) == 1);
    CHECK(count_kind(fused, OpKind::MatmulCombine) == 1);
    for (auto kind : {OpKind::Gate, OpKind::Dispatch, OpKind::Permute, OpKind::Combine, OpKind::GroupedMatmul})
      CHECK(count_kind(fused, kind) == 0);
    // moe-tiling padded the route to the gather matmul's tile_m (no output shows the layout).
    for (const Op& op : fused.ops())
      if (op.kind == OpKind::GatherMatmul) {
        const Op& route = *std::find_if(fused.ops().begin(), fused.ops().end(), [](const Op& o) { return o.kind == OpKind::Route; });
        CHECK(route.attrs.get_int("block") == op.attrs.get_int("tile_m"));
        if (c.block == 1) CHECK(route.attrs.get_int("block") == 16);
      }
    append_backward(fused, {.loss = "loss", .wrt = kWeights});
    Values v = layer_inputs(c, 30);
    compare_all_outputs(run_cpu(fused, v), run_cpu(unfused, v), "fused before autodiff");
  }
}

TEST_CASE("fusing after autodiff keeps every value the backward reads", "[moe][layer][fusion]") {
  for (const auto& c : configs()) {
    Graph unfused = build_layer(c);
    append_backward(unfused, {.loss = "loss", .wrt = kWeights});
    Graph fused = unfused;
    run_pipeline(fused, kFusion);
    CHECK(count_kind(fused, OpKind::Route) == 1);
    CHECK(count_kind(fused, OpKind::Gate) == 0);
    // The backward reads xs (weight gradient of w_up) and ys (combine_grad):
    // those pairs must stay unfused.
    CHECK(count_kind(fused, OpKind::GatherMatmul) == 0);
    CHECK(count_kind(fused, OpKind::MatmulCombine) == 0);
    Values v = layer_inputs(c, 40);
    compare_all_outputs(run_cpu(fused, v), run_cpu(unfused, v), "fused after autodiff");
  }
}
