// safetensors checkpoints: an 8-byte little-endian header length, a JSON
// header {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the raw little-endian tensor bytes.
// Files are written to "<path>.tmp.<pid>.<random>" and renamed, so a reader
// never sees half a checkpoint. Reading checks everything it can (sizes
// computed with overflow checks, offsets that tile the data, dtypes, shapes)
// and throws moejit::Error naming the file, the tensor, what was expected and
// what was found.
//
// Checksums (docs/checkpoints.md): every save adds two metadata entries,
//   "tensor_crc32"   a JSON object {tensor name: CRC-32 of its bytes, 8 hex digits}
//   "metadata_crc32" the CRC-32 of every other metadata entry, in key order,
//                    each as key, NUL, value, NUL
// (CRC-32 as zlib's crc32). Loading verifies both and names the tensor (or
// says the metadata) that does not match; a file without them (written by
// another tool) still loads, with Checkpoint::note saying it was not verified.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/host_tensor.h"

namespace moejit {

struct Checkpoint {
  std::map<std::string, HostTensor> tensors;
  std::map<std::string, std::string> metadata;  // "config" (JSON), "step", "vocab", ... (no checksum entries)
  // After loading: empty when both checksums were verified, else why not
  // ("no checksums in the metadata: ...").
  std::string note;
};

// CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of `size` bytes, continuing
// from `crc` (0 to start).
std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc = 0);

// dtype names in the file: F32 F64 BF16 F16 I32 I64 BOOL.
void save_safetensors(const std::string& path, const Checkpoint& checkpoint);
Checkpoint load_safetensors(const std::string& path);

}  // namespace moejit
