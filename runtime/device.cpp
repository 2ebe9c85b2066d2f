// Backend selection by name (see device.h). A build without the CUDA
// backend (MOEJIT_WITH_CUDA=0, CMake option MOEJIT_WITH_CUDA=OFF) has only
// the CPU: "cuda" is an error saying so and "auto" picks the CPU.
#include "runtime/device.h"

#include <fmt/format.h>

#include "ir/error.h"
#if MOEJIT_WITH_CUDA
#include "runtime/cuda/cuda_backend.h"
#endif

namespace moejit {

std::unique_ptr<Backend> make_backend(std::string_view device, std::string* note) {
  auto say = [&](std::string text) {
    if (note) *note = std::move(text);
  };
  if (device == "cpu") {
    say("cpu");
    return make_cpu_backend();
  }
  if (device != "cuda" && device != "auto")
    throw Error(fmt::format("--device: expected auto, cpu or cuda, found '{}'", device));
#if MOEJIT_WITH_CUDA
  std::string why;
  if (!cuda_available(&why)) {
    if (device == "cuda") throw Error(fmt::format("--device cuda: the CUDA backend is not available: {}", why));
    say(fmt::format("auto: no usable GPU ({}), using the CPU", why));
    return make_cpu_backend();
  }
  say(fmt::format("{}: CUDA on {}", device, cuda_device_info().name));
  return make_cuda_backend();
#else
  if (device == "cuda")
    throw Error("--device cuda: this build has no CUDA backend (configured with -DMOEJIT_WITH_CUDA=OFF; rebuild with "
                "the CUDA Toolkit installed)");
  say("auto: this build has no CUDA backend, using the CPU");
  return make_cpu_backend();
#endif
}

void capture_cuda_graph(Executable& exe) {
#if MOEJIT_WITH_CUDA
  cuda_capture_graph(exe);
#else
  (void)exe;
  throw Error("capture_cuda_graph: this build has no CUDA backend (configured with -DMOEJIT_WITH_CUDA=OFF)");
#endif
}

}  // namespace moejit
