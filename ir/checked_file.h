// Files moejit writes and later reads back itself (the kernel cache; the
// tuning database is meant to use the same helper): a fixed header in front
// of the payload says what the file holds and lets a reader prove the payload
// is the one that was written, before using it.
//
// Layout (every integer little-endian):
//   offset  0  8 bytes  magic "MJCHECK\n"
//   offset  8  u32      format version (kCheckedFileVersion)
//   offset 12  u64      identity: what the payload is, chosen by the writer
//                       (the kernel cache uses a hash of the compile key, so a
//                       file copied under another key's name is refused)
//   offset 20  u64      payload length in bytes
//   offset 28  u64      FNV-1a 64 of the payload
//   offset 36  payload
// Every byte of the file is covered: a change in the header gives a wrong
// magic, version, identity or length, and a change of any single payload byte
// always changes FNV-1a (each step of it is a bijection of the state).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace moejit {

inline constexpr std::uint64_t kFnv1a64Offset = 0xcbf29ce484222325ull;
// 64-bit FNV-1a over `data`, starting from `seed`.
std::uint64_t fnv1a64(std::string_view data, std::uint64_t seed = kFnv1a64Offset);

inline constexpr std::uint32_t kCheckedFileVersion = 1;
inline constexpr std::size_t kCheckedFileHeaderBytes = 36;

// The verdict on the bytes of a checked file, from the most basic problem on.
enum class CheckedFileVerdict {
  ok,
  missing,           // no such file
  unreadable,        // exists, but reading it failed
  empty,             // zero bytes
  truncated,         // shorter than the header, or than the length it records
  not_checked_file,  // no magic: not written by write_checked_file
  unknown_version,   // written by another format version
  foreign,           // a valid file with another identity (another key's entry)
  wrong_length,      // longer than the length it records
  wrong_checksum,    // the payload's checksum differs from the recorded one
};

struct CheckedRead {
  CheckedFileVerdict verdict = CheckedFileVerdict::missing;
  std::string payload;  // the payload when verdict is ok, else empty
  // What is wrong, for messages: "expected checksum 0x..., found 0x...",
  // "expected 4096 payload bytes, found 100"; empty when ok.
  std::string problem;
  bool ok() const { return verdict == CheckedFileVerdict::ok; }
};

// The header followed by `payload`.
std::string make_checked_file(std::string_view payload, std::uint64_t identity);
// Judges the whole contents of a file made by make_checked_file.
CheckedRead parse_checked_file(std::string_view bytes, std::uint64_t expected_identity);

// Writes header + payload with write_file_atomically (ir/file_io.h): throws
// moejit::Error naming `what` and the path when it cannot be written.
void write_checked_file(const std::string& path, std::string_view payload, std::uint64_t identity,
                        std::string_view what = "file");
// Reads and judges `path`; never throws.
CheckedRead read_checked_file(const std::string& path, std::uint64_t expected_identity);

}  // namespace moejit
