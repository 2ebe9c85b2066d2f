// Compiles a generated module to PTX with NVRTC (no GPU, no cache) and checks
// that every instantiation is an entry of the PTX under its lowered name:
// what the CI tests of codegen ask of every module they build.
#pragma once
#include <catch2/catch.hpp>

#include <string>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "runtime/cuda/nvrtc_compiler.h"

namespace moejit::cuda_test {

inline cuda::CompiledModule compile_to_ptx(const codegen::ModuleCode& module, const std::string& name, const std::string& arch) {
  REQUIRE(!module.kernels.empty());
  cuda::CompiledModule compiled;
  try {
    cuda::CompileRequest request{module.source, name, arch, cuda::CompileOutput::ptx, false, module.kernels};
    compiled = cuda::compile_module(request);
  } catch (const Error& e) {
    FAIL(e.what());
  }
  REQUIRE(compiled.lowered_names.size() == module.kernels.size());
  for (const auto& kernel : module.kernels) {
    INFO(kernel);
    CHECK(compiled.binary.find(".entry " + compiled.lowered(kernel) + "(") != std::string::npos);
  }
  return compiled;
}

}  // namespace moejit::cuda_test
