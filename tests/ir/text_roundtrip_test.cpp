// The text form: print -> parse -> print is the identity, the parsed graph
// equals the original structurally, and mlir-opt-16 accepts every dump.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

#include "ir/builder.h"
#include "ir/graphviz.h"
#include "ir/parser.h"
#include "ir/printer.h"
#include "ir/sample_graphs.h"
#include "ir/verifier.h"

using namespace moejit;

namespace {

// Attribute equality with floats compared by their bits (NaN == NaN, 0 != -0).
bool same_attrs(const AttrList& a, const AttrList& b) {
  if (a.items().size() != b.items().size()) return false;
  for (std::size_t i = 0; i < a.items().size(); ++i) {
    const Attr& x = a.items()[i];
    const Attr& y = b.items()[i];
    if (x.name != y.name || x.value.index() != y.value.index()) return false;
    if (const double* dx = std::get_if<double>(&x.value)) {
      double dy = std::get<double>(y.value);
      if (std::memcmp(dx, &dy, sizeof dy) != 0) return false;
    } else if (!(x.value == y.value)) {
      return false;
    }
  }
  return true;
}

// Structural equality, written out field by field (not via the printer).
void require_same_graph(const Graph& a, const Graph& b) {
  REQUIRE(a.name() == b.name());
  REQUIRE(a.num_values() == b.num_values());
  REQUIRE(a.args().size() == b.args().size());
  for (std::size_t i = 0; i < a.args().size(); ++i) {
    CHECK(a.args()[i].role == b.args()[i].role);
    CHECK(a.value(a.args()[i].value).name == b.value(b.args()[i].value).name);
    CHECK(a.type(a.args()[i].value) == b.type(b.args()[i].value));
  }
  REQUIRE(a.ops().size() == b.ops().size());
  for (std::size_t i = 0; i < a.ops().size(); ++i) {
    const Op& x = a.ops()[i];
    const Op& y = b.ops()[i];
    INFO("op " << i << " " << op_name(x.kind));
    CHECK(x.kind == y.kind);
    CHECK(same_attrs(x.attrs, y.attrs));
    REQUIRE(x.operands.size() == y.operands.size());
    for (std::size_t j = 0; j < x.operands.size(); ++j) CHECK(a.type(x.operands[j]) == b.type(y.operands[j]));
    REQUIRE(x.results.size() == y.results.size());
    for (std::size_t r = 0; r < x.results.size(); ++r) CHECK(a.type(x.results[r]) == b.type(y.results[r]));
  }
  // Operand wiring: the producer (op index, result number) of every operand agrees.
  auto wiring = [](const Graph& g) {
    std::vector<std::string> w;
    auto producers = g.producers();
    for (const auto& op : g.ops())
      for (auto v : op.operands) {
        int p = producers[static_cast<std::size_t>(v)];
        std::string s = p < 0 ? "arg:" + g.value(v).name : std::to_string(p);
        if (p >= 0)
          for (std::size_t r = 0; r < g.ops()[static_cast<std::size_t>(p)].results.size(); ++r)
            if (g.ops()[static_cast<std::size_t>(p)].results[r] == v) s += "#" + std::to_string(r);
        w.push_back(s);
      }
    return w;
  };
  CHECK(wiring(a) == wiring(b));
  REQUIRE(a.outputs().size() == b.outputs().size());
  for (std::size_t i = 0; i < a.outputs().size(); ++i) {
    CHECK(a.outputs()[i].name == b.outputs()[i].name);
    CHECK(a.outputs()[i].updates == b.outputs()[i].updates);
    CHECK(a.type(a.outputs()[i].value) == b.type(b.outputs()[i].value));
  }
}

// Attribute values that are easy to get wrong: non-finite and subnormal
// floats, negative and extreme integers, escapes, an empty array, a graph
// name that needs quoting.
Graph make_tricky_graph() {
  Graph g("tricky graph");
  Builder b(g);
  auto x = b.input("x.in", {2, 3});
  const double values[] = {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                           std::numeric_limits<double>::quiet_NaN(), -0.0, 5e-324, 1e300, 0.1, -2.5, 1e-5, 123456789.0};
  Tensor acc = x;
  for (double v : values) acc = b.add(acc, b.constant(v, {2, 3}));
  b.output(acc, "quote \" backslash \\ newline \n tab \t utf8 \xc3\xa9 end");
  b.output(b.sum(x, {}, false), "empty axes");
  b.output(b.op1(OpKind::Dropout, {x}, {{"p", 0.0}, {"seed", std::numeric_limits<std::int64_t>::max()},
                                       {"offset", std::numeric_limits<std::int64_t>::min()}}),
           "extreme ints");
  b.output(b.transpose(x, {1, 0}), "");
  b.output(b.cast(x, DType::i1), "cast");
  return g;
}

std::string write_temp(const std::string& stem, const std::string& text) {
  auto dir = std::filesystem::path(MOEJIT_BINARY_DIR) / "tests" / "ir_tmp";
  std::filesystem::create_directories(dir);
  auto path = dir / stem;
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

}  // namespace

TEST_CASE("print -> parse -> print is the identity on the sample graphs", "[ir][text]") {
  for (const Graph& graph : {make_all_ops_graph(), make_moe_layer_graph(), make_tricky_graph()}) {
    INFO(graph.name());
    REQUIRE(verify(graph).empty());
    std::string text = print_graph(graph);
    Graph parsed = parse_graph(text, "roundtrip.mlir");
    require_same_graph(graph, parsed);
    CHECK(print_graph(parsed) == text);
  }
}

TEST_CASE("non-finite and subnormal floats keep their bits through the text", "[ir][text]") {
  Graph g = make_tricky_graph();
  Graph parsed = parse_graph(print_graph(g));
  int checked = 0;
  for (std::size_t i = 0; i < g.ops().size(); ++i) {
    if (g.ops()[i].kind != OpKind::Constant) continue;
    double a = g.ops()[i].attrs.get_float("value");
    double b = parsed.ops()[i].attrs.get_float("value");
    std::uint64_t abits, bbits;
    std::memcpy(&abits, &a, 8);
    std::memcpy(&bbits, &b, 8);
    CHECK(abits == bbits);
    ++checked;
  }
  CHECK(checked == 10);
}

TEST_CASE("the parser accepts a module wrapper, comments and hand-written spacing", "[ir][text]") {
  const char* text = R"(// a comment before everything
module {
  // inside the module
  func.func @f(%a: tensor<2x2xf32>,   %b: tensor<2x2xf32> {mj.role = "state"}) -> (tensor<2x2xf32> {mj.name = "sum", mj.updates = "b"}, tensor<f32>) {
    %s = "mj.add"(%a, %b) : (tensor<2x2xf32>, tensor<2x2xf32>) -> (tensor<2x2xf32>)  // trailing
    %t = "mj.sum"(%s) {keepdims = false, axes = [0, -1]} : (tensor<2x2xf32>) -> tensor<f32>
    return %s, %t : tensor<2x2xf32>, tensor<f32>
  }
}
)";
  Graph g = parse_graph(text, "hand.mlir");
  REQUIRE(g.ops().size() == 2);
  CHECK(g.ops()[1].attrs.get_ints("axes") == std::vector<std::int64_t>{0, -1});
  CHECK(g.args()[1].role == ArgRole::state);
  REQUIRE(g.outputs().size() == 2);
  CHECK(g.outputs()[0].name == "sum");
  CHECK(g.outputs()[0].updates == "b");
  CHECK(g.outputs()[1].name.empty());
  // Names are renumbered when printed, and the print parses back to itself.
  std::string printed = print_graph(g);
  CHECK(printed.find("%0 = \"mj.add\"(%a, %b)") != std::string::npos);
  CHECK(print_graph(parse_graph(printed)) == printed);
}

TEST_CASE("parse_graph_file reads a file and names it in diagnostics", "[ir][text]") {
  std::string path = write_temp("bad_file.mlir", "func.func @f() {\n  return %nope : tensor<f32>\n}\n");
  try {
    parse_graph_file(path);
    FAIL("expected a ParseError");
  } catch (const ParseError& e) {
    CHECK(std::string(e.what()) == path + ":2:10: error: use of undefined value %nope");
  }
  CHECK_THROWS_AS(parse_graph_file(path + ".missing"), Error);
}

TEST_CASE("mlir-opt-16 accepts the printed sample graphs", "[ir][text][mlir]") {
  const char* mlir_opt = "/usr/bin/mlir-opt-16";
  if (!std::filesystem::exists(mlir_opt)) {
    WARN("SKIPPED: mlir-opt-16 not found");
    return;
  }
  int index = 0;
  for (const Graph& graph : {make_all_ops_graph(), make_moe_layer_graph(), make_tricky_graph()}) {
    INFO(graph.name());
    std::string path = write_temp("mlir_opt_" + std::to_string(index++) + ".mlir", print_graph(graph));
    std::string out = path + ".out", err = path + ".err";
    std::string cmd = std::string(mlir_opt) + " --allow-unregistered-dialect '" + path + "' -o '" +
                      out + "' 2> '" + err + "'";
    int rc = std::system(cmd.c_str());
    std::ifstream err_in(err);
    std::stringstream err_text;
    err_text << err_in.rdbuf();
    INFO("mlir-opt stderr: " << err_text.str());
    REQUIRE(rc == 0);
    // What mlir-opt prints back (its own value names and float spelling) is again moejit text: it parses to the same graph.
    std::ifstream out_in(out);
    std::stringstream out_text;
    out_text << out_in.rdbuf();
    // mlir-opt renames the arguments (%arg0, ...), so `mj.updates` no longer
    // names one: drop it before parsing.
    std::string reprinted = std::regex_replace(out_text.str(), std::regex(", mj.updates = \"[^\"]*\""), "");
    Graph reparsed = parse_graph(reprinted, out);
    REQUIRE(reparsed.ops().size() == graph.ops().size());
    for (std::size_t i = 0; i < graph.ops().size(); ++i) {
      CHECK(reparsed.ops()[i].kind == graph.ops()[i].kind);
      CHECK(same_attrs(reparsed.ops()[i].attrs, graph.ops()[i].attrs));
    }
  }
}

TEST_CASE("graph_to_dot draws every arg, op, output and tensor", "[ir][graphviz]") {
  Graph g = make_moe_layer_graph();
  std::string dot = graph_to_dot(g);
  CHECK(dot == graph_to_dot(g));  // deterministic
  CHECK(dot.rfind("digraph \"moe_layer\" {", 0) == 0);
  CHECK(dot.substr(dot.size() - 2) == "}\n");
  auto count = [&](const std::string& needle) {
    std::size_t n = 0;
    for (auto p = dot.find(needle); p != std::string::npos; p = dot.find(needle, p + 1)) ++n;
    return n;
  };
  std::size_t edges = g.outputs().size();
  for (const auto& op : g.ops()) edges += op.operands.size();
  CHECK(count(" -> ") == edges);
  CHECK(count("shape=box") == g.ops().size());
  CHECK(count("shape=ellipse") == g.args().size());
  CHECK(count("shape=note") == g.outputs().size());
  CHECK(count("undefined") == 0);
  // Labels: op names with key attributes, tensor types on edges, output names.
  CHECK(dot.find("moe.gate\\nnormalize=true\\norder=\\\"softmax_then_topk\\\"\\nscore=\\\"softmax\\\"\\ntop_k=2\"") !=
        std::string::npos);
  CHECK(dot.find("moe.dispatch\\nblock=1") != std::string::npos);
  CHECK(dot.find("[label=\"tensor<64x32xf32> (#0)\"]") != std::string::npos);  // x into matmul
  CHECK(dot.find("label=\"#1 tensor<64x2xi32>\"") != std::string::npos);       // experts out of the gate
  CHECK(dot.find("label=\"tokens_per_expert\"") != std::string::npos);
  // Every op node is also the source or target of some edge.
  for (std::size_t i = 0; i < g.ops().size(); ++i) CHECK(dot.find("op" + std::to_string(i) + " -> ") != std::string::npos);
}
