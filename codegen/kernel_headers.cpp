// The kernel families' headers and ir/philox.h, embedded by CMake at
// configure time (generated/codegen/kernel_headers.inc: one {path, text}
// row per header), so NVRTC gets them as named headers with no files.
#include <string_view>

#include "codegen/cuda_codegen.h"

namespace moejit::codegen {

const std::vector<KernelHeader>& kernel_headers() {
  static const std::vector<KernelHeader> headers = {
#include "codegen/kernel_headers.inc"
  };
  return headers;
}

const KernelHeader* find_kernel_header(std::string_view name) {
  for (const auto& h : kernel_headers())
    if (name == h.name) return &h;
  return nullptr;
}

}  // namespace moejit::codegen
