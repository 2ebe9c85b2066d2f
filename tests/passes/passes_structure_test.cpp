// Structural tests of canonicalize, cse and dce: which ops remain, what they
// read, which constants they fold to (checked against values computed here
// with the C++ standard library), and that arguments and outputs survive.
#include <catch2/catch.hpp>

#include <cmath>

#include "ir/builder.h"
#include "ir/verifier.h"
#include "passes/pass_manager.h"

using namespace moejit;

namespace {

int count_kind(const Graph& g, OpKind kind) {
  int n = 0;
  for (const auto& op : g.ops()) n += op.kind == kind;
  return n;
}

const Op* producer_of(const Graph& g, ValueId v) {
  for (const auto& op : g.ops())
    for (auto r : op.results)
      if (r == v) return &op;
  return nullptr;
}

ValueId output_value(const Graph& g, const std::string& name) {
  const Output* out = g.find_output(name);
  REQUIRE(out != nullptr);
  return out->value;
}

// The value of the constant an output is, or NaN when it is not one.
double output_constant(const Graph& g, const std::string& name) {
  const Op* def = producer_of(g, output_value(g, name));
  if (!def || def->kind != OpKind::Constant) return std::nan("");
  return def->attrs.get_float("value");
}

void run(Graph& g, const char* pipeline) {
  run_pipeline(g, pipeline);
  CHECK(verify(g).empty());
}

}  // namespace

TEST_CASE("canonicalize folds elementwise chains of constants", "[passes][canonicalize]") {
  Graph g("fold");
  Builder b(g);
  auto c2 = b.constant(2.0, {2, 3}, DType::f64);
  auto c3 = b.constant(3.0, {2, 3}, DType::f64);
  b.output(b.exp(b.sub(b.mul(c2, c3), c2)), "e");                          // exp(2*3 - 2)
  b.output(b.softplus(b.constant(-800.0, {}, DType::f64)), "sp");          // underflows gracefully
  b.output(b.sqrt(b.div(c3, c2)), "q");                                    // sqrt(1.5)
  b.output(b.maximum(c2, b.neg(c3)), "m");                                 // max(2, -3)
  auto f1 = b.constant(0.1, {4}, DType::f32);
  auto f2 = b.constant(0.2, {4}, DType::f32);
  b.output(b.add(f1, f2), "f32sum");
  b.output(b.compare(c2, c3, "lt"), "lt");
  b.output(b.cast(b.constant(-2.7, {2}, DType::f64), DType::i32), "trunc");
  run(g, "canonicalize");
  CHECK(g.ops().size() == 7);
  CHECK(count_kind(g, OpKind::Constant) == 7);
  CHECK(output_constant(g, "e") == Approx(std::exp(4.0)).epsilon(1e-15));
  CHECK(output_constant(g, "sp") >= 0.0);
  CHECK(output_constant(g, "sp") < 1e-300);
  CHECK(output_constant(g, "q") == Approx(std::sqrt(1.5)).epsilon(1e-15));
  CHECK(output_constant(g, "m") == 2.0);
  CHECK(output_constant(g, "f32sum") == static_cast<double>(0.1f + 0.2f));  // f32 arithmetic, not f64
  CHECK(output_constant(g, "lt") == 1.0);
  CHECK(g.type(output_value(g, "lt")) == TensorType{DType::i1, {2, 3}});
  CHECK(output_constant(g, "trunc") == -2.0);
  CHECK(g.type(output_value(g, "trunc")).dtype == DType::i32);
}

TEST_CASE("canonicalize does not fold what it cannot fold exactly", "[passes][canonicalize]") {
  Graph g("nofold");
  Builder b(g);
  auto big = b.constant(2e9, {2}, DType::i32);
  b.output(b.add(big, big), "overflow");  // 4e9 does not fit i32
  auto h = b.constant(1.5, {2}, DType::bf16);
  b.output(b.exp(h), "bf16");  // bf16 rounding is left to the kernels
  auto nan = b.constant(std::nan(""), {2}, DType::f32);
  b.output(b.relu(nan), "nan");
  b.output(b.cast(b.constant(1e10, {2}, DType::f64), DType::i32), "cast_overflow");
  run(g, "canonicalize");
  CHECK(count_kind(g, OpKind::Add) == 1);
  CHECK(count_kind(g, OpKind::Exp) == 1);
  CHECK(count_kind(g, OpKind::Relu) == 1);
  CHECK(count_kind(g, OpKind::Cast) == 1);
}

TEST_CASE("canonicalize removes algebraic identities and keeps arguments and outputs", "[passes][canonicalize]") {
  Graph g("ident");
  Builder b(g);
  auto x = b.input("x", {2, 3});
  auto unused = b.param("unused", {5});
  (void)unused;
  auto zero = b.full_like(x, 0.0);
  auto one = b.full_like(x, 1.0);
  b.output(b.add(x, zero), "add0");
  b.output(b.add(zero, x), "zero_add");
  b.output(b.sub(x, zero), "sub0");
  b.output(b.mul(one, b.mul(x, one)), "mul1");
  b.output(b.div(x, one), "div1");
  b.output(b.neg(b.neg(x)), "negneg");
  b.output(b.reshape(x, {2, 3}), "reshape_same");
  b.output(b.broadcast(x, {2, 3}), "broadcast_same");
  b.output(b.cast(x, DType::f32), "cast_same");
  b.output(b.transpose(x, {0, 1}), "transpose_identity");
  b.output(b.where(b.constant(1.0, {2, 3}, DType::i1), x, b.exp(x)), "where_true");
  run(g, "canonicalize");
  CHECK(g.ops().empty());
  CHECK(g.args().size() == 2);
  REQUIRE(g.outputs().size() == 11);
  for (const auto& out : g.outputs()) {
    INFO(out.name);
    CHECK(out.value == x.id);
  }
}

TEST_CASE("canonicalize: x * 0 folds for integers only", "[passes][canonicalize]") {
  Graph g("mul0");
  Builder b(g);
  auto xf = b.input("xf", {4});
  auto xi = b.input("xi", {4}, DType::i32);
  b.output(b.mul(xf, b.full_like(xf, 0.0)), "float");
  b.output(b.mul(b.full_like(xi, 0.0), xi), "int");
  run(g, "canonicalize");
  CHECK(count_kind(g, OpKind::Mul) == 1);
  CHECK(producer_of(g, output_value(g, "float"))->kind == OpKind::Mul);
  CHECK(output_constant(g, "int") == 0.0);
  CHECK(g.type(output_value(g, "int")) == TensorType{DType::i32, {4}});
}

TEST_CASE("canonicalize combines reshapes, broadcasts and transposes", "[passes][canonicalize]") {
  Graph g("layout");
  Builder b(g);
  auto x = b.input("x", {2, 3, 4});
  b.output(b.reshape(b.reshape(x, {6, 4}), {4, -1}), "rr");
  b.output(b.reshape(b.reshape(x, {24}), {2, 3, 4}), "rr_back");
  b.output(b.transpose(b.transpose(x, {1, 0, 2}), {0, 2, 1}), "tt");
  b.output(b.transpose(b.transpose(x, {1, 2, 0}), {2, 0, 1}), "tt_back");
  auto v = b.input("v", {4});
  b.output(b.broadcast(b.broadcast(v, {3, 4}), {2, 3, 4}), "bb");
  b.output(b.reshape(b.constant(7.0, {2, 6}), {3, 4}), "reshaped_constant");
  run(g, "canonicalize");

  const Op* rr = producer_of(g, output_value(g, "rr"));
  REQUIRE(rr);
  CHECK(rr->kind == OpKind::Reshape);
  CHECK(rr->operands[0] == x.id);
  CHECK(rr->attrs.get_ints("shape") == std::vector<std::int64_t>{4, 6});  // -1 resolved
  CHECK(output_value(g, "rr_back") == x.id);

  // x [2,3,4] -> [3,2,4] -> [3,4,2]; one transpose of x with perm [1,2,0] does it
  const Op* tt = producer_of(g, output_value(g, "tt"));
  REQUIRE(tt);
  CHECK(tt->kind == OpKind::Transpose);
  CHECK(tt->operands[0] == x.id);
  CHECK(tt->attrs.get_ints("perm") == std::vector<std::int64_t>{1, 2, 0});
  CHECK(g.type(output_value(g, "tt")).shape == Shape{3, 4, 2});
  CHECK(output_value(g, "tt_back") == x.id);

  const Op* bb = producer_of(g, output_value(g, "bb"));
  REQUIRE(bb);
  CHECK(bb->kind == OpKind::Broadcast);
  CHECK(bb->operands[0] == v.id);

  CHECK(output_constant(g, "reshaped_constant") == 7.0);
  CHECK(g.type(output_value(g, "reshaped_constant")).shape == Shape{3, 4});
  // every inner op was orphaned and erased: rr, tt, bb and the constant remain
  CHECK(g.ops().size() == 4);
}

TEST_CASE("cse merges equal ops, including deterministic random ones", "[passes][cse]") {
  Graph g("cse");
  Builder b(g);
  auto x = b.input("x", {2, 3});
  auto e1 = b.exp(b.add(x, x));
  auto e2 = b.exp(b.add(x, x));  // same chain: merged transitively
  b.output(b.mul(e1, e2), "prod");
  b.output(b.add(b.constant(1.0, {2, 3}), b.constant(1.0, {2, 3})), "ones");  // one constant
  b.output(b.add(b.constant(1.0, {2, 3}), b.constant(2.0, {2, 3})), "one_two");
  auto r1 = b.random_normal({2, 3}, /*seed=*/7, /*offset=*/0);
  auto r2 = b.random_normal({2, 3}, 7, 0);
  auto r3 = b.random_normal({2, 3}, 8, 0);
  b.output(b.add(r1, r2), "r12");
  b.output(b.add(r1, r3), "r13");
  b.output(b.transpose(x, {1, 0}), "t01");
  b.output(b.transpose(b.transpose(x, {1, 0}), {1, 0}), "tt");
  std::size_t before = g.ops().size();
  PassManager pm;
  pm.add_pipeline("cse");
  pm.run(g);
  CHECK(verify(g).empty());
  CHECK(count_kind(g, OpKind::Exp) == 1);
  CHECK(count_kind(g, OpKind::Constant) == 2);
  CHECK(count_kind(g, OpKind::RandomNormal) == 2);
  CHECK(count_kind(g, OpKind::Transpose) == 2);  // the second inner transpose merged into t01
  const Op* prod = producer_of(g, output_value(g, "prod"));
  REQUIRE(prod);
  CHECK(prod->operands[0] == prod->operands[1]);
  const Op* r12 = producer_of(g, output_value(g, "r12"));
  CHECK(r12->operands[0] == r12->operands[1]);
  const Op* r13 = producer_of(g, output_value(g, "r13"));
  CHECK(r13->operands[0] != r13->operands[1]);
  // duplicates: x+x, exp, 1.0 (twice), rn(7), transpose(x) -> 6 ops erased
  CHECK(pm.statistics()[0].counters[0].second == 6);
  CHECK(g.ops().size() == before - 6);
}

TEST_CASE("cse leaves state updates alone", "[passes][cse]") {
  Graph g("adamw");
  Builder b(g);
  auto w = b.param("w", {4});
  auto m = b.state("m", {4});
  auto v = b.state("v", {4});
  auto grad = b.input("grad", {4});
  auto lr = b.input("lr", {});
  auto step = b.input("step", {});
  auto u1 = b.adamw(w, grad, m, v, lr, step);
  auto u2 = b.adamw(w, grad, m, v, lr, step);
  b.output(u1[0], "w.new", "w");
  b.output(u1[1], "m.new", "m");
  b.output(u1[2], "v.new", "v");
  b.output(u2[0], "w.copy");
  // a plain op whose result updates an argument is not merged with its twin
  b.output(b.scale(w, 0.5), "w.half");
  b.output(b.mul(w, b.full_like(w, 0.5)), "m.half_w", "m");
  run(g, "cse");
  CHECK(count_kind(g, OpKind::AdamW) == 2);
  CHECK(count_kind(g, OpKind::Mul) == 2);
  CHECK(count_kind(g, OpKind::Constant) == 1);  // the two 0.5 constants are still one
}

TEST_CASE("dce erases what reaches no output and keeps arguments", "[passes][dce]") {
  Graph g("dce");
  Builder b(g);
  auto x = b.input("x", {2, 4});
  auto unused = b.input("unused", {3});
  auto dead = b.exp(b.neg(b.log(x)));  // three dead ops
  b.sum(dead, {0});                    // and a fourth
  auto logits = b.input("logits", {2, 4});
  auto gate = b.moe_gate(logits, {.top_k = 2});
  b.output(gate[1], "experts");  // gate's weights are unused, but gate lives
  b.output(b.tanh(x), "y");
  b.output(x, "x_again");
  PassManager pm;
  pm.add_pipeline("dce");
  pm.run(g);
  CHECK(verify(g).empty());
  REQUIRE(g.ops().size() == 2);
  CHECK(g.ops()[0].kind == OpKind::Gate);
  CHECK(g.ops()[1].kind == OpKind::Tanh);
  CHECK(g.args().size() == 3);
  CHECK(g.find_arg("unused") == unused.id);
  CHECK(g.outputs().size() == 3);
  CHECK(pm.statistics()[0].counters == std::vector<std::pair<std::string, std::int64_t>>{{"ops-erased", 4}});
}
