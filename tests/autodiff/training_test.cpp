// End to end: whole-model gradients against central differences (a two-layer
// MLP, a one-block attention model), and a real learning test: a tiny MLP
// trained with AdamW (append_adamw) on XOR-labelled points, a task no linear
// model can fit, must go from chance-level loss to far below it.
#include <catch2/catch.hpp>

#include <cmath>

#include "ir/builder.h"
#include "passes/autodiff.h"
#include "frontends/optim.h"
#include "runtime/backend.h"
#include "runtime/gradcheck.h"

using namespace moejit;

namespace {

constexpr DType F = DType::f64;

// x [N, I] -> dense(tanh) [N, H] -> dense [N, C] logits; params w1 b1 w2 b2.
Tensor mlp_logits(Builder& b, Tensor x, std::int64_t hidden, std::int64_t classes, DType dtype) {
  const std::int64_t n = x.dim(0), in = x.dim(1);
  auto w1 = b.param("w1", {in, hidden}, dtype), b1 = b.param("b1", {hidden}, dtype);
  auto w2 = b.param("w2", {hidden, classes}, dtype), b2 = b.param("b2", {classes}, dtype);
  auto h = b.tanh(b.add(b.matmul(x, w1), b.broadcast(b1, {n, hidden})));
  return b.add(b.matmul(h, w2), b.broadcast(b2, {n, classes}));
}

}  // namespace

TEST_CASE("two-layer MLP: gradients of every param and the input match central differences", "[autodiff][model]") {
  Graph g("mlp");
  Builder b(g);
  auto x = b.input("x", {5, 3}, F);
  auto targets = b.input("targets", {5}, DType::i32);
  b.output(b.cross_entropy(mlp_logits(b, x, 6, 4, F), targets), "loss");
  std::map<std::string, HostTensor> values{{"targets", HostTensor::from_ints({5}, std::vector<std::int32_t>{0, 3, 1, 1, 2})}};
  auto report = check_gradients(g, values, {"w1", "b1", "w2", "b2", "x"});
  INFO(report.str());
  CHECK(report.max_rel_error() < 1e-6);
  for (const auto& entry : report.args) CHECK(entry.max_abs_numeric > 1e-3);
}

TEST_CASE("one-block attention model: embedding, layer_norm, q/k/v projections, attention, residual, cross_entropy",
          "[autodiff][model]") {
  const std::int64_t batch = 2, seq = 4, vocab = 7, d_model = 8, heads = 2, d_head = d_model / heads;
  Graph g("attention_block");
  Builder b(g);
  auto ids = b.input("ids", {batch, seq}, DType::i32);
  auto targets = b.input("targets", {batch * seq}, DType::i32);
  auto table = b.param("table", {vocab, d_model}, F);
  auto ln_gamma = b.param("ln_gamma", {d_model}, F), ln_beta = b.param("ln_beta", {d_model}, F);
  auto wq = b.param("wq", {d_model, d_model}, F), wk = b.param("wk", {d_model, d_model}, F);
  auto wv = b.param("wv", {d_model, d_model}, F), wo = b.param("wo", {d_model, d_model}, F);
  auto w_out = b.param("w_out", {d_model, vocab}, F);

  auto x = b.embedding(table, ids);              // [B, T, D]
  auto h = b.layer_norm(x, ln_gamma, ln_beta);   // [B, T, D]
  auto heads_of = [&](Tensor w) {                // [B, T, D] x [D, D] -> [B, H, T, Dh]
    auto projected = b.matmul(h, w);             // batched a, shared rank-2 b
    return b.transpose(b.reshape(projected, {batch, seq, heads, d_head}), {0, 2, 1, 3});
  };
  auto att = b.attention(heads_of(wq), heads_of(wk), heads_of(wv));                       // [B, H, T, Dh]
  auto merged = b.reshape(b.transpose(att, {0, 2, 1, 3}), {batch, seq, d_model});          // [B, T, D]
  auto residual = b.add(x, b.matmul(merged, wo));                                           // [B, T, D]
  auto logits = b.matmul(b.reshape(residual, {batch * seq, d_model}), w_out);              // [B*T, V]
  b.output(b.cross_entropy(logits, targets), "loss");

  std::map<std::string, HostTensor> values{
      {"ids", HostTensor::from_ints({batch, seq}, std::vector<std::int32_t>{3, 0, 6, 3, 1, 1, 5, 2})},
      {"targets", HostTensor::from_ints({batch * seq}, std::vector<std::int32_t>{0, 6, 3, 1, 1, 5, 2, 4})},
      // gamma near 1 as in a real model; the rest random in [-1, 1)
      {"ln_gamma", random_tensor({F, {d_model}}, 42, 0.5, 1.5)}};
  auto report = check_gradients(g, values, {"table", "ln_gamma", "ln_beta", "wq", "wk", "wv", "wo", "w_out"});
  INFO(report.str());
  CHECK(report.max_rel_error() < 1e-5);
  for (const auto& entry : report.args) CHECK(entry.max_abs_numeric > 1e-4);
  // Rows of the table no id selects get an exact zero gradient.
  Graph with_grads = g;
  append_backward(with_grads, {.wrt = {"table"}});
  auto exe = make_cpu_backend()->compile(with_grads);
  for (const auto& arg : with_grads.args()) {
    const auto& name = with_grads.value(arg.value).name;
    exe->set(name, values.count(name) ? values.at(name) : random_tensor(with_grads.type(arg.value), 9));
  }
  exe->run();
  HostTensor dtable = exe->get("grad.table");
  for (std::int64_t j = 0; j < d_model; ++j) CHECK(dtable.get(4 * d_model + j) == 0.0);  // id 4 is never used
}

TEST_CASE("a tiny MLP trained with AdamW learns XOR from chance level", "[autodiff][training]") {
  // Task: points uniform in [-1, 1)^2, class 1 where x0 * x1 > 0 (XOR of the
  // signs). Classes are balanced, so chance level is log(2); no linear
  // classifier does better than ~chance on it, so a final loss far below
  // log(2) shows that the hidden layer and every gradient work.
  const std::int64_t n = 64, hidden = 16, classes = 2;
  const double chance = std::log(2.0);
  Graph g("xor");
  Builder b(g);
  auto x = b.input("x", {n, 2});
  auto targets = b.input("targets", {n}, DType::i32);
  auto logits = mlp_logits(b, x, hidden, classes, DType::f32);
  b.output(b.cross_entropy(logits, targets), "loss");
  const std::vector<std::string> params = {"w1", "b1", "w2", "b2"};
  auto grads = append_backward(g, {.wrt = params});
  auto clipped = clip_grad_norm(b, as_tensors(g, grads), 5.0);
  std::vector<Tensor> param_tensors;
  for (const auto& name : params) param_tensors.push_back(Tensor{&g, g.find_arg(name)});
  AdamWStep step = append_adamw(b, param_tensors, clipped.grads, {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.0});

  auto exe = make_cpu_backend()->compile(g);
  HostTensor points = random_tensor({DType::f32, {n, 2}}, 2024);
  std::vector<std::int32_t> labels;
  for (std::int64_t i = 0; i < n; ++i) {
    // keep points off the axes so that the classes are separated by a margin
    for (std::int64_t j = 0; j < 2; ++j) {
      double v = points.get(i * 2 + j);
      points.set(i * 2 + j, v < 0 ? v - 0.1 : v + 0.1);
    }
    labels.push_back(points.get(i * 2) * points.get(i * 2 + 1) > 0 ? 1 : 0);
  }
  int ones = 0;
  for (auto l : labels) ones += l;
  REQUIRE(ones > n / 4);  // both classes present
  REQUIRE(ones < 3 * n / 4);
  exe->set("x", points);
  exe->set("targets", HostTensor::from_ints({n}, labels));
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& type = g.type(g.find_arg(params[i]));
    double limit = params[i][0] == 'b' ? 0.0 : 1.0 / std::sqrt(static_cast<double>(type.shape[0]));
    exe->set(params[i], limit > 0 ? random_tensor(type, 100 + i, -limit, limit) : HostTensor(type));
  }
  for (const auto& moment : step.moment_names) exe->set(moment, HostTensor(g.type(g.find_arg(moment))));
  exe->set("lr", HostTensor::scalar(0.03));

  std::vector<double> losses;
  for (int t = 1; t <= 300; ++t) {
    exe->set("step", HostTensor::scalar(t));
    exe->run();
    losses.push_back(exe->get("loss").get(0));  // the loss before this step's update
  }
  INFO("initial loss " << losses.front() << ", after 100 steps " << losses[99] << ", final " << losses.back()
                       << " (chance " << chance << ")");
  CHECK(losses.front() > 0.9 * chance);   // the untrained model is at chance level
  CHECK(losses.back() < 0.15 * chance);   // the trained one is far below it
  CHECK(losses.back() < losses[99]);      // and still improving late
}
