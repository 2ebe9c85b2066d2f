// append_backward's contract (outputs, accumulation, zero gradients, errors)
// and the optimizer helpers of frontends/optim.h against direct computations.
#include <catch2/catch.hpp>

#include <cmath>

#include "ir/builder.h"
#include "ir/error.h"
#include "ir/verifier.h"
#include "passes/autodiff.h"
#include "frontends/optim.h"
#include "passes/pass.h"
#include "runtime/backend.h"
#include "runtime/gradcheck.h"

using namespace moejit;

namespace {
constexpr DType F = DType::f64;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("append_backward adds grad outputs, sums repeated uses, zero-fills unreachable args", "[autodiff]") {
  // loss = sum(x * x + exp(x) * w) ; unused is never used; x is used three times.
  Graph g("t");
  Builder b(g);
  auto x = b.input("x", {2, 3}, F);
  auto w = b.param("w", {2, 3}, F);
  b.param("unused", {4}, F);
  auto square = b.mul(x, x);
  auto y = b.add(square, b.mul(b.exp(x), w));
  b.output(b.sum(y, {0, 1}), "loss");
  std::size_t forward_ops = g.ops().size();

  auto grads = append_backward(g, {.loss = "loss", .wrt = {"x", "w", "unused"}});
  REQUIRE(grads.size() == 3);
  REQUIRE(g.find_output("grad.x"));
  REQUIRE(g.find_output("grad.w"));
  REQUIRE(g.find_output("grad.unused"));
  CHECK(g.find_output("grad.x")->value == grads[0]);
  CHECK(verify(g).empty());
  CHECK(g.ops().size() > forward_ops);
  // forward ops untouched, at the front
  CHECK(g.ops()[0].kind == OpKind::Mul);

  auto exe = make_cpu_backend()->compile(g);
  std::vector<double> xs = {0.1, -0.2, 0.3, 0.5, -0.7, 1.1}, ws = {1, 2, 3, -1, -2, 0.5};
  exe->set("x", HostTensor::from_doubles({F, {2, 3}}, xs));
  exe->set("w", HostTensor::from_doubles({F, {2, 3}}, ws));
  exe->set("unused", HostTensor({F, {4}}));
  exe->run();
  HostTensor dx = exe->get("grad.x"), dw = exe->get("grad.w"), du = exe->get("grad.unused");
  for (std::size_t i = 0; i < xs.size(); ++i) {
    CHECK(dx.get(static_cast<std::int64_t>(i)) == Approx(2 * xs[i] + std::exp(xs[i]) * ws[i]).epsilon(1e-12));
    CHECK(dw.get(static_cast<std::int64_t>(i)) == Approx(std::exp(xs[i])).epsilon(1e-12));
  }
  CHECK(du.type() == TensorType{F, {4}});
  for (std::int64_t i = 0; i < 4; ++i) CHECK(du.get(i) == 0.0);
}

TEST_CASE("append_backward defaults to every float param and skips ops off the path", "[autodiff]") {
  Graph g("t");
  Builder b(g);
  auto x = b.input("x", {3}, F);
  auto w = b.param("w", {3}, F);
  // A branch that does not reach the loss, and one that does not depend on w.
  b.output(b.exp(w), "side");
  auto x2 = b.tanh(x);
  b.output(b.sum(b.mul(x2, w), {0}), "loss");
  auto grads = append_backward(g, {});
  REQUIRE(grads.size() == 1);
  CHECK(g.find_output("grad.w"));
  CHECK_FALSE(g.find_output("grad.x"));
  // d/dw = tanh(x): no backward op may touch the tanh or exp (nothing to differentiate there).
  for (std::size_t i = 4; i < g.ops().size(); ++i) {
    CHECK(g.ops()[i].kind != OpKind::Exp);
    CHECK(g.ops()[i].kind != OpKind::Tanh);
  }
}

TEST_CASE("append_backward rejects bad requests with named errors", "[autodiff][errors]") {
  SECTION("no such loss") {
    Graph g("t");
    Builder b(g);
    b.output(b.sum(b.param("w", {3}, F), {0}), "loss");
    CHECK_THAT(error_of([&] { append_backward(g, {.loss = "nope"}); }), Catch::Contains("'nope'"));
  }
  SECTION("loss not a scalar") {
    Graph g("t");
    Builder b(g);
    b.output(b.exp(b.param("w", {3}, F)), "loss");
    CHECK_THAT(error_of([&] { append_backward(g, {}); }), Catch::Contains("float scalar") && Catch::Contains("tensor<3xf64>"));
  }
  SECTION("wrt not an argument, or an integer one") {
    Graph g("t");
    Builder b(g);
    auto ids = b.input("ids", {3}, DType::i32);
    auto table = b.param("table", {4, 2}, F);
    b.output(b.sum(b.embedding(table, ids), {0, 1}), "loss");
    CHECK_THAT(error_of([&] { append_backward(g, {.wrt = {"table", "bogus"}}); }), Catch::Contains("'bogus'"));
    CHECK_THAT(error_of([&] { append_backward(g, {.wrt = {"ids"}}); }), Catch::Contains("'ids'") && Catch::Contains("float"));
  }
  SECTION("wrt names an argument twice (a named error, not a graph with two grad.w outputs)") {
    Graph g("t");
    Builder b(g);
    b.output(b.sum(b.param("w", {3}, F), {0}), "loss");
    const std::size_t outputs_before = g.outputs().size();
    CHECK_THAT(error_of([&] { append_backward(g, {.wrt = {"w", "w"}}); }),
               Catch::Contains("'w' twice") && Catch::Contains("expected each argument once"));
    CHECK(g.outputs().size() == outputs_before);
  }
  SECTION("a NotDiff op with a float operand on the path") {
    Graph g("t");
    Builder b(g);
    auto w = b.param("w", {3}, F);
    auto h = b.op1(OpKind::GeluGrad, {w, w});
    b.output(b.sum(h, {0}), "loss");
    std::string msg = error_of([&] { append_backward(g, {}); });
    CHECK_THAT(msg, Catch::Contains("mj.gelu_grad") && Catch::Contains("not differentiable"));
  }
  SECTION("a NotDiff op off the path is fine; compare ends a path (i1 result)") {
    Graph g("t");
    Builder b(g);
    auto w = b.param("w", {3}, F);
    auto other = b.input("other", {3}, F);
    auto cond = b.compare(w, b.full_like(w, 0.0), "gt");  // NotDiff, but its result carries no gradient
    auto h = b.where(cond, w, b.op1(OpKind::GeluGrad, {other, other}));
    b.output(b.sum(h, {0}), "loss");
    CHECK_NOTHROW(append_backward(g, {}));
  }
}

TEST_CASE("the autodiff pass is registered with loss= and wrt=", "[autodiff][pass]") {
  Graph g("t");
  Builder b(g);
  auto w1 = b.param("w1", {2}, F);
  auto w2 = b.param("w2", {2}, F);
  b.output(b.sum(b.mul(w1, w2), {0}), "objective");
  auto pass = create_pass("autodiff", {{"loss", "objective"}, {"wrt", "w1,w2"}});
  pass->run(g);
  CHECK(g.find_output("grad.w1"));
  CHECK(g.find_output("grad.w2"));
  CHECK(verify(g).empty());
  // wrt= with no names is an error, not a silent "every param".
  CHECK_THAT(error_of([] { create_pass("autodiff", {{"wrt", ","}}); }),
             Catch::Contains("wrt: expected a comma list of argument names, found ','"));
}

TEST_CASE("clip_grad_norm matches a direct computation", "[autodiff][optim]") {
  std::vector<double> g1 = {0.5, -1.5, 2.0, 0.25, -0.75, 1.0}, g2 = {3.0, -0.5, 0.125};
  double direct_norm = 0;
  for (double v : g1) direct_norm += v * v;
  for (double v : g2) direct_norm += v * v;
  direct_norm = std::sqrt(direct_norm);

  for (double max_norm : {1.0, 100.0}) {
    Graph g("clip");
    Builder b(g);
    auto a = b.input("g1", {2, 3}, F);
    auto c = b.input("g2", {3}, F);
    auto clipped = clip_grad_norm(b, {a, c}, max_norm);
    REQUIRE(clipped.grads.size() == 2);
    b.output(clipped.grads[0], "c1");
    b.output(clipped.grads[1], "c2");
    b.output(clipped.norm, "norm");
    auto exe = make_cpu_backend()->compile(g);
    exe->set("g1", HostTensor::from_doubles({F, {2, 3}}, g1));
    exe->set("g2", HostTensor::from_doubles({F, {3}}, g2));
    exe->run();
    CHECK(exe->get("norm").get(0) == Approx(direct_norm).epsilon(1e-12));
    double factor = direct_norm > max_norm ? max_norm / (direct_norm + 1e-6) : 1.0;
    HostTensor c1 = exe->get("c1"), c2 = exe->get("c2");
    double clipped_norm = 0;
    for (std::size_t i = 0; i < g1.size(); ++i) {
      CHECK(c1.get(static_cast<std::int64_t>(i)) == Approx(g1[i] * factor).epsilon(1e-12));
      clipped_norm += c1.get(static_cast<std::int64_t>(i)) * c1.get(static_cast<std::int64_t>(i));
    }
    for (std::size_t i = 0; i < g2.size(); ++i) {
      CHECK(c2.get(static_cast<std::int64_t>(i)) == Approx(g2[i] * factor).epsilon(1e-12));
      clipped_norm += c2.get(static_cast<std::int64_t>(i)) * c2.get(static_cast<std::int64_t>(i));
    }
    CHECK(std::sqrt(clipped_norm) <= max_norm * (1 + 1e-9));
  }
  Graph g("bad");
  Builder b(g);
  auto a = b.input("a", {2}, F);
  auto c = b.input("c", {2}, DType::f32);
  CHECK_THROWS_AS(clip_grad_norm(b, {}, 1.0), Error);
  CHECK_THROWS_AS(clip_grad_norm(b, {a}, 0.0), Error);
  CHECK_THAT(error_of([&] { clip_grad_norm(b, {a, c}, 1.0); }), Catch::Contains("gradient #1"));
}

TEST_CASE("append_adamw updates params and moments in place, as a direct AdamW step does", "[autodiff][optim]") {
  // loss = sum(w * x): grad.w = x, so the expected step is easy to compute here.
  Graph g("step");
  Builder b(g);
  auto x = b.input("x", {4});
  auto w = b.param("w", {4});
  b.output(b.sum(b.mul(w, x), {0}), "loss");
  auto grads = append_backward(g, {.wrt = {"w"}});
  AdamWOptions options{.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  AdamWStep step = append_adamw(g, {"w"}, grads, options);
  CHECK(step.moment_names == std::vector<std::string>{"m.w", "v.w"});
  REQUIRE(g.find_output("new.w"));
  CHECK(g.find_output("new.w")->updates == "w");
  CHECK(g.find_output("new.m.w")->updates == "m.w");
  CHECK(g.find_output("new.v.w")->updates == "v.w");
  CHECK(verify(g).empty());

  auto exe = make_cpu_backend()->compile(g);
  std::vector<float> xs = {0.5f, -1.0f, 2.0f, 0.0f}, ws = {1.0f, -0.5f, 0.25f, 2.0f};
  exe->set("x", HostTensor::from_floats({4}, xs));
  exe->set("w", HostTensor::from_floats({4}, ws));
  exe->set("m.w", HostTensor({DType::f32, {4}}));
  exe->set("v.w", HostTensor({DType::f32, {4}}));
  const double lr = 0.01;
  std::vector<double> p(ws.begin(), ws.end()), m(4, 0.0), v(4, 0.0);
  for (int t = 1; t <= 3; ++t) {
    exe->set("lr", HostTensor::scalar(lr));
    exe->set("step", HostTensor::scalar(t));
    exe->run();
    for (std::size_t i = 0; i < 4; ++i) {  // the reference AdamW step
      double grad = xs[i];
      m[i] = options.beta1 * m[i] + (1 - options.beta1) * grad;
      v[i] = options.beta2 * v[i] + (1 - options.beta2) * grad * grad;
      double m_hat = m[i] / (1 - std::pow(options.beta1, t)), v_hat = v[i] / (1 - std::pow(options.beta2, t));
      p[i] = p[i] - lr * options.weight_decay * p[i] - lr * m_hat / (std::sqrt(v_hat) + options.eps);
    }
    HostTensor pw = exe->get("w"), mw = exe->get("m.w"), vw = exe->get("v.w");
    for (std::size_t i = 0; i < 4; ++i) {
      auto k = static_cast<std::int64_t>(i);
      CHECK(pw.get(k) == Approx(p[i]).epsilon(1e-5));
      CHECK(mw.get(k) == Approx(m[i]).epsilon(1e-5).margin(1e-9));
      CHECK(vw.get(k) == Approx(v[i]).epsilon(1e-5).margin(1e-9));
    }
  }
  CHECK_THAT(error_of([&] { append_adamw(g, {"nope"}, grads); }), Catch::Contains("'nope'"));
}

TEST_CASE("the gradient checker flags a wrong gradient and fills missing float args", "[autodiff][gradcheck]") {
  // relu at exactly 0: the rule's subgradient is 0, the central difference 0.5.
  std::map<std::string, HostTensor> at_kink{{"x", HostTensor::from_doubles({F, {3}}, std::vector<double>{0.0, 1.0, -1.0})}};
  auto build = [](Builder& b) {
    auto x = b.input("x", {3}, F);
    b.output(b.sum(b.relu(x), {0}), "loss");
  };
  GradCheckReport bad = check_gradients(build, at_kink, {"x"});
  REQUIRE(bad.args.size() == 1);
  CHECK(bad.at("x").worst_index == 0);
  CHECK(bad.at("x").analytic == 0.0);
  CHECK(bad.at("x").numeric == Approx(0.5));
  CHECK(bad.max_rel_error() > 0.9);
  // Away from the kink, with x filled at random (|x| > step almost surely), it agrees.
  GradCheckReport good = check_gradients(build, {}, {"x"});
  CHECK(good.max_rel_error() < 1e-8);
  CHECK_THROWS_AS(good.at("nope"), Error);
  // An integer argument must be given.
  CHECK_THAT(error_of([] {
               check_gradients([](Builder& b) {
                 auto table = b.param("table", {3, 2}, F);
                 b.output(b.sum(b.embedding(table, b.input("ids", {2}, DType::i32)), {0, 1}), "loss");
               }, {}, {"table"});
             }),
             Catch::Contains("'ids'"));
}
