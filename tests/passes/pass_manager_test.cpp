// The pass manager: pipeline parsing (and its errors), the registry's
// unknown-pass and bad-option errors, verify-after-each catching a broken
// pass, print-IR-after-all and statistics.
#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>

#include "ir/builder.h"
#include "ir/error.h"
#include "ir/printer.h"
#include "passes/pass_manager.h"
#include "passes/passes.h"

using namespace moejit;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The error message of calling f, or "" when it does not throw.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// y = (x + x) twice over, with a dead op: something for cse and dce to do.
Graph small_graph() {
  Graph g("small");
  Builder b(g);
  auto x = b.input("x", {2, 3});
  auto s1 = b.add(x, x);
  auto s2 = b.add(x, x);
  b.exp(x);  // dead
  b.output(b.mul(s1, s2), "y");
  return g;
}

// A pass that breaks the graph: points the first op at a value defined later.
class BreakingPass final : public Pass {
 public:
  std::string_view name() const override { return "test-break"; }
  void run(Graph& graph) override {
    auto& ops = graph.mutable_ops();
    ops.front().operands[0] = ops.back().results[0];
  }
};

}  // namespace

TEST_CASE("parse_pipeline splits entries and keeps commas inside braces", "[passes]") {
  auto p = parse_pipeline("canonicalize,cse,autodiff{loss=loss wrt=w1,w2},dce");
  REQUIRE(p.size() == 4);
  CHECK(p[0] == PipelineEntry{"canonicalize", {}});
  CHECK(p[1].name == "cse");
  CHECK(p[2].name == "autodiff");
  CHECK(p[2].options == PassOptions{{"loss", "loss"}, {"wrt", "w1,w2"}});
  CHECK(p[3].name == "dce");
  CHECK(option_list(p[2].options, "wrt") == std::vector<std::string>{"w1", "w2"});

  // whitespace around names and between options is ignored
  auto q = parse_pipeline("  cse , autodiff{ wrt=a   loss=l } ");
  REQUIRE(q.size() == 2);
  CHECK(q[1].options == PassOptions{{"loss", "l"}, {"wrt", "a"}});
  CHECK(parse_pipeline("").empty());
  CHECK(parse_pipeline(pipeline_str(p)) == p);
}

TEST_CASE("parse_pipeline rejects malformed text with a message saying what", "[passes]") {
  CHECK(contains(error_of([] { parse_pipeline("cse,,dce"); }), "expected a pass name at column 5"));
  CHECK(contains(error_of([] { parse_pipeline("cse,"); }), "expected a pass name"));
  CHECK(contains(error_of([] { parse_pipeline("autodiff{loss=l"); }), "is never closed"));
  CHECK(contains(error_of([] { parse_pipeline("cse}"); }), "unexpected '}'"));
  CHECK(contains(error_of([] { parse_pipeline("a{x=1{y=2}}"); }), "do not nest"));
  CHECK(contains(error_of([] { parse_pipeline("autodiff{loss}"); }), "option 'loss' of pass 'autodiff': expected key=value"));
  CHECK(contains(error_of([] { parse_pipeline("autodiff{loss=a loss=b}"); }), "given twice"));
  CHECK(contains(error_of([] { parse_pipeline("autodiff{loss=a} x"); }), "unexpected text after the options"));
  CHECK(contains(error_of([] { parse_pipeline("c$e"); }), "found 'c$e'"));
}

TEST_CASE("unknown passes and options are errors before anything runs", "[passes]") {
  PassManager pm;
  auto unknown = error_of([&] { pm.add_pipeline("cse,no-such-pass,dce"); });
  CHECK(contains(unknown, "unknown pass 'no-such-pass'"));
  CHECK(contains(unknown, "known passes: canonicalize, cse, dce"));
  CHECK(pm.size() == 0);  // nothing half-added

  CHECK(contains(error_of([&] { pm.add_pipeline("cse{aggressive=1}"); }), "pass 'cse' takes no options, found 'aggressive=1'"));
  CHECK(contains(error_of([] { create_pass("autodiff", {{"los", "x"}}); }), "pass 'autodiff' has no option 'los' (its options: loss, wrt)"));
  CHECK(contains(error_of([] { option_int("p", {{"n", "12x"}}, "n", 0); }), "expected an integer, found '12x'"));
  CHECK(option_int("p", {{"n", "-7"}}, "n", 0) == -7);
  CHECK(option_bool("p", {}, "b", true));
  CHECK(contains(error_of([] { option_bool("p", {{"b", "yes"}}, "b", true); }), "expected true or false"));

  pm.add_pipeline("canonicalize,cse,dce");
  CHECK(pm.pass_names() == std::vector<std::string>{"canonicalize", "cse", "dce"});
}

TEST_CASE("every registered pass can be created and has a unique name", "[passes]") {
  std::vector<std::string> names;
  for (const auto& r : registered_passes()) {
    CHECK(std::find(names.begin(), names.end(), r.name) == names.end());
    names.push_back(r.name);
    CHECK_FALSE(r.description.empty());
    auto pass = create_pass(r.name);
    CHECK(pass->name() == r.name);
  }
  CHECK(names.size() >= 3);
}

TEST_CASE("verify-after-each names the pass that broke the graph", "[passes]") {
  Graph g = small_graph();
  PassManager pm;
  pm.add(create_pass("cse"));
  pm.add(std::make_unique<BreakingPass>());
  pm.add(create_pass("dce"));
  auto message = error_of([&] { pm.run(g); });
  CHECK(contains(message, "pass 'test-break' left an invalid graph @small"));
  CHECK(contains(message, "used before it is defined"));
  // cse ran and reported; dce never ran
  REQUIRE(pm.statistics().size() == 2);
  CHECK(pm.statistics()[0].pass == "cse");

  // without verification the broken graph goes through unnoticed
  Graph h = small_graph();
  PassManager unchecked(PassManagerOptions{.verify_each = false});
  unchecked.add(std::make_unique<BreakingPass>());
  CHECK_NOTHROW(unchecked.run(h));
}

TEST_CASE("an invalid input graph is reported before any pass runs", "[passes]") {
  Graph g = small_graph();
  g.mutable_ops()[0].operands[0] = g.mutable_ops()[2].results[0];
  PassManager pm;
  pm.add_pipeline("dce");
  CHECK(contains(error_of([&] { pm.run(g); }), "the input graph @small is invalid, before any pass ran"));
  CHECK(pm.statistics().empty());
}

TEST_CASE("print-ir-after-all prints each pass's result under an MLIR header", "[passes]") {
  Graph g = small_graph();
  std::ostringstream dump;
  PassManager pm(PassManagerOptions{.verify_each = true, .print_ir_after_all = &dump});
  pm.add_pipeline("cse,dce");
  pm.run(g);
  std::string text = dump.str();
  auto after_cse = text.find("// -----// IR Dump After cse //----- //\nfunc.func @small(");
  auto after_dce = text.find("// -----// IR Dump After dce //----- //\nfunc.func @small(");
  REQUIRE(after_cse != std::string::npos);
  REQUIRE(after_dce != std::string::npos);
  CHECK(after_cse < after_dce);
  // after cse the dead exp is still there; after dce it is gone
  std::string cse_dump = text.substr(after_cse, after_dce - after_cse);
  std::string dce_dump = text.substr(after_dce);
  CHECK(contains(cse_dump, "\"mj.exp\""));
  CHECK_FALSE(contains(dce_dump, "\"mj.exp\""));
  CHECK(dce_dump.find(print_graph(g)) != std::string::npos);  // the last dump is the final graph
}

TEST_CASE("statistics: counters per pass, printed in pipeline order", "[passes]") {
  Graph g = small_graph();
  PassManager pm;
  pm.add_pipeline("cse,dce,dce");
  pm.run(g);
  const auto& stats = pm.statistics();
  REQUIRE(stats.size() == 3);
  CHECK(stats[0].counters == std::vector<std::pair<std::string, std::int64_t>>{{"ops-erased", 1}});  // one add
  CHECK(stats[1].counters == std::vector<std::pair<std::string, std::int64_t>>{{"ops-erased", 1}});  // the exp
  CHECK(stats[2].counters == std::vector<std::pair<std::string, std::int64_t>>{{"ops-erased", 0}});  // reset per run
  std::ostringstream out;
  pm.print_statistics(out);
  std::string text = out.str();
  CHECK(contains(text, "Pass statistics"));
  auto cse = text.find("cse\n  ops-erased"), dce = text.find("dce\n  ops-erased");
  CHECK(cse != std::string::npos);
  CHECK(dce != std::string::npos);
  CHECK(cse < dce);
}

TEST_CASE("a pass that throws is reported with its name", "[passes]") {
  class ThrowingPass final : public Pass {
   public:
    std::string_view name() const override { return "test-throw"; }
    void run(Graph&) override { throw Error("output 'loss' not found"); }
  };
  Graph g = small_graph();
  PassManager pm;
  pm.add(std::make_unique<ThrowingPass>());
  CHECK(error_of([&] { pm.run(g); }) == "pass 'test-throw' failed: output 'loss' not found");
}
