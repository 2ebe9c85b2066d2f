// NVRTC compilation and the two-level kernel cache. See nvrtc_compiler.h.
#include "runtime/cuda/nvrtc_compiler.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "codegen/cuda_codegen.h"
#include "ir/checked_file.h"
#include "ir/error.h"
#include "ir/file_io.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/nvrtc_loader.h"

namespace moejit::cuda {

namespace fs = std::filesystem;

namespace {

std::mutex g_mutex;
std::map<std::uint64_t, CompiledModule> g_memory_cache;
CudaCompileStats g_stats;
std::set<std::string> g_warned;  // the subjects warned about (under g_mutex)

// Prints "moejit: warning: <text>" unless this process already warned about
// `subject` (a cache entry's path, a cache directory).
void warn_once(const std::string& subject, const std::string& text) {
  if (g_warned.insert(subject).second) fmt::print(stderr, "moejit: warning: {}\n", text);
}

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
    write_file_atomically(path.string(), data, "dumped source");
    return true;
  } catch (const Error&) {
    return false;
  }
}

// Stores a compiled module's payload (cache_entry_payload) as a checked file (ir/checked_file.h). A cache
// that cannot be written (no permission, a full disk) is not an error: the
// module stays in the memory cache, and the directory is warned about once.
// Called under g_mutex.
void store_cache_entry(const fs::path& path, std::string_view payload, std::uint64_t identity) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::string why;
  if (ec) {
    why = fmt::format("cannot create it: {}", ec.message());
  } else {
    try {
      write_checked_file(path.string(), payload, identity, "kernel cache entry");
      return;
    } catch (const Error& e) {
      why = e.what();
    }
  }
  const std::string dir = path.parent_path().string();
  warn_once(dir, fmt::format("the kernel cache directory {} cannot be written ({}); compiled modules are kept in memory only",
                             dir, why));
}

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

CompiledModule run_nvrtc(const CompileRequest& req, std::uint64_t key) {
  const Nvrtc& n = nvrtc();
  auto nvrtc_check = [&](nvrtcResult r, const char* call) {
    if (r != NVRTC_SUCCESS) throw Error(fmt::format("NVRTC call {} failed: {}", call, n.nvrtcGetErrorString(r)));
  };
  nvrtcProgram program = nullptr;
  std::string file_name = (req.name.empty() ? std::string("module") : req.name) + ".cu";
  std::vector<const char*> header_texts, header_names;
  for (const auto& h : codegen::kernel_headers()) {
    header_texts.push_back(h.text);
    header_names.push_back(h.name);
  }
  nvrtc_check(n.nvrtcCreateProgram(&program, req.source.c_str(), file_name.c_str(),
                                   static_cast<int>(header_texts.size()), header_texts.data(), header_names.data()),
              "nvrtcCreateProgram");
  // Destroyed on every way out, a throwing nvrtc_check included.
  struct ProgramGuard {
    const Nvrtc& n;
    nvrtcProgram& program;
    ~ProgramGuard() { n.nvrtcDestroyProgram(&program); }
  } guard{n, program};
  for (const auto& expression : req.name_expressions)
    nvrtc_check(n.nvrtcAddNameExpression(program, expression.c_str()), "nvrtcAddNameExpression");
  std::vector<std::string> options = default_compile_options();
  options.push_back("--gpu-architecture=" + req.arch);
  options.insert(options.end(), req.extra_options.begin(), req.extra_options.end());
  std::vector<const char*> argv;
  for (const auto& o : options) argv.push_back(o.c_str());
  nvrtcResult result = n.nvrtcCompileProgram(program, static_cast<int>(argv.size()), argv.data());
  std::size_t log_size = 0;
  n.nvrtcGetProgramLogSize(program, &log_size);
  std::string log(log_size, '\0');
  if (log_size > 0) n.nvrtcGetProgramLog(program, log.data());
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  if (result != NVRTC_SUCCESS) {
    std::string path = dump_source(req, key, true);
    throw Error(fmt::format("NVRTC failed to compile {} for {}: {}\nsource: {}\nlog:\n{}", file_name, req.arch,
                            n.nvrtcGetErrorString(result), path.empty() ? "(could not be written)" : path, log));
  }
  CompiledModule module;
  module.log = log;
  for (const auto& expression : req.name_expressions) {
    const char* lowered = nullptr;
    nvrtc_check(n.nvrtcGetLoweredName(program, expression.c_str(), &lowered), "nvrtcGetLoweredName");
    module.lowered_names.emplace_back(expression, lowered);
  }
  std::string& binary = module.binary;
  std::size_t size = 0;
  if (req.output == CompileOutput::ptx) {
    nvrtc_check(n.nvrtcGetPTXSize(program, &size), "nvrtcGetPTXSize");
    binary.resize(size);
    nvrtc_check(n.nvrtcGetPTX(program, binary.data()), "nvrtcGetPTX");
  } else {
    nvrtc_check(n.nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
    binary.resize(size);
    nvrtc_check(n.nvrtcGetCUBIN(program, binary.data()), "nvrtcGetCUBIN");
  }
  return module;
}

// A cache entry's payload (inside the checked file): a count line, the lowered
// names (one "expression<TAB>lowered" line each), then the binary.
std::string cache_entry_payload(const CompiledModule& module) {
  std::string text = fmt::format("names {}\n", module.lowered_names.size());
  for (const auto& [expression, lowered] : module.lowered_names) text += expression + "\t" + lowered + "\n";
  return text + module.binary;
}

// Splits a verified payload back into names and binary; "" on success, else
// what is wrong (the checksum held, so only a writer of another layout gets here).
std::string parse_cache_entry_payload(const std::string& data, CompiledModule& module) {
  const std::string tag = "names ";
  if (data.compare(0, tag.size(), tag) != 0) return "expected a payload starting with 'names <count>'";
  std::size_t at = tag.size();
  std::size_t end = data.find('\n', at);
  if (end == std::string::npos) return "expected a line 'names <count>', found no end of line";
  std::size_t count = 0;
  try {
    count = std::stoul(data.substr(at, end - at));
  } catch (...) {
    return fmt::format("expected a name count, found '{}'", data.substr(at, end - at));
  }
  at = end + 1;
  for (std::size_t i = 0; i < count; ++i) {
    end = data.find('\n', at);
    std::size_t tab = data.find('\t', at);
    if (end == std::string::npos || tab == std::string::npos || tab > end)
      return fmt::format("expected {} 'expression<TAB>lowered' lines, found {}", count, i);
    module.lowered_names.emplace_back(data.substr(at, tab - at), data.substr(tab + 1, end - tab - 1));
    at = end + 1;
  }
  module.binary = data.substr(at);
  return {};
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

int nvrtc_version() {
  int major = 0, minor = 0;
  nvrtc().nvrtcVersion(&major, &minor);
  return major * 1000 + minor * 10;
}

std::vector<std::string> default_compile_options() { return {"--std=c++17", "-lineinfo", "--fmad=true", "-default-device"}; }

CompiledModule compile_module(const CompileRequest& req) {
  std::string key_text = req.source;
  for (const auto& o : default_compile_options()) key_text += "\n" + o;
  for (const auto& o : req.extra_options) key_text += "\noption=" + o;
  for (const auto& e : req.name_expressions) key_text += "\nname=" + e;
  key_text += fmt::format("\nheaders={:016x}\narch={}\noutput={}\nnvrtc={}\nformat=3", headers_hash(), req.arch,
                          req.output == CompileOutput::ptx ? "ptx" : "cubin", nvrtc_version());
  std::uint64_t key = fnv1a64(key_text);
  // The entry's identity: a second, independent hash of the key text. An
  // entry whose identity differs belongs to another key (a rare 64-bit
  // collision of file names, or a file copied under the wrong name).
  std::uint64_t identity = fnv1a64(key_text, 0x84222325cbf29ce4ull);
  if (!env("MOEJIT_DUMP_DIR").empty()) dump_source(req, key, false);
  const bool assert_cached = req.use_cache && env("MOEJIT_ASSERT_CACHED") == "1";

  fs::path disk_path;
  if (req.use_cache) {
    std::lock_guard lock(g_mutex);
    if (auto it = g_memory_cache.find(key); it != g_memory_cache.end()) {
      ++g_stats.memory_hits;
      CompiledModule hit = it->second;
      hit.nvrtc_seconds = 0.0;
      return hit;
    }
    fs::path dir = cache_dir();
    if (!dir.empty()) {
      disk_path = dir / fmt::format("{:016x}.{}", key, req.output == CompileOutput::ptx ? "ptx" : "cubin");
      CheckedRead entry = read_checked_file(disk_path.string(), identity);
      std::string problem = entry.problem;
      if (entry.ok()) {
        CompiledModule module;
        problem = parse_cache_entry_payload(entry.payload, module);
        if (problem.empty() && module.lowered_names.size() != req.name_expressions.size())
          problem = fmt::format("expected {} lowered names, found {}", req.name_expressions.size(),
                                module.lowered_names.size());
        for (std::size_t i = 0; problem.empty() && i < module.lowered_names.size(); ++i)
          if (module.lowered_names[i].first != req.name_expressions[i])
            problem = fmt::format("expected the lowered name of '{}', found that of '{}'", req.name_expressions[i],
                                  module.lowered_names[i].first);
        if (problem.empty()) {
          ++g_stats.disk_hits;
          module.nvrtc_seconds = 0.0;
          g_memory_cache[key] = module;
          return module;
        }
      }
      // Anything but a missing file is an entry that must not be used: it is
      // compiled again and replaced (atomically) below.
      if (entry.verdict != CheckedFileVerdict::missing) {
        std::string damaged = fmt::format("kernel cache entry {} is damaged ({})", disk_path.string(), problem);
        if (assert_cached) throw Error(damaged + "; MOEJIT_ASSERT_CACHED=1 forbids recompiling it");
        warn_once(disk_path.string(), damaged + "; recompiling");
      }
    }
  }
  if (assert_cached)
    throw Error(fmt::format("MOEJIT_ASSERT_CACHED=1, but module '{}' for {} (key {:016x}) is not in the kernel cache {}",
                            req.name, req.arch, key, disk_path.empty() ? "(no cache directory)" : disk_path.parent_path().string()));

  auto start = std::chrono::steady_clock::now();
  CompiledModule module = run_nvrtc(req, key);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::lock_guard lock(g_mutex);
  ++g_stats.compiles;
  g_stats.compile_seconds += seconds;
  module.nvrtc_seconds = seconds;
  if (req.use_cache) {
    g_memory_cache[key] = module;
    if (!disk_path.empty()) store_cache_entry(disk_path, cache_entry_payload(module), identity);
  }
  return module;
}

std::string compile_cuda(const CompileRequest& req) { return compile_module(req).binary; }

int compile_parts(std::size_t kernels) {
  std::string forced = env("MOEJIT_COMPILE_THREADS");
  if (!forced.empty()) {
    int n = std::atoi(forced.c_str());
    if (n < 1) throw Error(fmt::format("MOEJIT_COMPILE_THREADS must be a number >= 1, found '{}'", forced));
    return n;
  }
  int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int by_size = static_cast<int>((kernels + 3) / 4);
  // Up to 16 parts: the example's training module cold on an H200 host (16
  // cores) took 3.01 s with 8 parts and 1.95 s with 16 (its slowest part
  // 1.8 s); the parts' fixed cost (~0.2 s each) is paid in parallel.
  return std::max(1, std::min({hardware, 16, by_size}));
}

std::vector<int> assign_parts(const std::vector<int>& weights, int parts) {
  std::vector<std::size_t> order(weights.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return weights[a] > weights[b]; });
  std::vector<long long> load(static_cast<std::size_t>(std::max(parts, 1)), 0);
  std::vector<int> part(weights.size(), 0);
  for (std::size_t i : order) {
    auto lightest = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    part[i] = lightest;
    load[static_cast<std::size_t>(lightest)] += std::max(weights[i], 1);
  }
  return part;
}

std::vector<CompiledModule> compile_module_parts(const CompileRequest& req, int parts, const std::vector<int>& weights) {
  parts = std::max(1, std::min<int>(parts, static_cast<int>(std::max<std::size_t>(req.name_expressions.size(), 1))));
  if (parts == 1) return {compile_module(req)};
  MOEJIT_ASSERT(weights.empty() || weights.size() == req.name_expressions.size(), "one weight per name expression");
  std::vector<int> part = assign_parts(weights.empty() ? std::vector<int>(req.name_expressions.size(), 1) : weights, parts);
  std::vector<CompileRequest> requests(static_cast<std::size_t>(parts), req);
  for (auto& r : requests) r.name_expressions.clear();
  for (std::size_t i = 0; i < req.name_expressions.size(); ++i)
    requests[static_cast<std::size_t>(part[i])].name_expressions.push_back(req.name_expressions[i]);
  std::vector<CompiledModule> modules(requests.size());
  std::vector<std::exception_ptr> errors(requests.size());
  std::vector<std::thread> threads;
  for (std::size_t p = 0; p < requests.size(); ++p)
    threads.emplace_back([&, p] {
      try {
        modules[p] = compile_module(requests[p]);
      } catch (...) {
        errors[p] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return modules;
}

}  // namespace moejit::cuda

namespace moejit {
CudaCompileStats cuda_compile_stats() {
  std::lock_guard lock(cuda::g_mutex);
  return cuda::g_stats;
}
}  // namespace moejit
