// The CUDA driver API, opened at run time: libcuda.so.1 is loaded with
// dlopen and each entry point is looked up by its versioned name (the one
// cuda.h maps the plain name to), so binaries link and start without a GPU.
// Every failing call becomes a moejit::Error naming the call and the
// driver's error string.
#pragma once
#include <cuda.h>

#include <string>

#include "runtime/cuda/cuda_backend.h"

namespace moejit::cuda {

// One function pointer per driver entry point moejit uses, typed from cuda.h.
struct Driver {
#define MOEJIT_CU_FUNCTIONS(X)                                                                                 \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceGetAttribute) \
  X(cuDeviceTotalMem) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)               \
  X(cuGetErrorName) X(cuGetErrorString) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)            \
  X(cuFuncSetAttribute) X(cuLaunchKernel) X(cuMemAlloc) X(cuMemFree) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoH)      \
  X(cuMemcpyDtoDAsync) X(cuMemsetD8Async) X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize)          \
  X(cuStreamBeginCapture) X(cuStreamEndCapture) X(cuGraphInstantiate) X(cuGraphLaunch) X(cuGraphDestroy)       \
  X(cuGraphExecDestroy) X(cuEventCreate) X(cuEventDestroy) X(cuEventRecord) X(cuEventSynchronize)              \
  X(cuEventElapsedTime) X(cuLaunchKernelEx) X(cuTensorMapEncodeTiled)
#define MOEJIT_CU_MEMBER(fn) decltype(&::fn) fn = nullptr;
  MOEJIT_CU_FUNCTIONS(MOEJIT_CU_MEMBER)
#undef MOEJIT_CU_MEMBER
};

// The loaded driver with cuInit done and device 0's primary context current
// on the calling thread; throws moejit::Error saying why when unavailable.
const Driver& driver();
CUdevice device();
CUcontext context();  // device 0's primary context (made current by driver())

// Throws moejit::Error "CUDA driver call <call> failed: <NAME> (<string>)".
void check(CUresult result, const char* call);

}  // namespace moejit::cuda

#define MOEJIT_CU(call, ...) ::moejit::cuda::check(::moejit::cuda::driver().call(__VA_ARGS__), #call)
