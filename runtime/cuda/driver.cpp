// Opens libcuda.so.1 with dlopen, resolves the entry points, initializes the
// driver and retains device 0's primary context. See driver.h.
#include "runtime/cuda/driver.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <mutex>

#include "ir/error.h"

namespace moejit::cuda {

namespace {

#define MOEJIT_STRINGIFY2(x) #x
#define MOEJIT_STRINGIFY(x) MOEJIT_STRINGIFY2(x)

struct Loaded {
  Driver driver;
  CUdevice device = 0;
  CUcontext context = nullptr;
  std::string error;  // empty when usable
};

std::string error_text(const Driver& d, CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName) d.cuGetErrorName(result, &name);
  if (d.cuGetErrorString) d.cuGetErrorString(result, &text);
  return fmt::format("{} ({})", name ? name : fmt::format("error {}", static_cast<int>(result)), text ? text : "no description");
}

Loaded load() {
  Loaded loaded;
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    loaded.error = fmt::format("cannot open libcuda.so.1 ({})", why ? why : "unknown reason");
    return loaded;
  }
  Driver& d = loaded.driver;
  // The versioned symbol names come from cuda.h's macros (cuMemAlloc is
  // cuMemAlloc_v2), so each pointer matches the prototype it is typed with.
#define MOEJIT_CU_LOAD(fn)                                                                 \
  d.fn = reinterpret_cast<decltype(d.fn)>(dlsym(handle, MOEJIT_STRINGIFY(fn)));            \
  if (!d.fn) {                                                                             \
    loaded.error = fmt::format("libcuda.so.1 lacks {} (driver too old?)", MOEJIT_STRINGIFY(fn)); \
    return loaded;                                                                         \
  }
  MOEJIT_CU_FUNCTIONS(MOEJIT_CU_LOAD)
#undef MOEJIT_CU_LOAD
  CUresult r = d.cuInit(0);
  if (r != CUDA_SUCCESS) {
    loaded.error = fmt::format("cuInit failed: {}", error_text(d, r));
    return loaded;
  }
  int count = 0;
  r = d.cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS || count == 0) {
    loaded.error = r != CUDA_SUCCESS ? fmt::format("cuDeviceGetCount failed: {}", error_text(d, r)) : "no CUDA device found";
    return loaded;
  }
  r = d.cuDeviceGet(&loaded.device, 0);
  if (r == CUDA_SUCCESS) r = d.cuDevicePrimaryCtxRetain(&loaded.context, loaded.device);
  if (r != CUDA_SUCCESS) {
    loaded.error = fmt::format("cannot open device 0: {}", error_text(d, r));
    return loaded;
  }
  return loaded;
}

const Loaded& loaded() {
  static const Loaded instance = load();
  return instance;
}

}  // namespace

const Driver& driver() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw Error("CUDA is not available: " + l.error);
  // The primary context is made current once per thread.
  thread_local bool current = false;
  if (!current) {
    CUresult r = l.driver.cuCtxSetCurrent(l.context);
    if (r != CUDA_SUCCESS) throw Error("CUDA driver call cuCtxSetCurrent failed: " + error_text(l.driver, r));
    current = true;
  }
  return l.driver;
}

CUdevice device() {
  driver();
  return loaded().device;
}

CUcontext context() {
  driver();
  return loaded().context;
}

void check(CUresult result, const char* call) {
  if (result == CUDA_SUCCESS) return;
  throw Error(fmt::format("CUDA driver call {} failed: {}", call, error_text(loaded().driver, result)));
}

}  // namespace moejit::cuda

namespace moejit {

bool cuda_available(std::string* why) {
  const auto& l = cuda::loaded();
  if (why) *why = l.error;
  return l.error.empty();
}

std::string CudaDeviceInfo::arch() const {
  if (cc_major == 9 && cc_minor == 0) return "sm_90a";
  return fmt::format("sm_{}{}", cc_major, cc_minor);
}

CudaDeviceInfo cuda_device_info() {
  const auto& d = cuda::driver();
  CUdevice dev = cuda::device();
  CudaDeviceInfo info;
  char name[256] = {};
  MOEJIT_CU(cuDeviceGetName, name, sizeof(name), dev);
  info.name = name;
  auto attribute = [&](CUdevice_attribute a) {
    int v = 0;
    MOEJIT_CU(cuDeviceGetAttribute, &v, a, dev);
    return v;
  };
  info.sm_count = attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  info.cc_major = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  info.cc_minor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  info.shared_memory_per_block_optin = attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  info.l2_bytes = attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
  size_t total = 0;
  MOEJIT_CU(cuDeviceTotalMem, &total, dev);
  info.total_memory = static_cast<std::int64_t>(total);
  (void)d;
  return info;
}

codegen::Target cuda_device_target() {
  CudaDeviceInfo info = cuda_device_info();
  codegen::Target t;
  t.arch = info.arch();
  t.cc_major = info.cc_major;
  t.cc_minor = info.cc_minor;
  t.sm_count = info.sm_count;
  t.shared_memory_per_block_optin = info.shared_memory_per_block_optin;
  t.l2_bytes = info.l2_bytes;
  t.device_name = info.name;
  // MOEJIT_ARCH=sm_80: generate for an older architecture than the device's
  // (its kernel families, its PTX, which the driver JIT-compiles); the sizes
  // stay the device's, since the code runs here.
  if (const char* forced = std::getenv("MOEJIT_ARCH"); forced && *forced) {
    const codegen::Target named = codegen::Target::named(forced);  // throws for a name that is no architecture
    const bool arch_specific = named.arch.back() == 'a';
    if (named.sm() > t.sm() || (arch_specific && named.arch != t.arch))
      throw Error(fmt::format("MOEJIT_ARCH={} cannot run on the device ({}, {}): expected an architecture no newer than the device's, "
                              "and an 'a' architecture only on its own device",
                              forced, info.name, t.arch));
    t.arch = named.arch;
    t.cc_major = named.cc_major;
    t.cc_minor = named.cc_minor;
  }
  return t;
}

}  // namespace moejit
