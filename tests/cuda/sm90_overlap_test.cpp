// The sm90 family's overlapped epilogue (MOEJIT_SM90_OVERLAP=1: two
// accumulator sets per consumer, a tile's epilogue under the next tile's
// MMAs; codegen/kernels/gemm_sm90.cuh, overlapped_tile), and what ptxas
// reports for the family's kernels: no spills, and no wgmma serialized
// (the C7515 / C7518 advisories, which cost a kernel its MMA pipelining
// without failing the compile).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <regex>
#include <string>
#include <vector>

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
#include "runtime/cuda/nvrtc_compiler.h"

using namespace moejit;
using cuda_test::module_of;

namespace {

using Values = std::map<std::string, HostTensor>;
using cuda_test::EnvOverride;

// The routed bf16 expert layer, forward and backward (gather_matmul + gelu, matmul_combine, the weight gradients).
Graph layer_graph(std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts, std::int64_t top_k) {
  return cuda_test::routed_layer_graph("overlap_layer", tokens, d, f, experts, top_k, "moe-fusions");
}

Graph mlp_graph(std::int64_t m, std::int64_t d, std::int64_t f) { return cuda_test::mlp_graph("overlap_mlp", m, d, f); }


// What ptxas says about each entry of a CUBIN compile with -v: "" when it
// spills nothing and serializes no wgmma, else the offending lines.
std::string ptxas_problems(const std::string& log) {
  std::string problems;
  static const std::regex spill(R"(([0-9]+) bytes spill stores, ([0-9]+) bytes spill loads)");
  std::size_t start = 0;
  while (start < log.size()) {
    std::size_t end = log.find('\n', start);
    if (end == std::string::npos) end = log.size();
    const std::string line = log.substr(start, end - start);
    std::smatch m;
    const bool spills = std::regex_search(line, m, spill) && (m[1] != "0" || m[2] != "0");
    if (spills || line.find("(C7515)") != std::string::npos || line.find("(C7518)") != std::string::npos ||
        line.find("(C7510)") != std::string::npos)
      problems += line + "\n";
    start = end + 1;
  }
  return problems;
}

}  // namespace

TEST_CASE("MOEJIT_SM90_OVERLAP=1 gives the sm90 GEMMs the overlapped epilogue at tile_n <= 128, weight gradients excepted",
          "[cuda][overlap]") {
  EnvOverride overlap("MOEJIT_SM90_OVERLAP", "1");
  codegen::ModuleCode m = module_of(layer_graph(1000, 384, 512, 8, 2), codegen::Target::named("sm_90a"));
  int overlapped = 0, streamk = 0;
  for (const auto& kernel : m.kernels) {
    INFO(kernel);
    if (kernel.find("gemm_sm90_streamk_kernel") != std::string::npos) ++streamk;  // its own schedule
    if (kernel.find("gemm_sm90_kernel") == std::string::npos) continue;
    ++overlapped;
    CHECK(kernel.find(", true>") == kernel.size() - 7);
    CHECK(kernel.find("gemm_sm90_kernel<128, 256,") == std::string::npos);
  }
  CHECK(overlapped >= 3);  // distinct instantiations: the up projection with GELU, dgrad, down projection...
  CHECK(streamk >= 1);
  EnvOverride bad("MOEJIT_SM90_OVERLAP", "2");
  CHECK_THROWS_WITH(module_of(layer_graph(100, 64, 96, 4, 2), codegen::Target::named("sm_90a")),
                    Catch::Contains("MOEJIT_SM90_OVERLAP: expected 0 or 1, found '2'"));
}

TEST_CASE("ptxas spills nothing and serializes no wgmma in the sm90 family's kernels", "[cuda][nvrtc][overlap]") {
  // One of each schedule and epilogue kind: cooperative, overlapped (both
  // A layouts, the varlen-K zeroing, every epilogue that has a TMA form),
  // stream-K with the widening store, the gathering producer. ptxas takes seconds per kernel, so
  // the list is short; two compiles run side by side.
  const std::vector<std::string> kernels = {
      "moejit::sm90::gemm_sm90_kernel<128, 256, 64, 4, true, true, moejit::sm90::StoreBf16>",
      "moejit::sm90::gemm_sm90_kernel<128, 128, 64, 6, true, false, moejit::sm90::StoreGeluBf16<true>, true>",
      "moejit::sm90::gemm_sm90_kernel<128, 128, 64, 6, true, true, moejit::sm90::StoreGeluGradBf16<true>, true>",
      "moejit::sm90::gemm_sm90_kernel<128, 64, 64, 6, false, false, moejit::sm90::StoreWidenF32<true>, true>",
      "moejit::sm90::gemm_sm90_streamk_kernel<128, 128, 64, 6, moejit::sm90::StoreWidenF32<true>>",
      // the gathering producer: moe.gather_matmul's up projection with GELU
      "moejit::sm90::gemm_sm90_kernel<128, 256, 64, 4, true, false, moejit::sm90::StoreGeluBf16<true>, false, true>",
      "moejit::sm90::gemm_sm90_kernel<128, 256, 64, 4, false, false, moejit::sm90::StoreBf16, false, true>",  // and its wgrad
  };
  cuda::CompileRequest request{"#include \"codegen/kernels/gemm_sm90.cuh\"\n#include \"codegen/kernels/gemm_sm90_streamk.cuh\"\n",
                               "sm90_ptxas", "sm_90a", cuda::CompileOutput::cubin, false, kernels, {"--ptxas-options=-v"}};
  std::vector<cuda::CompiledModule> parts;
  try {
    parts = cuda::compile_module_parts(request, 2);
  } catch (const Error& e) {
    FAIL(e.what());
  }
  std::size_t entries = 0;
  for (const auto& part : parts) {
    INFO(part.log);
    entries += part.lowered_names.size();
    CHECK(part.log.find("bytes spill stores") != std::string::npos);  // the report is there to be read
    CHECK(ptxas_problems(part.log).empty());
  }
  CHECK(entries == kernels.size());
}

TEST_CASE("gpu: the overlapped epilogue (MOEJIT_SM90_OVERLAP=1) equals the cooperative one bit for bit, and the CPU backend",
          "[cuda][gpu][overlap][slow]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  std::uint64_t seed = 7001;
  auto check = [&](const Graph& g, std::int64_t int_bound) {
    Values args = cuda_test::random_args(g, seed++, int_bound, 1.0);
    Values plain;
    {
      auto cuda = make_cuda_backend();
      plain = cuda_test::run_outputs(*cuda, g, args);
    }
    EnvOverride overlap("MOEJIT_SM90_OVERLAP", "1");
    auto cuda = make_cuda_backend();
    const Values got = cuda_test::run_outputs(*cuda, g, args);
    cuda_test::check_close(got, cuda_test::run_outputs(*cpu, g, args));
    for (const auto& [name, value] : plain) {
      INFO(name);
      CHECK(cuda_test::same_bits(got.at(name), value));
    }
  };
  // Rows of no tile multiple (partial 64-row blocks: the register store);
  // one expert; 64 experts, some empty; many tiles per block (the two
  // accumulator sets alternate several times).
  check(mlp_graph(1000, 384, 512), 1);
  check(mlp_graph(4096, 256, 512), 1);
  struct Layer {
    std::int64_t tokens, d, f, experts, top_k;
  };
  for (const Layer& c : {Layer{1000, 384, 512, 8, 2}, Layer{777, 136, 200, 1, 1}, Layer{500, 256, 256, 64, 4}, Layer{2048, 384, 1536, 8, 2}}) {
    INFO(fmt::format("layer tokens {} d {} f {} experts {} top_k {}", c.tokens, c.d, c.f, c.experts, c.top_k));
    check(layer_graph(c.tokens, c.d, c.f, c.experts, c.top_k), c.experts);
  }
}
