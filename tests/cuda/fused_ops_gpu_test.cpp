// The fused norms, loss and optimizer kernels at the sizes the all-ops
// graph does not reach: embedding_grad's counting sort (many chunks, skewed
// ids, twice bit for bit), cross entropy in its warp and block shapes,
// layer/rms norm and their backward in the warp and block shapes and with
// a fused residual add (forward) and gradient add (backward), and the op groups of the optimizer step (sums of
// squares and AdamW over more than one table of 32 tensors, the clip's
// scaling absorbed), and reductions of a few elements per output. CI checks which kernels codegen picks; on a GPU each
// graph matches the CPU backend.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "cuda/cuda_test_util.h"
#include "cuda/gemm_test_util.h"
#include "frontends/optim.h"
#include "ir/builder.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

using Values = std::map<std::string, HostTensor>;


void compare(const Graph& graph, const Values& got, const Values& want, double tolerance) {
  for (const auto& out : graph.outputs()) {
    double err = cuda_test::normalized_error(got.at(out.name), want.at(out.name));
    INFO(fmt::format("{} {}: normalized error {:.3g} (tolerance {:.3g})", out.name, want.at(out.name).type().str(), err, tolerance));
    CHECK(err <= tolerance);
  }
}

// How many launches of each kernel (by the name before '<') the module of
// `graph` has, after the CUDA pipeline.
std::map<std::string, int> kernel_counts(Graph graph) {
  run_pipeline(graph, kCudaPipeline);
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  std::map<std::string, int> counts;
  for (const auto& step : module.steps)
    for (const auto& l : step.launches)
      if (l.kind == codegen::Launch::Kind::kernel) ++counts[l.kernel.substr(4, l.kernel.find('<') - 4)];
  return counts;
}

// ids [n] drawn with a skew (a quarter of the tokens take id 0, as spaces
// do in text), dy [n, D] -> dtable [V, D].
Graph embedding_grad_graph(std::int64_t n, std::int64_t V, std::int64_t D, DType dtype) {
  Graph g("embedding_grad");
  Builder b(g);
  Tensor ids = b.input("ids", {n}, DType::i32);
  Tensor dy = b.input("dy", {n, D}, dtype);
  b.output(b.op1(OpKind::EmbeddingGrad, {ids, dy}, {{"num_embeddings", V}}), "dtable");
  return g;
}

Values skewed_ids(const Graph& g, std::int64_t V, std::uint64_t seed) {
  Values args = cuda_test::random_args(g, seed, V);
  std::mt19937_64 rng(seed);
  HostTensor& ids = args.at("ids");
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    if (rng() % 4 == 0) ids.set(i, 0.0);
  return args;
}

Graph cross_entropy_graph(std::int64_t rows, std::int64_t V, DType dtype) {
  Graph g("cross_entropy");
  Builder b(g);
  Tensor logits = b.input("logits", {rows, V}, dtype);
  Tensor targets = b.input("targets", {rows}, DType::i32);
  Tensor dloss = b.input("dloss", {}, dtype);
  b.output(b.cross_entropy(logits, targets), "loss");
  b.output(b.op1(OpKind::CrossEntropyGrad, {logits, targets, dloss}), "dlogits");
  return g;
}

// h = a + r feeds layer_norm (h is also an output, as the residual stream
// is), rms_norm of a, and the backward of both, rms_norm_grad's dx added to
// r (fused into its row kernel).
Graph norm_graph(std::int64_t rows, std::int64_t c, DType dtype) {
  Graph g("norms");
  Builder b(g);
  Tensor a = b.input("a", {rows, c}, dtype);
  Tensor r = b.input("r", {rows, c}, dtype);
  Tensor gamma = b.param("gamma", {c}, dtype);
  Tensor beta = b.param("beta", {c}, dtype);
  Tensor dy = b.input("dy", {rows, c}, dtype);
  Tensor h = b.add(a, r);
  b.output(h, "h");
  b.output(b.layer_norm(h, gamma, beta), "layer_normed");
  b.output(b.rms_norm(a, gamma), "rms_normed");
  auto lg = b.op(OpKind::LayerNormGrad, {a, gamma, dy}, {{"eps", 1e-5}});
  b.output(lg[0], "dx");
  b.output(lg[1], "dgamma");
  b.output(lg[2], "dbeta");
  auto rg = b.op(OpKind::RmsNormGrad, {a, gamma, dy}, {{"eps", 1e-5}});
  b.output(b.add(r, rg[0]), "rms_dx_plus_r");  // the backward's residual-gradient add
  b.output(rg[1], "rms_dgamma");
  return g;
}

// `params` parameters of assorted shapes (one a scalar), their gradients
// made from inputs, the global-norm clip and AdamW, as a trainer does.
Graph optimizer_graph(int params, double max_norm) {
  Graph g("optimizer");
  Builder b(g);
  std::vector<Tensor> ps, grads;
  for (int i = 0; i < params; ++i) {
    Shape shape = i == 0 ? Shape{} : i % 3 == 0 ? Shape{37, 5000} : Shape{i, 3 + 5 * i};
    ps.push_back(b.param(fmt::format("p{}", i), shape));
    grads.push_back(b.mul(b.input(fmt::format("g{}", i), shape), b.full_like(ps.back(), 0.01 * (i % 5 + 1))));
  }
  auto clipped = clip_grad_norm(b, grads, max_norm);
  b.output(clipped.norm, "grad_norm");
  append_adamw(b, ps, clipped.grads, {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1});
  return g;
}

// Sums over a few elements per output (the batch of a position
// embedding's gradient, top_k), and a mean and a max of the same shape.
Graph short_reductions_graph() {
  Graph g("short_reductions");
  Builder b(g);
  Tensor x = b.input("x", {8, 64, 65});
  Tensor k = b.input("k", {777, 2}, DType::bf16);
  b.output(b.sum(x, {0}), "batch_sum");
  b.output(b.mean(x, {0, 2}), "mean");  // 65 * 8 per output: a block each
  b.output(b.max(k, {1}), "top_max");
  b.output(b.sum(k, {1}), "top_sum");
  return g;
}

}  // namespace

TEST_CASE("codegen picks the warp and block shapes of the norms and the loss, and groups the optimizer step", "[cuda]") {
  auto norms = kernel_counts(norm_graph(64, 384, DType::f32));
  CHECK(norms["norm_warp_kernel"] == 2);  // the add is fused into the layer norm: no elementwise kernel
  CHECK(norms["elementwise_kernel"] == 0);
  CHECK(norms["norm_grad_rows_warp_kernel"] == 2);
  auto wide = kernel_counts(norm_graph(8, 1500, DType::f32));
  CHECK(wide["norm_kernel"] == 2);
  CHECK(wide["elementwise_kernel"] == 2);  // rows over 1024: both adds stay kernels of their own
  CHECK(wide["norm_grad_rows_kernel"] == 2);

  CHECK(kernel_counts(cross_entropy_graph(16, 65, DType::f32))["cross_entropy_grad_warp_kernel"] == 1);
  CHECK(kernel_counts(cross_entropy_graph(4, 32000, DType::bf16))["cross_entropy_rows_block_kernel"] == 1);

  auto reductions = kernel_counts(short_reductions_graph());
  CHECK(reductions["reduce_thread_kernel"] == 3);
  CHECK(reductions["reduce_kernel"] == 1);

  auto optimizer = kernel_counts(optimizer_graph(40, 1.0));
  CHECK(optimizer["adamw_kernel"] == 0);
  CHECK(optimizer["multi_adamw_kernel"] == 2);  // 40 tensors: tables of 32 and 8
  CHECK(optimizer["multi_sum_squares_parts_kernel"] == 2);
  CHECK(optimizer["copy_kernel"] == 0);  // the clip's broadcasts are absorbed into AdamW

  // Every new parameter and moment is written into its argument's buffer.
  Graph optimizer_step = optimizer_graph(40, 1.0);
  run_pipeline(optimizer_step, kCudaPipeline);
  codegen::ModuleCode module = codegen::generate_module(optimizer_step, codegen::Target::named("sm_90a"));
  CHECK(module.in_place.size() == 3 * 40);
  for (const auto& [result, argument] : module.in_place) {
    CHECK_FALSE(module.materialized[static_cast<std::size_t>(result)]);
    CHECK(optimizer_step.arg_of(argument) != nullptr);
  }

  // MOEJIT_OP_GROUPS=0: every op its own step again.
  setenv("MOEJIT_OP_GROUPS", "0", 1);
  auto ungrouped = kernel_counts(optimizer_graph(40, 1.0));
  unsetenv("MOEJIT_OP_GROUPS");
  CHECK(ungrouped["adamw_kernel"] == 40);
  CHECK(ungrouped["multi_adamw_kernel"] == 0);
}

TEST_CASE("gpu: embedding_grad's counting sort matches the CPU and is deterministic", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t n, V, D;
    DType dtype;
  };
  const Case cases[] = {{16384, 65, 384, DType::f32}, {3000, 5000, 96, DType::f32}, {777, 256, 600, DType::bf16}, {1, 3, 5, DType::f32}};
  std::uint64_t seed = 11;
  for (const Case& c : cases) {
    Graph g = embedding_grad_graph(c.n, c.V, c.D, c.dtype);
    INFO(fmt::format("n {} V {} D {} {}", c.n, c.V, c.D, dtype_name(c.dtype)));
    Values args = skewed_ids(g, c.V, seed++);
    Values first = cuda_test::run_outputs(*cuda, g, args);
    compare(g, first, cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(c.dtype));
    Values second = cuda_test::run_outputs(*cuda, g, args);
    const HostTensor &a = first.at("dtable"), &b = second.at("dtable");
    CHECK(std::memcmp(a.raw(), b.raw(), a.bytes()) == 0);
  }
}

TEST_CASE("gpu: cross entropy and its gradient match the CPU in the warp and block shapes", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t rows, V;
    DType dtype;
  };
  const Case cases[] = {{4096, 65, DType::f32}, {300, 1000, DType::f32}, {100, 1024, DType::bf16},
                        {6, 1025, DType::f32},  {4, 32000, DType::bf16}, {3, 131072, DType::f32}};
  std::uint64_t seed = 21;
  for (const Case& c : cases) {
    Graph g = cross_entropy_graph(c.rows, c.V, c.dtype);
    INFO(fmt::format("rows {} V {} {}", c.rows, c.V, dtype_name(c.dtype)));
    Values args = cuda_test::random_args(g, seed++, c.V, 3.0);
    args.at("dloss").set(0, 1.0);
    compare(g, cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(c.dtype));
  }
}

TEST_CASE("gpu: layer and rms norm, their backward and the fused residual add match the CPU", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  struct Case {
    std::int64_t rows, c;
    DType dtype;
  };
  // The warp kernels' shapes (codegen/emit_dense.cpp warp_row_shape):
  // 384 f32 and bf16 4 wide x 3, 1000 f32 4 wide with idle lanes, 200 bf16
  // 8 wide with idle lanes, 96 bf16 and 37 f32 one wide; one row (a block
  // of mostly idle warps), many rows per warp; then the block kernels.
  const Case cases[] = {{16384, 384, DType::f32}, {512, 64, DType::f32},  {100, 1024, DType::bf16}, {33, 1000, DType::f32},
                        {3001, 384, DType::bf16}, {1001, 200, DType::bf16}, {257, 96, DType::bf16}, {77, 37, DType::f32},
                        {1, 384, DType::f32},     {40000, 128, DType::f32}, {7, 1500, DType::f32},  {5, 4096, DType::bf16}};
  std::uint64_t seed = 31;
  for (const Case& c : cases) {
    Graph g = norm_graph(c.rows, c.c, c.dtype);
    INFO(fmt::format("rows {} c {} {}", c.rows, c.c, dtype_name(c.dtype)));
    Values args = cuda_test::random_args(g, seed++, 1);
    Values got = cuda_test::run_outputs(*cuda, g, args);
    compare(g, got, cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(c.dtype));
    // The column sums of dgamma and dbeta have one order: a second run
    // gives the same bits.
    Values again = cuda_test::run_outputs(*cuda, g, args);
    for (const auto& out : g.outputs()) {
      INFO(out.name);
      CHECK(std::memcmp(got.at(out.name).raw(), again.at(out.name).raw(), got.at(out.name).bytes()) == 0);
    }
  }
}

TEST_CASE("gpu: gelu and its gradient match the CPU, saturated inputs included", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    for (double scale : {1.0, 12.0}) {  // 12: many |x| past tanh's saturation, both signs
      INFO(fmt::format("{} scale {}", dtype_name(dtype), scale));
      Graph g("gelu");
      Builder b(g);
      Tensor x = b.input("x", {1001, 77}, dtype);  // n odd: the one-element path
      Tensor y = b.input("y", {64, 96}, dtype);    // n a multiple of 8: the packed path
      b.output(b.gelu(x), "gelu_x");
      b.output(b.gelu(y), "gelu_y");
      b.output(b.op(OpKind::GeluGrad, {x, b.input("dx", {1001, 77}, dtype)})[0], "gelu_grad_x");
      b.output(b.op(OpKind::GeluGrad, {y, b.input("dy", {64, 96}, dtype)})[0], "gelu_grad_y");
      Values args = cuda_test::random_args(g, 61, 1, scale);
      compare(g, cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(dtype));
    }
  }
}

TEST_CASE("gpu: the router z-loss and its gradient match the CPU in the thread and block shapes", "[cuda][gpu]") {
  struct Case {
    std::int64_t tokens, E;
    DType dtype;
  };
  // E 8, 20, 32: a thread per token (8, 32 and 32 registers); 40: a block per token.
  const Case cases[] = {{16384, 8, DType::f32}, {3001, 20, DType::f32}, {777, 32, DType::bf16}, {513, 40, DType::f32}};
  auto graph_of = [](const Case& c) {
    Graph g("z_loss");
    Builder b(g);
    Tensor logits = b.input("logits", {c.tokens, c.E}, c.dtype);
    b.output(b.moe_z_loss(logits, 0.001), "z_loss");
    b.output(b.op(OpKind::ZLossGrad, {logits, b.input("dloss", {}, c.dtype)}, {{"coeff", 0.001}})[0], "dlogits");
    return g;
  };
  for (const Case& c : cases)
    CHECK(kernel_counts(graph_of(c))[c.E <= 32 ? "z_loss_rows_thread_kernel" : "z_loss_rows_kernel"] == 1);
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  std::uint64_t seed = 71;
  for (const Case& c : cases) {
    INFO(fmt::format("tokens {} E {} {}", c.tokens, c.E, dtype_name(c.dtype)));
    Graph g = graph_of(c);
    Values args = cuda_test::random_args(g, seed++, 1, 3.0);
    args.at("dloss").set(0, 1.0);
    compare(g, cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(c.dtype));
  }
}

TEST_CASE("gpu: reductions of a few elements per output (a thread each) match the CPU", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  Graph g = short_reductions_graph();
  Values args = cuda_test::random_args(g, 51, 1);
  compare(g, cuda_test::run_outputs(*cuda, g, args), cuda_test::run_outputs(*cpu, g, args), cuda_test::tolerance(DType::bf16));
}

TEST_CASE("gpu: the grouped optimizer step (global norm, clip, AdamW over 40 tensors) matches the CPU", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (double max_norm : {0.05, 1e6}) {  // clipped, and not clipped
    INFO("max_norm " << max_norm);
    Graph g = optimizer_graph(40, max_norm);
    Values args = cuda_test::random_args(g, 41, 1);
    auto gpu_exe = cuda->compile(g);
    auto cpu_exe = cpu->compile(g);
    for (const auto& [name, value] : args) {
      gpu_exe->set(name, value);
      cpu_exe->set(name, value);
    }
    for (int step = 1; step <= 2; ++step) {
      for (auto* exe : {gpu_exe.get(), cpu_exe.get()}) {
        exe->set("step", HostTensor::scalar(step));
        exe->run();
      }
      CHECK(cuda_test::normalized_error(gpu_exe->get("grad_norm"), cpu_exe->get("grad_norm")) <= 1e-5);
      for (const auto& arg : g.args()) {
        const std::string& name = g.value(arg.value).name;
        double err = cuda_test::normalized_error(gpu_exe->get(name), cpu_exe->get(name));
        INFO(fmt::format("{} after step {}: normalized error {:.3g}", name, step, err));
        CHECK(err <= 2e-5);
      }
    }
  }
}
