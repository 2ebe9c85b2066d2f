// Opens libnvrtc with dlopen and resolves its entry points. See nvrtc_loader.h.
#include "runtime/cuda/nvrtc_loader.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>

#include "ir/error.h"

namespace moejit::cuda {

namespace {

#define MOEJIT_NVRTC_STRINGIFY(x) #x

struct Loaded {
  Nvrtc nvrtc;
  std::string error;  // empty when usable
};

// Opens `name` and resolves every entry point; "" on success, else why not.
std::string try_open(const std::string& name, Nvrtc& out) {
  // RTLD_LAZY: binding all of libnvrtc's symbols at once (RTLD_NOW) costs tens of
  // milliseconds, more than a warm start of the whole cache.
  void* handle = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    return why ? why : "cannot be opened";
  }
  Nvrtc n;
#define MOEJIT_NVRTC_LOAD(fn)                                                                 \
  n.fn = reinterpret_cast<decltype(n.fn)>(dlsym(handle, MOEJIT_NVRTC_STRINGIFY(fn)));         \
  if (!n.fn) {                                                                                \
    dlclose(handle);                                                                          \
    return fmt::format("opened, but it lacks {} (NVRTC too old?)", MOEJIT_NVRTC_STRINGIFY(fn)); \
  }
  MOEJIT_NVRTC_FUNCTIONS(MOEJIT_NVRTC_LOAD)
#undef MOEJIT_NVRTC_LOAD
  n.library = name;
  out = n;
  return {};
}

Loaded load() {
  Loaded loaded;
  std::string tried;
  for (const std::string& name : nvrtc_library_candidates()) {
    std::string why = try_open(name, loaded.nvrtc);
    if (why.empty()) return loaded;
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", name, why);
  }
  loaded.error = fmt::format(
      "NVRTC could not be loaded (tried {}); a CUDA compile needs libnvrtc from the CUDA Toolkit: install it, add its "
      "directory to LD_LIBRARY_PATH, or set MOEJIT_NVRTC_LIBRARY to its path",
      tried);
  return loaded;
}

const Loaded& loaded() {
  static const Loaded instance = load();
  return instance;
}

}  // namespace

std::vector<std::string> nvrtc_library_candidates() {
  const char* forced = std::getenv("MOEJIT_NVRTC_LIBRARY");
  if (forced && *forced) return {forced};
  std::vector<std::string> names = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  std::vector<std::string> candidates = names;
  for (const auto& name : names) candidates.push_back("/usr/local/cuda/lib64/" + name);
  return candidates;
}

const Nvrtc& nvrtc() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw Error(l.error);
  return l.nvrtc;
}

bool nvrtc_available(std::string* why) {
  const Loaded& l = loaded();
  if (why) *why = l.error;
  return l.error.empty();
}

}  // namespace moejit::cuda
