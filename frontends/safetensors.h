// safetensors checkpoints: an 8-byte little-endian header length, a JSON
// header {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the raw little-endian tensor bytes.
// Files are written to "<path>.tmp.<pid>" and renamed, so a reader never sees
// half a checkpoint. Reading checks everything it can (sizes, offsets that
// tile the data, dtypes, shapes) and throws moejit::Error naming the file,
// the tensor, what was expected and what was found.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "runtime/host_tensor.h"

namespace moejit {

struct Checkpoint {
  std::map<std::string, HostTensor> tensors;
  std::map<std::string, std::string> metadata;  // "config" (JSON), "step", "vocab", ...
};

// dtype names in the file: F32 F64 BF16 F16 I32 I64 BOOL.
void save_safetensors(const std::string& path, const Checkpoint& checkpoint);
Checkpoint load_safetensors(const std::string& path);

}  // namespace moejit
