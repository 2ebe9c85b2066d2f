// compile_bench: how long the CUDA backend takes to compile the GPT-MoE
// example's training module, cold (NVRTC compiles) or warm (moejit's disk
// cache serves it). Run it twice on one fresh cache directory:
//
//   CUDA_CACHE_DISABLE=1 compile_bench --cache-dir /tmp/c --expect cold
//   CUDA_CACHE_DISABLE=1 MOEJIT_ASSERT_CACHED=1 compile_bench --cache-dir /tmp/c --expect warm
//
// (CUDA_CACHE_DISABLE=1 turns off NVRTC 12.9+'s own cache in the driver's
// compute cache, so that "cold" means compiled.) Times, on the host clock:
// building the graph (forward, append_backward, clipping, AdamW), then
// backend->compile() (the cuda-pipeline passes, codegen, NVRTC or the cache, module
// load, memory plan, launch resolution); and reports the kernel cache's
// counters. --expect cold requires at least one NVRTC compile, --expect warm
// none and a disk hit (exit 1 otherwise).
//
// Without a GPU: "cuda: SKIPPED (why)", and the same module is compiled to
// PTX for --arch (default compute_90a) through the same cache, which needs
// no device: the program and the cache logic run, the numbers are this
// machine's.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "bench/bench_util.h"
#include "bench/gpt_step.h"
#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "passes/pass_manager.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_compiler.h"

namespace {

using namespace moejit;
using namespace moejit::bench;
using Clock = std::chrono::steady_clock;

struct Flags {
  std::string device = "auto";
  std::string cache_dir;
  std::string expect = "any";
  std::string arch = "compute_90a";
  std::vector<std::string> overrides;
  std::string json;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

int run(const Flags& flags) {
  if (flags.expect != "cold" && flags.expect != "warm" && flags.expect != "any")
    throw Error(fmt::format("--expect: expected cold, warm or any, found '{}'", flags.expect));
  if (!flags.cache_dir.empty()) ::setenv("MOEJIT_CACHE_DIR", flags.cache_dir.c_str(), 1);
  const char* cache_dir = std::getenv("MOEJIT_CACHE_DIR");
  if (!cache_dir || !*cache_dir)
    throw Error("no cache directory: pass --cache-dir DIR or set MOEJIT_CACHE_DIR (a fresh one for the cold run, the same for the warm run)");
  std::string why;
  const std::string device = pick_device(flags.device, &why);
  const bool cuda = device == "cuda";
  if (!cuda)
    fmt::print("cuda: SKIPPED ({}); compiling the same module to PTX for {} instead (no device needed)\n",
               why.empty() ? "--device cpu" : why, flags.arch);
  const char* assert_cached = std::getenv("MOEJIT_ASSERT_CACHED");
  const char* cuda_cache_disable = std::getenv("CUDA_CACHE_DISABLE");

  GptMoeConfig config = example_config();
  apply_overrides(config, flags.overrides);
  auto start = Clock::now();
  Graph graph = build_gpt_train_graph(config);
  const double build_s = seconds_since(start);

  std::string target;
  std::size_t kernels = 0, launches = 0;
  const CudaCompileStats before = cuda_compile_stats();
  start = Clock::now();
  if (cuda) {
    auto backend = make_cuda_backend();
    auto exe = backend->compile(graph);
    target = cuda_device_info().arch() + " cubin";
  } else {
    // What CudaExecutable does before loading the module, with PTX as the output.
    Graph fused = graph;
    run_pipeline(fused, kCudaPipeline);
    codegen::ModuleCode code = codegen::generate_module(fused, codegen::Target::named(flags.arch));
    kernels = code.kernels.size();
    for (const auto& step : code.steps) launches += step.launches.size();
    cuda::CompileRequest request{code.source, fused.name(), flags.arch, cuda::CompileOutput::ptx, true, {}};
    request.name_expressions = code.kernels;
    for (const auto& part : cuda::compile_module_parts(request, cuda::compile_parts(code.kernels.size()), codegen::compile_weights(code)))
      if (part.binary.find(".entry") == std::string::npos) throw Error("a compiled PTX part has no kernel entry");
    target = flags.arch + " ptx";
  }
  const double compile_s = seconds_since(start);
  const CudaCompileStats after = cuda_compile_stats();
  const std::int64_t compiles = after.compiles - before.compiles, disk_hits = after.disk_hits - before.disk_hits;
  const double nvrtc_s = after.compile_seconds - before.compile_seconds;

  bool ok = true;
  std::string verdict = "-";
  if (flags.expect == "cold") {
    ok = compiles >= 1;
    verdict = ok ? "cold: compiled by NVRTC" : "FAILED: expected an NVRTC compile (is the cache directory fresh?)";
  } else if (flags.expect == "warm") {
    ok = compiles == 0 && disk_hits >= 1;
    verdict = ok ? "warm: served by the disk cache" : "FAILED: expected no compile and a disk hit";
  }

  JsonReport json("compile_bench");
  json.meta("device", device_description(device));
  json.meta("backend", device);
  if (!why.empty()) json.meta("cuda_skipped", why);
  json.add("results", {{"expect", flags.expect},
                       {"target", target},
                       {"cache_dir", std::string(cache_dir)},
                       {"assert_cached", std::string(assert_cached ? assert_cached : "")},
                       {"cuda_cache_disable", std::string(cuda_cache_disable ? cuda_cache_disable : "")},
                       {"graph_ops", static_cast<std::int64_t>(graph.ops().size())},
                       {"graph_build_s", build_s},
                       {"compile_s", compile_s},
                       {"nvrtc_s", nvrtc_s},
                       {"compiles", compiles},
                       {"disk_hits", disk_hits},
                       {"passed", ok}});
  if (!flags.json.empty()) json.write(flags.json);

  fmt::print("device: {}\n", device_description(device));
  fmt::print("module @{}: {} ops{}; cache {}; MOEJIT_ASSERT_CACHED={} CUDA_CACHE_DISABLE={}\n", graph.name(), graph.ops().size(),
             cuda ? "" : fmt::format(", {} kernels, {} launches", kernels, launches), cache_dir, assert_cached ? assert_cached : "",
             cuda_cache_disable ? cuda_cache_disable : "");
  Table table({"expect", "target", "graph build s", "compile s", "NVRTC s", "compiles", "disk hits", "verdict"});
  table.row({flags.expect, target, fmt_num(build_s), fmt_num(compile_s), fmt_num(nvrtc_s), std::to_string(compiles), std::to_string(disk_hits), verdict});
  fmt::print("\n==== compile_bench (host clock)\n{}", table.str());
  fmt::print("compile-bench: expect={} target={} compiles={} disk_hits={} nvrtc_s={:.3f} compile_s={:.3f} graph_build_s={:.3f}\n", flags.expect,
             target, compiles, disk_hits, nvrtc_s, compile_s, build_s);
  if (!flags.json.empty()) fmt::print("wrote {}\n", flags.json);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{"compile_bench: cold vs warm compile of the GPT-MoE example's training module"};
  app.add_option("--device", flags.device, "auto | cuda | cpu (cpu: PTX only, no device; default auto)");
  app.add_option("--cache-dir", flags.cache_dir, "the kernel cache directory (sets MOEJIT_CACHE_DIR; else it must be set)");
  app.add_option("--expect", flags.expect, "cold | warm | any: what the kernel cache must have done (default any)");
  app.add_option("--arch", flags.arch, "PTX target when there is no GPU (default compute_90a)");
  app.add_option("--set", flags.overrides, "key=value config override (frontends/config.h keys; repeatable)");
  app.add_option("--json", flags.json, "write the numbers to this JSON file");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(flags);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compile_bench: %s\n", e.what());
    return 1;
  }
}
