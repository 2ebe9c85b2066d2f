// The named pipelines (see NamedPipeline in passes/pass.h): what each backend
// and the training frontend run, written once as pipeline text.
//
//   moe-fusions    the MoE fusions, on a forward graph before autodiff (the
//                  trainer runs them on the GPT-MoE forward graph, so the
//                  backward is built from the fused ops' gradient rules);
//                  after autodiff they still fuse what is left to fuse
//                  (fuse-expert-gather-scatter skips pairs whose
//                  intermediates the backward reads).
//   cuda-pipeline  what the CUDA backend runs on every graph it compiles
//                  (runtime/cuda/executor.cpp): a forward attention on
//                  one qkv projection reading it packed, the attention head layout
//                  (the kernels read [B, T, H, Dh] in place instead of the
//                  transposes around them), the MoE fusions, tile choice
//                  of the expert matmuls (without padding the dispatch: a
//                  compile must not change a graph's routed shapes), the
//                  GELU / GELU-backward folded into their GEMMs' epilogues,
//                  and the elementwise fusion groups codegen emits as one
//                  kernel.
//
// With MOEJIT_FUSIONS=0 both keep only what is not a fusion: moe-fusions
// is empty and cuda-pipeline is the tile choice alone (the unfused run).
//
// The CPU backend runs no pipeline: it is the reference interpreter and runs
// a graph exactly as given (tests compare fused and unfused graphs on it).
#include <fmt/format.h>

#include <cstdlib>

#include "ir/error.h"
#include "passes/pass.h"
#include "passes/passes.h"

namespace moejit {

bool fusions_enabled() {
  const char* env = std::getenv("MOEJIT_FUSIONS");
  if (!env || std::string(env) == "1") return true;
  if (std::string(env) == "0") return false;
  throw Error(fmt::format("MOEJIT_FUSIONS: expected 0 or 1, found '{}'", env));
}

const std::vector<NamedPipeline>& named_pipelines() {
  static const std::vector<NamedPipeline> unfused = {
      {"moe-fusions", "the MoE fusions (off: MOEJIT_FUSIONS=0)", ""},
      {"cuda-pipeline", "what the CUDA backend runs on every graph it compiles (MOEJIT_FUSIONS=0: the tile choice alone)",
       "moe-tiling{pad-dispatch=false}"},
  };
  if (!fusions_enabled()) return unfused;
  static const std::vector<NamedPipeline> pipelines = {
      {"moe-fusions", "the MoE fusions: moe.route, moe.gather_matmul, moe.matmul_combine",
       "fuse-router-permute,fuse-expert-gather-scatter"},
      {"cuda-pipeline", "what the CUDA backend runs on every graph it compiles",
       "fuse-attention-qkv,attention-layout,moe-fusions,moe-tiling{pad-dispatch=false},fuse-gemm-epilogue,fuse-elementwise"},
  };
  return pipelines;
}

const NamedPipeline* find_named_pipeline(std::string_view name) {
  for (const auto& pipeline : named_pipelines())
    if (pipeline.name == name) return &pipeline;
  return nullptr;
}

}  // namespace moejit
