// Opens libnccl with dlopen and resolves its entry points. See nccl_loader.h.
#include "runtime/cuda/nccl_loader.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>

#include "ir/error.h"

namespace moejit::cuda {

namespace {

struct Loaded {
  Nccl nccl;
  std::string error;  // empty when usable
};

// Looks `symbol` up in `handle` into `fn`; false when absent.
template <typename Fn>
bool resolve(void* handle, const char* symbol, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(handle, symbol));
  return fn != nullptr;
}

// Opens `name` and resolves every entry point; "" on success, else why not.
std::string try_open(const std::string& name, Nccl& out) {
  void* handle = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    return why ? why : "cannot be opened";
  }
  Nccl n;
  const char* missing = nullptr;
#define MOEJIT_NCCL_RESOLVE(fn) \
  if (!missing && !resolve(handle, #fn, n.fn)) missing = #fn;
  MOEJIT_NCCL_RESOLVE(ncclGetErrorString)
  MOEJIT_NCCL_RESOLVE(ncclGetVersion)
  MOEJIT_NCCL_RESOLVE(ncclGetUniqueId)
  MOEJIT_NCCL_RESOLVE(ncclCommInitRank)
  MOEJIT_NCCL_RESOLVE(ncclCommAbort)
  MOEJIT_NCCL_RESOLVE(ncclCommDestroy)
  MOEJIT_NCCL_RESOLVE(ncclCommGetAsyncError)
  MOEJIT_NCCL_RESOLVE(ncclAllReduce)
  MOEJIT_NCCL_RESOLVE(ncclAllGather)
  MOEJIT_NCCL_RESOLVE(ncclReduceScatter)
  MOEJIT_NCCL_RESOLVE(ncclSend)
  MOEJIT_NCCL_RESOLVE(ncclRecv)
  MOEJIT_NCCL_RESOLVE(ncclGroupStart)
  MOEJIT_NCCL_RESOLVE(ncclGroupEnd)
#undef MOEJIT_NCCL_RESOLVE
  if (missing) {
    dlclose(handle);
    // ncclSend/ncclRecv came with NCCL 2.7; every other entry point is older.
    return fmt::format("opened, but it lacks {} (NCCL older than 2.7?)", missing);
  }
  n.library = name;
  out = n;
  return {};
}

Loaded load() {
  Loaded loaded;
  loaded.error = load_nccl(nccl_library_candidates(), loaded.nccl);
  return loaded;
}

const Loaded& loaded() {
  static const Loaded instance = load();
  return instance;
}

}  // namespace

std::string load_nccl(const std::vector<std::string>& candidates, Nccl& out) {
  std::string tried;
  for (const std::string& name : candidates) {
    std::string why = try_open(name, out);
    if (why.empty()) return {};
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", name, why);
  }
  return fmt::format(
      "NCCL could not be loaded (tried {}); a run on more than one GPU (world_size > 1) needs libnccl.so.2: install "
      "NCCL, add its directory to LD_LIBRARY_PATH, or set MOEJIT_NCCL_LIBRARY to its path",
      tried);
}

std::vector<std::string> nccl_library_candidates() {
  const char* forced = std::getenv("MOEJIT_NCCL_LIBRARY");
  if (forced && *forced) return {forced};
  return {"libnccl.so.2", "libnccl.so"};
}

const Nccl& nccl() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw Error(l.error);
  return l.nccl;
}

bool nccl_available(std::string* why) {
  const Loaded& l = loaded();
  if (why) *why = l.error;
  return l.error.empty();
}

void check_nccl(nccl_api::Result result, const char* what) {
  if (result == nccl_api::kSuccess) return;
  const char* text = nccl_available() ? nccl().ncclGetErrorString(result) : nullptr;
  throw Error(fmt::format("{}: NCCL error {} ({})", what, result, text ? text : "no description"));
}

}  // namespace moejit::cuda
