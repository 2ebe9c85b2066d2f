// Completeness of the op table on the IR side: every op of ir/ops.def has a
// dialect-prefixed name and a shape rule, the verifier rejects it with a wrong
// operand count, and it appears in make_all_ops_graph() and round-trips
// through the text form.
#include <catch2/catch.hpp>

#include <set>

#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/sample_graphs.h"
#include "ir/verifier.h"

using namespace moejit;

namespace {

bool valid_op_name(std::string_view name) {
  auto dot = name.find('.');
  if (dot == std::string_view::npos) return false;
  std::string_view dialect = name.substr(0, dot), rest = name.substr(dot + 1);
  if (dialect != "mj" && dialect != "moe" && dialect != "comm") return false;
  if (rest.empty()) return false;
  for (char c : rest)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

// The 1-based line of the printed text that starts with `prefix`.
int line_starting_with(const std::string& text, const std::string& prefix) {
  int line = 1;
  for (std::size_t start = 0; start < text.size();) {
    if (text.compare(start, prefix.size(), prefix) == 0) return line;
    start = text.find('\n', start);
    if (start == std::string::npos) break;
    ++start;
    ++line;
  }
  return -1;
}

}  // namespace

TEST_CASE("every op of the table is named, has a shape rule, is checked and round-trips", "[ir][completeness]") {
  REQUIRE(static_cast<int>(all_ops().size()) == kNumOps);
  const Graph all = make_all_ops_graph();
  REQUIRE(verify(all).empty());
  const std::string text = print_graph(all);
  const Graph parsed = parse_graph(text, "all_ops.mlir");
  REQUIRE(print_graph(parsed) == text);

  // Nothing in the sample is dead: every op result is used or an output.
  auto uses = all.use_counts();
  for (const auto& op : all.ops())
    for (auto r : op.results) CHECK(uses[static_cast<std::size_t>(r)] > 0);

  std::set<std::string_view> names;
  for (const OpInfo& info : all_ops()) {
    std::string name(info.name);
    INFO("op " << name);
    CHECK(valid_op_name(name));
    CHECK(names.insert(info.name).second);
    CHECK(find_op(name) == info.kind);
    CHECK(info.infer != nullptr);
    CHECK(info.num_results >= 1);

    // It appears in the sample graph ...
    int index = -1;
    for (std::size_t i = 0; i < all.ops().size() && index < 0; ++i)
      if (all.ops()[i].kind == info.kind) index = static_cast<int>(i);
    REQUIRE(index >= 0);
    CHECK(text.find("\"" + name + "\"(") != std::string::npos);
    // ... and comes back from the text with the same attributes and types.
    const Op& original = all.ops()[static_cast<std::size_t>(index)];
    const Op& reread = parsed.ops()[static_cast<std::size_t>(index)];
    CHECK(reread.kind == original.kind);
    CHECK(reread.attrs == original.attrs);
    REQUIRE(reread.results.size() == original.results.size());
    for (std::size_t r = 0; r < original.results.size(); ++r)
      CHECK(parsed.type(reread.results[r]) == all.type(original.results[r]));

    // A wrong operand count: one more than the most it takes, or none for a
    // variadic op (which takes at least one).
    Graph broken = all;
    auto& operands = broken.mutable_ops()[static_cast<std::size_t>(index)].operands;
    if (info.max_operands >= 0) {
      ValueId filler = operands.empty() ? broken.args()[0].value : operands[0];
      while (static_cast<int>(operands.size()) <= info.max_operands) operands.push_back(filler);
    } else {
      operands.clear();
    }
    bool flagged = false;
    for (const auto& d : verify(broken))
      if (d.op_index == index && d.message.find("operands, found " + std::to_string(operands.size())) != std::string::npos)
        flagged = true;
    CHECK(flagged);
    // The same mistake in the text is reported at that op's line.
    std::string broken_text = print_graph(broken);
    int line = line_starting_with(broken_text, "  %" + std::to_string(index) + (info.num_results > 1 ? ":" : " "));
    REQUIRE(line > 0);
    try {
      parse_graph(broken_text, "broken.mlir");
      FAIL("expected a ParseError");
    } catch (const ParseError& e) {
      REQUIRE(!e.diagnostics().empty());
      CHECK(e.diagnostics()[0].line == line);
      CHECK(e.diagnostics()[0].message.find("\"" + name + "\": expected") != std::string::npos);
    }
  }
}
