// CUDA tests of the MoEUT / expert-choice work, each against the CPU
// reference: moe.expert_choice at sizes that need many blocks (exact integer
// results, ties and NaN included), and whole training steps (loss,
// gradients, parameters after AdamW) of the MoEUT model (SwitchHead, shared
// layers, sigma-MoE, peri-LN, RoPE) and of an expert-choice GPT-MoE.
// Without a GPU each test prints "SKIPPED: no CUDA device (<why>)".
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <limits>
#include <random>
#include <set>

#include "cuda/ptx_check.h"
#include "codegen/cuda_codegen.h"
#include "cuda/cuda_test_util.h"
#include "ir/error.h"
#include "frontends/rope.h"
#include "ir/builder.h"
#include "ir/expert_choice.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_compiler.h"
#include "runtime/gradcheck.h"
#include "passes/passes.h"
#include "passes/pass_manager.h"
#include "frontends/trainer.h"

using namespace moejit;

#define MOEJIT_REQUIRE_GPU()                            \
  do {                                                  \
    std::string why_;                                   \
    if (!cuda_available(&why_)) {                       \
      WARN("SKIPPED: no CUDA device (" << why_ << ")"); \
      return;                                           \
    }                                                   \
  } while (0)

namespace {

GptMoeConfig moeut_config() {
  GptMoeConfig c = cuda_test::small_gpt_config();
  c.n_layer = 4;
  c.group_size = 2;
  c.moe_every = 1;
  c.num_experts = 8;
  c.top_k = 3;
  c.d_expert = 16;
  c.activation = "relu";
  c.router_score = "sigmoid";
  c.normalize_topk = false;
  c.aux_loss_coeff = 0.0;
  c.entropy_coeff = 0.01;
  c.expert_dropout = 0.1;
  c.attention = "switchhead";
  c.att_n_experts = 3;
  c.att_k = 2;
  c.head_dim = 12;
  c.layer_norm = "peri";
  c.position_embedding = "rope";
  return c;
}

GptMoeConfig expert_choice_config() {
  GptMoeConfig c = cuda_test::small_gpt_config();
  c.router_type = "expert_choice";
  c.capacity_factor = 1.0;
  c.aux_loss_coeff = 0.0;
  return c;
}

// Runs one training step of `config` on the CPU and the GPU from the same
// arguments and compares every output and argument.
void compare_training_step(const GptMoeConfig& config) {
  Graph graph = cuda_test::make_gpt_training_graph(config, config.batch_size);
  auto values = cuda_test::random_args(graph, 5, config.vocab_size);
  for (auto& [name, value] : init_parameters(gpt_moe_param_specs(config), 5)) values.at(name) = value;
  if (graph.find_arg(kRopeCosInput) != kNoValue) {
    RopeTables tables = rope_tables({.theta = config.rope_theta}, config.block_size,
                                    graph.type(graph.find_arg(kRopeCosInput)).dim(1));
    values.at(kRopeCosInput) = tables.cos;
    values.at(kRopeSinInput) = tables.sin;
  }
  if (graph.find_arg("rng_offset") != kNoValue) values.at("rng_offset") = HostTensor::scalar(0.0, DType::i64);
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  auto cpu_exe = cpu->compile(graph);
  auto gpu_exe = cuda->compile(graph);
  for (const auto& [name, value] : values) {
    cpu_exe->set(name, value);
    gpu_exe->set(name, value);
  }
  cpu_exe->run();
  gpu_exe->run();
  int grads = 0;
  for (const auto& out : graph.outputs()) {
    HostTensor want = cpu_exe->get(out.name), got = gpu_exe->get(out.name);
    const double err = cuda_test::normalized_error(got, want);
    const double tol = out.name.rfind("grad.", 0) == 0 ? 2e-3 : cuda_test::tolerance(want.dtype()) * 10;
    grads += out.name.rfind("grad.", 0) == 0;
    INFO(fmt::format("{}: normalized error {:.3g} (tolerance {:.3g})", out.name, err, tol));
    CHECK(err <= tol);
  }
  CHECK(grads > 10);
  for (const auto& arg : graph.args()) {
    const std::string& name = graph.value(arg.value).name;
    const double err = cuda_test::normalized_error(gpu_exe->get(name), cpu_exe->get(name));
    INFO(fmt::format("argument {} after the step: normalized error {:.3g}", name, err));
    CHECK(err <= 2e-3);
  }
}

}  // namespace

TEST_CASE("gpu: expert_choice matches the CPU exactly (up to 8192 tokens with ties and NaN)", "[cuda][gpu]") {
  MOEJIT_REQUIRE_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  for (auto [T, E, k, cf] : {std::tuple{300, 7, 2, 1.0}, std::tuple{8192, 16, 2, 1.25}, std::tuple{1000, 64, 4, 0.5}}) {
    INFO(fmt::format("T {} E {} top_k {} capacity_factor {}", T, E, k, cf));
    Graph graph("expert_choice");
    Builder b(graph);
    Tensor scores = b.input("scores", {T, E});
    auto r = b.op(OpKind::ExpertChoice, {scores}, {{"capacity_factor", cf}, {"top_k", std::int64_t{k}}});
    for (int i = 0; i < 4; ++i) b.output(r[static_cast<std::size_t>(i)], fmt::format("r{}", i));
    HostTensor values = random_tensor({DType::f32, {T, E}}, static_cast<std::uint64_t>(T + E));
    // Coarse values make many exact ties; a few NaN rank last.
    for (std::int64_t i = 0; i < values.numel(); ++i) values.set(i, std::round(values.get(i) * 8.0) / 8.0);
    for (std::int64_t i = 0; i < values.numel(); i += 97) values.set(i, std::numeric_limits<double>::quiet_NaN());
    auto cpu_exe = cpu->compile(graph);
    auto gpu_exe = cuda->compile(graph);
    cpu_exe->set("scores", values);
    gpu_exe->set("scores", values);
    cpu_exe->run();
    gpu_exe->run();
    for (int i = 0; i < 4; ++i) {
      const std::string name = fmt::format("r{}", i);
      HostTensor want = cpu_exe->get(name), got = gpu_exe->get(name);
      REQUIRE(want.type() == got.type());
      std::int64_t mismatches = 0;
      for (std::int64_t j = 0; j < want.numel(); ++j) mismatches += want.get(j) != got.get(j);
      INFO(name << ": " << mismatches << " mismatching elements");
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("gpu: a MoEUT training step (SwitchHead and shared layers and sigma-MoE and RoPE) matches the CPU", "[cuda][gpu]") {
  MOEJIT_REQUIRE_GPU();
  compare_training_step(moeut_config());
}

TEST_CASE("gpu: an expert-choice GPT-MoE training step matches the CPU", "[cuda][gpu]") {
  MOEJIT_REQUIRE_GPU();
  compare_training_step(expert_choice_config());
}

TEST_CASE("the MoEUT and expert-choice training steps compile to PTX (no GPU needed)", "[cuda][nvrtc]") {
  // The trainer's own graphs (forward pipeline, backward, clipping, AdamW),
  // in f32 and bf16, through the pipeline the CUDA backend runs.
  for (auto [config, precision] : {std::pair{moeut_config(), DType::f32}, std::pair{moeut_config(), DType::bf16},
                                   std::pair{expert_choice_config(), DType::f32}, std::pair{expert_choice_config(), DType::bf16}}) {
    INFO(config.router_type << " " << dtype_name(precision));
    Graph graph = std::move(build_training_graph(config, precision).graph);
    run_pipeline(graph, "cuda-pipeline");
    codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("compute_90a"));
    std::size_t ops = 0;
    for (const auto& step : module.steps) ops += step.ops.size();
    CHECK(ops == graph.ops().size());
    cuda::CompiledModule compiled = cuda_test::compile_to_ptx(module, graph.name(), "compute_90a");
    bool expert_choice = false;
    for (const auto& k : module.kernels) {
      expert_choice |= k.find("expert_choice_kernel") != std::string::npos;
    }
    // The host's argument struct has the size of the kernel's parameter.
    for (const auto& step : module.steps)
      for (const auto& launch : step.launches) {
        if (launch.kind != codegen::Launch::Kind::kernel || launch.kernel.find("expert_choice") == std::string::npos) continue;
        const std::string param = compiled.lowered(launch.kernel) + "_param_0[";
        auto at = compiled.binary.find(param);
        REQUIRE(at != std::string::npos);
        CHECK(std::stoul(compiled.binary.substr(at + param.size())) == launch.args.size());
      }
    CHECK(expert_choice == (config.router_type == "expert_choice"));
  }
}

TEST_CASE("fuse-elementwise keeps every group within what one chain kernel takes", "[cuda]") {
  // A 40-term sum of scalars (a global gradient norm over many parameters)
  // and a chain of 12 dropouts: fused, each still has to become kernels.
  Graph graph("limits");
  Builder b(graph);
  Tensor total = b.input("a0", {});
  for (int i = 1; i < 40; ++i) total = b.add(total, b.input(fmt::format("a{}", i), {}));
  b.output(b.sqrt(total), "norm");
  Tensor x = b.input("x", {64});
  for (int i = 0; i < 12; ++i) x = b.dropout(x, 0.1, 1, i * 64);
  b.output(x, "dropped");
  create_fuse_elementwise_pass({})->run(graph);
  CHECK_NOTHROW(codegen::generate_module(graph, codegen::Target::named("compute_90a")));
  std::set<std::int64_t> groups;
  for (const auto& op : graph.ops())
    if (op.attrs.has(codegen::kFusionGroupAttr)) groups.insert(op.attrs.get_int(codegen::kFusionGroupAttr));
  CHECK(groups.size() >= 4);  // the sum needs 2 kernels, the dropouts 2
}
