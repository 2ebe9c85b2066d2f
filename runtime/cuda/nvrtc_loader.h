// NVRTC, opened at run time like the driver (driver.h): no binary links
// libnvrtc, so every one starts on a machine without the CUDA Toolkit, and
// only a CUDA compile needs it. The library tried, in order:
//   $MOEJIT_NVRTC_LIBRARY             when set, and then only that one
//   libnvrtc.so.13, libnvrtc.so.12, libnvrtc.so          (the loader's search path)
//   /usr/local/cuda/lib64/ with each of those names
// nvrtc.h is included for its types and prototypes only; each entry point is
// looked up with dlsym and typed from its prototype.
#pragma once
#include <nvrtc.h>

#include <string>

#include "runtime/cuda/nvrtc_compiler.h"

namespace moejit::cuda {

// One function pointer per NVRTC entry point moejit uses.
struct Nvrtc {
#define MOEJIT_NVRTC_FUNCTIONS(X)                                                                        \
  X(nvrtcGetErrorString) X(nvrtcVersion) X(nvrtcCreateProgram) X(nvrtcDestroyProgram) X(nvrtcCompileProgram) \
  X(nvrtcGetProgramLogSize) X(nvrtcGetProgramLog) X(nvrtcGetPTXSize) X(nvrtcGetPTX) X(nvrtcGetCUBINSize)     \
  X(nvrtcGetCUBIN) X(nvrtcAddNameExpression) X(nvrtcGetLoweredName)
#define MOEJIT_NVRTC_MEMBER(fn) decltype(&::fn) fn = nullptr;
  MOEJIT_NVRTC_FUNCTIONS(MOEJIT_NVRTC_MEMBER)
#undef MOEJIT_NVRTC_MEMBER
  std::string library;  // the name or path that was opened
};

// NVRTC, loaded on first use; throws moejit::Error "NVRTC could not be
// loaded (tried NAME: why; ...)" when no candidate can be opened.
// (nvrtc_available() and nvrtc_library_candidates(), which need no NVRTC
// header, are declared in nvrtc_compiler.h.)
const Nvrtc& nvrtc();

}  // namespace moejit::cuda
