// The bf16 training step on the GPU against the CPU backend, op by op: the
// graph `gpt_moe train --dtype bf16` compiles (build_training_graph with
// bf16: MoE fusions, mixed-precision, backward, clipping, AdamW), with every
// op result made an output, so each op's result is compared, not only the
// loss. Floats within bf16 tolerance (normalized error), integers exactly.
// Without a GPU: "SKIPPED: no CUDA device"; the module of that step still
// compiles to PTX here (NVRTC needs no GPU).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>

#include "cuda/ptx_check.h"
#include "codegen/cuda_codegen.h"
#include "cuda/cuda_test_util.h"
#include "ir/error.h"
#include "passes/pass_manager.h"
#include "runtime/cuda/nvrtc_compiler.h"
#include "frontends/trainer.h"
#include "ir/verifier.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

TEST_CASE("the bf16 training module (gpt_moe train --dtype bf16 on the GPU) compiles to PTX", "[cuda][nvrtc][mixed_precision]") {
  Graph graph = build_training_graph(cuda_test::small_gpt_config(), DType::bf16).graph;
  run_pipeline(graph, kCudaPipeline);  // what the CUDA backend's compile() runs first
  int bf16_values = 0;
  for (const Op& op : graph.ops())
    for (ValueId r : op.results) bf16_values += graph.type(r).dtype == DType::bf16;
  CHECK(bf16_values > 20);
  codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("compute_90a"));
  cuda_test::compile_to_ptx(module, graph.name(), "compute_90a");
}

TEST_CASE("gpu: the bf16 training step matches the CPU bf16 step op by op", "[cuda][gpu][mixed_precision]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  GptMoeConfig config = cuda_test::small_gpt_config();
  CHECK(training_precision(config, *cuda) == DType::bf16);  // auto: bf16 on the GPU
  Graph graph = build_training_graph(config, DType::bf16).graph;
  // Every op result that is not already an output becomes one.
  std::vector<bool> is_output(static_cast<std::size_t>(graph.num_values()), false);
  for (const Output& out : graph.outputs()) is_output[static_cast<std::size_t>(out.value)] = true;
  std::vector<std::pair<std::string, int>> probes;  // output name, op index
  for (std::size_t i = 0; i < graph.ops().size(); ++i)
    for (ValueId r : graph.ops()[i].results)
      if (!is_output[static_cast<std::size_t>(r)]) {
        std::string name = fmt::format("value.{}", r);
        graph.add_output(r, name);
        probes.emplace_back(name, static_cast<int>(i));
      }
  auto args = cuda_test::random_args(graph, 11, config.vocab_size);
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 11)) args.at(name) = value;
  auto cpu_exe = cpu->compile(graph);
  auto gpu_exe = cuda->compile(graph);
  for (const auto& [name, value] : args) {
    cpu_exe->set(name, value);
    gpu_exe->set(name, value);
  }
  cpu_exe->run();
  gpu_exe->run();

  const double float_tolerance = cuda_test::tolerance(DType::bf16, 2.0);
  int compared = 0, in_bf16 = 0;
  double worst = 0.0;
  std::string worst_name;
  for (const auto& [name, op_index] : probes) {
    HostTensor want = cpu_exe->get(name), got = gpu_exe->get(name);
    REQUIRE(got.type() == want.type());
    double err = cuda_test::normalized_error(got, want);
    double tol = is_float(want.dtype()) ? float_tolerance : 0.0;
    INFO(fmt::format("{} = result of {} {}: normalized error {:.3g} (tolerance {:.3g})", name, describe_op(graph, op_index),
                     want.type().str(), err, tol));
    CHECK(err <= tol);
    if (is_float(want.dtype()) && err > worst) worst = err, worst_name = name;
    in_bf16 += want.dtype() == DType::bf16;
    ++compared;
  }
  WARN(fmt::format("compared {} op results ({} in bf16); worst float normalized error {:.3g} ({})", compared, in_bf16, worst,
                   worst_name));
  CHECK(in_bf16 > 20);
  // The step's outputs and the parameters and moments after AdamW (f32 master weights).
  for (const Output& out : graph.outputs()) {
    if (out.name.rfind("value.", 0) == 0) continue;
    double err = cuda_test::normalized_error(gpu_exe->get(out.name), cpu_exe->get(out.name));
    INFO(fmt::format("output {}: normalized error {:.3g}", out.name, err));
    CHECK(err <= float_tolerance);
  }
  for (const Arg& arg : graph.args()) {
    const std::string& name = graph.value(arg.value).name;
    if (arg.role == ArgRole::input) continue;
    CHECK(gpu_exe->get(name).dtype() == DType::f32);
    double err = cuda_test::normalized_error(gpu_exe->get(name), cpu_exe->get(name));
    INFO(fmt::format("argument {} after the step: normalized error {:.3g}", name, err));
    CHECK(err <= float_tolerance);
  }
}
