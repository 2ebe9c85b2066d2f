// The fused router on the GPU (route_kernel + dispatch scan/scatter +
// permute, codegen/emit_moe.cpp fused_route) against the CPU backend's
// moe.route: odd token counts, E in {1, 8, 64, 128, 256} (and a few that are
// no power of two), K in {1, 2, 8, E}, softmax and sigmoid scores, both
// orders, with and without a bias, capacity and block padding on and off.
//
// The inputs are dyadic (x in {-1, -1/2, 0, 1/2, 1}, w_router and bias
// multiples of 1/8 in [-1/2, 1/2]): every product and partial sum of the
// router is exact in f32, so the GPU's f32 logits equal the CPU's
// double-accumulated ones bit for bit, and the routing (experts, slots,
// offsets, positions, counts) must then be exactly the CPU's. The small value
// set also makes many exact ties among the experts, which exercises the tie
// rule (the lower expert first). The weights are compared within f32
// tolerance. Without a GPU each test prints SKIPPED.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <random>

#include "codegen/cuda_codegen.h"
#include "codegen/tuning_space.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "cuda/ptx_check.h"
#include "frontends/moe_layer.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;

struct RouteCase {
  std::int64_t tokens, width, experts, top_k;
  std::string score = "softmax", order = "softmax_then_topk";
  bool normalize = true, bias = false;
  double capacity_factor = 0.0;
  std::int64_t block = 1;
  DType dtype = DType::f32;

  std::string str() const {
    return fmt::format("T{} D{} E{} K{} {} {}{}{} capacity {} block {} {}", tokens, width, experts, top_k, score, order,
                       normalize ? " normalized" : "", bias ? " bias" : "", capacity_factor, block, dtype_name(dtype));
  }
};

// The routing chain, fused into one moe.route, with every result an output
// (or, with keep_xs false, every result but xs, which nothing reads).
Graph make_route_graph(const RouteCase& c, bool keep_xs = true) {
  Graph graph("route");
  Builder b(graph);
  Tensor x = b.input("x", {c.tokens, c.width}, c.dtype);
  Tensor w = b.param("w_router", {c.width, c.experts}, c.dtype);
  Tensor bias_value;
  if (c.bias) bias_value = b.param("bias", {c.experts}, c.dtype);
  Tensor logits = b.matmul(x, w);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = c.top_k, .score = c.score, .order = c.order, .normalize = c.normalize},
                                       c.bias ? &bias_value : nullptr);
  auto [slots, offsets, positions, counts] =
      b.moe_dispatch(experts, {.num_experts = c.experts, .capacity_factor = c.capacity_factor, .block = c.block});
  if (keep_xs) b.output(b.moe_permute(x, slots, c.top_k), "xs");
  b.output(logits, "logits");
  b.output(weights, "weights");
  b.output(experts, "experts");
  b.output(slots, "slots");
  b.output(offsets, "offsets");
  b.output(positions, "positions");
  b.output(counts, "counts");
  run_pipeline(graph, "fuse-router-permute");
  int routes = 0;
  for (const Op& op : graph.ops()) routes += op.kind == OpKind::Route;
  REQUIRE(routes == 1);
  return graph;
}

// Dyadic arguments (see the file comment).
Values dyadic_args(const Graph& graph, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Values args;
  for (const auto& arg : graph.args()) {
    const auto& info = graph.value(arg.value);
    HostTensor t(info.type);
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      double v = info.name == "x" ? static_cast<double>(std::uniform_int_distribution<int>(-2, 2)(rng)) / 2.0
                                  : static_cast<double>(std::uniform_int_distribution<int>(-4, 4)(rng)) / 8.0;
      t.set(i, v);
    }
    args.emplace(info.name, std::move(t));
  }
  return args;
}

Values run_graph(Backend& backend, const Graph& graph, const Values& args) {
  auto exe = backend.compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  Values result;
  for (const auto& out : graph.outputs()) result.emplace(out.name, exe->get(out.name));
  return result;
}

// The first element where got and want differ, or -1.
std::int64_t first_difference(const HostTensor& got, const HostTensor& want) {
  for (std::int64_t i = 0; i < want.numel(); ++i)
    if (got.get(i) != want.get(i)) return i;
  return -1;
}

void check_route(Backend& cpu, Backend& cuda, const RouteCase& c, std::uint64_t seed) {
  INFO(c.str());
  Graph graph = make_route_graph(c);
  Values args = dyadic_args(graph, seed);
  Values want = run_graph(cpu, graph, args);
  Values got = run_graph(cuda, graph, args);
  for (const char* name : {"logits", "experts", "slots", "offsets", "positions", "counts", "xs"}) {
    if (!want.count(name)) continue;
    const HostTensor& g = got.at(name);
    const HostTensor& w = want.at(name);
    REQUIRE(g.type() == w.type());
    std::int64_t at = first_difference(g, w);
    INFO(fmt::format("{}: first difference at element {} (gpu {}, cpu {})", name, at, at >= 0 ? g.get(at) : 0.0,
                     at >= 0 ? w.get(at) : 0.0));
    CHECK(at == -1);
  }
  double err = cuda_test::normalized_error(got.at("weights"), want.at("weights"));
  INFO(fmt::format("weights: normalized error {:.3g}", err));
  CHECK(err <= cuda_test::tolerance(c.dtype));
}

std::string kernels_of(const codegen::ModuleCode& module) {
  std::string all;
  for (const auto& k : module.kernels) all += k + "\n";
  return all;
}

}  // namespace

TEST_CASE("moe.route emits the fused router up to 256 experts, and permutes only a read xs", "[cuda][nvrtc][route]") {
  const codegen::Target hopper = codegen::Target::named("sm_90a");
  for (DType dtype : {DType::f32, DType::bf16}) {
    INFO(dtype_name(dtype));
    RouteCase c{.tokens = 100, .width = 64, .experts = 256, .top_k = 8, .bias = true, .dtype = dtype};
    codegen::ModuleCode with_xs = codegen::generate_module(make_route_graph(c), hopper);
    std::string kernels = kernels_of(with_xs);
    INFO(kernels);
    CHECK(kernels.find("route_kernel") != std::string::npos);
    CHECK(kernels.find("permute_kernel") != std::string::npos);
    CHECK(kernels.find("gate_kernel") == std::string::npos);
    CHECK(kernels.find("dispatch_count_kernel") == std::string::npos);
    cuda_test::compile_to_ptx(with_xs, "route", "compute_90a");
    std::string without_xs = kernels_of(codegen::generate_module(make_route_graph(c, false), hopper));
    CHECK(without_xs.find("route_kernel") != std::string::npos);
    CHECK(without_xs.find("permute_kernel") == std::string::npos);
    // More experts: the router product, then the unfused gate and dispatch
    // (bf16 through the sm90 GEMM family on sm_90a).
    c.experts = 320;
    codegen::ModuleCode wide = codegen::generate_module(make_route_graph(c), hopper);
    std::string wide_kernels = kernels_of(wide);
    INFO(wide_kernels);
    CHECK(wide_kernels.find("route_kernel") == std::string::npos);
    CHECK(wide_kernels.find("gate_kernel") != std::string::npos);
    CHECK(wide_kernels.find("dispatch_count_kernel") != std::string::npos);
    cuda_test::compile_to_ptx(wide, "wide_route", "compute_90a");
  }
}

TEST_CASE("gpu: the fused router matches the CPU's moe.route exactly in its integer results", "[cuda][gpu][route][slow]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  // Each (E, K) pair once, the other options cycling so that every option
  // meets several expert counts; widths that are (and are not) a multiple
  // of the kernel's 4-element vector loads and 32-wide slices.
  std::vector<std::pair<std::int64_t, std::int64_t>> experts_and_k = {
      {1, 1}, {8, 1}, {8, 2}, {8, 8}, {64, 1}, {64, 2}, {64, 8}, {64, 64}, {128, 1}, {128, 2}, {128, 8}, {128, 128},
      {256, 1}, {256, 2}, {256, 8}, {256, 256}, {5, 2}, {37, 3}, {200, 8}};
  const std::int64_t widths[] = {40, 37, 96, 130};
  int n = 0;
  for (const auto& [E, K] : experts_and_k) {
    RouteCase c{.tokens = 257 + 2 * n, .width = widths[n % 4], .experts = E, .top_k = K};
    c.score = n % 2 == 0 ? "softmax" : "sigmoid";
    c.order = n % 3 == 2 ? "topk_then_softmax" : "softmax_then_topk";
    c.normalize = n % 5 != 4;
    c.bias = n % 4 >= 2;
    if (n % 3 == 1) {
      c.capacity_factor = 1.25;
      c.block = 4;
    }
    check_route(*cpu, *cuda, c, 100 + static_cast<std::uint64_t>(n));
    ++n;
  }
}

TEST_CASE("gpu: the fused router over many blocks, with capacity drops and in bf16, matches the CPU", "[cuda][gpu][route]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  check_route(*cpu, *cuda, {.tokens = 20001, .width = 64, .experts = 64, .top_k = 2, .capacity_factor = 1.0, .block = 8}, 7);
  check_route(*cpu, *cuda, {.tokens = 16385, .width = 128, .experts = 8, .top_k = 2}, 8);
  check_route(*cpu, *cuda, {.tokens = 9999, .width = 48, .experts = 256, .top_k = 8, .score = "sigmoid", .bias = true,
                            .capacity_factor = 0.5, .block = 16},
              9);
  check_route(*cpu, *cuda, {.tokens = 4097, .width = 64, .experts = 64, .top_k = 2, .dtype = DType::bf16}, 10);
  check_route(*cpu, *cuda, {.tokens = 1001, .width = 33, .experts = 16, .top_k = 4, .order = "topk_then_softmax", .bias = true,
                            .capacity_factor = 2.0, .block = 2, .dtype = DType::bf16},
              11);
}

TEST_CASE("gpu: tuned route configurations give the heuristic's results bit for bit", "[cuda][gpu][route][tuning][slow]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cuda = make_cuda_backend();
  const codegen::Target target = cuda_device_target();
  // Random (not dyadic) values: the logits' rounding depends on the order
  // of their sums, which no configuration changes.
  for (auto [E, K, D] : {std::tuple{8, 2, 384}, std::tuple{64, 2, 256}, std::tuple{20, 3, 100}}) {
    const RouteCase c{.tokens = 5003, .width = D, .experts = E, .top_k = K};
    INFO(c.str());
    Graph graph = make_route_graph(c, false);
    std::mt19937_64 rng(77);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    Values args;
    for (const auto& arg : graph.args()) {
      HostTensor t(graph.value(arg.value).type);
      for (std::int64_t i = 0; i < t.numel(); ++i) t.set(i, u(rng));
      args.emplace(graph.value(arg.value).name, std::move(t));
    }
    Values want;
    {
      codegen::ScopedTuningDbOverride none(nullptr);
      want = run_graph(*cuda, graph, args);
    }
    const auto problems = codegen::collect_tuning_problems(graph, target);
    REQUIRE(problems.size() == 1);
    const auto candidates = codegen::find_tunable_family("route")->candidates(problems[0], target);
    REQUIRE(candidates.size() >= 3);
    for (std::size_t i : {std::size_t{1}, candidates.size() / 2, candidates.size() - 1}) {
      INFO(codegen::fields_str(candidates[i]));
      codegen::TuningDb db{target.device_name, target.arch, {{problems[0].key, candidates[i], codegen::tuning_family_version("route")}}};
      codegen::ScopedTuningDbOverride only(&db);
      const Values got = run_graph(*cuda, graph, args);
      for (const auto& [name, w] : want) {
        const std::int64_t at = first_difference(got.at(name), w);
        INFO(name << ": first difference at " << at);
        CHECK(at == -1);
      }
    }
  }
}

namespace {

// logits [tokens, E] (+ a bias) -> moe.gate -> loss = sum(weights * target),
// with the gradient of the logits ("grad.logits").
Graph gate_graph(std::int64_t tokens, std::int64_t experts, std::int64_t top_k, const std::string& score, const std::string& order,
                 bool normalize, bool with_bias) {
  Graph g("gate");
  Builder b(g);
  Tensor logits = b.input("logits", {tokens, experts});
  Tensor bias = b.input("bias", {experts});
  Tensor target = b.input("target", {tokens, top_k});
  auto [weights, chosen] =
      b.moe_gate(logits, {.top_k = top_k, .score = score, .order = order, .normalize = normalize}, with_bias ? &bias : nullptr);
  b.output(weights, "weights");
  b.output(chosen, "experts");
  b.output(b.sum(b.mul(weights, target), {0, 1}), "loss");
  append_backward(g, {.loss = "loss", .wrt = {"logits"}});
  return g;
}

}  // namespace

TEST_CASE("MOEJIT_WARP_KERNELS=1 gives moe.gate and moe.gate_grad their lane forms, which compile to PTX", "[cuda][nvrtc][route]") {
  cuda_test::EnvOverride no_rows("MOEJIT_GATE_ROWS", "0");  // the thread-per-token forms: the case below
  for (const char* arch : {"sm_90a", "sm_80"}) {
    INFO(arch);
    auto kernels = [&](const char* warp) {
      cuda_test::EnvOverride warp_kernels("MOEJIT_WARP_KERNELS", warp);
      const codegen::ModuleCode m =
          codegen::generate_module(gate_graph(100, 128, 8, "softmax", "softmax_then_topk", true, false), codegen::Target::named(arch));
      std::string gate, grad;
      for (const auto& k : m.kernels) {
        if (k.find("gate_kernel<") != std::string::npos) gate = k;
        if (k.find("gate_grad_kernel<") != std::string::npos) grad = k;
      }
      if (std::string(warp) == "1") cuda_test::compile_to_ptx(m, "gate_lanes", arch == std::string("sm_90a") ? "compute_90a" : "compute_80");
      return std::pair{gate, grad};
    };
    const auto [gate_off, grad_off] = kernels("0");
    const auto [gate_on, grad_on] = kernels("1");
    CHECK(gate_off == "mj::gate_kernel<float, 4, 128>");
    CHECK(grad_off == "mj::gate_grad_kernel<float, 128>");
    CHECK(gate_on == "mj::gate_kernel<float, 4, 128, true>");
    CHECK(grad_on == "mj::gate_grad_kernel<float, 128, true>");
  }
  cuda_test::EnvOverride bad("MOEJIT_WARP_KERNELS", "yes");
  CHECK_THROWS_WITH(codegen::generate_module(gate_graph(10, 8, 2, "softmax", "softmax_then_topk", true, false), codegen::Target::named("sm_90a")),
                    Catch::Contains("MOEJIT_WARP_KERNELS: expected 0 or 1, found 'yes'"));
}

TEST_CASE("moe.gate and moe.gate_grad take four lanes per token for f32 logits, E % 4 == 0 up to 256 and K up to 8, and compile to PTX",
          "[cuda][nvrtc][route]") {
  struct Case {
    std::int64_t experts, top_k;
    DType dtype;
    std::string gate, grad;  // the expected instantiations
  };
  const Case cases[] = {{128, 8, DType::f32, "mj::gate_rows_kernel<8, 4>", "mj::gate_grad_rows_kernel<8, 4>"},
                        {256, 2, DType::f32, "mj::gate_rows_kernel<2, 4>", "mj::gate_grad_rows_kernel<2, 4>"},
                        {20, 3, DType::f32, "mj::gate_rows_kernel<3, 4>", "mj::gate_grad_rows_kernel<3, 4>"},
                        {130, 8, DType::f32, "mj::gate_kernel<float, 5, 128, true>", "mj::gate_grad_kernel<float, 128, true>"},  // E % 4
                        {64, 9, DType::f32, "mj::gate_kernel<float, 2, 128, true>", "mj::gate_grad_kernel<float, 128, true>"},    // K > 8
                        {300, 4, DType::f32, "mj::gate_kernel<float, 0, 128, true>", "mj::gate_grad_kernel<float, 128, true>"}};  // E > 256
  for (const char* arch : {"sm_90a", "sm_80"})
    for (const Case& c : cases) {
      INFO(fmt::format("{} E {} K {}", arch, c.experts, c.top_k));
      const codegen::ModuleCode m = codegen::generate_module(
          gate_graph(100, c.experts, c.top_k, "softmax", "softmax_then_topk", true, false), codegen::Target::named(arch));
      std::string gate, grad;
      for (const auto& k : m.kernels) {
        if (k.find("gate_rows_kernel<") != std::string::npos || k.find("gate_kernel<") != std::string::npos) gate = k;
        if (k.find("gate_grad") != std::string::npos) grad = k;
      }
      CHECK(gate == c.gate);
      CHECK(grad == c.grad);
      if (c.experts == 128 || c.experts == 20)
        cuda_test::compile_to_ptx(m, "gate_rows", arch == std::string("sm_90a") ? "compute_90a" : "compute_80");
    }
  cuda_test::EnvOverride off("MOEJIT_GATE_ROWS", "0");
  const codegen::ModuleCode m =
      codegen::generate_module(gate_graph(100, 128, 8, "softmax", "softmax_then_topk", true, false), codegen::Target::named("sm_90a"));
  for (const auto& k : m.kernels) CHECK(k.find("_rows_kernel<") == std::string::npos);
}

// [slow]: 27 compiles, ~35 s on an H200 (scripts/gpu-check.sh deals the slow cases to its shards first).
TEST_CASE("gpu: moe.gate and its gradient (four lanes per token, MOEJIT_WARP_KERNELS=0 and 1; K > 32, E > 256) match the CPU",
          "[cuda][gpu][route][slow]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t experts, top_k;
    std::string score, order;
    bool normalize, bias;
  };
  const Case cases[] = {{128, 8, "softmax", "softmax_then_topk", true, false},  // D1536 E128's gate
                        {8, 2, "softmax", "topk_then_softmax", false, false},   // Mixtral's
                        {64, 40, "softmax", "softmax_then_topk", true, false},  // K > 32: the loop
                        {32, 32, "sigmoid", "softmax_then_topk", true, true},   // K = E
                        {20, 3, "sigmoid", "topk_then_softmax", false, true},
                        {300, 4, "softmax", "softmax_then_topk", true, true},   // E > 256: keys recomputed
                        {256, 8, "softmax", "softmax_then_topk", true, true},   // a thread per token, 32-token blocks
                        {12, 8, "softmax", "topk_then_softmax", true, false},
                        {8, 1, "sigmoid", "softmax_then_topk", false, false}};
  std::uint64_t seed = 41;
  // The lanes-per-token forms (the default where they apply), then the warp forms with and without the lanes.
  for (const char* setting : {"rows", "0", "1"})
  for (const Case& c : cases) {
    const bool rows = setting == std::string("rows");
    cuda_test::EnvOverride gate_rows("MOEJIT_GATE_ROWS", rows ? "1" : "0");
    cuda_test::EnvOverride warp_kernels("MOEJIT_WARP_KERNELS", rows ? "1" : setting);
    INFO(fmt::format("E {} K {} {} {}{}{} {}", c.experts, c.top_k, c.score, c.order, c.normalize ? " normalized" : "",
                     c.bias ? " bias" : "", rows ? "MOEJIT_GATE_ROWS=1" : fmt::format("MOEJIT_WARP_KERNELS={}", setting)));
    const Graph g = gate_graph(3001, c.experts, c.top_k, c.score, c.order, c.normalize, c.bias);
    // Multiples of 1/8 in [-1, 1]: many exact ties among the experts (the lower one first).
    std::mt19937_64 rng(seed++);
    std::uniform_int_distribution<int> eighths(-8, 8);
    Values args;
    for (const auto& arg : g.args()) {
      HostTensor t(g.value(arg.value).type);
      for (std::int64_t i = 0; i < t.numel(); ++i) t.set(i, eighths(rng) / 8.0);
      args.emplace(g.value(arg.value).name, std::move(t));
    }
    const Values got = run_graph(*cuda, g, args), want = run_graph(*cpu, g, args);
    CHECK(first_difference(got.at("experts"), want.at("experts")) == -1);
    for (const char* name : {"weights", "grad.logits"}) {
      const double err = cuda_test::normalized_error(got.at(name), want.at(name));
      INFO(name << ": normalized error " << err);
      CHECK(err <= cuda_test::tolerance(DType::f32));
    }
  }
}

// The auxiliary losses' statistics run in chunks of tokens (a shared
// histogram of each chunk's slots) and their gradient walks rows with a
// thread an expert: many chunks, an expert most tokens pick, and E that
// divides no block (37).
TEST_CASE("gpu: the load-balance loss and the entropy regularizer, forward and backward, match the CPU over many token chunks",
          "[cuda][gpu][route]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t tokens, experts, top_k;
  };
  std::uint64_t seed = 7;
  for (const Case& c : {Case{3001, 128, 8}, Case{24576, 8, 2}, Case{1000, 37, 3}, Case{5, 4, 4}}) {
    INFO(fmt::format("T {} E {} K {}", c.tokens, c.experts, c.top_k));
    Graph g("aux_losses");
    Builder b(g);
    Tensor logits = b.input("logits", {c.tokens, c.experts});
    Tensor probs = b.softmax(logits);
    auto [weights, experts] = b.moe_gate(logits, {.top_k = c.top_k, .normalize = true});
    (void)weights;
    b.output(b.add(b.moe_load_balance_loss(probs, experts, 0.01), b.moe_entropy_reg(probs, 0.1)), "loss");
    append_backward(g, {.loss = "loss", .wrt = {"logits"}});
    std::mt19937_64 rng(seed++);
    std::normal_distribution<double> normal(0.0, 2.0);
    HostTensor x(g.type(g.find_arg("logits")));
    for (std::int64_t i = 0; i < x.numel(); ++i) x.set(i, normal(rng));
    for (std::int64_t t = 0; t < c.tokens; t += 3) x.set(t * c.experts, 40.0);  // expert 0 picked by a third of the tokens at least
    Values args;
    args.emplace("logits", std::move(x));
    const Values got = run_graph(*cuda, g, args), want = run_graph(*cpu, g, args);
    for (const char* name : {"loss", "grad.logits"}) {
      const double err = cuda_test::normalized_error(got.at(name), want.at(name));
      INFO(name << ": normalized error " << err);
      CHECK(err <= cuda_test::tolerance(DType::f32));
    }
  }
}

// The layer's loss reads its bf16 target through a cast to f32 in the
// forward's mean and in the loss gradient: fuse-elementwise clones the cast
// so each reader's kernel converts the target itself (no f32 copy stored).
TEST_CASE("the layer bench's bf16 target is widened inside both of its readers' kernels", "[cuda][route]") {
  Graph lowered = moe_layer_graph("target_cast", {1000, 384, 256, 16, 4}, true);
  run_pipeline(lowered, "cuda-pipeline");
  const ValueId target = lowered.find_arg("target");
  int readers = 0;
  for (const Op& op : lowered.ops())
    for (ValueId v : op.operands)
      if (v == target) {
        ++readers;
        CHECK(op.kind == OpKind::Cast);
        CHECK(op.attrs.has("mj.fusion_group"));  // inside a chain: not stored
      }
  CHECK(readers == 2);
  const codegen::ModuleCode m = codegen::generate_module(lowered, codegen::Target::named("sm_90a"));
  for (const auto& step : m.steps)
    if (step.ops.size() == 1 && lowered.ops()[static_cast<std::size_t>(step.ops[0])].kind == OpKind::Cast)
      for (ValueId v : lowered.ops()[static_cast<std::size_t>(step.ops[0])].operands) CHECK(v != target);
}

// The route's backward: x's gradient is the router's dx plus the
// permute_grad of the expert rows' dx; op group combine_add computes the sum
// in the permute_grad's combine kernel (no separate add, the permute_grad's
// result never stored).
TEST_CASE("the router's dx is added inside the permute_grad's combine kernel (op group combine_add)", "[cuda][route]") {
  const Graph g = moe_layer_graph("combine_add", {1000, 384, 256, 16, 4}, true);
  Graph lowered = g;
  run_pipeline(lowered, "cuda-pipeline");
  const codegen::ModuleCode m = codegen::generate_module(lowered, codegen::Target::named("sm_90a"));
  int grouped = 0;
  for (const auto& step : m.steps) {
    bool permute_grad = false, add = false;
    for (int i : step.ops) {
      const OpKind kind = lowered.ops()[static_cast<std::size_t>(i)].kind;
      permute_grad |= kind == OpKind::PermuteGrad;
      add |= kind == OpKind::Add;
    }
    if (!permute_grad) continue;
    REQUIRE(step.launches.size() == 1);
    CHECK(step.launches[0].kernel.find("combine_kernel") != std::string::npos);
    grouped += add && step.ops.size() == 2;
  }
  CHECK(grouped == 1);
  cuda_test::EnvOverride no_groups("MOEJIT_OP_GROUPS", "0");
  const codegen::ModuleCode plain = codegen::generate_module(lowered, codegen::Target::named("sm_90a"));
  CHECK(plain.steps.size() > m.steps.size());
}

TEST_CASE("gpu: the MoE layer with its router, forward and backward, matches the CPU (combine_add)", "[cuda][gpu][route]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  // E = 1; K = E; many experts with some empty; D no multiple of 8 (the combine's unpacked path).
  struct Layer {
    std::int64_t tokens, d, f, experts, top_k;
  };
  std::uint64_t seed = 91;
  for (const Layer& c : {Layer{1000, 384, 256, 16, 4}, Layer{333, 128, 64, 1, 1}, Layer{200, 64, 128, 4, 4}, Layer{257, 100, 96, 64, 8}}) {
    INFO(fmt::format("tokens {} d {} f {} experts {} top_k {}", c.tokens, c.d, c.f, c.experts, c.top_k));
    const Graph g = moe_layer_graph("combine_add", {c.tokens, c.d, c.f, c.experts, c.top_k}, true);
    const Values args = cuda_test::random_args(g, seed++, 1, 0.5);
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args));
  }
}
