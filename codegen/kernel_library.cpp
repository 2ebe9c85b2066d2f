// The kernel library as one string: each codegen/kernels/*.cuh file is one
// raw string literal, included here in dependency order. Part 0 is the
// device part of ir/philox.h, embedded by CMake (generated/codegen/).
#include "codegen/cuda_codegen.h"

namespace moejit::codegen {

namespace {
const char kPhilox[] =
#include "codegen/philox_source.inc"
    ;
const char* const kParts[] = {
    kPhilox,
#include "codegen/kernels/common.cuh"
    ,
#include "codegen/kernels/elementwise.cuh"
    ,
#include "codegen/kernels/reduce.cuh"
    ,
#include "codegen/kernels/matmul.cuh"
    ,
#include "codegen/kernels/layout.cuh"
    ,
#include "codegen/kernels/model.cuh"
    ,
#include "codegen/kernels/moe.cuh"
    ,
#include "codegen/kernels/moeut.cuh"
};
}  // namespace

const std::string& kernel_library() {
  static const std::string library = [] {
    std::string text = "// ==== moejit kernel library (codegen/kernels/*.cuh) ====\n";
    for (const char* part : kParts) text += part;
    return text;
  }();
  return library;
}

const char* philox_library_part() { return kPhilox; }

}  // namespace moejit::codegen
