// The fused router as the "route" family of `moejit tune`
// (codegen/route_config.h), CI, no GPU: config B's route problem is
// collected (and its router product is no SIMT problem any more), the
// candidates are valid, distinct and within 48 KiB, a database entry of
// each changes route_kernel's template arguments (MOEJIT_DEBUG's "(tuned)"),
// a few compile through NVRTC, and entries the family refuses are ignored
// with a note. That tuned and default launches agree bit for bit is a GPU
// test (route_gpu_test.cpp).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <set>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/moe.cuh"
#include "codegen/route_config.h"
#include "codegen/tuning_space.h"
#include "cuda/ptx_check.h"
#include "frontends/config.h"
#include "frontends/trainer.h"
#include "ir/builder.h"
#include "passes/pass_manager.h"

using namespace moejit;
using codegen::TunedFields;
using codegen::TuningDb;

namespace {

const codegen::Target hopper = codegen::Target::named("sm_90a");

// x [T, D] routed to E experts, top-K: one moe.route after fuse-router-permute.
Graph route_graph(std::int64_t T, std::int64_t D, std::int64_t E, std::int64_t K, DType dtype = DType::f32) {
  Graph g("tuned_route");
  Builder b(g);
  Tensor x = b.input("x", {T, D}, dtype);
  Tensor w = b.param("w_router", {D, E}, dtype);
  auto [weights, experts] = b.moe_gate(b.matmul(x, w), {.top_k = K});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = E});
  b.output(weights, "weights");
  b.output(slots, "slots");
  b.output(offsets, "offsets");
  b.output(positions, "positions");
  run_pipeline(g, "fuse-router-permute");
  return g;
}

// The route_kernel instantiation of the graph's module, and its config line.
struct RouteLaunch {
  std::string kernel, config;
};
RouteLaunch route_launch(const codegen::ModuleCode& module) {
  for (const auto& step : module.steps)
    for (const auto& l : step.launches)
      if (l.kernel.find("route_kernel") != std::string::npos) return {l.kernel, l.config.str()};
  FAIL("no route_kernel launch");
  return {};
}

std::string instantiation_of(const codegen::RouteProblem& p, const TunedFields& f) {
  const codegen::RouteConfig c = codegen::route_config_from(p, f);
  return fmt::format("mj::route_kernel<{}, {}, {}, {}, {}, {}, {}>", p.dtype == DType::f32 ? "float" : "mj::bf16_t", c.ep, c.tn, c.tm,
                     c.threads, c.bk, c.stages);
}

}  // namespace

TEST_CASE("route family: config B's route is one problem of six uses, its product no SIMT problem", "[cuda][tuning][route]") {
  GptMoeConfig config = load_config_file(std::string(MOEJIT_SOURCE_DIR) + "/examples/gpt_moe/configs/config_b.json");
  config.vocab_size = 65;
  Graph graph = build_training_graph(config, DType::bf16).graph;
  PassManager manager;
  manager.add_pipeline(kCudaPipeline);
  manager.run(graph);
  int routes = 0;
  for (const auto& p : codegen::collect_tuning_problems(graph, hopper)) {
    INFO(p.family << " " << p.label());
    CHECK_FALSE((p.family == "matmul_simt" && p.gemm.m == 16384 && p.gemm.n == 8 && p.gemm.k == 384));
    if (p.family != "route") continue;
    ++routes;
    CHECK(p.label() == "f32 route T 16384 D 384 E 8 K 2");
    CHECK(p.uses == 6);
    CHECK(p.key == codegen::TuningKey{"route", "f32", "route", 14, 3, 9});
    CHECK(p.heuristic == codegen::route_fields(codegen::route_heuristic(p.route)));
  }
  CHECK(routes == 1);
}

TEST_CASE("route family: candidates are valid and distinct, and each entry sets route_kernel's arguments", "[cuda][tuning][route]") {
  for (auto [T, D, E, K, dtype] : {std::tuple{16384, 384, 8, 2, DType::f32}, std::tuple{4096, 512, 8, 2, DType::f32},
                                   std::tuple{16384, 1024, 64, 2, DType::f32}, std::tuple{2000, 256, 20, 4, DType::bf16},
                                   std::tuple{3000, 128, 256, 8, DType::f32}}) {
    const Graph graph = route_graph(T, D, E, K, dtype);
    const auto problems = codegen::collect_tuning_problems(graph, hopper);
    REQUIRE(problems.size() == 1);
    const codegen::TuningProblem& p = problems[0];
    INFO(p.label());
    REQUIRE(p.family == "route");
    const auto candidates = codegen::find_tunable_family("route")->candidates(p, hopper);
    CHECK(candidates.size() >= 4);
    CHECK(candidates.size() <= 64);
    CHECK(candidates[0] == p.heuristic);
    std::set<std::string> seen;
    for (const TunedFields& f : candidates) {
      INFO(codegen::fields_str(f));
      CHECK(codegen::route_fields_error(p.route, f).empty());
      CHECK(seen.insert(codegen::fields_str(f)).second);
      const codegen::RouteConfig c = codegen::route_config_from(p.route, f);
      CHECK(mj::RouteLayout{c.ep, c.tn, c.tm, c.threads, c.bk, c.stages, static_cast<int>(dtype_size(dtype))}.smem_bytes() <= 48 * 1024);
      // Under a database of this one entry the launch is this configuration, marked tuned.
      TuningDb db{hopper.device_name, hopper.arch, {{p.key, f, codegen::tuning_family_version("route")}}};
      codegen::ScopedTuningDbOverride only(&db);
      const RouteLaunch launch = route_launch(codegen::generate_module(graph, hopper));
      CHECK(launch.kernel == instantiation_of(p.route, f));
      CHECK(launch.config.find(fmt::format("tile {}x{}x{} stages {} threads {} (tuned) [database, exact bucket]", f.tile_m, f.tile_n,
                                           f.tile_k, f.stages, f.threads)) != std::string::npos);
    }
  }
}

TEST_CASE("route family: the heuristic and two candidates compile with NVRTC", "[cuda][nvrtc][tuning][route]") {
  const Graph graph = route_graph(16384, 384, 8, 2);
  const auto p = codegen::collect_tuning_problems(graph, hopper).at(0);
  const auto candidates = codegen::find_tunable_family("route")->candidates(p, hopper);
  REQUIRE(candidates.size() >= 3);
  for (std::size_t i : {std::size_t{0}, std::size_t{1}, candidates.size() - 1}) {
    INFO(codegen::fields_str(candidates[i]));
    TuningDb db{hopper.device_name, hopper.arch, {{p.key, candidates[i], codegen::tuning_family_version("route")}}};
    codegen::ScopedTuningDbOverride only(&db);
    cuda_test::compile_to_ptx(codegen::generate_module(graph, hopper), fmt::format("route_candidate_{}", i), "compute_90a");
  }
}

TEST_CASE("route family: entries the kernel cannot take are ignored with a note", "[cuda][tuning][route]") {
  const Graph graph = route_graph(16384, 384, 8, 2);
  const auto p = codegen::collect_tuning_problems(graph, hopper).at(0);
  std::string heuristic;
  {
    codegen::ScopedTuningDbOverride none(nullptr);
    heuristic = route_launch(codegen::generate_module(graph, hopper)).kernel;
    CHECK(route_launch(codegen::generate_module(graph, hopper)).config.find("(heuristic)") != std::string::npos);
  }
  const TunedFields bad[] = {
      {.tile_m = 32, .tile_n = 3, .tile_k = 64, .stages = 4, .threads = 32},     // experts per thread no power of two
      {.tile_m = 32, .tile_n = 8, .tile_k = 62, .stages = 4, .threads = 32},     // slice not whole 16-byte pieces
      {.tile_m = 48, .tile_n = 8, .tile_k = 64, .stages = 4, .threads = 32},     // tokens not a multiple of the thread rows
      {.tile_m = 16, .tile_n = 4, .tile_k = 64, .stages = 4, .threads = 32},     // a tile of less than a warp's 32 tokens
      {.tile_m = 128, .tile_n = 8, .tile_k = 64, .stages = 4, .threads = 128},   // 136 KiB of ring
      {.tile_m = 32, .tile_n = 8, .tile_k = 64, .stages = 1, .threads = 32},     // one stage
      {.tile_m = 32, .tile_n = 8, .tile_k = 64, .stages = 4, .threads = 96},     // threads
      {.tile_m = 32, .tile_n = 8, .tile_k = 64, .stages = 4, .threads = 32, .split_k = 2},
  };
  for (const TunedFields& f : bad) {
    INFO(codegen::fields_str(f));
    CHECK_FALSE(codegen::route_fields_error(p.route, f).empty());
    TuningDb db{hopper.device_name, hopper.arch, {{p.key, f, codegen::tuning_family_version("route")}}};
    codegen::ScopedTuningDbOverride only(&db);
    const RouteLaunch launch = route_launch(codegen::generate_module(graph, hopper));
    CHECK(launch.kernel == heuristic);
    CHECK(launch.config.find("(heuristic) [tuned ") != std::string::npos);
    CHECK(launch.config.find("ignored: ") != std::string::npos);
  }
}
