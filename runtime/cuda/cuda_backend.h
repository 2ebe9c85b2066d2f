// The CUDA backend: runs a graph on an NVIDIA GPU. libcuda is opened at run
// time (dlopen), so every binary links and runs where there is no GPU and
// says why; NVRTC compiles the generated kernels for the present device.
//
//   std::string why;
//   if (!cuda_available(&why)) { fmt::print("no GPU: {}\n", why); ... }
//   auto cuda = make_cuda_backend();        // throws moejit::Error without a GPU
//   auto exe = cuda->compile(graph);        // codegen + NVRTC (cached) + memory plan
//   exe->set("w1", w1); exe->set("x", x);
//   exe->run();                             // asynchronous; get() waits
//   HostTensor loss = exe->get("loss");
//   cuda_capture_graph(*exe);               // later runs replay one CUDA graph
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "codegen/target.h"
#include "runtime/backend.h"

namespace moejit {

// True when libcuda.so.1 loads, cuInit succeeds and a device exists; else
// false with *why saying which step failed ("libcuda.so.1: cannot open ...").
bool cuda_available(std::string* why = nullptr);

// The CUDA backend on device 0. Throws moejit::Error (with the reason of
// cuda_available) when there is no usable GPU.
std::unique_ptr<Backend> make_cuda_backend();
// The same, running `pipeline` on every graph it compiles instead of
// "cuda-pipeline" (kCudaPipeline, passes/pipelines.cpp); moe_bench drops
// the MoE fusions from it for an unfused baseline. Throws moejit::Error for a
// bad pipeline.
std::unique_ptr<Backend> make_cuda_backend(std::string pipeline);

// Properties of device 0 (throws moejit::Error without a GPU).
struct CudaDeviceInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  std::int64_t shared_memory_per_block_optin = 0;  // bytes
  std::int64_t total_memory = 0;                   // bytes
  std::int64_t l2_bytes = 0;
  std::string arch() const;                        // "sm_90a" on Hopper, else "sm_XY"
};
CudaDeviceInfo cuda_device_info();

// What codegen generates for on device 0 (its architecture, SM count,
// shared memory opt-in, L2 size). Throws moejit::Error without a GPU.
codegen::Target cuda_device_target();

// Process-wide counters of the kernel cache (NVRTC compiles, memory and
// disk hits, seconds spent compiling).
struct CudaCompileStats {
  std::int64_t compiles = 0;
  std::int64_t memory_hits = 0;
  std::int64_t disk_hits = 0;
  double compile_seconds = 0.0;
};
CudaCompileStats cuda_compile_stats();

// Captures the executable's whole run() (every kernel, the copies of updated
// parameters) as one CUDA graph; later run() calls replay it. Inputs set with
// set() are read from the same device buffers, so replays see new inputs.
// Throws moejit::Error if `exe` does not come from the CUDA backend.
void cuda_capture_graph(Executable& exe);

// Milliseconds of the last run() measured with CUDA events (waits for it).
double cuda_last_run_ms(Executable& exe);

// With MOEJIT_PROFILE=1 set when `exe` was compiled: a table of GPU time per
// op kind and kernel (median over the runs so far; events after every
// launch). The executable also prints it to stderr when destroyed.
std::string cuda_profile_report(Executable& exe);

}  // namespace moejit
