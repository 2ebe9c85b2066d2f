// NVRTC compilation of generated CUDA C++ with a kernel cache.
//
// A compile is keyed by a 64-bit FNV-1a hash of (source, options, target
// architecture, output kind, NVRTC version). The cache has two levels: a map
// in memory, and files under $MOEJIT_CACHE_DIR (default ~/.cache/moejit),
// each written to a temporary name and renamed, so a reader never sees half a
// file. Knobs:
//   MOEJIT_CACHE_DIR=dir    where compiled modules are kept
//   MOEJIT_DUMP_DIR=dir     every compiled source is also written there
//   MOEJIT_ASSERT_CACHED=1  a compile that misses the cache is an error (tests
//                           use it to show that a second process compiles nothing)
// A failed compile throws moejit::Error with the NVRTC log and the path of the
// dumped source (MOEJIT_DUMP_DIR, else a temporary directory).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moejit::cuda {

enum class CompileOutput { ptx, cubin };

struct CompileRequest {
  std::string source;
  std::string name;  // for dumped file names: "gpt_train"
  std::string arch;  // "sm_90a", "sm_80" (cubin) or "compute_90a" (ptx)
  CompileOutput output = CompileOutput::cubin;
  bool use_cache = true;  // false: always run NVRTC (CI compile tests)
};

// Returns the PTX text or the CUBIN bytes.
std::string compile_cuda(const CompileRequest& request);

// NVRTC's version as major*1000 + minor*10 (13000 for 13.0).
int nvrtc_version();
std::uint64_t fnv1a64(std::string_view data, std::uint64_t seed = 0xcbf29ce484222325ull);
// The options every compile passes to NVRTC besides the architecture.
std::vector<std::string> default_compile_options();

}  // namespace moejit::cuda
