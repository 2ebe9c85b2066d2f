// Atomic file writes and whole-file reads (see file_io.h).
#include "ir/file_io.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "ir/error.h"

namespace moejit {

namespace fs = std::filesystem;

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, std::string_view what) {
  std::error_code ec;
  const fs::path target(path);
  const fs::file_status status = fs::status(target, ec);
  if (fs::is_directory(status)) throw Error(fmt::format("{} '{}': expected a file name, found a directory", what, path));
  if (fs::exists(status) && !fs::is_regular_file(status)) {
    std::ofstream out(path, std::ios::binary);
    write(out);
    out.flush();
    if (!out) throw Error(fmt::format("{} '{}': writing failed", what, path));
    return;
  }
  std::random_device random;
  const std::string tmp = fmt::format("{}.tmp.{}.{:x}", path, static_cast<long>(::getpid()), random());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("{} '{}': cannot create the temporary file '{}'", what, path, tmp));
    write(out);
    out.flush();
    if (!out) {
      out.close();
      fs::remove(tmp, ec);
      throw Error(fmt::format("{} '{}': writing the temporary file '{}' failed (disk full?); the previous file is unchanged",
                              what, path, tmp));
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw Error(fmt::format("{} '{}': cannot rename '{}' over it: {}", what, path, tmp, ec.message()));
  }
}

void write_file_atomically(const std::string& path, std::string_view data, std::string_view what) {
  write_file_atomically(path, [&](std::ostream& out) { out.write(data.data(), static_cast<std::streamsize>(data.size())); },
                        what);
}

bool read_whole_file(const std::string& path, std::string* data) {
  data->clear();
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return false;
  *data = ss.str();
  return true;
}

}  // namespace moejit
