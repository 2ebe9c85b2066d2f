// Reductions with few outputs over many elements run in two launches
// (codegen/kernels/reduce.cuh: reduce_parts_kernel, reduce_finish_kernel),
// many outputs of up to 4096 elements a warp each (unless MOEJIT_WARP_KERNELS=0):
// CI checks which kernels
// codegen picks; on a GPU each kind (sum, mean, max) over every axis layout
// matches the CPU backend.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "ir/builder.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

Graph reduce_graph(Shape shape, std::vector<std::int64_t> axes, int kind, DType dtype) {
  Graph g("reduce_split");
  Builder b(g);
  Tensor x = b.input("x", shape, dtype);
  Tensor y = kind == 0 ? b.sum(x, axes) : kind == 1 ? b.mean(x, axes) : b.max(x, axes);
  b.output(y, "y");
  return g;
}

bool uses_kernel(const Graph& graph, const std::string& name) {
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  for (const auto& k : module.kernels)
    if (k.find(name) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("a reduction of few outputs over many elements is split into chunks", "[cuda]") {
  CHECK(uses_kernel(reduce_graph({16384, 384}, {0, 1}, 1, DType::f32), "reduce_parts_kernel"));
  CHECK(uses_kernel(reduce_graph({100000, 3}, {0}, 2, DType::f32), "reduce_parts_kernel"));
  CHECK_FALSE(uses_kernel(reduce_graph({64, 32}, {0, 1}, 0, DType::f32), "reduce_parts_kernel"));   // small: one launch
  CHECK_FALSE(uses_kernel(reduce_graph({4096, 384}, {1}, 0, DType::f32), "reduce_parts_kernel"));  // many outputs
  CHECK(uses_kernel(reduce_graph({20000, 32}, {1}, 0, DType::f32), "reduce_thread_kernel"));        // a thread each
  CHECK(uses_kernel(reduce_graph({4096, 384}, {1}, 0, DType::f32), "reduce_warp_kernel"));           // a warp each (the default)
  {
    cuda_test::EnvOverride blocks("MOEJIT_WARP_KERNELS", "0");
    CHECK_FALSE(uses_kernel(reduce_graph({4096, 384}, {1}, 0, DType::f32), "reduce_warp_kernel"));   // 0: a block each
  }
  CHECK(uses_kernel(reduce_graph({64, 20000}, {1}, 0, DType::f32), "reduce_kernel"));               // a block each
}

TEST_CASE("gpu: split reductions match the CPU backend", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    Shape shape;
    std::vector<std::int64_t> axes;
    int kind;
    DType dtype;
  };
  const Case cases[] = {{{16384, 384}, {0, 1}, 1, DType::f32}, {{16384, 384}, {0, 1}, 0, DType::bf16},
                        {{100000, 3}, {0}, 2, DType::f32},     {{3, 70001}, {1}, 0, DType::f32},
                        {{40, 600, 7}, {0, 1}, 1, DType::f32}, {{1 << 20}, {0}, 2, DType::bf16},
                        // many outputs of a few hundred to 4096 elements: a warp each
                        {{24576, 128}, {1}, 0, DType::f32},    {{3000, 700}, {1}, 2, DType::bf16},
                        {{512, 4096}, {1}, 1, DType::f32},     {{300, 17, 5}, {0, 2}, 0, DType::f32}};
  std::uint64_t seed = 5;
  for (const char* warp : {"0", "1"})
  for (const Case& c : cases) {
    cuda_test::EnvOverride warp_kernels("MOEJIT_WARP_KERNELS", warp);
    Graph g = reduce_graph(c.shape, c.axes, c.kind, c.dtype);
    INFO(fmt::format("{} kind {} MOEJIT_WARP_KERNELS={}", g.type(g.find_arg("x")).str(), c.kind, warp));
    auto args = cuda_test::random_args(g, seed++, 1, 1.0);
    auto run = [&](Backend& backend) {
      auto exe = backend.compile(g);
      for (const auto& [name, value] : args) exe->set(name, value);
      exe->run();
      return exe->get("y");
    };
    HostTensor got = run(*cuda), want = run(*cpu);
    double err = cuda_test::normalized_error(got, want);
    INFO("normalized error " << err);
    CHECK(err <= cuda_test::tolerance(c.dtype));
  }
}
