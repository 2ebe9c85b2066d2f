// The MoE passes' conditions: what they fuse, what they must leave alone
// (values with other uses, layouts visible in outputs), and that the graph
// stays valid and computes the same outputs.
#include <catch2/catch.hpp>

#include "ir/error.h"
#include "ir/verifier.h"
#include "moe_test_util.h"
#include "passes/pass_manager.h"
#include "passes/passes.h"

using namespace moetest;

namespace {

int count_kind(const Graph& g, OpKind kind) {
  return static_cast<int>(std::count_if(g.ops().begin(), g.ops().end(), [&](const Op& op) { return op.kind == kind; }));
}

struct Small {
  Graph g{"small"};
  Tensor x, w_router, w_up, w_down, logits, weights, experts, slots, offsets, positions, counts, xs, bias;
};

// router -> gate (with a bias defined after the router) -> dispatch -> permute;
// one expert matmul, combine. Outputs chosen by the caller.
void build_small(Small& s, bool bias_after_router) {
  Builder b(s.g);
  s.x = b.input("x", {6, 4}, DType::f64);
  s.w_router = b.param("w_router", {4, 3}, DType::f64);
  s.w_up = b.param("w_up", {3, 4, 5}, DType::f64);
  s.w_down = b.param("w_down", {3, 5, 4}, DType::f64);
  Tensor bias_in = b.input("bias_in", {3}, DType::f64);
  s.logits = b.matmul(s.x, s.w_router);
  s.bias = bias_after_router ? b.tanh(bias_in) : bias_in;  // an op after the matmul
  auto gate = b.moe_gate(s.logits, {.top_k = 2}, &s.bias);
  s.weights = gate[0];
  s.experts = gate[1];
  auto d = b.moe_dispatch(s.experts, {.num_experts = 3});
  s.slots = d[0], s.offsets = d[1], s.positions = d[2], s.counts = d[3];
  s.xs = b.moe_permute(s.x, s.slots, 2);
}

Values small_inputs() {
  auto f = [](Shape sh) { return TensorType{DType::f64, std::move(sh)}; };
  return {{"x", random_tensor(f({6, 4}), 1)},
          {"w_router", random_tensor(f({4, 3}), 2)},
          {"w_up", random_tensor(f({3, 4, 5}), 3)},
          {"w_down", random_tensor(f({3, 5, 4}), 4)},
          {"bias_in", random_tensor(f({3}), 5, -0.2, 0.2)}};
}

void check_same_outputs(const Graph& before, const Graph& after) {
  verify_or_throw(after);
  Values v = small_inputs();
  Values a = run_cpu(before, v), b = run_cpu(after, v);
  for (const auto& [name, value] : a) {
    INFO("output " << name);
    CHECK(max_rel_diff(b.at(name).to_doubles(), value.to_doubles()) < 1e-13);
  }
}

}  // namespace

TEST_CASE("fuse-router-permute keeps every intermediate that is an output, and a late bias", "[moe][passes]") {
  Small s;
  build_small(s, /*bias_after_router=*/true);
  Builder b(s.g);
  Tensor h = b.gelu(b.moe_grouped_matmul(s.xs, s.w_up, s.offsets));
  b.output(b.moe_combine(b.moe_grouped_matmul(h, s.w_down, s.offsets), s.weights, s.positions), "y");
  // Every intermediate is also a graph output, and the logits have another user.
  b.output(b.softmax(s.logits), "probs");
  b.output(s.logits, "logits");
  b.output(s.experts, "experts");
  b.output(s.slots, "slots");
  b.output(s.offsets, "offsets");
  b.output(s.positions, "positions");
  b.output(s.counts, "counts");
  b.output(s.xs, "xs");
  Graph before = s.g;
  auto pass = create_fuse_router_permute_pass({});
  pass->run(s.g);
  CHECK(count_kind(s.g, OpKind::Route) == 1);
  CHECK(count_kind(s.g, OpKind::Gate) == 0);
  CHECK(count_kind(s.g, OpKind::Matmul) == 0);
  CHECK(s.g.outputs().size() == before.outputs().size());
  check_same_outputs(before, s.g);
}

TEST_CASE("fuse-router-permute fuses a router stored [E, D] (nn::linear's layout), skips a transposed x", "[moe][passes]") {
  Graph g("router_layouts");
  Builder b(g);
  Tensor x = b.input("x", {6, 4}, DType::f64), w = b.param("w", {3, 4}, DType::f64);
  auto gate = b.moe_gate(b.matmul(x, w, false, true), {.top_k = 2});  // w [E, D], as nn::moe_block builds it
  auto d = b.moe_dispatch(gate[1], {.num_experts = 3});
  b.output(b.moe_permute(x, d[0], 2), "xs");
  b.output(gate[0], "weights");
  Tensor xt = b.input("xt", {4, 6}, DType::f64), w2 = b.param("w2", {4, 3}, DType::f64);
  auto gate2 = b.moe_gate(b.matmul(xt, w2, true, false), {.top_k = 1});  // x stored [D, T]: not the pattern
  b.output(b.moe_dispatch(gate2[1], {.num_experts = 3})[3], "counts");  // no permute
  Graph before = g;
  auto pass = create_fuse_router_permute_pass({});
  pass->run(g);
  CHECK(count_kind(g, OpKind::Route) == 1);      // the first chain
  CHECK(count_kind(g, OpKind::Transpose) == 1);  // of its router weight
  CHECK(count_kind(g, OpKind::Gate) == 1);       // the second
  auto stat = [&](const std::string& name) {
    for (const auto& [k, n] : pass->statistics())
      if (k == name) return n;
    return std::int64_t{0};
  };
  CHECK(stat("skipped-transposed-router") == 1);
  CHECK(stat("routers-transposed") == 1);
  CHECK(stat("routes-formed") == 1);
  verify_or_throw(g);
  auto f = [](Shape sh) { return TensorType{DType::f64, std::move(sh)}; };
  Values v = {{"x", random_tensor(f({6, 4}), 1)},
              {"w", random_tensor(f({3, 4}), 2)},
              {"xt", random_tensor(f({4, 6}), 3)},
              {"w2", random_tensor(f({4, 3}), 4)}};
  Values want = run_cpu(before, v), got = run_cpu(g, v);
  for (const auto& [name, value] : want) {
    INFO("output " << name);
    CHECK(max_rel_diff(got.at(name).to_doubles(), value.to_doubles()) < 1e-13);
  }
}

TEST_CASE("fuse-expert-gather-scatter only fuses values nobody else reads", "[moe][passes]") {
  Small s;
  build_small(s, false);
  Builder b(s.g);
  Tensor h = b.moe_grouped_matmul(s.xs, s.w_up, s.offsets);
  Tensor ys = b.moe_grouped_matmul(b.gelu(h), s.w_down, s.offsets);
  b.output(b.moe_combine(ys, s.weights, s.positions), "y");
  SECTION("sole uses: both fused") {
    Graph before = s.g;
    run_pipeline(s.g, "fuse-expert-gather-scatter");
    CHECK(count_kind(s.g, OpKind::GatherMatmul) == 1);
    CHECK(count_kind(s.g, OpKind::MatmulCombine) == 1);
    CHECK(count_kind(s.g, OpKind::Permute) == 0);
    check_same_outputs(before, s.g);
  }
  SECTION("xs and ys are outputs too: nothing fused") {
    b.output(s.xs, "xs");
    b.output(ys, "ys");
    Graph before = s.g;
    run_pipeline(s.g, "fuse-expert-gather-scatter");
    CHECK(count_kind(s.g, OpKind::GatherMatmul) == 0);
    CHECK(count_kind(s.g, OpKind::MatmulCombine) == 0);
    check_same_outputs(before, s.g);
  }
}

TEST_CASE("moe-tiling annotates every expert matmul and pads the dispatch only when its layout stays inside", "[moe][passes]") {
  Small s;
  build_small(s, false);
  Builder b(s.g);
  Tensor h = b.moe_grouped_matmul(s.xs, s.w_up, s.offsets);
  b.output(b.moe_combine(b.moe_grouped_matmul(b.gelu(h), s.w_down, s.offsets), s.weights, s.positions), "y");
  SECTION("layout internal: block = tile_m") {
    Graph before = s.g;
    run_pipeline(s.g, "moe-tiling");
    for (const Op& op : s.g.ops()) {
      if (op.kind == OpKind::Dispatch) CHECK(op.attrs.get_int("block") == 16);  // 12 slots / 3 experts -> 4 rows -> clamp 16
      if (op.kind == OpKind::GroupedMatmul) {
        CHECK(op.attrs.get_int("tile_m") == 16);
        CHECK(op.attrs.get_int("tile_k") == 16);
        CHECK(op.attrs.get_int("tile_n") == 16);
      }
    }
    check_same_outputs(before, s.g);
  }
  SECTION("positions is an output: the block stays 1") {
    b.output(s.positions, "positions");
    Graph before = s.g;
    run_pipeline(s.g, "moe-tiling");
    for (const Op& op : s.g.ops())
      if (op.kind == OpKind::Dispatch) CHECK(op.attrs.get_int("block") == 1);
    check_same_outputs(before, s.g);
  }
  SECTION("pad-dispatch=false") {
    run_pipeline(s.g, "moe-tiling{pad-dispatch=false}");
    for (const Op& op : s.g.ops())
      if (op.kind == OpKind::Dispatch) CHECK(op.attrs.get_int("block") == 1);
  }
  CHECK_THROWS_AS(create_pass("moe-tiling", {{"pad-dispatch", "maybe"}}), moejit::Error);
}
