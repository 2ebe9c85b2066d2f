// Tests that run this test binary again as a child process (a fresh process
// has an empty in-memory kernel cache): run it with one test tag and extra
// environment, and read back what it printed and files it wrote.
#pragma once
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "ir/file_io.h"

namespace moejit::cuda_test {

struct ChildResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs this binary on the Catch2 test spec `tag` with `env` set ("A=1 B=2"),
// through /bin/sh so that `prefix` (e.g. "ulimit -f 0;") can set limits first.
inline ChildResult run_child(const std::string& env, const std::string& tag, const std::string& prefix = "") {
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string command = fmt::format("{} {} '{}' '{}' 2>&1", prefix, env, self, tag);
  ChildResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// How often `what` occurs in `text` (non-overlapping).
inline std::size_t count(const std::string& text, const std::string& what) {
  std::size_t found = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++found;
  return found;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::string data;
  REQUIRE(read_whole_file(path.string(), &data));
  return data;
}

}  // namespace moejit::cuda_test
