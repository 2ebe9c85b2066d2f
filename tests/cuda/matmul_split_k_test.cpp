// Split-K for SIMT matmuls with few output tiles and a long K (gemm_select's
// simt_split_k, codegen/simt_matmul.cpp, matmul_split_k_kernel, its narrow
// shape matmul_split_k_narrow_kernel for N <= 32 with A's M contiguous, and
// their in-order finish pass): which products split, that the kernels compile to
// PTX, and on a GPU that the results match the CPU (f32, f64, bf16 through
// the SIMT family, batched, transposed operands), that two runs agree bit
// for bit (the reduction is deterministic), and that a fused router's
// gradients (the route's x^T dlogits is such a product) match the CPU.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstring>
#include <random>

#include "codegen/cuda_codegen.h"
#include "codegen/gemm_select.h"
#include "cuda/cuda_test_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;

codegen::TileConfig simt_choice(std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t batch = 1, DType dtype = DType::f32) {
  Graph graph("g");
  Builder b(graph);
  Tensor x = b.input("x", {m, k});
  Tensor y = b.matmul(x, b.input("w", {k, n}));
  const Op& op = graph.ops().back();
  (void)y;
  codegen::GemmProblem problem{codegen::GemmProblem::Kind::matmul, dtype, m, n, k, batch, true, false};
  codegen::GemmChoice choice = codegen::choose_gemm(graph, op, problem, codegen::Target::named("sm_90a"));
  REQUIRE(choice.family == codegen::GemmFamily::simt);
  return choice.config;
}

Values run_graph(Backend& backend, const Graph& graph, const Values& args) {
  auto exe = backend.compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  Values result;
  for (const auto& out : graph.outputs()) result.emplace(out.name, exe->get(out.name));
  return result;
}

// c = a^T b with a stored [K, M] (the router weight gradient's x^T dlogits).
Graph make_transposed_product(std::int64_t k, std::int64_t m, std::int64_t n, DType dtype) {
  Graph graph("split_k");
  Builder b(graph);
  Tensor a = b.input("a", {k, m}, dtype);
  Tensor bb = b.input("b", {k, n}, dtype);
  b.output(b.matmul(a, bb, true, false), "c");
  return graph;
}

bool has_kernel(const codegen::ModuleCode& module, const std::string& stem) {
  for (const auto& k : module.kernels)
    if (k.find(stem) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("gemm_select splits K for few output tiles over a long K, and only then", "[cuda][split_k]") {
  // The router weight gradient at D384 E8 T16384: 3 tiles of 128 x 8.
  codegen::TileConfig dw = simt_choice(384, 8, 16384);
  CHECK(dw.tile_n == 8);
  CHECK(dw.tile_m == 128);
  CHECK(dw.split_k > 1);
  CHECK(dw.split_k <= 64);
  CHECK(16384 / dw.split_k >= 256);
  CHECK(dw.note.find("split_k") != std::string::npos);
  // Enough output tiles, or a short K: no split.
  CHECK(simt_choice(4096, 4096, 4096).split_k == 1);
  CHECK(simt_choice(384, 8, 512).split_k == 1);
  CHECK(simt_choice(64, 64, 100000, 200).split_k == 1);  // 200 batches fill the SMs
  // A batched product splits less: the grid's z is batch * split <= 65535.
  codegen::TileConfig batched = simt_choice(64, 64, 1 << 20, 40);
  CHECK(batched.split_k > 1);
  CHECK(batched.split_k * 40 <= 65535);
}

TEST_CASE("split-K matmul kernels compile to PTX for compute_80 and compute_90a", "[cuda][nvrtc][split_k]") {
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    INFO(dtype_name(dtype));
    // N 7 (the narrow shape) and N 37 (the tiled one; bf16 of N > 16 is
    // the sm80 family's), A transposed.
    for (std::int64_t n : dtype == DType::bf16 ? std::vector<std::int64_t>{7} : std::vector<std::int64_t>{7, 37}) {
      Graph graph = make_transposed_product(8191, 100, n, dtype);
      for (const char* arch : {"compute_80", "compute_90a"}) {
        codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named(arch == std::string("compute_80") ? "sm_80" : "sm_90a"));
        CHECK(has_kernel(module, n <= 32 ? "matmul_split_k_narrow_kernel" : "matmul_split_k_kernel"));
        CHECK(has_kernel(module, n <= 32 ? "matmul_split_k_finish_warp_kernel" : "matmul_split_k_finish_kernel"));
        cuda_test::compile_to_ptx(module, "split_k", arch);
      }
    }
  }
}

TEST_CASE("gpu: split-K matmuls match the CPU and repeat bit for bit", "[cuda][gpu][split_k]") {
  struct Case {
    std::int64_t k, m, n;
    DType dtype;
  };
  // bf16 with rows that are no 16-byte multiple stays on the SIMT family.
  // N <= 32 takes the narrow kernel: packed rows (M 384, 1000), rows of odd
  // length (unpacked), M not a multiple of a warp's rows, N of each register width.
  const std::vector<Case> cases = {Case{16384, 384, 8, DType::f32}, Case{20001, 130, 37, DType::f32}, Case{4097, 64, 3, DType::f64},
                                   Case{9999, 77, 9, DType::bf16},  Case{5003, 1000, 12, DType::bf16}, Case{3001, 45, 30, DType::f32},
                                   Case{1500, 200, 5, DType::f32}};
  for (const Case& c : cases)  // checked without a GPU too
    REQUIRE(has_kernel(codegen::generate_module(make_transposed_product(c.k, c.m, c.n, c.dtype), codegen::Target::named("sm_90a")),
                       c.n <= 32 ? "matmul_split_k_narrow_kernel" : "matmul_split_k_kernel"));
  Graph batched("batched_split_k");
  Builder bb(batched);
  bb.output(bb.matmul(bb.input("a", {3, 40, 6000}), bb.input("b", {6000, 24})), "c");
  REQUIRE(has_kernel(codegen::generate_module(batched, codegen::Target::named("sm_90a")), "matmul_split_k_kernel"));
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (const Case& c : cases) {
    INFO(fmt::format("a^T b, K {} M {} N {} {}", c.k, c.m, c.n, dtype_name(c.dtype)));
    Graph graph = make_transposed_product(c.k, c.m, c.n, c.dtype);
    Values args = cuda_test::random_args(graph, static_cast<std::uint64_t>(c.k), 1);
    Values want = run_graph(*cpu, graph, args);
    Values got = run_graph(*cuda, graph, args);
    Values again = run_graph(*cuda, graph, args);
    double err = cuda_test::normalized_error(got.at("c"), want.at("c"));
    INFO(fmt::format("normalized error {:.3g}", err));
    CHECK(err <= cuda_test::tolerance(c.dtype));
    CHECK(std::memcmp(got.at("c").raw(), again.at("c").raw(), got.at("c").bytes()) == 0);
  }
  // Batched: a [B, M, K] · b [K, N] with a long K.
  Values args = cuda_test::random_args(batched, 5, 1);
  double err = cuda_test::normalized_error(run_graph(*cuda, batched, args).at("c"), run_graph(*cpu, batched, args).at("c"));
  INFO(fmt::format("batched: normalized error {:.3g}", err));
  CHECK(err <= cuda_test::tolerance(DType::f32));
}

TEST_CASE("gpu: a fused router's gradients (x^T dlogits split over the tokens) match the CPU", "[cuda][gpu][split_k][route]") {
  const std::int64_t tokens = 8193, width = 96, experts = 8;
  Graph graph("route_grad");
  Builder b(graph);
  Tensor x = b.param("x", {tokens, width});
  Tensor w = b.param("w_router", {width, experts});
  Tensor logits = b.matmul(x, w);
  auto [weights, chosen] = b.moe_gate(logits, {.top_k = 2, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts});
  Tensor xs = b.moe_permute(x, slots, 2);
  (void)offsets;
  (void)counts;
  Tensor target = b.input("target", {tokens * 2, width});
  Tensor scaled = b.mul(xs, target);
  b.output(b.add(b.sum(b.mul(weights, weights), {0, 1}), b.sum(scaled, {0, 1})), "loss");
  run_pipeline(graph, "fuse-router-permute");
  append_backward(graph, {.loss = "loss", .wrt = {"x", "w_router"}});
  REQUIRE(has_kernel(codegen::generate_module(graph, codegen::Target::named("sm_90a")), "matmul_split_k_narrow_kernel"));
  MOEJIT_SKIP_WITHOUT_GPU();
  // Dyadic x and w_router: the logits are exact in f32, so the GPU routes
  // exactly as the CPU (see route_gpu_test.cpp) and the gradients compare.
  Values args = cuda_test::random_args(graph, 3, 1);
  std::mt19937_64 rng(4);
  for (const char* name : {"x", "w_router"}) {
    HostTensor& t = args.at(name);
    for (std::int64_t i = 0; i < t.numel(); ++i) t.set(i, static_cast<double>(std::uniform_int_distribution<int>(-4, 4)(rng)) / 8.0);
  }
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  Values want = run_graph(*cpu, graph, args);
  Values got = run_graph(*cuda, graph, args);
  for (const auto& [name, expected] : want) {
    double err = cuda_test::normalized_error(got.at(name), expected);
    INFO(fmt::format("{}: normalized error {:.3g}", name, err));
    CHECK(err <= 1e-4);
  }
}
