// The flash attention family (codegen/kernels/attention.cuh) through the
// library: which kernels mj.attention / mj.attention_grad emit for each
// dtype and head dim, that they compile through NVRTC for compute_80 and
// compute_90a (no GPU needed), and, on a GPU, that the bf16 and f16 forward
// (out, lse) and backward (dq, dk, dv) match the CPU backend on odd sizes:
// T = 1, T not a multiple of the 64-row tile, head dims 32, 64, 128 and 40
// (padded to 64), 20 (not a multiple of 8: element-wise tile loads); the
// same in layout "bthd" ([B, T, H, D] read and written in place, for the
// flash kernels and the f32 / wide-head row kernels), and for the packed
// mj.attention_qkv / mj.attention_qkv_grad (q, k, v read out of one
// [B, T, 3, H, D], dq, dk, dv written into one).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/attention.cuh"
#include "codegen/target.h"
#include "codegen/tuning_space.h"
#include "cuda/cuda_test_util.h"
#include "cuda/ptx_check.h"
#include "frontends/config.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

// q, k, v, dout [B, H, T, D] (layout bthd: [B, T, H, D]) -> out, lse
// (mj.attention), dq, dk, dv (mj.attention_grad reading that out and lse).
Graph attention_graph(DType dtype, std::int64_t batch, std::int64_t heads, std::int64_t tokens, std::int64_t head_dim,
                      HeadLayout layout = HeadLayout::bhtd) {
  Graph graph(fmt::format("attention_{}_{}x{}x{}x{}_{}", dtype_name(dtype), batch, heads, tokens, head_dim, head_layout_name(layout)));
  Builder b(graph);
  const Shape shape = layout == HeadLayout::bhtd ? Shape{batch, heads, tokens, head_dim} : Shape{batch, tokens, heads, head_dim};
  Tensor q = b.input("q", shape, dtype), k = b.input("k", shape, dtype), v = b.input("v", shape, dtype);
  Tensor dout = b.input("dout", shape, dtype);
  AttrList attrs{{"scale", 0.0}};
  set_head_layout(attrs, layout);
  std::vector<Tensor> fwd = b.op(OpKind::Attention, {q, k, v}, attrs);
  std::vector<Tensor> grads = b.op(OpKind::AttentionGrad, {q, k, v, fwd[0], fwd[1], dout}, attrs);
  b.output(fwd[0], "out");
  b.output(fwd[1], "lse");
  b.output(grads[0], "dq");
  b.output(grads[1], "dk");
  b.output(grads[2], "dv");
  return graph;
}

// x [B*T, 3*H*D] (a qkv projection), dout [B, T, H, D] -> out, lse
// (mj.attention_qkv of x reshaped [B, T, 3, H, D]), dqkv (its gradient).
Graph packed_attention_graph(DType dtype, std::int64_t batch, std::int64_t heads, std::int64_t tokens, std::int64_t head_dim) {
  Graph graph(fmt::format("attention_qkv_{}_{}x{}x{}x{}", dtype_name(dtype), batch, heads, tokens, head_dim));
  Builder b(graph);
  Tensor x = b.input("x", {batch * tokens, 3 * heads * head_dim}, dtype);
  Tensor dout = b.input("dout", {batch, tokens, heads, head_dim}, dtype);
  Tensor qkv = b.reshape(x, {batch, tokens, 3, heads, head_dim});
  std::vector<Tensor> fwd = b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.0}});
  Tensor dqkv = b.op1(OpKind::AttentionQkvGrad, {qkv, fwd[0], fwd[1], dout}, {{"scale", 0.0}});
  b.output(fwd[0], "out");
  b.output(fwd[1], "lse");
  b.output(b.reshape(dqkv, {batch * tokens, 3 * heads * head_dim}), "dqkv");
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
                                 "mj::flash_attention_bwd_dkdv_kernel<mj::bf16_t, 64, 64>"});
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::f16, 1, 1, 5, 40), target)) ==
        std::vector<std::string>{"mj::flash_attention_fwd_kernel<mj::f16_t, 64, 1>", "mj::flash_attention_bwd_dq_kernel<mj::f16_t, 64, 1>",
                                 "mj::flash_attention_bwd_dkdv_kernel<mj::f16_t, 64, 64>"});
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::f32, 1, 2, 9, 64), target)) ==
        std::vector<std::string>{"mj::attention_kernel<float, 128>", "mj::attention_grad_q_kernel<float, 128>",
                                 "mj::attention_grad_kv_kernel<float, 128>"});
  // Heads wider than 128 keep the row kernels in bf16 too.
  CHECK(kernel_names(codegen::generate_module(attention_graph(DType::bf16, 1, 1, 9, 160), target))[0] ==
        "mj::attention_kernel<mj::bf16_t, 128>");
  // From T = 512 on, heads up to 64 wide take 128-query forward blocks (two 16-row fragments a warp).
  codegen::ModuleCode long_module = codegen::generate_module(attention_graph(DType::bf16, 1, 2, 600, 64), target);
  CHECK(kernel_names(long_module)[0] == "mj::flash_attention_fwd_kernel<mj::bf16_t, 64, 2>");
  CHECK(long_module.steps.front().launches.front().grid[1] == 5);
  CHECK(long_module.steps.front().launches.front().shared_bytes == static_cast<unsigned>(mj::FlashTile::fwd_smem(64, 2)));
  // The launch: one block per (batch, head) and 64 query rows (x fastest: heavy tiles of all heads first), 128 threads.
  codegen::ModuleCode module = codegen::generate_module(attention_graph(DType::bf16, 2, 3, 130, 128), target);
  const codegen::Launch& fwd = module.steps.front().launches.front();
  CHECK(fwd.grid[0] == 6);
  CHECK(fwd.grid[1] == 3);
  CHECK(fwd.block[0] == 128);
  CHECK(fwd.shared_bytes == static_cast<unsigned>(mj::FlashTile::fwd_smem(128, 1)));
}

TEST_CASE("attention in layout bthd launches the same kernels with the heads' strides", "[cuda][attention]") {
  const auto target = codegen::Target::named("sm_90a");
  // B 2, T 130, H 3, D 64: the same grid as [B, H, T, D]; rows H * D apart, heads D apart.
  codegen::ModuleCode bthd = codegen::generate_module(attention_graph(DType::bf16, 2, 3, 130, 64, HeadLayout::bthd), target);
  codegen::ModuleCode bhtd = codegen::generate_module(attention_graph(DType::bf16, 2, 3, 130, 64), target);
  CHECK(kernel_names(bthd) == kernel_names(bhtd));
  const codegen::Launch& fwd = bthd.steps.front().launches.front();
  CHECK(fwd.grid[0] == 6);
  CHECK(fwd.grid[1] == 3);
  mj::FlashAttentionFwdArgs<void> args{};
  REQUIRE(fwd.args.size() == sizeof(args));
  std::memcpy(&args, fwd.args.data(), sizeof(args));
  CHECK(args.BH == 6);
  CHECK(args.Tn == 130);
  CHECK(args.H == 3);
  CHECK(args.qkv.head == 64);
  CHECK(args.qkv.row == 3 * 64);
  CHECK(args.qkv.batch == 130 * 3 * 64);
  CHECK(args.o.row == args.qkv.row);
  std::memcpy(&args, bhtd.steps.front().launches.front().args.data(), sizeof(args));
  CHECK(args.qkv.head == 130 * 64);
  CHECK(args.qkv.row == 64);
  CHECK(args.o.head == args.qkv.head);
}

TEST_CASE("packed attention launches the same kernels on views of qkv, with no memset of dqkv", "[cuda][attention]") {
  const auto target = codegen::Target::named("sm_90a");
  codegen::ModuleCode packed = codegen::generate_module(packed_attention_graph(DType::bf16, 2, 3, 130, 64), target);
  codegen::ModuleCode bthd = codegen::generate_module(attention_graph(DType::bf16, 2, 3, 130, 64, HeadLayout::bthd), target);
  CHECK(kernel_names(packed) == kernel_names(bthd));
  // No memset of dqkv: besides the three kernels only the copies of this test graph's argument and output
  // reshapes (a reshape of a computed value, as the qkv projection in a model, is a view).
  std::vector<const codegen::Launch*> launches;
  for (const auto& step : packed.steps)
    for (const auto& launch : step.launches) {
      CHECK(launch.kind != codegen::Launch::Kind::zero);
      if (launch.kind == codegen::Launch::Kind::kernel) launches.push_back(&launch);
    }
  REQUIRE(launches.size() == 3);
  mj::FlashAttentionFwdArgs<void> fwd{};
  REQUIRE(launches[0]->args.size() == sizeof(fwd));
  std::memcpy(&fwd, launches[0]->args.data(), sizeof(fwd));
  CHECK(fwd.H == 3);
  CHECK(fwd.qkv.row == 3 * 3 * 64);          // rows of qkv: 3 D apart
  CHECK(fwd.qkv.batch == 130 * 3 * 3 * 64);
  CHECK(fwd.qkv.head == 64);
  CHECK(fwd.o.row == 3 * 64);                // out [B, T, H, D]
  CHECK(fwd.o.batch == 130 * 3 * 64);
  // q, k, v: one value, from byte 0, D and 2 D (bf16) on; dq, dk, dv the same into dqkv.
  auto offsets_of = [](const codegen::Launch& launch, std::size_t first, std::size_t count) {
    std::vector<std::pair<ValueId, std::int64_t>> views;
    for (std::size_t i = first; i < first + count; ++i) views.push_back({launch.pointers.at(i).buffer.value, launch.pointers.at(i).buffer.offset});
    return views;
  };
  const auto qkv_views = offsets_of(*launches[0], 0, 3);
  CHECK(qkv_views[0].first == qkv_views[1].first);
  CHECK(qkv_views[1].first == qkv_views[2].first);
  CHECK(qkv_views[0].second == 0);
  CHECK(qkv_views[1].second == 3 * 64 * 2);
  CHECK(qkv_views[2].second == 2 * 3 * 64 * 2);
  const auto dkdv = offsets_of(*launches[2], 6, 2);  // q k v dout lse delta dk dv
  CHECK(dkdv[0].first == dkdv[1].first);
  CHECK(dkdv[0].second == 3 * 64 * 2);
  CHECK(dkdv[1].second == 2 * 3 * 64 * 2);
}

TEST_CASE("config B's training module reads qkv and writes d_qkv through views, with no copy or memset around its attention",
          "[cuda][attention][qkv]") {
  GptMoeConfig config = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config.vocab_size = 65;
  Graph graph = build_training_graph(config, DType::bf16).graph;
  run_pipeline(graph, kCudaPipeline);  // what the CUDA backend's compile() runs first
  const codegen::ModuleCode module = codegen::generate_module(graph, codegen::Target::named("sm_90a"));
  std::vector<bool> view(static_cast<std::size_t>(graph.num_values()), false);
  for (const auto& [result, source] : module.aliases) view[static_cast<std::size_t>(result)] = true;
  const std::vector<int> uses = graph.use_counts();
  int packed = 0, grads = 0;
  for (const Op& op : graph.ops()) {
    if (op.kind == OpKind::AttentionQkv) {
      ++packed;
      CHECK(view[static_cast<std::size_t>(op.operands[0])]);  // the qkv projection reshaped [B, T, 3, H, Dh]: no copy
    }
    if (op.kind == OpKind::AttentionQkvGrad) {
      ++grads;
      for (const Op& reader : graph.ops())  // d_qkv reshaped [B*T, 3D] for the projection's gradients: no copy
        if (reader.kind == OpKind::Reshape && reader.operands[0] == op.results[0]) CHECK(view[static_cast<std::size_t>(reader.results[0])]);
    }
  }
  CHECK(packed == config.n_layer);
  CHECK(grads == config.n_layer);
  // No memset or copy of a qkv-sized tensor (each pad into zeros of the unpacked graph was one).
  const std::int64_t qkv_bytes = config.batch_size * config.block_size * 3 * config.n_embd * 2;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) {
      INFO(fmt::format("launch kind {} of {} bytes", static_cast<int>(launch.kind), launch.bytes));
      if (launch.kind == codegen::Launch::Kind::zero || launch.kind == codegen::Launch::Kind::copy) CHECK(launch.bytes != qkv_bytes);
    }
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

namespace {
struct GpuCase {
  DType dtype;
  std::int64_t batch, heads, tokens, head_dim;
};

// Every case's out, lse, dq, dk, dv (packed: dqkv) on the GPU against the
// CPU backend, in `layout` (nullopt: the packed mj.attention_qkv).
void check_against_cpu(const std::vector<GpuCase>& cases, std::optional<HeadLayout> layout) {
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  const std::vector<std::string> names = layout ? std::vector<std::string>{"out", "lse", "dq", "dk", "dv"}
                                                : std::vector<std::string>{"out", "lse", "dqkv"};
  for (const GpuCase& c : cases) {
    Graph graph = layout ? attention_graph(c.dtype, c.batch, c.heads, c.tokens, c.head_dim, *layout)
                         : packed_attention_graph(c.dtype, c.batch, c.heads, c.tokens, c.head_dim);
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
    for (const std::string& name : names) {
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
}  // namespace

TEST_CASE("gpu: bf16 and f16 flash attention forward and backward match the CPU backend", "[cuda][gpu][attention]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  check_against_cpu({{DType::bf16, 1, 2, 1, 64},
                     {DType::bf16, 2, 3, 70, 32},
                     {DType::bf16, 1, 2, 130, 64},
                     {DType::bf16, 1, 1, 200, 128},
                     {DType::bf16, 1, 2, 64, 40},
                     {DType::bf16, 1, 1, 33, 20},
                     {DType::f16, 2, 1, 129, 64},
                     {DType::bf16, 1, 1, 513, 64}},
                    HeadLayout::bhtd);
}

TEST_CASE("gpu: attention in layout bthd (flash and row kernels) matches the CPU backend", "[cuda][gpu][attention][layout]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  // Several heads, so the row stride H * D differs from D; odd T, D 40 (padded) and 20 (element-wise
  // loads), 128 query blocks (T 513); f32 and D 160 take the row kernels.
  check_against_cpu({{DType::bf16, 1, 2, 1, 64},
                     {DType::bf16, 2, 3, 70, 32},
                     {DType::bf16, 2, 6, 130, 64},
                     {DType::bf16, 1, 3, 200, 128},
                     {DType::bf16, 1, 2, 64, 40},
                     {DType::bf16, 1, 3, 33, 20},
                     {DType::f16, 2, 2, 129, 64},
                     {DType::bf16, 1, 2, 513, 64},
                     {DType::f32, 2, 3, 37, 24},
                     {DType::bf16, 1, 2, 9, 160}},
                    HeadLayout::bthd);
}

TEST_CASE("gpu: packed qkv attention (flash and row kernels) matches the CPU backend", "[cuda][gpu][attention][qkv]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  // q, k, v rows 3 H D apart, out H D: several heads, odd T, D 40 (padded) and 20 (element-wise loads),
  // 128-query blocks (T 513), config B's shape (H 6, T 256, D 64); f32 and D 160 take the row kernels.
  check_against_cpu({{DType::bf16, 1, 2, 1, 64},
                     {DType::bf16, 2, 3, 70, 32},
                     {DType::bf16, 2, 6, 256, 64},
                     {DType::bf16, 1, 3, 200, 128},
                     {DType::bf16, 1, 2, 64, 40},
                     {DType::bf16, 1, 3, 33, 20},
                     {DType::f16, 2, 2, 129, 64},
                     {DType::bf16, 1, 2, 513, 64},
                     {DType::f32, 2, 3, 37, 24},
                     {DType::bf16, 1, 2, 9, 160}},
                    std::nullopt);
}

// ---- attention as a tunable family (codegen/attention_select.h, tuning_space.cpp's "attention" row) ----
namespace {
const codegen::Target hopper_target = codegen::Target::named("sm_90a");

codegen::TuningProblem only_attention_problem(const Graph& graph) {
  Graph prepared = graph;
  run_pipeline(prepared, kCudaPipeline);
  std::vector<codegen::TuningProblem> found;
  for (auto& p : codegen::collect_tuning_problems(prepared, hopper_target))
    if (p.family == "attention") found.push_back(p);
  REQUIRE(found.size() == 1);
  return found[0];
}
codegen::TuningDb one_entry_db(const codegen::TuningProblem& p, const codegen::TunedFields& f) {
  return codegen::TuningDb{hopper_target.device_name, hopper_target.arch, {{p.key, f, codegen::tuning_family_version("attention")}}};
}
}  // namespace

TEST_CASE("attention tuning: config B's attention is one problem with its candidates", "[cuda][attention][tuning]") {
  GptMoeConfig config = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config.vocab_size = 65;
  const codegen::TuningProblem p = only_attention_problem(build_training_graph(config, DType::bf16).graph);
  CHECK(p.label() == "bf16 qkv B 64 H 6 T 256 Dh 64");
  CHECK(p.uses == config.n_layer);
  CHECK(p.key == codegen::TuningKey{"attention", "bf16", "qkv", 9, 8, 6});  // B * H 384, T 256, Dh 64
  // The heuristic at T 256: 64-query forward and dq blocks, 64-query dk/dv steps; then the other seven shapes.
  const auto candidates = codegen::find_tunable_family("attention")->candidates(p, hopper_target);
  REQUIRE(candidates.size() == 8);
  CHECK(candidates[0] == codegen::TunedFields{.tile_m = 64, .tile_n = 64, .tile_k = 64});
  CHECK(candidates[0] == p.heuristic);
  // Head dim 128: no 128-query forward or dq blocks (their fragments would not fit the registers).
  const auto wide = only_attention_problem(attention_graph(DType::bf16, 2, 3, 700, 128, HeadLayout::bthd));
  CHECK(wide.key.kind == "bthd");
  CHECK(wide.heuristic == codegen::TunedFields{.tile_m = 64, .tile_n = 64, .tile_k = 64});
  CHECK(codegen::find_tunable_family("attention")->candidates(wide, hopper_target).size() == 2);
  // f32 runs the row kernels: not the flash family's problem.
  Graph f32 = attention_graph(DType::f32, 1, 2, 9, 64);
  run_pipeline(f32, kCudaPipeline);
  for (const auto& q : codegen::collect_tuning_problems(f32, hopper_target)) CHECK(q.family != "attention");
}

TEST_CASE("attention tuning: an entry changes the launches (MOEJIT_DEBUG's lines say tuned); bad entries are ignored",
          "[cuda][attention][tuning]") {
  const Graph graph = attention_graph(DType::bf16, 2, 3, 300, 64);
  const codegen::TuningProblem p = only_attention_problem(graph);
  {
    codegen::ScopedTuningDbOverride none(nullptr);
    CHECK(codegen::describe_kernel_configs(codegen::generate_module(graph, hopper_target), "") ==
          "mj::flash_attention_fwd_kernel<mj::bf16_t, 64, 1>: tile 64x64x64 stages 2 threads 128 (heuristic), 1 launch\n"
          "mj::flash_attention_bwd_dq_kernel<mj::bf16_t, 64, 1>: tile 64x64x64 stages 2 threads 128 (heuristic), 1 launch\n"
          "mj::flash_attention_bwd_dkdv_kernel<mj::bf16_t, 64, 64>: tile 64x64x64 stages 2 threads 128 (heuristic), 1 launch\n");
  }
  {
    const codegen::TuningDb db = one_entry_db(p, {.tile_m = 128, .tile_n = 32, .tile_k = 128});
    codegen::ScopedTuningDbOverride only(&db);
    const codegen::ModuleCode module = codegen::generate_module(graph, hopper_target);
    CHECK(codegen::describe_kernel_configs(module, "") ==
          "mj::flash_attention_fwd_kernel<mj::bf16_t, 64, 2>: tile 128x64x64 stages 2 threads 128 (tuned) [database, exact bucket], 1 launch\n"
          "mj::flash_attention_bwd_dq_kernel<mj::bf16_t, 64, 2>: tile 128x64x64 stages 2 threads 128 (tuned) [database, exact bucket], 1 launch\n"
          "mj::flash_attention_bwd_dkdv_kernel<mj::bf16_t, 64, 32>: tile 64x32x64 stages 2 threads 128 (tuned) [database, exact bucket], 1 launch\n");
    const codegen::Launch& fwd = module.steps.front().launches.front();
    CHECK(fwd.grid[1] == 3);  // 300 queries in 128-query blocks
    CHECK(fwd.shared_bytes == static_cast<unsigned>(mj::FlashTile::fwd_smem(64, 2)));
  }
  {  // a neighbouring bucket's entry (T 512) serves, saying so
    codegen::TuningDb db = one_entry_db(p, {.tile_m = 64, .tile_n = 32, .tile_k = 64});
    db.entries[0].key.n_log2 = 10;
    codegen::ScopedTuningDbOverride only(&db);
    CHECK(kernel_names(codegen::generate_module(graph, hopper_target))[2] == "mj::flash_attention_bwd_dkdv_kernel<mj::bf16_t, 64, 32>");
    CHECK(codegen::describe_kernel_configs(codegen::generate_module(graph, hopper_target), "").find("(tuned) [nearest tuned bucket m 2^3 n 2^10 k 2^6]") !=
          std::string::npos);
  }
  // Entries naming shapes the family does not have, or fields it has not: the heuristic, with a note.
  const std::pair<codegen::TunedFields, const char*> bad[] = {
      {{.tile_m = 256, .tile_n = 64, .tile_k = 64}, "tile_m 256"},
      {{.tile_m = 64, .tile_n = 48, .tile_k = 64}, "tile_n 48"},
      {{.tile_m = 64, .tile_n = 64, .tile_k = 96}, "tile_k 96"},
      {{.tile_m = 64, .tile_n = 64}, "tile_k 0"},
      {{.tile_m = 64, .tile_n = 64, .tile_k = 64, .stages = 3}, "sets a field the attention family has not"}};
  for (const auto& [fields, why] : bad) {
    INFO(codegen::fields_str(fields));
    const codegen::TuningDb db = one_entry_db(p, fields);
    codegen::ScopedTuningDbOverride only(&db);
    const std::string lines = codegen::describe_kernel_configs(codegen::generate_module(graph, hopper_target), "");
    CHECK(lines.find("(tuned)") == std::string::npos);
    CHECK(lines.find(std::string("(heuristic) [tuning database entry ignored: ") + why) != std::string::npos);
  }
  {  // 128-query forward blocks of a 128-wide head: ignored
    const Graph wide = attention_graph(DType::bf16, 1, 2, 300, 128);
    const codegen::TuningDb db = one_entry_db(only_attention_problem(wide), {.tile_m = 128, .tile_n = 32, .tile_k = 64});
    codegen::ScopedTuningDbOverride only(&db);
    CHECK(kernel_names(codegen::generate_module(wide, hopper_target))[0] == "mj::flash_attention_fwd_kernel<mj::bf16_t, 128, 1>");
  }
  {  // an entry of another version of the family is dropped when a file is loaded
    codegen::TuningDb db = one_entry_db(p, {.tile_m = 128, .tile_n = 32, .tile_k = 128});
    db.entries[0].version = "0123456789abcdef";
    std::string summary;
    CHECK(codegen::drop_stale_entries(db, summary) == 1);
    CHECK(db.entries.empty());
    CHECK(summary.find("attention") != std::string::npos);
  }
}

TEST_CASE("gpu: every attention tuning candidate matches the CPU backend", "[cuda][gpu][attention][tuning]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  // T 300 (a multiple of no tile), D 64 packed (8 candidates), D 128 in layout bthd (2); every candidate
  // of each problem (NVRTC compiles each: two problems only).
  const std::tuple<std::int64_t, std::int64_t, std::optional<HeadLayout>> problems[] = {{300, 64, std::nullopt},
                                                                                         {300, 128, HeadLayout::bthd}};
  for (const auto& [tokens, head_dim, layout] : problems) {
    {
      const Graph graph = layout ? attention_graph(DType::bf16, 2, 3, tokens, head_dim, *layout)
                                 : packed_attention_graph(DType::bf16, 2, 3, tokens, head_dim);
      const codegen::TuningProblem p = only_attention_problem(graph);
      for (const auto& f : codegen::find_tunable_family("attention")->candidates(p, cuda_device_target())) {
        INFO(graph.name() << ": " << codegen::fields_str(f));
        const codegen::TuningDb db = one_entry_db(p, f);
        codegen::ScopedTuningDbOverride only(&db);
        check_against_cpu({{DType::bf16, 2, 3, tokens, head_dim}}, layout);
      }
    }
  }
}
