// safetensors reading and writing (see safetensors.h).
#include "frontends/safetensors.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <optional>
#include <bit>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ir/error.h"
#include "ir/file_io.h"

namespace moejit {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit

struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kDTypeNames[] = {{DType::f32, "F32"}, {DType::f64, "F64"}, {DType::bf16, "BF16"},
                                     {DType::f16, "F16"}, {DType::i32, "I32"}, {DType::i64, "I64"},
                                     {DType::i1, "BOOL"}};

const char* file_dtype_name(DType dtype) {
  for (const DTypeName& d : kDTypeNames)
    if (d.dtype == dtype) return d.name;
  MOEJIT_ASSERT(false, "dtype without a safetensors name");
  return "";
}

std::optional<DType> parse_file_dtype(const std::string& name) {
  for (const DTypeName& d : kDTypeNames)
    if (name == d.name) return d.dtype;
  return std::nullopt;
}

constexpr const char* kTensorCrcKey = "tensor_crc32";
constexpr const char* kMetadataCrcKey = "metadata_crc32";

std::string hex32(std::uint32_t value) { return fmt::format("{:08x}", value); }

// CRC-32 of every metadata entry but metadata_crc32 itself, in key order.
std::uint32_t metadata_crc(const std::map<std::string, std::string>& metadata) {
  std::uint32_t crc = 0;
  for (const auto& [key, value] : metadata) {
    if (key == kMetadataCrcKey) continue;
    crc = crc32(key.data(), key.size(), crc);
    crc = crc32("", 1, crc);
    crc = crc32(value.data(), value.size(), crc);
    crc = crc32("", 1, crc);
  }
  return crc;
}

// bytes of a tensor of `shape` and `dtype`, or nullopt when it does not fit in 64 bits.
std::optional<std::uint64_t> checked_bytes(const Shape& shape, DType dtype) {
  std::uint64_t bytes = dtype_size(dtype);
  for (std::int64_t d : shape)
    if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes)) return std::nullopt;
  return bytes;
}

}  // namespace

std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void save_safetensors(const std::string& path, const Checkpoint& checkpoint) {
  std::map<std::string, std::string> metadata = checkpoint.metadata;
  nlohmann::ordered_json tensor_crcs = nlohmann::ordered_json::object();
  for (const auto& [name, tensor] : checkpoint.tensors) tensor_crcs[name] = hex32(crc32(tensor.raw(), tensor.bytes()));
  metadata[kTensorCrcKey] = tensor_crcs.dump();
  metadata.erase(kMetadataCrcKey);
  metadata[kMetadataCrcKey] = hex32(metadata_crc(metadata));
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& [key, value] : metadata) meta[key] = value;
  header["__metadata__"] = meta;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : checkpoint.tensors) {  // std::map: sorted by name
    if (name == "__metadata__") throw Error("safetensors: '__metadata__' cannot name a tensor");
    nlohmann::ordered_json entry;
    entry["dtype"] = file_dtype_name(tensor.dtype());
    entry["shape"] = tensor.shape();
    entry["data_offsets"] = {offset, offset + tensor.bytes()};
    header[name] = entry;
    offset += tensor.bytes();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // align the data to 8 bytes
  const std::uint64_t header_size = header_text.size();

  write_file_atomically(
      path,
      [&](std::ostream& out) {
        unsigned char len_bytes[8];
        for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(header_size >> (8 * i));
        out.write(reinterpret_cast<const char*>(len_bytes), 8);
        out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
        for (const auto& [name, tensor] : checkpoint.tensors)
          out.write(reinterpret_cast<const char*>(tensor.raw()), static_cast<std::streamsize>(tensor.bytes()));
      },
      "safetensors");
}

namespace {

// Checks the checksum entries (see safetensors.h) and removes them from the
// metadata; sets checkpoint.note when the file has none.
void verify_checksums(const std::string& path, Checkpoint& checkpoint) {
  auto& metadata = checkpoint.metadata;
  auto tensor_it = metadata.find(kTensorCrcKey), meta_it = metadata.find(kMetadataCrcKey);
  if (tensor_it == metadata.end() && meta_it == metadata.end()) {
    checkpoint.note = "no checksums in the metadata (not written by moejit): the data was not verified";
    return;
  }
  auto fail = [&](const std::string& what) { return Error(fmt::format("{}: corrupted file: {}", path, what)); };
  if (tensor_it == metadata.end() || meta_it == metadata.end())
    throw fail(fmt::format("expected both '{}' and '{}' in the metadata, found only '{}'", kTensorCrcKey,
                           kMetadataCrcKey, tensor_it == metadata.end() ? kMetadataCrcKey : kTensorCrcKey));
  const std::string found_meta = hex32(metadata_crc(metadata));
  if (found_meta != meta_it->second)
    throw fail(fmt::format("the metadata's CRC-32 is {}, the file says {} (metadata entries were changed)", found_meta,
                           meta_it->second));
  nlohmann::json crcs;
  try {
    crcs = nlohmann::json::parse(tensor_it->second);
  } catch (const nlohmann::json::exception&) {
    throw fail(fmt::format("'{}': expected a JSON object of tensor names to CRC-32s, found '{}'", kTensorCrcKey,
                           tensor_it->second));
  }
  if (!crcs.is_object() || crcs.size() != checkpoint.tensors.size())
    throw fail(fmt::format("'{}': expected a CRC-32 for each of the {} tensors, found {}", kTensorCrcKey,
                           checkpoint.tensors.size(), crcs.is_object() ? crcs.size() : 0));
  for (const auto& [name, tensor] : checkpoint.tensors) {
    if (!crcs.contains(name) || !crcs[name].is_string())
      throw fail(fmt::format("'{}': expected a CRC-32 string for tensor {}, found none", kTensorCrcKey, name));
    const std::string found = hex32(crc32(tensor.raw(), tensor.bytes()));
    if (found != crcs[name].get<std::string>())
      throw fail(fmt::format("tensor {}: its data's CRC-32 is {}, the metadata says {} (the tensor's bytes were "
                             "changed)",
                             name, found, crcs[name].get<std::string>()));
  }
  metadata.erase(kTensorCrcKey);
  metadata.erase(kMetadataCrcKey);
}

}  // namespace

Checkpoint load_safetensors(const std::string& path) {
  std::error_code dir_ec;
  if (std::filesystem::is_directory(path, dir_ec))
    throw Error(fmt::format("{}: expected a checkpoint file, found a directory", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open checkpoint", path));
  in.seekg(0, std::ios::end);
  const std::uint64_t file_size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  auto fail = [&](const std::string& what) { return Error(fmt::format("{}: {}", path, what)); };
  if (file_size < 8)
    throw fail(fmt::format("truncated: expected at least the 8-byte header length, found a file of {} bytes", file_size));
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  std::uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<std::uint64_t>(len_bytes[i]) << (8 * i);
  if (header_size > kMaxHeaderBytes)
    throw fail(fmt::format("corrupted header: expected a header length of at most {} bytes, found {}", kMaxHeaderBytes,
                           header_size));
  if (header_size > file_size - 8)
    throw fail(fmt::format("truncated: the header needs {} bytes, the file has {} after the length", header_size,
                           file_size - 8));
  std::string header_text(header_size, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_size));

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::exception& err) {
    throw fail(fmt::format("corrupted header: invalid JSON ({})", err.what()));
  }
  if (!header.is_object()) throw fail(fmt::format("corrupted header: expected a JSON object, found {}", header.type_name()));

  Checkpoint checkpoint;
  const std::uint64_t data_size = file_size - 8 - header_size;
  struct Span {
    std::uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("corrupted header: __metadata__: expected an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string())
          throw fail(fmt::format("corrupted header: __metadata__.{}: expected a string, found {}", m.key(),
                                 m.value().type_name()));
        checkpoint.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail(fmt::format("corrupted header: tensor {}: {}", name, what)); };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      throw bad("expected an object with dtype, shape and data_offsets, found " + entry.dump());
    if (!entry["dtype"].is_string()) throw bad("expected a dtype string, found " + entry["dtype"].dump());
    std::optional<DType> dtype = parse_file_dtype(entry["dtype"].get<std::string>());
    if (!dtype)
      throw bad(fmt::format("expected dtype F32, F64, BF16, F16, I32, I64 or BOOL, found {}", entry["dtype"].dump()));
    Shape shape;
    if (!entry["shape"].is_array()) throw bad("expected a shape array, found " + entry["shape"].dump());
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned()) throw bad("expected non-negative integer dims, found " + entry["shape"].dump());
      shape.push_back(d.get<std::int64_t>());
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      throw bad("expected data_offsets [begin, end], found " + offsets.dump());
    std::uint64_t begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
    const std::optional<std::uint64_t> bytes = checked_bytes(shape, *dtype);
    if (!bytes)
      throw bad(fmt::format("shape {} {} has more bytes than fit in 64 bits, found data_offsets [{}, {}]",
                            shape_str(shape), entry["dtype"].get<std::string>(), begin, end));
    if (end < begin || end - begin != *bytes)
      throw bad(fmt::format("expected {} bytes for shape {} {}, found data_offsets [{}, {}]", *bytes,
                            shape_str(shape), entry["dtype"].get<std::string>(), begin, end));
    if (*bytes > data_size)
      throw fail(fmt::format("truncated: tensor {} needs {} bytes, the file holds {} data bytes", name, *bytes,
                             data_size));
    TensorType type{*dtype, shape};
    if (end > data_size)
      throw fail(fmt::format("truncated: tensor {} ends at byte {} of the data, the file holds {} data bytes", name, end,
                             data_size));
    spans.push_back({begin, end, name});
    HostTensor tensor(type);
    in.seekg(static_cast<std::streamoff>(8 + header_size + begin));
    in.read(reinterpret_cast<char*>(tensor.raw()), static_cast<std::streamsize>(tensor.bytes()));
    if (!in) throw fail(fmt::format("truncated: could not read tensor {}", name));
    checkpoint.tensors.emplace(name, std::move(tensor));
  }
  // The data must be tiled exactly: no overlaps, no holes.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::uint64_t expected_begin = 0;
  for (const Span& s : spans) {
    if (s.begin != expected_begin)
      throw fail(fmt::format("corrupted header: tensor {}: expected data to start at byte {}, found {}", s.name,
                             expected_begin, s.begin));
    expected_begin = s.end;
  }
  if (expected_begin != data_size)
    throw fail(fmt::format("corrupted file: expected {} data bytes after the header, found {}", expected_begin, data_size));
  verify_checksums(path, checkpoint);
  return checkpoint;
}

}  // namespace moejit
