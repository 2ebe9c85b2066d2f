// Keeps docs/ true to the code: every op of the table is documented.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "ir/op_table.h"

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("docs/ir.md lists every op of the table", "[docs]") {
  std::string text = read_file(std::string(MOEJIT_SOURCE_DIR) + "/docs/ir.md");
  for (const auto& info : moejit::all_ops()) {
    INFO(info.name);
    CHECK(text.find("`" + std::string(info.name) + "`") != std::string::npos);
  }
}
