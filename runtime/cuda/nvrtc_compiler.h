// NVRTC compilation of generated CUDA C++ with a kernel cache.
//
// Every compile gets the embedded kernel headers (codegen::kernel_headers():
// codegen/kernels/*.cuh and ir/philox.h) as named headers, and lowers the
// requested name expressions (kernel template instantiations) with
// nvrtcAddNameExpression / nvrtcGetLoweredName; the lowered names are stored
// with the binary, so a cache hit needs no NVRTC at all.
//
// A compile is keyed by a 64-bit FNV-1a hash of (source, headers, name
// expressions, options, target architecture, output kind, NVRTC version). The
// cache has two levels: a map in memory, and files under $MOEJIT_CACHE_DIR
// (default ~/.cache/moejit). Each file is a checked file (ir/checked_file.h:
// identity, length and checksum of the payload, which is the lowered names
// followed by the binary), written to a temporary name and renamed, so a
// reader never sees half a file; it is verified before use. A damaged,
// truncated, empty or foreign entry is reported once ("moejit: warning:
// kernel cache entry <path> is damaged (<what>); recompiling"), compiled
// again and replaced. A cache directory that cannot be written (or a full
// disk) costs one warning; the modules stay in the memory cache.
// Knobs:
//   MOEJIT_CACHE_DIR=dir    where compiled modules are kept
//   MOEJIT_DUMP_DIR=dir     every compiled source is also written there
//   MOEJIT_ASSERT_CACHED=1  a compile that misses the cache, or finds its entry
//                           damaged, is an error naming the file (tests use it
//                           to show that a second process compiles nothing)
//   MOEJIT_NVRTC_LIBRARY=path  the NVRTC library to open (nvrtc_loader.h)
//   MOEJIT_COMPILE_THREADS=n  compile a module in n parts on n threads (compile_parts)
// A failed compile throws moejit::Error with the NVRTC log and the path of the
// dumped source (MOEJIT_DUMP_DIR, else a temporary directory); without NVRTC,
// a compile throws moejit::Error "NVRTC could not be loaded (tried ...)".
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
  std::vector<std::string> name_expressions;  // "mj::softmax_kernel<float, 0, 256>", ...
  std::vector<std::string> extra_options;     // after the defaults, e.g. "--ptxas-options=-v" (part of the cache key)
};

struct CompiledModule {
  std::string binary;  // PTX text or CUBIN bytes
  std::vector<std::pair<std::string, std::string>> lowered_names;  // (name expression, mangled name), in request order
  double nvrtc_seconds = 0.0;  // this compile's NVRTC time; 0 when it came from a cache
  std::string log;             // NVRTC's log of a successful compile (ptxas's report with -v); empty from a cache
  // The mangled name of `expression`; throws moejit::Error if it was not requested.
  const std::string& lowered(const std::string& expression) const;
};

CompiledModule compile_module(const CompileRequest& request);

// Compiles `request` as `parts` NVRTC programs on as many threads: the same
// source, each with a share of the name expressions (balanced by weight),
// each compiled and cached on its own. NVRTC's time goes into
// instantiating and optimizing kernels, so the wall time falls almost by
// the number of parts. Returns the non-empty parts, in order; the first
// error (with its NVRTC log) is rethrown after every thread has finished.
// `weights` (one per name expression, or empty: all 1) is each kernel's
// expected cost: the heaviest go first, each to the lightest part so far.
std::vector<CompiledModule> compile_module_parts(const CompileRequest& request, int parts, const std::vector<int>& weights = {});
// The part of each of `weights.size()` kernels (that greedy rule; deterministic).
std::vector<int> assign_parts(const std::vector<int>& weights, int parts);
// The parts a module of `kernels` instantiations is compiled in:
// MOEJIT_COMPILE_THREADS when set (>= 1), else min(hardware threads, 16,
// ceil(kernels / 4)), at least 1.
int compile_parts(std::size_t kernels);
// The binary alone (no name expressions needed).
std::string compile_cuda(const CompileRequest& request);

// NVRTC's version as major*1000 + minor*10 (13000 for 13.0); throws
// moejit::Error when NVRTC cannot be loaded.
int nvrtc_version();
// The NVRTC libraries tried, in order (nvrtc_loader.h): $MOEJIT_NVRTC_LIBRARY
// alone when set, else libnvrtc.so.13, .so.12, .so, then each under
// /usr/local/cuda/lib64/.
std::vector<std::string> nvrtc_library_candidates();
// Whether NVRTC can be loaded (it is loaded on first use); *why says why not,
// the same text a compile would throw.
bool nvrtc_available(std::string* why = nullptr);

// The options every compile passes to NVRTC besides the architecture.
std::vector<std::string> default_compile_options();

}  // namespace moejit::cuda
