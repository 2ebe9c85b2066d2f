// Backend selection by name (see device.h).
#include "runtime/device.h"

#include <fmt/format.h>

#include "ir/error.h"
#include "runtime/cuda/cuda_backend.h"

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
  std::string why;
  if (!cuda_available(&why)) {
    if (device == "cuda") throw Error(fmt::format("--device cuda: the CUDA backend is not available: {}", why));
    say(fmt::format("auto: no usable GPU ({}), using the CPU", why));
    return make_cpu_backend();
  }
  say(fmt::format("{}: CUDA on {}", device, cuda_device_info().name));
  return make_cuda_backend();
}

}  // namespace moejit
