// Checked files: header, checksum and verdicts (see checked_file.h).
#include "ir/checked_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "ir/file_io.h"

namespace moejit {

namespace {

constexpr std::string_view kMagic = "MJCHECK\n";
static_assert(kMagic.size() == 8);
static_assert(kCheckedFileHeaderBytes == 8 + 4 + 8 + 8 + 8);

void put_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

std::uint64_t get_le(std::string_view in, std::size_t offset, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= std::uint64_t{static_cast<unsigned char>(in[offset + i])} << (8 * i);
  return value;
}

CheckedRead verdict(CheckedFileVerdict v, std::string problem) {
  CheckedRead read;
  read.verdict = v;
  read.problem = std::move(problem);
  return read;
}

}  // namespace

std::uint64_t fnv1a64(std::string_view data, std::uint64_t seed) {
  std::uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string make_checked_file(std::string_view payload, std::uint64_t identity) {
  std::string out;
  out.reserve(kCheckedFileHeaderBytes + payload.size());
  out += kMagic;
  put_le(out, kCheckedFileVersion, 4);
  put_le(out, identity, 8);
  put_le(out, payload.size(), 8);
  put_le(out, fnv1a64(payload), 8);
  out += payload;
  return out;
}

CheckedRead parse_checked_file(std::string_view bytes, std::uint64_t expected_identity) {
  using V = CheckedFileVerdict;
  if (bytes.empty()) return verdict(V::empty, "empty file");
  // A short file that starts like a header was cut off; one that does not
  // was never a checked file.
  const std::size_t magic_part = std::min(bytes.size(), kMagic.size());
  if (bytes.substr(0, magic_part) != kMagic.substr(0, magic_part))
    return verdict(V::not_checked_file,
                   fmt::format("expected the header \"MJCHECK\", found {} bytes of something else", bytes.size()));
  if (bytes.size() < kCheckedFileHeaderBytes)
    return verdict(V::truncated, fmt::format("expected a {}-byte header, found a {}-byte file", kCheckedFileHeaderBytes,
                                             bytes.size()));
  const auto version = static_cast<std::uint32_t>(get_le(bytes, 8, 4));
  if (version != kCheckedFileVersion)
    return verdict(V::unknown_version,
                   fmt::format("expected format version {}, found {}", kCheckedFileVersion, version));
  const std::uint64_t identity = get_le(bytes, 12, 8);
  const std::uint64_t length = get_le(bytes, 20, 8);
  const std::uint64_t checksum = get_le(bytes, 28, 8);
  const std::uint64_t found_length = bytes.size() - kCheckedFileHeaderBytes;
  if (found_length < length)
    return verdict(V::truncated, fmt::format("expected {} payload bytes, found {}", length, found_length));
  if (identity != expected_identity)
    return verdict(V::foreign, fmt::format("expected identity {:016x}, found {:016x}: the file of another entry",
                                           expected_identity, identity));
  if (found_length > length)
    return verdict(V::wrong_length, fmt::format("expected {} payload bytes, found {}", length, found_length));
  std::string_view payload = bytes.substr(kCheckedFileHeaderBytes);
  const std::uint64_t found_checksum = fnv1a64(payload);
  if (found_checksum != checksum)
    return verdict(V::wrong_checksum,
                   fmt::format("expected checksum {:016x}, found {:016x}", checksum, found_checksum));
  CheckedRead read;
  read.verdict = V::ok;
  read.payload = std::string(payload);
  return read;
}

void write_checked_file(const std::string& path, std::string_view payload, std::uint64_t identity,
                        std::string_view what) {
  write_file_atomically(path, make_checked_file(payload, identity), what);
}

CheckedRead read_checked_file(const std::string& path, std::uint64_t expected_identity) {
  std::string bytes;
  if (!read_whole_file(path, &bytes)) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return verdict(CheckedFileVerdict::missing, "no such file");
    return verdict(CheckedFileVerdict::unreadable, "the file cannot be read");
  }
  return parse_checked_file(bytes, expected_identity);
}

}  // namespace moejit
