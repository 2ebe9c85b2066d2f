// The Ampere tensor-core GEMM family (codegen/kernels/gemm_sm80.cuh) in the
// product path: which products codegen gives it (CI, no GPU); the bf16
// training module and MoE products compiled to PTX for compute_80 and
// compute_89 with mma.sync in every entry of the family (CI, NVRTC); and on
// a GPU, with MOEJIT_ARCH=sm_80 (compute_80 PTX that the driver JIT-compiles,
// so an H200 runs the family), the bf16 GPU tests' products against the CPU
// backend on random data -- mj.matmul in every layout, batched, f16 and
// sizes that are multiples of no tile or rows of no 16-byte multiple;
// moe.grouped_matmul with empty experts, one expert taking every row, one
// expert, rows past the last segment, and its backward (the transposed-weight
// product and moe.grouped_matmul_wgrad, groups splitting K); a routed MoE
// layer whose first expert matmul gathers its rows through slots, forward
// and backward.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "cuda/ptx_check.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;

// The routed bf16 expert layer (moe.gather_matmul and the down projection fused with the weighted combine).
Graph layer_graph(std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts, std::int64_t top_k) {
  return cuda_test::routed_layer_graph("sm80_layer", tokens, d, f, experts, top_k, "fuse-expert-gather-scatter");
}


int count_kernels(const Graph& graph, const codegen::Target& target, const std::string& family) {
  codegen::ModuleCode module = codegen::generate_module(graph, target);
  int n = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) n += launch.kind == codegen::Launch::Kind::kernel && launch.kernel.find(family) != std::string::npos;
  return n;
}
bool uses_sm80(const Graph& graph, const codegen::Target& target) { return count_kernels(graph, target, "gemm_sm80_kernel") > 0; }

Graph matmul_graph(std::int64_t batch, std::int64_t m, std::int64_t n, std::int64_t k, bool ta, bool tb, bool b_batched,
                   DType dtype = DType::bf16) {
  Graph g("sm80_matmul");
  Builder b(g);
  Shape a_shape = ta ? Shape{k, m} : Shape{m, k};
  Shape b_shape = tb ? Shape{n, k} : Shape{k, n};
  if (batch > 1) {
    a_shape.insert(a_shape.begin(), batch);
    if (b_batched) b_shape.insert(b_shape.begin(), batch);
  }
  Tensor a = b.input("a", a_shape, dtype), w = b.param("b", b_shape, dtype);
  b.output(b.matmul(a, w, ta, tb), "c");
  return g;
}

// ys = grouped_matmul(xs, w, offsets); loss = mean(f32(ys) * target), with
// the gradients of xs and w (the transposed-weight product and the wgrad).
Graph grouped_graph(std::int64_t rows, std::int64_t d, std::int64_t f, std::int64_t experts, bool transpose_w) {
  Graph g("sm80_grouped");
  Builder b(g);
  Tensor xs = b.input("xs", {rows, d}, DType::bf16);
  Tensor w = b.param("w", transpose_w ? Shape{experts, f, d} : Shape{experts, d, f}, DType::bf16);
  Tensor offsets = b.input("offsets", {experts + 1}, DType::i32);
  Tensor target = b.input("target", {rows, f});
  Tensor ys = b.moe_grouped_matmul(xs, w, offsets, transpose_w);
  b.output(ys, "ys");
  b.output(b.mean(b.mul(b.cast(ys, DType::f32), target), {0, 1}), "loss");
  append_backward(g, {.loss = "loss", .wrt = {"xs", "w"}});
  return g;
}


HostTensor offsets_of(const std::vector<std::int32_t>& offsets) {
  return HostTensor::from_ints({static_cast<std::int64_t>(offsets.size())}, offsets);
}



// MOEJIT_ARCH for the scope of a test (the previous value back afterwards).
class ArchOverride {
 public:
  explicit ArchOverride(const char* arch) {
    if (const char* v = std::getenv("MOEJIT_ARCH")) previous_ = v;
    ::setenv("MOEJIT_ARCH", arch, 1);
  }
  ~ArchOverride() {
    if (previous_) ::setenv("MOEJIT_ARCH", previous_->c_str(), 1);
    else ::unsetenv("MOEJIT_ARCH");
  }

 private:
  std::optional<std::string> previous_;
};

// The text of PTX entry `lowered` (up to the next entry).
std::string entry_body(const std::string& ptx, const std::string& lowered) {
  const auto at = ptx.find(".entry " + lowered + "(");
  if (at == std::string::npos) return {};
  const auto next = ptx.find(".entry ", at + 1);
  return ptx.substr(at, next == std::string::npos ? std::string::npos : next - at);
}

}  // namespace

TEST_CASE("codegen gives 16-bit products on sm_80 .. sm_89 to the sm80 family, and sm_90 what the sm90 family cannot take",
          "[cuda][sm80]") {
  const auto ampere = codegen::Target::named("sm_80"), ada = codegen::Target::named("sm_89");
  const auto hopper = codegen::Target::named("sm_90a");
  CHECK(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false), ampere));
  CHECK(uses_sm80(matmul_graph(1, 300, 200, 136, true, true, false), ada));
  CHECK(uses_sm80(matmul_graph(1, 301, 203, 137, true, false, false), ampere));  // rows of no 16-byte multiple: element loads
  CHECK(uses_sm80(matmul_graph(4, 64, 128, 64, false, false, true), ampere));
  CHECK(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false, DType::f16), ampere));
  CHECK(uses_sm80(grouped_graph(1000, 384, 512, 8, false), ampere));
  CHECK_FALSE(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false, DType::f32), ampere));  // f32: SIMT
  CHECK_FALSE(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false), codegen::Target::named("sm_75")));
  // sm_90a: bf16 is the sm90 family's; f16, and rows TMA cannot address, are the sm80 family's.
  CHECK_FALSE(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false), hopper));
  CHECK(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false, DType::f16), hopper));
  CHECK(uses_sm80(matmul_graph(1, 300, 65, 136, false, false, false), hopper));
  CHECK(uses_sm80(matmul_graph(1, 300, 200, 136, false, false, false), codegen::Target::named("sm_90")));
  // The wgrad of the grouped graph is the family's too: three products (forward, input gradient, weight gradient).
  CHECK(count_kernels(grouped_graph(1000, 384, 512, 8, false), ampere, "gemm_sm80_kernel") == 3);
  // moe-tiling's tensor-core tile attributes run as the family's 128 x 128 x 32.
  Graph tiled = grouped_graph(1000, 384, 512, 8, false);
  for (auto& op : tiled.mutable_ops())
    if (op.kind == OpKind::GroupedMatmul) {
      op.attrs.set("tile_m", std::int64_t{128});
      op.attrs.set("tile_n", std::int64_t{256});
      op.attrs.set("tile_k", std::int64_t{64});
    }
  CHECK(count_kernels(tiled, ampere, "gemm_sm80_kernel") == 3);
  // The gathered expert matmul reads x through slots: no permute copy first.
  Graph layer = layer_graph(100, 64, 96, 4, 2);
  run_pipeline(layer, kCudaPipeline);
  bool has_gather = false;
  for (const Op& op : layer.ops()) has_gather |= op.kind == OpKind::GatherMatmul;
  CHECK(has_gather);
  // (On sm_90a the gather's step copies the rows first, into the backward's
  // moe.permute result, so that permute needs no launch of its own.)
  auto gather_step_permutes = [&](const codegen::Target& target) {
    const codegen::ModuleCode module = codegen::generate_module(layer, target);
    int n = 0;
    for (const auto& step : module.steps) {
      bool gather = false;
      for (int i : step.ops) gather |= layer.ops()[static_cast<std::size_t>(i)].kind == OpKind::GatherMatmul;
      for (const auto& launch : step.launches) n += gather && launch.kernel.find("permute_kernel") != std::string::npos;
    }
    return n;
  };
  CHECK(gather_step_permutes(ampere) == 0);
  CHECK(gather_step_permutes(hopper) == 1);
  CHECK(count_kernels(layer, ampere, "permute_kernel") == 1);  // the backward's, for the weight gradient
  CHECK(count_kernels(layer, hopper, "permute_kernel") == 1);
}

TEST_CASE("the bf16 training module and the MoE layer compile to PTX for compute_80 and compute_89 with mma.sync in the sm80 entries",
          "[cuda][nvrtc][sm80]") {
  Graph training = build_training_graph(cuda_test::small_gpt_config(), DType::bf16).graph;
  run_pipeline(training, kCudaPipeline);  // what the CUDA backend's compile() runs first
  Graph layer = layer_graph(100, 64, 96, 4, 2);
  run_pipeline(layer, kCudaPipeline);
  for (const Graph* graph : {&training, &layer})
    for (const char* arch : {"sm_80", "sm_89"}) {
      INFO(fmt::format("{} for {}", graph->name(), arch));
      codegen::ModuleCode module = codegen::generate_module(*graph, codegen::Target::named(arch));
      const std::string ptx_arch = codegen::Target::named(arch).ptx_arch();
      cuda::CompiledModule compiled = cuda_test::compile_to_ptx(module, graph->name(), ptx_arch);
      int entries = 0, vec16_entries = 0;
      for (const auto& kernel : module.kernels) {
        if (kernel.find("gemm_sm80_kernel") == std::string::npos) continue;
        INFO(kernel);
        const std::string body = entry_body(compiled.binary, compiled.lowered(kernel));
        CHECK(body.find("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") != std::string::npos);
        CHECK(body.find("ldmatrix.sync.aligned.m8n8.x4") != std::string::npos);
        // Operands with 16-byte rows are copied by cp.async (the instantiation's VEC16 argument).
        const bool vec16 = kernel.find(", true, moejit::sm80::Store") != std::string::npos;
        CHECK((body.find("cp.async.cg.shared.global") != std::string::npos) == vec16);
        ++entries;
        vec16_entries += vec16;
      }
      // The training step has its dense products and the experts' (forward, input and weight gradients).
      CHECK(entries >= (graph == &training ? 4 : 3));
      CHECK(vec16_entries >= 2);
    }
}

TEST_CASE("gpu: sm80 mj.matmul (MOEJIT_ARCH=sm_80) in every layout matches the CPU backend", "[cuda][gpu][sm80]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  ArchOverride arch("sm_80");
  const auto target = cuda_device_target();
  REQUIRE(target.arch == "sm_80");
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t batch, m, n, k;
    bool ta, tb, b_batched;
    DType dtype;
  };
  const Case cases[] = {{1, 300, 200, 136, false, false, false, DType::bf16}, {1, 1000, 712, 520, false, true, false, DType::bf16},
                        {1, 1000, 712, 520, true, false, false, DType::bf16}, {1, 256, 256, 1024, true, true, false, DType::bf16},
                        {3, 200, 136, 72, false, false, false, DType::bf16},  {3, 200, 136, 72, false, false, true, DType::bf16},
                        {2, 136, 200, 64, true, false, true, DType::bf16},    {1, 4096, 1536, 384, false, false, false, DType::bf16},
                        {1, 301, 203, 137, false, false, false, DType::bf16}, {1, 77, 65, 19, true, true, false, DType::bf16},
                        {1, 333, 264, 200, false, false, false, DType::f16},  {2, 130, 40, 96, true, true, true, DType::f16}};
  std::uint64_t seed = 31;
  for (const Case& c : cases) {
    INFO(fmt::format("batch {} m {} n {} k {} transpose_a {} transpose_b {} batched b {} {}", c.batch, c.m, c.n, c.k, c.ta, c.tb,
                     c.b_batched, dtype_name(c.dtype)));
    Graph g = matmul_graph(c.batch, c.m, c.n, c.k, c.ta, c.tb, c.b_batched, c.dtype);
    CHECK(uses_sm80(g, target));
    Values args = cuda_test::random_args(g, seed++, 1, 1.0);
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args));
  }
}

TEST_CASE("gpu: sm80 grouped matmul and its backward (MOEJIT_ARCH=sm_80) match the CPU backend, empty and full experts included",
          "[cuda][gpu][sm80]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  ArchOverride arch("sm_80");
  const auto target = cuda_device_target();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t rows, d, f;
    std::vector<std::int32_t> offsets;
    bool transpose_w;
  };
  const Case cases[] = {
      {1000, 384, 512, {0, 0, 300, 301, 301, 700, 1000, 1000, 1000}, false},  // empty experts, one of 1 row
      {1000, 384, 512, {0, 0, 1000, 1000, 1000}, true},                       // one expert takes every row
      {777, 136, 200, {0, 777}, false},                                       // one expert
      {1000, 384, 512, {0, 100, 200, 995}, false},                            // rows past the last segment stay zero
      {3001, 256, 1536, {0, 128, 384, 1500, 1501, 2900, 3001}, true},
      {501, 130, 75, {0, 0, 250, 501}, false},                                // rows of no 16-byte multiple
  };
  std::uint64_t seed = 41;
  for (const Case& c : cases) {
    const auto experts = static_cast<std::int64_t>(c.offsets.size()) - 1;
    INFO(fmt::format("rows {} d {} f {} experts {} transpose_w {}", c.rows, c.d, c.f, experts, c.transpose_w));
    Graph g = grouped_graph(c.rows, c.d, c.f, experts, c.transpose_w);
    CHECK(count_kernels(g, target, "gemm_sm80_kernel") == 3);
    Values args = cuda_test::random_args(g, seed++, 1, 1.0);
    args.insert_or_assign("offsets", offsets_of(c.offsets));
    Values got = cuda_test::run_outputs(*cuda, g, args), want = cuda_test::run_outputs(*cpu, g, args);
    cuda_test::check_close(got, want);
    const HostTensor& ys = got.at("ys");
    for (std::int64_t r = c.offsets.back(); r < c.rows; ++r)
      for (std::int64_t j = 0; j < c.f; j += 37) REQUIRE(ys.get(r * c.f + j) == 0.0);
  }
}

TEST_CASE("gpu: a routed bf16 MoE layer on the sm80 family (gather through slots, combine, backward) matches the CPU backend",
          "[cuda][gpu][sm80]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  ArchOverride arch("sm_80");
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t tokens, d, f, experts, top_k;
  };
  // E = 1; K = E; sizes of no tile multiple; rows of no 16-byte multiple (d 60).
  const Case cases[] = {{1000, 384, 512, 8, 2}, {777, 136, 200, 1, 1}, {300, 128, 96, 4, 4}, {257, 60, 100, 3, 2}};
  std::uint64_t seed = 51;
  for (const Case& c : cases) {
    INFO(fmt::format("tokens {} d {} f {} experts {} top_k {}", c.tokens, c.d, c.f, c.experts, c.top_k));
    Graph g = layer_graph(c.tokens, c.d, c.f, c.experts, c.top_k);
    Values args = cuda_test::random_args(g, seed++, c.experts, 1.0);
    cuda_test::check_close(cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args));
  }
}

TEST_CASE("gpu: MOEJIT_ARCH naming an architecture the device cannot run is an error", "[cuda][gpu][sm80]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  for (const char* newer : {"sm_99", "sm_80a"}) {  // newer than any device here; an 'a' architecture of another device
    ArchOverride arch(newer);
    CHECK_THROWS_WITH(cuda_device_target(), Catch::Contains(fmt::format("MOEJIT_ARCH={} cannot run on the device", newer)));
  }
  {
    ArchOverride arch("sm_8x");
    CHECK_THROWS_WITH(cuda_device_target(), Catch::Contains("unknown GPU architecture 'sm_8x'"));
  }
}
