// Parser and verifier diagnostics: each malformed input gives one
// `file:line:col: error: message`, with the location computed here from the
// position of a marker in the input text.
#include <catch2/catch.hpp>

#include <string>

#include "ir/parser.h"
#include "ir/printer.h"

using namespace moejit;

namespace {

const std::string kHead =
    "func.func @f(%x: tensor<4x8xf32>, %w: tensor<8x3xf32> {mj.role = \"param\"}) -> (tensor<4x3xf32> {mj.name = \"y\"}) {\n";
const std::string kMatmul =
    "  %0 = \"mj.matmul\"(%x, %w) {transpose_a = false, transpose_b = false} : (tensor<4x8xf32>, tensor<8x3xf32>) -> "
    "tensor<4x3xf32>\n";
const std::string kReturn = "  return %0 : tensor<4x3xf32>\n";
const std::string kValid = kHead + kMatmul + kReturn + "}\n";

// kValid with the first `from` replaced by `to`.
std::string edit(const std::string& from, const std::string& to, std::string text = kValid) {
  auto p = text.find(from);
  REQUIRE(p != std::string::npos);
  return text.replace(p, from.size(), to);
}

// "line:col" of the first occurrence of `marker` (or of its `nth`).
std::string location_of(const std::string& text, const std::string& marker, int nth = 0) {
  std::size_t p = marker.empty() ? text.size() : text.find(marker);  // "": the end
  for (int i = 0; i < nth && p != std::string::npos; ++i) p = text.find(marker, p + 1);
  REQUIRE(p != std::string::npos);
  int line = 1, col = 1;
  for (std::size_t i = 0; i < p; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return std::to_string(line) + ":" + std::to_string(col);
}

std::string parse_error(const std::string& text) {
  try {
    parse_graph(text, "t.mlir");
  } catch (const ParseError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a ParseError: ") + e.what();
  }
  return "no error";
}

struct Case {
  const char* what;
  std::string text;
  std::string marker;  // where the error points
  std::string message;
  int nth = 0;
};

}  // namespace

TEST_CASE("the valid base text parses", "[ir][parser]") { CHECK(parse_error(kValid) == "no error"); }

TEST_CASE("parser errors name the place, what was expected and what was found", "[ir][parser]") {
  const std::string gate_text = kHead +
                                "  %0:2 = \"moe.gate\"(%x) {normalize = false, order = \"softmax_then_topk\", score = \"softmax\", "
                                "top_k = 2 : i64} : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>)\n"
                                "  %1 = \"mj.neg\"(%0) : (tensor<4x2xf32>) -> tensor<4x2xf32>\n" + kReturn + "}\n";
  const std::string neg_then_def = kHead + "  %0 = \"mj.neg\"(%1) : (tensor<4x8xf32>) -> tensor<4x8xf32>\n" +
                                   "  %1 = \"mj.neg\"(%x) : (tensor<4x8xf32>) -> tensor<4x8xf32>\n" + kReturn + "}\n";
  const std::string truncated = kValid.substr(0, kValid.find("%w) {"));
  const std::vector<Case> cases = {
      {"garbage in the operand list", edit("(%x, %w)", "(%x foo)"), "foo", "expected ',' or ')' in operand list, found 'foo'"},
      {"unknown op", edit("\"mj.matmul\"", "\"mj.foo\""), "\"mj.foo\"", "unknown op \"mj.foo\""},
      {"undefined value", edit("%w)", "%7)"), "%7", "use of undefined value %7"},
      {"use before def", neg_then_def, "%1)", "use of value %1 before its definition (at 3:3)"},
      {"redefinition", kHead + kMatmul + kMatmul + kReturn + "}\n", "%0 =", "redefinition of %0 (first defined at 2:3)", 1},
      {"argument redefinition", edit("%w: tensor<8x3xf32>", "%x: tensor<8x3xf32>"), "%x: tensor<8x3", "redefinition of %x (first defined at 1:14)"},
      {"too few operand types", edit("(tensor<4x8xf32>, tensor<8x3xf32>)", "(tensor<4x8xf32>)"), "(tensor<4x8xf32>) ->",
       "expected 2 operand types (one per operand), found 1"},
      {"declared operand type disagrees", edit("tensor<4x8xf32>, tensor<8x3xf32>)", "tensor<4x8xf32>, tensor<8x4xf32>)"),
       "tensor<8x4xf32>", "operand #1: expected type tensor<8x3xf32> (the type of %w), found tensor<8x4xf32>"},
      {"result group of the wrong size",
       edit("%0 = \"mj.matmul\"", "%0:2 = \"mj.matmul\"",
            edit("-> tensor<4x3xf32>\n", "-> (tensor<4x3xf32>, tensor<4x3xf32>)\n", edit("return %0 :", "return %0#0 :"))),
       "%0:2", "\"mj.matmul\" has 1 result, found 2"},
      {"result types fewer than the group", edit("%0 = \"mj.matmul\"", "%0:2 = \"mj.matmul\""), "tensor<4x3xf32>\n",
       "expected 2 result types (%0:2), found 1"},
      {"integer overflow", edit("transpose_a = false", "transpose_a = 99999999999999999999 : i64"), "99999",
       "integer 99999999999999999999 does not fit in 64 bits"},
      {"huge tensor", edit("%x: tensor<4x8xf32>", "%x: tensor<1048576x1048576x2xf32>"), "tensor<1048576",
       "tensor type has more than 2^40 elements, the most moejit supports"},
      {"unterminated string", edit("\"mj.matmul\"", "\"mj.matmul"), "\"mj.matmul", "unterminated string literal (expected a closing '\"')"},
      {"truncated input", truncated, "", "expected an operand such as %0, found end of input"},
      {"unknown element type", edit("%x: tensor<4x8xf32>", "%x: tensor<4x8xf8>"), "f8>", "unknown element type 'f8'"},
      {"dynamic dimension", edit("%x: tensor<4x8xf32>", "%x: tensor<?x8xf32>"), "?x8",
       "dynamic dimension '?' is not supported: shapes are static"},
      {"trailing text", kValid + "extra\n", "extra", "expected end of input after the function, found 'extra'"},
      {"multi-result value without a number", gate_text, "%0) :", "%0 has 2 results: expected a result number, such as %0#0"},
      {"result number out of range", edit("(%0)", "(%0#2)", gate_text), "%0#2", "expected a result number below 2 for %0, found #2"},
      {"bad escape", edit("{mj.name = \"y\"}", "{mj.name = \"a\\qb\"}"), "\\q",
       "invalid escape in string literal: expected \\\\, \\\", \\n, \\t or two hex digits"},
      {"attribute given twice", edit("transpose_b = false", "transpose_a = true"), "transpose_a = true",
       "attribute 'transpose_a' is given twice"},
      {"bad attribute value", edit("transpose_a = false", "transpose_a = maybe"), "maybe",
       "expected an attribute value (true, false, a number, a string, an integer array or a dtype), found 'maybe'"},
      {"missing return", kHead + kMatmul + "}\n", "}\n", "expected an op ('%0 = \"dialect.op\"(...) ...') or 'return', found '}'"},
      {"return count differs from the signature", edit("return %0 : tensor<4x3xf32>", "return"), "return",
       "return: expected 1 values (the function's results), found 0"},
      {"return type differs from the signature",
       edit("-> (tensor<4x3xf32> {", "-> (tensor<4x4xf32> {"), "tensor<4x3xf32>\n}",
       "return value #0: expected type tensor<4x4xf32> (declared in the signature), found tensor<4x3xf32>"},
      {"unknown argument attribute", edit("mj.role = \"param\"", "mj.rol = \"param\""), "{mj.rol",
       "unknown argument attribute 'mj.rol' (expected mj.role)"},
      {"missing func", "module {\n  foo\n}\n", "foo", "expected 'func.func', found 'foo'"},
      {"non-ASCII byte", edit("(%x, %w)", "(%x, \x01%w)"), "\x01", "expected an operand such as %0, found byte 0x01"},
  };
  for (const auto& c : cases) {
    INFO(c.what << "\n" << c.text);
    CHECK(parse_error(c.text) == "t.mlir:" + location_of(c.text, c.marker, c.nth) + ": error: " + c.message);
  }
}

TEST_CASE("verifier diagnostics point at the offending op", "[ir][parser][verifier]") {
  struct VerifierCase {
    const char* what;
    std::string text;
    std::string marker;
    std::string message;  // after "error: "
  };
  auto gate = [&](const std::string& attrs, const std::string& logits_type = "tensor<4x4xf32>") {
    return "func.func @g(%logits: " + logits_type + ") -> (tensor<4x2xf32>) {\n  %0:2 = \"moe.gate\"(%logits) {" + attrs +
           "} : (" + logits_type + ") -> (tensor<4x2xf32>, tensor<4x2xi32>)\n  return %0#0 : tensor<4x2xf32>\n}\n";
  };
  const std::string good_gate = "normalize = false, order = \"softmax_then_topk\", score = \"softmax\", top_k = 2 : i64";
  const std::vector<VerifierCase> cases = {
      {"wrong rank", gate(good_gate, "tensor<4x4x1xf32>"), "%0:2",
       "%0:2 = \"moe.gate\": operand #0 (logits): expected rank 2, found tensor<4x4x1xf32>"},
      {"wrong dtype", gate(good_gate, "tensor<4x4xi32>"), "%0:2",
       "%0:2 = \"moe.gate\": operand #0 (logits): expected a float tensor, found tensor<4x4xi32>"},
      {"mismatched dims", edit("tensor<8x3xf32>", "tensor<7x3xf32>", edit("%w: tensor<8x3xf32>", "%w: tensor<7x3xf32>")), "%0 =",
       "%0 = \"mj.matmul\": operand #1 (b): expected contraction dim 8 (from a tensor<4x8xf32>), found 7 in tensor<7x3xf32>"},
      {"unknown attribute", edit("transpose_b = false", "transpose_b = false, tile = 4 : i64"), "%0 =",
       "%0 = \"mj.matmul\": unknown attribute 'tile'"},
      {"attribute of the wrong kind", edit("transpose_a = false", "transpose_a = 1 : i64"), "%0 =",
       "%0 = \"mj.matmul\": attribute 'transpose_a': expected bool, found int"},
      {"attribute with a bad value", gate("normalize = false, order = \"softmax_then_topk\", score = \"softmax\", top_k = 9 : i64"),
       "%0:2", "%0:2 = \"moe.gate\": attribute 'top_k': expected 1 <= top_k <= 4 (the experts), found 9"},
      {"bad string attribute", gate("normalize = false, order = \"sideways\", score = \"softmax\", top_k = 2 : i64"), "%0:2",
       "%0:2 = \"moe.gate\": attribute 'order': expected one of \"softmax_then_topk\", \"topk_then_softmax\", found \"sideways\""},
      {"missing attribute", edit(" {transpose_a = false, transpose_b = false}", ""), "%0 =",
       "%0 = \"mj.matmul\": missing attribute 'transpose_a' (bool)"},
      {"wrong result type", edit("-> tensor<4x3xf32>\n", "-> tensor<4x4xf32>\n", edit("tensor<4x3xf32> {", "tensor<4x4xf32> {",
                                                                                      edit("return %0 : tensor<4x3xf32>", "return %0 : tensor<4x4xf32>"))),
       "%0 =", "%0 = \"mj.matmul\": result #0: expected type tensor<4x3xf32>, found tensor<4x4xf32>"},
      {"output updates a missing argument", edit("{mj.name = \"y\"}", "{mj.name = \"y\", mj.updates = \"nope\"}"), "return",
       "output 'y' updates 'nope', which is not an argument"},
  };
  for (const auto& c : cases) {
    INFO(c.what << "\n" << c.text);
    CHECK(parse_error(c.text) == "t.mlir:" + location_of(c.text, c.marker) + ": error: " + c.message);
  }
}

TEST_CASE("every verifier problem is reported, each at its own op", "[ir][parser][verifier]") {
  std::string text = kHead + kMatmul +
                     "  %1 = \"mj.softmax\"(%0) {axis = 1 : i64} : (tensor<4x3xf32>) -> tensor<4x3xf32>\n"
                     "  %2 = \"mj.add\"(%1, %x) : (tensor<4x3xf32>, tensor<4x8xf32>) -> tensor<4x3xf32>\n"
                     "  return %2 : tensor<4x3xf32>\n}\n";
  try {
    parse_graph(text, "multi.mlir");
    FAIL("expected a ParseError");
  } catch (const ParseError& e) {
    REQUIRE(e.diagnostics().size() == 2);
    CHECK(e.diagnostics()[0].line == 3);
    CHECK(e.diagnostics()[0].column == 3);
    CHECK(e.diagnostics()[0].message == "%1 = \"mj.softmax\": unknown attribute 'axis'");
    CHECK(e.diagnostics()[1].line == 4);
    CHECK(e.diagnostics()[1].str().rfind("multi.mlir:4:3: error: %2 = \"mj.add\": operand #1 (b): expected", 0) == 0);
    CHECK(std::string(e.what()) == e.diagnostics()[0].str() + "\n" + e.diagnostics()[1].str());
  }
}
