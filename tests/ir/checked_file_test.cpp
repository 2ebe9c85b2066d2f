// ir/checked_file.h: FNV-1a against its published test values, a round
// trip, and a verdict other than ok for every single-byte change, every
// truncation, trailing bytes, another identity, another version.
#include "ir/checked_file.h"

#include <fmt/format.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "ir/error.h"
#include "ir/file_io.h"

using namespace moejit;
namespace fs = std::filesystem;

namespace {

std::string sample_payload() {
  std::string payload;
  for (int i = 0; i < 300; ++i) payload.push_back(static_cast<char>((i * 37 + 11) & 0xff));
  return payload;
}

}  // namespace

TEST_CASE("fnv1a64 gives the published FNV-1a 64 values", "[ir][checked_file]") {
  CHECK(fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(fnv1a64("foobar") == 0x85944171f73967e8ull);
}

TEST_CASE("a checked file reads back its payload", "[ir][checked_file]") {
  const std::string payload = sample_payload();
  const std::string file = make_checked_file(payload, 42);
  CHECK(file.size() == kCheckedFileHeaderBytes + payload.size());
  CheckedRead read = parse_checked_file(file, 42);
  CHECK(read.ok());
  CHECK(read.problem.empty());
  CHECK(read.payload == payload);
  // An empty payload is a valid file too.
  CHECK(parse_checked_file(make_checked_file("", 7), 7).ok());
}

TEST_CASE("every single-byte change of a checked file is refused", "[ir][checked_file]") {
  const std::string file = make_checked_file(sample_payload(), 0x1234);
  for (std::size_t at = 0; at < file.size(); ++at) {
    for (int mask : {0x01, 0x80, 0xff}) {
      std::string bad = file;
      bad[at] = static_cast<char>(bad[at] ^ mask);
      CheckedRead read = parse_checked_file(bad, 0x1234);
      INFO("byte " << at << " xor " << mask);
      CHECK(!read.ok());
      CHECK(!read.problem.empty());
      CHECK(read.payload.empty());
    }
  }
  // A flip in the payload is a checksum mismatch, said with both values.
  std::string bad = file;
  bad[kCheckedFileHeaderBytes + 100] ^= 0x04;
  CheckedRead read = parse_checked_file(bad, 0x1234);
  CHECK(read.verdict == CheckedFileVerdict::wrong_checksum);
  CHECK(read.problem.find("expected checksum ") == 0);
  CHECK(read.problem.find(fmt::format("{:016x}", fnv1a64(sample_payload()))) != std::string::npos);
}

TEST_CASE("a cut, extended, empty, foreign or unknown checked file gets its verdict", "[ir][checked_file]") {
  const std::string payload = sample_payload();
  const std::string file = make_checked_file(payload, 9);
  for (std::size_t size = 1; size < file.size(); ++size) {
    INFO("cut to " << size << " bytes");
    CHECK(parse_checked_file(std::string_view(file).substr(0, size), 9).verdict == CheckedFileVerdict::truncated);
  }
  CHECK(parse_checked_file(file.substr(0, 100), 9).problem ==
        fmt::format("expected {} payload bytes, found {}", payload.size(), 100 - kCheckedFileHeaderBytes));
  CHECK(parse_checked_file(file + "x", 9).verdict == CheckedFileVerdict::wrong_length);
  CHECK(parse_checked_file("", 9).verdict == CheckedFileVerdict::empty);
  CHECK(parse_checked_file("hello world, not a checked file at all", 9).verdict ==
        CheckedFileVerdict::not_checked_file);
  CheckedRead foreign = parse_checked_file(file, 10);
  CHECK(foreign.verdict == CheckedFileVerdict::foreign);
  CHECK(foreign.problem.find("expected identity 000000000000000a, found 0000000000000009") == 0);
  std::string other_version = file;
  other_version[8] = 2;
  CheckedRead version = parse_checked_file(other_version, 9);
  CHECK(version.verdict == CheckedFileVerdict::unknown_version);
  CHECK(version.problem == "expected format version 1, found 2");
}

TEST_CASE("write_checked_file and read_checked_file go through the file system", "[ir][checked_file]") {
  fs::path dir = fs::temp_directory_path() / fmt::format("moejit-checked-file-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "entry.bin").string();
  CHECK(read_checked_file(path, 1).verdict == CheckedFileVerdict::missing);
  write_checked_file(path, "payload", 1, "test entry");
  CheckedRead read = read_checked_file(path, 1);
  CHECK(read.ok());
  CHECK(read.payload == "payload");
  // Rewriting replaces the whole file; no temporary is left.
  write_checked_file(path, "other", 1, "test entry");
  CHECK(read_checked_file(path, 1).payload == "other");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) ++files;
  CHECK(files == 1);
  // A directory that does not exist: an Error naming what and where.
  try {
    write_checked_file((dir / "missing" / "entry.bin").string(), "x", 1, "test entry");
    FAIL("expected moejit::Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("test entry") != std::string::npos);
  }
  fs::remove_all(dir);
}
