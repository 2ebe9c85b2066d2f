// Files the library writes and reads back. Every file moejit writes
// (checkpoints, reports, IR dumps, benchmark JSON, the kernel cache) goes
// through write_file_atomically, so a reader sees the old file or the whole
// new one, never half of either, and a failed write leaves the old file intact.
#pragma once
#include <functional>
#include <iosfwd>
#include <string>
#include <string_view>

namespace moejit {

// Writes a file through a temporary in the same directory
// ("<path>.tmp.<pid>.<random>") and a rename. `write` streams the contents;
// a stream error (a full disk) or a failed rename removes the temporary and
// throws moejit::Error naming `what` (e.g. "checkpoint") and the path, and
// the previous file stays as it was. A path that is a directory is an error;
// an existing device or pipe (-o /dev/null, a FIFO) is written in place,
// since renaming over it would replace the node. The parent directory must
// exist.
void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write,
                           std::string_view what = "file");
void write_file_atomically(const std::string& path, std::string_view data, std::string_view what = "file");

// Reads a whole file into *data; false (and *data empty) if it cannot be read.
bool read_whole_file(const std::string& path, std::string* data);

}  // namespace moejit
