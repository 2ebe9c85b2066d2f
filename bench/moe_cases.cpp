// The graphs of moe_bench (bench/moe_cases.h): builders, arguments, floors
// and the host spot check of a grouped matmul.
#include "bench/moe_cases.h"

#include <fmt/format.h>

#include <cmath>
#include <random>
#include <sstream>

#include "bench/bench_util.h"
#include "ir/builder.h"
#include "ir/error.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"

namespace moejit::bench {

std::string MoeShape::label() const { return fmt::format("T{} D{} F{} E{} K{}", tokens, d_model, d_expert, experts, top_k); }

MoeShape parse_moe_shape(const std::string& text) {
  std::vector<std::int64_t> v;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      std::size_t used = 0;
      v.push_back(std::stoll(part, &used));
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      throw Error(fmt::format("--shape '{}': expected five integers T,D,F,E,K (tokens, d_model, d_expert, experts, top_k), found '{}'",
                              text, part));
    }
  }
  if (v.size() != 5)
    throw Error(fmt::format("--shape '{}': expected five integers T,D,F,E,K (tokens, d_model, d_expert, experts, top_k), found {}",
                            text, v.size()));
  MoeShape s{v[0], v[1], v[2], v[3], v[4]};
  for (std::int64_t x : v)
    if (x < 1) throw Error(fmt::format("--shape '{}': every size must be >= 1", text));
  if (s.top_k > s.experts) throw Error(fmt::format("--shape '{}': top_k {} exceeds experts {}", text, s.top_k, s.experts));
  return s;
}

namespace {

constexpr double kF32 = 4.0;

HostTensor random_tensor(TensorType type, std::uint64_t seed, double stddev) {
  HostTensor t(std::move(type));
  fill_random(t, seed, stddev);
  return t;
}

// offsets [E+1] of `rows` rows spread over `experts` experts by a uniform
// random expert per row (a realistic, uneven split).
HostTensor random_offsets(std::int64_t rows, std::int64_t experts, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> pick(0, experts - 1);
  std::vector<std::int32_t> counts(static_cast<std::size_t>(experts), 0);
  for (std::int64_t r = 0; r < rows; ++r) ++counts[static_cast<std::size_t>(pick(rng))];
  std::vector<std::int32_t> offsets(static_cast<std::size_t>(experts + 1), 0);
  for (std::int64_t e = 0; e < experts; ++e)
    offsets[static_cast<std::size_t>(e + 1)] = offsets[static_cast<std::size_t>(e)] + counts[static_cast<std::size_t>(e)];
  return HostTensor::from_ints({experts + 1}, offsets);
}

// Bytes of every argument plus every output of `graph` (each once).
double argument_and_output_bytes(const Graph& graph) {
  double bytes = 0.0;
  for (const auto& arg : graph.args()) bytes += static_cast<double>(graph.type(arg.value).bytes());
  for (const auto& out : graph.outputs()) bytes += static_cast<double>(graph.type(out.value).bytes());
  return bytes;
}

}  // namespace

BenchCase make_grouped_matmul_case(const MoeShape& s, std::uint64_t seed) {
  BenchCase c;
  c.name = "grouped_matmul";
  c.graph = Graph("bench_grouped_matmul");
  Builder b(c.graph);
  const std::int64_t N = s.rows();
  Tensor xs = b.input("xs", {N, s.d_model});
  Tensor w = b.param("w", {s.experts, s.d_model, s.d_expert});
  Tensor offsets = b.input("offsets", {s.experts + 1}, DType::i32);
  b.output(b.moe_grouped_matmul(xs, w, offsets), "ys");
  c.args.emplace("xs", random_tensor(c.graph.type(xs.id), seed, 1.0));
  c.args.emplace("w", random_tensor(c.graph.type(w.id), seed + 1, 1.0 / std::sqrt(static_cast<double>(s.d_model))));
  c.args.emplace("offsets", random_offsets(N, s.experts, seed + 2));
  c.floor.flops = 2.0 * static_cast<double>(N) * static_cast<double>(s.d_model) * static_cast<double>(s.d_expert);
  c.floor.bytes = argument_and_output_bytes(c.graph);
  return c;
}

BenchCase make_route_case(const MoeShape& s, bool fused, std::uint64_t seed) {
  BenchCase c;
  c.name = fused ? "route (fused)" : "route";
  c.unfused = !fused;
  c.graph = Graph("bench_route");
  Builder b(c.graph);
  Tensor x = b.input("x", {s.tokens, s.d_model});
  Tensor w_router = b.param("w_router", {s.d_model, s.experts});
  Tensor logits = b.matmul(x, w_router);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = s.top_k, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = s.experts});
  (void)counts;
  Tensor xs = b.moe_permute(x, slots, s.top_k);
  b.output(xs, "xs");
  b.output(weights, "weights");
  b.output(positions, "positions");
  b.output(offsets, "offsets");
  if (fused) {
    run_pipeline(c.graph, "fuse-router-permute");
    bool has_route = false;
    for (const auto& op : c.graph.ops()) has_route |= op.kind == OpKind::Route;
    MOEJIT_ASSERT(has_route, "fuse-router-permute formed no moe.route in the routing graph");
  }
  c.args.emplace("x", random_tensor(c.graph.type(c.graph.find_arg("x")), seed, 1.0));
  c.args.emplace("w_router", random_tensor(c.graph.type(c.graph.find_arg("w_router")), seed + 1, 1.0 / std::sqrt(static_cast<double>(s.d_model))));
  c.floor.flops = 2.0 * static_cast<double>(s.tokens) * static_cast<double>(s.d_model) * static_cast<double>(s.experts);
  c.floor.bytes = argument_and_output_bytes(c.graph);
  return c;
}

BenchCase make_layer_case(const MoeShape& s, bool fused, std::uint64_t seed) {
  BenchCase c;
  c.name = fused ? "layer fwd+bwd (fused)" : "layer fwd+bwd";
  c.unfused = !fused;
  c.graph = Graph("bench_moe_layer");
  Builder b(c.graph);
  const std::int64_t T = s.tokens, D = s.d_model, F = s.d_expert, E = s.experts;
  Tensor x = b.input("x", {T, D});
  Tensor target = b.input("target", {T, D});  // the loss's weights: d loss / d y = target / (T*D)
  Tensor w_router = b.param("w_router", {D, E});
  Tensor w_up = b.param("w_up", {E, D, F});
  Tensor w_down = b.param("w_down", {E, F, D});
  Tensor logits = b.matmul(x, w_router);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = s.top_k, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = E});
  (void)counts;
  Tensor xs = b.moe_permute(x, slots, s.top_k);
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);
  Tensor y = b.moe_combine(ys, weights, positions);
  Tensor aux = b.moe_load_balance_loss(b.softmax(logits), experts, 0.01);
  Tensor loss = b.add(b.mean(b.mul(y, target), {0, 1}), aux);
  b.output(loss, "loss");
  b.output(aux, "aux_loss");
  if (fused) {
    run_pipeline(c.graph, "moe-fusions");
    int fused_ops = 0;
    for (const auto& op : c.graph.ops())
      fused_ops += op.kind == OpKind::Route || op.kind == OpKind::GatherMatmul || op.kind == OpKind::MatmulCombine;
    MOEJIT_ASSERT(fused_ops == 3, fmt::format("expected moe.route, moe.gather_matmul and moe.matmul_combine, found {} fused ops", fused_ops));
  }
  append_backward(c.graph, {.loss = "loss", .wrt = {"x", "w_router", "w_up", "w_down"}});
  auto arg_type = [&](const char* name) { return c.graph.type(c.graph.find_arg(name)); };
  const double d_scale = 1.0 / std::sqrt(static_cast<double>(D)), f_scale = 1.0 / std::sqrt(static_cast<double>(F));
  c.args.emplace("x", random_tensor(arg_type("x"), seed, 1.0));
  c.args.emplace("target", random_tensor(arg_type("target"), seed + 1, 1.0));
  c.args.emplace("w_router", random_tensor(arg_type("w_router"), seed + 2, d_scale));
  c.args.emplace("w_up", random_tensor(arg_type("w_up"), seed + 3, d_scale));
  c.args.emplace("w_down", random_tensor(arg_type("w_down"), seed + 4, f_scale));
  // Forward: router 2TDE, two expert matmuls 2*(2NDF). Backward: each matmul
  // twice more (input and weight gradients).
  const double router = 2.0 * static_cast<double>(T * D * E);
  const double expert = 2.0 * static_cast<double>(s.rows()) * static_cast<double>(D) * static_cast<double>(F);
  c.floor.flops = 3.0 * (router + 2.0 * expert);
  c.floor.bytes = argument_and_output_bytes(c.graph);
  c.slack = 20.0;  // gradients through gate, GELU and two matmuls: 2e-3
  return c;
}

BenchCase make_dense_matmul_case(std::int64_t m, std::int64_t n, std::int64_t k, std::uint64_t seed) {
  BenchCase c;
  c.name = "dense_matmul";
  c.graph = Graph("bench_dense_matmul");
  Builder b(c.graph);
  Tensor a = b.input("a", {m, k});
  Tensor w = b.param("b", {k, n});
  b.output(b.matmul(a, w), "c");
  c.args.emplace("a", random_tensor(c.graph.type(a.id), seed, 1.0));
  c.args.emplace("b", random_tensor(c.graph.type(w.id), seed + 1, 1.0 / std::sqrt(static_cast<double>(k))));
  c.floor.flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  c.floor.bytes = argument_and_output_bytes(c.graph);
  return c;
}

double spot_check_grouped_matmul(const HostTensor& xs, const HostTensor& w, const HostTensor& offsets, const HostTensor& ys,
                                 const std::vector<std::int64_t>& rows) {
  const std::int64_t D = xs.shape()[1], E = w.shape()[0], F = w.shape()[2];
  auto x = xs.values<float>();
  auto wv = w.values<float>();
  auto y = ys.values<float>();
  auto off = offsets.values<std::int32_t>();
  double diff = 0.0, norm = 0.0;
  std::vector<double> ref(static_cast<std::size_t>(F));
  for (std::int64_t r : rows) {
    std::int64_t expert = -1;
    for (std::int64_t e = 0; e < E; ++e)
      if (r >= off[static_cast<std::size_t>(e)] && r < off[static_cast<std::size_t>(e + 1)]) expert = e;
    std::fill(ref.begin(), ref.end(), 0.0);
    if (expert >= 0)
      for (std::int64_t d = 0; d < D; ++d) {
        const double xv = x[static_cast<std::size_t>(r * D + d)];
        const float* wrow = &wv[static_cast<std::size_t>((expert * D + d) * F)];
        for (std::int64_t f = 0; f < F; ++f) ref[static_cast<std::size_t>(f)] += xv * static_cast<double>(wrow[f]);
      }
    for (std::int64_t f = 0; f < F; ++f) {
      const double got = y[static_cast<std::size_t>(r * F + f)], want = ref[static_cast<std::size_t>(f)];
      if (std::isnan(got)) return INFINITY;
      diff += (got - want) * (got - want);
      norm += want * want;
    }
  }
  const double floor = 1e-4 * static_cast<double>(rows.size()) * static_cast<double>(F);
  return std::sqrt(diff / std::max(norm, floor));
}

}  // namespace moejit::bench
