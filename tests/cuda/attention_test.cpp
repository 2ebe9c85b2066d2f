// The flash attention family (codegen/kernels/attention.cuh) through the
// library: which kernels mj.attention / mj.attention_grad emit for each
// dtype and head dim, that they compile through NVRTC for compute_80 and
// compute_90a (no GPU needed), and, on a GPU, that the bf16 and f16 forward
// (out, lse) and backward (dq, dk, dv) match the CPU backend on odd sizes:
// T = 1, T not a multiple of the 64-row tile, head dims 32, 64, 128 and 40
// (padded to 64), 20 (not a multiple of 8: element-wise tile loads).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <string>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/attention.cuh"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/ptx_check.h"
#include "ir/builder.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

// q, k, v, dout [B, H, T, D] -> out, lse (mj.attention), dq, dk, dv
// (mj.attention_grad reading that out and lse).
Graph attention_graph(DType dtype, std::int64_t batch, std::int64_t heads, std::int64_t tokens, std::int64_t head_dim) {
  Graph graph(fmt::format("attention_{}_{}x{}x{}x{}", dtype_name(dtype), batch, heads, tokens, head_dim));
  Builder b(graph);
  const Shape shape{batch, heads, tokens, head_dim};
  Tensor q = b.input("q", shape, dtype), k = b.input("k", shape, dtype), v = b.input("v", shape, dtype);
  Tensor dout = b.input("dout", shape, dtype);
  std::vector<Tensor> fwd = b.op(OpKind::Attention, {q, k, v}, {{"scale", 0.0}});
  std::vector<Tensor> grads = b.op(OpKind::AttentionGrad, {q, k, v, fwd[0], fwd[1], dout}, {{"scale", 0.0}});
  b.output(fwd[0], "out");
  b.output(fwd[1], "lse");
  b.output(grads[0], "dq");
  b.output(grads[1], "dk");
  b.output(grads[2], "dv");
  return graph;
}

std::vector<std::string> kernel_names(const codegen::ModuleCode& module) {
  std::vector<std::string> names;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches)
      if (launch.kind == codegen::Launch::Kind::kernel) names.push_back(launch.kernel);
  return names;
}

}  // namespace

TEST_CASE("bf16/f16 attention emits the flash kernels, f32 the row kernels", "[cuda][attention]") {
  const auto target = codegen::Target::named("sm_90a");
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::bf16, 2, 3, 100, 64), target)) ==
        std::vector<std::string>{"mj::flash_attention_fwd_kernel<mj::bf16_t, 64, 1>", "mj::flash_attention_bwd_dq_kernel<mj::bf16_t, 64, 1>",
                                 "mj::flash_attention_bwd_dkdv_kernel<mj::bf16_t, 64>"});
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::f16, 1, 1, 5, 40), target)) ==
        std::vector<std::string>{"mj::flash_attention_fwd_kernel<mj::f16_t, 64, 1>", "mj::flash_attention_bwd_dq_kernel<mj::f16_t, 64, 1>",
                                 "mj::flash_attention_bwd_dkdv_kernel<mj::f16_t, 64>"});
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::f32, 1, 2, 9, 64), target)) ==
        std::vector<std::string>{"mj::attention_kernel<float, 128>", "mj::attention_grad_q_kernel<float, 128>",
                                 "mj::attention_grad_kv_kernel<float, 128>"});
  // Heads wider than 128 keep the row kernels in bf16 too.
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::bf16, 1, 1, 9, 160), target))[0] ==
        "mj::attention_kernel<mj::bf16_t, 128>");
  // From T = 512 on, heads up to 64 wide take 128-query forward blocks (two 16-row fragments a warp).
  codegen::ModuleCode long_module = codegen::generate_module(attention_graph(DType::bf16, 1, 2, 600, 64), target);
  CHECK(kernel_names(long_module)[0] == "mj::flash_attention_fwd_kernel<mj::bf16_t, 64, 2>");
  CHECK(long_module.steps.front().launches.front().grid[0] == 5);
  CHECK(long_module.steps.front().launches.front().shared_bytes == static_cast<unsigned>(mj::FlashTile::fwd_smem(64, 2)));
  // The launch: one block per 64 query rows and (batch, head), 128 threads.
  codegen::ModuleCode module = codegen::generate_module(attention_graph(DType::bf16, 2, 3, 130, 128), target);
  const codegen::Launch& fwd = module.steps.front().launches.front();
  CHECK(fwd.grid[0] == 3);
  CHECK(fwd.grid[1] == 6);
  CHECK(fwd.block[0] == 128);
  CHECK(fwd.shared_bytes == static_cast<unsigned>(mj::FlashTile::fwd_smem(128, 1)));
}

TEST_CASE("the flash attention kernels compile to PTX for compute_80 and compute_90a", "[cuda][nvrtc][attention]") {
  // Each padded head dim once, each dtype and architecture twice (NVRTC takes seconds a module).
  const std::pair<const char*, std::int64_t> cases[] = {{"compute_80", 32}, {"compute_90a", 64}, {"compute_80", 96}, {"compute_90a", 128}};
  for (const auto& [arch, head_dim] : cases) {
    INFO(arch << " head dim " << head_dim);
    Graph graph = attention_graph(head_dim == 96 || head_dim == 32 ? DType::f16 : DType::bf16, 1, 2, 70, head_dim);
    cuda_test::compile_to_ptx(codegen::generate_module(graph, codegen::Target::named(arch)), graph.name(), arch);
  }
}

TEST_CASE("gpu: bf16 and f16 flash attention forward and backward match the CPU backend", "[cuda][gpu][attention]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    DType dtype;
    std::int64_t batch, heads, tokens, head_dim;
  };
  const Case cases[] = {{DType::bf16, 1, 2, 1, 64},   {DType::bf16, 2, 3, 70, 32},  {DType::bf16, 1, 2, 130, 64},
                        {DType::bf16, 1, 1, 200, 128}, {DType::bf16, 1, 2, 64, 40},  {DType::bf16, 1, 1, 33, 20},
                        {DType::f16, 2, 1, 129, 64},   {DType::bf16, 1, 1, 513, 64}};
  for (const Case& c : cases) {
    Graph graph = attention_graph(c.dtype, c.batch, c.heads, c.tokens, c.head_dim);
    INFO(graph.name());
    std::map<std::string, HostTensor> args = cuda_test::random_args(graph, 11, 1);
    auto run = [&](Backend& backend) {
      auto exe = backend.compile(graph);
      for (const auto& [name, value] : args) exe->set(name, value);
      exe->run();
      std::map<std::string, HostTensor> results;
      for (const auto& out : graph.outputs()) results.emplace(out.name, exe->get(out.name));
      return results;
    };
    const std::map<std::string, HostTensor> got = run(*cuda), want = run(*cpu);
    for (const char* name : {"out", "lse", "dq", "dk", "dv"}) {
      const HostTensor& g = got.at(name);
      const HostTensor& w = want.at(name);
      REQUIRE(g.type() == w.type());
      const double err = cuda_test::normalized_error(g, w);
      // The outputs are bf16/f16 (lse f32 from bf16 inputs): the tolerance of the operand dtype.
      const double tol = cuda_test::tolerance(c.dtype);
      INFO(fmt::format("{} {}: normalized error {:.3g} (tolerance {:.3g})", name, w.type().str(), err, tol));
      CHECK(err <= tol);
    }
  }
}
