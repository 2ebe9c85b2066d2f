// What codegen generates for: the GPU's architecture and the sizes that
// shape launches (SM count for persistent grids, the shared memory a block
// may opt into, L2). The CUDA backend reads it from the device
// (cuda_device_target(), runtime/cuda/cuda_backend.h); without a GPU a
// target is named (`moejit opt --emit=cuda --arch=sm_90a`), with the numbers
// of a typical part of that architecture.
#pragma once
#include <cstdint>
#include <string>

namespace moejit::codegen {

struct Target {
  std::string arch = "sm_90a";  // NVRTC --gpu-architecture for CUBIN ("sm_90a" on Hopper: wgmma, setmaxnreg)
  int cc_major = 9, cc_minor = 0;
  int sm_count = 132;
  std::int64_t shared_memory_per_block_optin = 227 * 1024;  // bytes
  std::int64_t l2_bytes = 50 * 1024 * 1024;
  std::string device_name = "H100-like (named target)";

  // "compute_90a" for "sm_90a": the PTX target of the same architecture.
  std::string ptx_arch() const;
  // Compute capability as 10 * major + minor (90 for sm_90a).
  int sm() const { return cc_major * 10 + cc_minor; }

  // The target named by `arch` ("sm_80", "sm_90a", "sm_90", "compute_90a",
  // ...) with the numbers of a typical part: sm_90* an H100 SXM, sm_80 an
  // A100, other sm_8x 99 KiB of shared memory (GA10x, AD10x), others a
  // conservative 48 KiB opt-in and 80 SMs. Throws
  // moejit::Error for a name that is not sm_XY[a] / compute_XY[a].
  static Target named(const std::string& arch);
};

}  // namespace moejit::codegen
