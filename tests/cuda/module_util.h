// What the codegen tests ask of a graph without a GPU: the module codegen
// makes of it after the CUDA backend's pipeline, and how many of its
// launches name a kernel.
#pragma once
#include <string>

#include "codegen/cuda_codegen.h"
#include "codegen/target.h"
#include "passes/pass_manager.h"

namespace moejit::cuda_test {

// The module codegen makes of `graph` after the CUDA pipeline.
inline codegen::ModuleCode module_of(Graph graph, const codegen::Target& target) {
  run_pipeline(graph, "cuda-pipeline");
  return codegen::generate_module(graph, target);
}

// The kernel launches whose instantiation contains `needle`.
inline int count_launches(const codegen::ModuleCode& module, const std::string& needle) {
  int n = 0;
  for (const auto& step : module.steps)
    for (const auto& launch : step.launches) n += launch.kind == codegen::Launch::Kind::kernel && launch.kernel.find(needle) != std::string::npos;
  return n;
}

}  // namespace moejit::cuda_test
