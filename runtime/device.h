// Choosing a backend by name, as the tools' --device flag does:
//   "cpu"  the reference interpreter;
//   "cuda" the CUDA backend (moejit::Error saying why when no GPU is usable);
//   "auto" CUDA when a GPU is usable, else the CPU.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "runtime/backend.h"

namespace moejit {

// Throws moejit::Error for an unknown name, or for "cuda" without a usable
// GPU (with the reason). *note, when given, says what was chosen and why
// ("auto: no usable GPU (libcuda.so.1: ...), using the CPU").
std::unique_ptr<Backend> make_backend(std::string_view device, std::string* note = nullptr);

// Captures `exe`'s whole run() as one CUDA graph that later runs replay
// (cuda_capture_graph, runtime/cuda/cuda_backend.h), for code that must also
// build without the CUDA backend (the trainer). Every argument must be bound.
// Throws moejit::Error when `exe` is not the CUDA backend's or this build has
// no CUDA backend.
void capture_cuda_graph(Executable& exe);

}  // namespace moejit
