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

}  // namespace moejit
