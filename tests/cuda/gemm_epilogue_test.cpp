// GELU and (opt-in, MOEJIT_GEMM_EPILOGUES=all) GELU's backward folded into the tensor-core GEMMs' epilogues
// (passes/fuse_gemm_epilogue.cpp, codegen/op_groups.cpp, the StoreGelu* /
// StoreGeluGrad* functors of codegen/kernels/gemm_sm90.cuh and gemm_sm80.cuh):
// which products codegen folds on which targets (CI, no GPU), and on a GPU
// the folded dense MLP and MoE layer, forward and backward, against the CPU
// backend on random data, and against the same graph with the folding off.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <optional>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "cuda/module_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;
using cuda_test::count_launches;
using cuda_test::module_of;

namespace {

using Values = std::map<std::string, HostTensor>;
using cuda_test::EnvOverride;

// The routed bf16 expert layer (the MoE fusions before autodiff, as the trainer runs them: gather_matmul + gelu, matmul_combine).
Graph layer_graph(std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts, std::int64_t top_k) {
  return cuda_test::routed_layer_graph("epilogue_layer", tokens, d, f, experts, top_k, "moe-fusions");
}


Graph mlp_graph(std::int64_t m, std::int64_t d, std::int64_t f, DType dtype = DType::bf16) {
  return cuda_test::mlp_graph("epilogue_mlp", m, d, f, dtype);
}


// Launches of the elementwise family computing a gelu or gelu_grad alone.
int standalone_gelus(const codegen::ModuleCode& module) {
  int n = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches)
      n += launch.family == "elementwise" && step.ops.size() == 1 && (launch.kernel.find("gelu") != std::string::npos);
  return n;
}



}  // namespace

TEST_CASE("fuse-gemm-epilogue folds gelu (and with MOEJIT_GEMM_EPILOGUES=all gelu_grad) into the tensor-core GEMMs, and only there",
          "[cuda]") {
  const auto hopper = codegen::Target::named("sm_90a");
  {
    // Dense MLP on sm_90a, by default: the forward's gelu folded into an sm90
    // GEMM (rows of 16-byte multiples: the TMA-store form), gelu_grad alone.
    codegen::ModuleCode m = module_of(mlp_graph(1000, 384, 512), hopper);
    CHECK(count_launches(m, "StoreGeluBf16<true>") == 1);
    CHECK(count_launches(m, "StoreGeluGrad") == 0);
    CHECK(standalone_gelus(m) == 1);
  }
  {
    EnvOverride all("MOEJIT_GEMM_EPILOGUES", "all");
    codegen::ModuleCode m = module_of(mlp_graph(1000, 384, 512), hopper);
    CHECK(count_launches(m, "StoreGeluBf16<true>") == 1);
    CHECK(count_launches(m, "StoreGeluGradBf16<true>") == 1);
    CHECK(standalone_gelus(m) == 0);
    // N = 100 (rows of 200 bytes): the register-store forms.
    CHECK(count_launches(module_of(mlp_graph(300, 64, 100), hopper), "StoreGelu") == 2);
    // The MoE layer: gather_matmul's gelu and the backward's gelu_grad.
    m = module_of(layer_graph(1000, 384, 512, 8, 2), hopper);
    CHECK(count_launches(m, "StoreGeluBf16<true>") == 1);
    CHECK(count_launches(m, "StoreGeluGradBf16<true>") == 1);
    CHECK(standalone_gelus(m) == 0);
    // sm_80: the sm80 family's functors.
    m = module_of(layer_graph(1000, 384, 512, 8, 2), codegen::Target::named("sm_80"));
    CHECK(count_launches(m, "StoreGelu16<mj::bf16_t>") == 1);
    CHECK(count_launches(m, "StoreGeluGrad16<mj::bf16_t>") == 1);
    CHECK(standalone_gelus(m) == 0);
  }
  {
    // The MoE layer by default; the rows gather_matmul gathers are the
    // backward's moe.permute (one gather, not two).
    codegen::ModuleCode m = module_of(layer_graph(1000, 384, 512, 8, 2), hopper);
    CHECK(count_launches(m, "StoreGeluBf16<true>") == 1);
    CHECK(standalone_gelus(m) == 1);
    CHECK(count_launches(m, "permute_kernel") == 1);
    EnvOverride no_groups("MOEJIT_OP_GROUPS", "0");
    CHECK(count_launches(module_of(layer_graph(1000, 384, 512, 8, 2), hopper), "permute_kernel") <= 1);  // the forward gathers itself
    EnvOverride no_gather("MOEJIT_SM90_GATHER", "0");
    CHECK(count_launches(module_of(layer_graph(1000, 384, 512, 8, 2), hopper), "permute_kernel") == 2);
  }
  {
    // f32 (SIMT family) and a target with no tensor-core family: nothing folded, the gelus run alone.
    EnvOverride all("MOEJIT_GEMM_EPILOGUES", "all");
    CHECK(standalone_gelus(module_of(mlp_graph(300, 64, 128, DType::f32), hopper)) == 2);
    codegen::ModuleCode m = module_of(mlp_graph(300, 64, 128), codegen::Target::named("sm_75"));
    CHECK(count_launches(m, "StoreGelu") == 0);
    CHECK(standalone_gelus(m) == 2);
  }
  {
    // MOEJIT_GEMM_EPILOGUES=0: the plain stores and standalone kernels; another value is an error.
    EnvOverride off("MOEJIT_GEMM_EPILOGUES", "0");
    codegen::ModuleCode m = module_of(mlp_graph(1000, 384, 512), hopper);
    CHECK(count_launches(m, "StoreGelu") == 0);
    CHECK(standalone_gelus(m) == 2);
    EnvOverride bad("MOEJIT_GEMM_EPILOGUES", "2");
    CHECK_THROWS_WITH(module_of(mlp_graph(8, 16, 32), hopper), Catch::Contains("MOEJIT_GEMM_EPILOGUES: expected 0, 1 or all, found '2'"));
  }
}

TEST_CASE("the epilogue GEMMs of the MoE layer compile to PTX for compute_90a and compute_80, tanh.approx inside", "[cuda][nvrtc]") {
  EnvOverride all("MOEJIT_GEMM_EPILOGUES", "all");
  for (const char* arch : {"sm_90a", "sm_80"}) {
    INFO(arch);
    codegen::ModuleCode m = module_of(layer_graph(1000, 384, 512, 8, 2), codegen::Target::named(arch));
    const std::string ptx_arch = codegen::Target::named(arch).ptx_arch();
    cuda::CompiledModule compiled = cuda_test::compile_to_ptx(m, "epilogue_layer", ptx_arch);
    int with_epilogue = 0;
    for (const auto& kernel : m.kernels) {
      if (kernel.find("StoreGelu") == std::string::npos) continue;
      ++with_epilogue;
      const std::string lowered = compiled.lowered(kernel);
      const auto at = compiled.binary.find(".entry " + lowered + "(");
      REQUIRE(at != std::string::npos);
      const auto next = compiled.binary.find(".entry ", at + 1);
      const std::string body = compiled.binary.substr(at, next == std::string::npos ? std::string::npos : next - at);
      INFO(kernel);
      CHECK(body.find("tanh.approx.f32") != std::string::npos);
    }
    CHECK(with_epilogue == 2);
  }
}

TEST_CASE("gpu: GEMMs with GELU / GELU-backward epilogues match the CPU backend and the unfolded GPU run", "[cuda][gpu][epilogue][slow]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (const char* mode : {"1", "all"}) {  // gelu folded; gelu and gelu_grad folded
  EnvOverride folds("MOEJIT_GEMM_EPILOGUES", mode);
  INFO(fmt::format("MOEJIT_GEMM_EPILOGUES={}", mode));
  std::uint64_t seed = 71;
  struct Mlp {
    std::int64_t m, d, f;
  };
  // TMA-store forms with a partial last row tile; register forms (f 100: rows of 200 bytes, the sm80 family on sm_90a).
  for (const Mlp& c : {Mlp{1000, 384, 512}, Mlp{300, 64, 100}, Mlp{129, 136, 1536}}) {
    INFO(fmt::format("mlp m {} d {} f {}", c.m, c.d, c.f));
    Graph g = mlp_graph(c.m, c.d, c.f);
    Values args = cuda_test::random_args(g, seed++, 1, 1.0);
    Values got = cuda_test::run_outputs(*cuda, g, args);
    cuda_test::check_close(got, cuda_test::run_outputs(*cpu, g, args));
    EnvOverride off("MOEJIT_GEMM_EPILOGUES", "0");
    auto plain = make_cuda_backend();
    cuda_test::check_close(got, cuda_test::run_outputs(*plain, g, args));
  }
  struct Layer {
    std::int64_t tokens, d, f, experts, top_k;
  };
  // E = 1; K = E; sizes of no tile multiple; many experts, some empty.
  for (const Layer& c : {Layer{1000, 384, 512, 8, 2}, Layer{777, 136, 200, 1, 1}, Layer{300, 128, 96, 4, 4}, Layer{500, 256, 256, 64, 4}}) {
    INFO(fmt::format("layer tokens {} d {} f {} experts {} top_k {}", c.tokens, c.d, c.f, c.experts, c.top_k));
    Graph g = layer_graph(c.tokens, c.d, c.f, c.experts, c.top_k);
    Values args = cuda_test::random_args(g, seed++, c.experts, 1.0);
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args));
  }
  }
}
