// NVRTC compilation and the two-level kernel cache. See nvrtc_compiler.h.
#include "runtime/cuda/nvrtc_compiler.h"

#include <fmt/format.h>
#include <nvrtc.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"
#include "ir/file_io.h"
#include "runtime/cuda/cuda_backend.h"

namespace moejit::cuda {

namespace fs = std::filesystem;

namespace {

std::mutex g_mutex;
std::map<std::uint64_t, CompiledModule> g_memory_cache;
CudaCompileStats g_stats;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

fs::path cache_dir() {
  std::string dir = env("MOEJIT_CACHE_DIR");
  if (!dir.empty()) return dir;
  std::string home = env("HOME");
  if (home.empty()) return {};
  return fs::path(home) / ".cache" / "moejit";
}

bool write_atomically(const fs::path& path, std::string_view data) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  try {
    write_file_atomically(path.string(), data, "kernel cache file");
    return true;
  } catch (const Error&) {
    return false;
  }
}

bool read_file(const fs::path& path, std::string& data) { return read_whole_file(path.string(), &data); }

// Writes the source where a person can read it; returns the path ("" if not written).
std::string dump_source(const CompileRequest& req, std::uint64_t key, bool failed) {
  fs::path dir = env("MOEJIT_DUMP_DIR");
  if (dir.empty()) {
    if (!failed) return {};
    dir = fs::temp_directory_path() / fmt::format("moejit-{}", static_cast<long>(getpid()));
  }
  fs::path path = dir / fmt::format("{}_{}_{:016x}.cu", req.name.empty() ? "module" : req.name, req.arch, key);
  return write_atomically(path, req.source) ? path.string() : std::string();
}

void nvrtc_check(nvrtcResult r, const char* call) {
  if (r != NVRTC_SUCCESS) throw Error(fmt::format("NVRTC call {} failed: {}", call, nvrtcGetErrorString(r)));
}

CompiledModule run_nvrtc(const CompileRequest& req, std::uint64_t key) {
  nvrtcProgram program = nullptr;
  std::string file_name = (req.name.empty() ? std::string("module") : req.name) + ".cu";
  std::vector<const char*> header_texts, header_names;
  for (const auto& h : codegen::kernel_headers()) {
    header_texts.push_back(h.text);
    header_names.push_back(h.name);
  }
  nvrtc_check(nvrtcCreateProgram(&program, req.source.c_str(), file_name.c_str(), static_cast<int>(header_texts.size()),
                                 header_texts.data(), header_names.data()),
              "nvrtcCreateProgram");
  for (const auto& expression : req.name_expressions)
    nvrtc_check(nvrtcAddNameExpression(program, expression.c_str()), "nvrtcAddNameExpression");
  std::vector<std::string> options = default_compile_options();
  options.push_back("--gpu-architecture=" + req.arch);
  std::vector<const char*> argv;
  for (const auto& o : options) argv.push_back(o.c_str());
  nvrtcResult result = nvrtcCompileProgram(program, static_cast<int>(argv.size()), argv.data());
  std::size_t log_size = 0;
  nvrtcGetProgramLogSize(program, &log_size);
  std::string log(log_size, '\0');
  if (log_size > 0) nvrtcGetProgramLog(program, log.data());
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  if (result != NVRTC_SUCCESS) {
    nvrtcDestroyProgram(&program);
    std::string path = dump_source(req, key, true);
    throw Error(fmt::format("NVRTC failed to compile {} for {}: {}\nsource: {}\nlog:\n{}", file_name, req.arch,
                            nvrtcGetErrorString(result), path.empty() ? "(could not be written)" : path, log));
  }
  CompiledModule module;
  for (const auto& expression : req.name_expressions) {
    const char* lowered = nullptr;
    nvrtc_check(nvrtcGetLoweredName(program, expression.c_str(), &lowered), "nvrtcGetLoweredName");
    module.lowered_names.emplace_back(expression, lowered);
  }
  std::string& binary = module.binary;
  std::size_t size = 0;
  if (req.output == CompileOutput::ptx) {
    nvrtc_check(nvrtcGetPTXSize(program, &size), "nvrtcGetPTXSize");
    binary.resize(size);
    nvrtc_check(nvrtcGetPTX(program, binary.data()), "nvrtcGetPTX");
  } else {
    nvrtc_check(nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
    binary.resize(size);
    nvrtc_check(nvrtcGetCUBIN(program, binary.data()), "nvrtcGetCUBIN");
  }
  nvrtcDestroyProgram(&program);
  return module;
}

// The cache file: a tag line with the check hash, the lowered names (one
// "expression<TAB>lowered" line each, after a count line), then the binary.
std::string cache_file_text(std::uint64_t check, const CompiledModule& module) {
  std::string text = fmt::format("moejit-kernel {:016x}\nnames {}\n", check, module.lowered_names.size());
  for (const auto& [expression, lowered] : module.lowered_names) text += expression + "\t" + lowered + "\n";
  return text + module.binary;
}

bool parse_cache_file(const std::string& data, std::uint64_t check, CompiledModule& module) {
  std::string tag = fmt::format("moejit-kernel {:016x}\nnames ", check);
  if (data.compare(0, tag.size(), tag) != 0) return false;
  std::size_t at = tag.size();
  std::size_t end = data.find('\n', at);
  if (end == std::string::npos) return false;
  std::size_t count = 0;
  try {
    count = std::stoul(data.substr(at, end - at));
  } catch (...) {
    return false;
  }
  at = end + 1;
  for (std::size_t i = 0; i < count; ++i) {
    end = data.find('\n', at);
    std::size_t tab = data.find('\t', at);
    if (end == std::string::npos || tab == std::string::npos || tab > end) return false;
    module.lowered_names.emplace_back(data.substr(at, tab - at), data.substr(tab + 1, end - tab - 1));
    at = end + 1;
  }
  module.binary = data.substr(at);
  return true;
}

// One hash of every embedded header's name and text (they are fixed per build).
std::uint64_t headers_hash() {
  static const std::uint64_t hash = [] {
    std::string all;
    for (const auto& h : codegen::kernel_headers()) all += std::string(h.name) + "\n" + h.text + "\n";
    return fnv1a64(all);
  }();
  return hash;
}

}  // namespace

const std::string& CompiledModule::lowered(const std::string& expression) const {
  for (const auto& [name, mangled] : lowered_names)
    if (name == expression) return mangled;
  throw Error(fmt::format("kernel '{}' was not compiled into this module (no lowered name)", expression));
}

std::uint64_t fnv1a64(std::string_view data, std::uint64_t seed) {
  std::uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

int nvrtc_version() {
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  return major * 1000 + minor * 10;
}

std::vector<std::string> default_compile_options() { return {"--std=c++17", "-lineinfo", "--fmad=true", "-default-device"}; }

CompiledModule compile_module(const CompileRequest& req) {
  std::string key_text = req.source;
  for (const auto& o : default_compile_options()) key_text += "\n" + o;
  for (const auto& e : req.name_expressions) key_text += "\nname=" + e;
  key_text += fmt::format("\nheaders={:016x}\narch={}\noutput={}\nnvrtc={}\nformat=2", headers_hash(), req.arch,
                          req.output == CompileOutput::ptx ? "ptx" : "cubin", nvrtc_version());
  std::uint64_t key = fnv1a64(key_text);
  // A second, independent hash guards against the rare 64-bit collision.
  std::uint64_t check = fnv1a64(key_text, 0x84222325cbf29ce4ull);
  if (!env("MOEJIT_DUMP_DIR").empty()) dump_source(req, key, false);

  fs::path disk_path;
  if (req.use_cache) {
    std::lock_guard lock(g_mutex);
    if (auto it = g_memory_cache.find(key); it != g_memory_cache.end()) {
      ++g_stats.memory_hits;
      return it->second;
    }
    fs::path dir = cache_dir();
    if (!dir.empty()) {
      disk_path = dir / fmt::format("{:016x}.{}", key, req.output == CompileOutput::ptx ? "ptx" : "cubin");
      std::string data;
      CompiledModule module;
      if (read_file(disk_path, data) && parse_cache_file(data, check, module)) {
        ++g_stats.disk_hits;
        g_memory_cache[key] = module;
        return module;
      }
    }
  }
  if (req.use_cache && env("MOEJIT_ASSERT_CACHED") == "1")
    throw Error(fmt::format("MOEJIT_ASSERT_CACHED=1, but module '{}' for {} (key {:016x}) is not in the kernel cache {}",
                            req.name, req.arch, key, disk_path.empty() ? "(no cache directory)" : disk_path.parent_path().string()));

  auto start = std::chrono::steady_clock::now();
  CompiledModule module = run_nvrtc(req, key);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::lock_guard lock(g_mutex);
  ++g_stats.compiles;
  g_stats.compile_seconds += seconds;
  if (req.use_cache) {
    g_memory_cache[key] = module;
    if (!disk_path.empty() && !write_atomically(disk_path, cache_file_text(check, module)))
      fmt::print(stderr, "moejit: warning: cannot write the kernel cache file {}\n", disk_path.string());
  }
  return module;
}

std::string compile_cuda(const CompileRequest& req) { return compile_module(req).binary; }

}  // namespace moejit::cuda

namespace moejit {
CudaCompileStats cuda_compile_stats() {
  std::lock_guard lock(cuda::g_mutex);
  return cuda::g_stats;
}
}  // namespace moejit
