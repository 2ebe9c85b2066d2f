// Model-level ops: norms, attention, cross entropy, embedding, AdamW, and the
// backward helpers, against formulas written here and (for the gradients)
// central finite differences of the forward kernels in f64.
#include <limits>

#include "cpu_test_util.h"

using namespace moejit;
using namespace moejit::cpu_test;

namespace {

// Numerical gradient of L = sum(dy * op(operands)[0]) with respect to operand
// `wrt`, by central differences; the forward graph is compiled once.
std::vector<double> numeric_grad(OpKind kind, std::vector<HostTensor> operands, const AttrList& attrs, const HostTensor& dy,
                                 int wrt, double h = 1e-6) {
  Graph graph("forward");
  Builder b(graph);
  std::vector<Tensor> inputs;
  for (std::size_t i = 0; i < operands.size(); ++i)
    inputs.push_back(b.input("x" + std::to_string(i), operands[i].shape(), operands[i].dtype()));
  b.output(b.op(kind, inputs, attrs)[0], "y");  // result 0 (attention: out, not lse)
  auto exe = make_cpu_backend()->compile(graph);
  for (std::size_t i = 0; i < operands.size(); ++i) exe->set("x" + std::to_string(i), operands[i]);
  auto loss = [&]() {
    exe->run();
    HostTensor y = exe->get("y");
    double sum = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i) sum += dy.get(i) * y.get(i);
    return sum;
  };
  HostTensor& x = operands[static_cast<std::size_t>(wrt)];
  const std::string name = "x" + std::to_string(wrt);
  std::vector<double> grad;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    double original = x.get(i);
    x.set(i, original + h);
    exe->set(name, x);
    double plus = loss();
    x.set(i, original - h);
    exe->set(name, x);
    double minus = loss();
    x.set(i, original);
    exe->set(name, x);
    grad.push_back((plus - minus) / (2 * h));
  }
  return grad;
}

// Naive causal attention of q, k, v [B, H, T, Dh], straight from the definition.
// out [B, H, T, Dh] and, in *lse (when given), the row log-sum-exp [B, H, T].
std::vector<double> naive_attention(const HostTensor& q, const HostTensor& k, const HostTensor& v, double scale,
                                    std::vector<double>* lse = nullptr) {
  const Shape& s = q.shape();
  const std::int64_t bh = s[0] * s[1], t_len = s[2], dh = s[3];
  if (scale == 0) scale = 1.0 / std::sqrt(static_cast<double>(dh));
  std::vector<double> out(static_cast<std::size_t>(q.numel()));
  for (std::int64_t h = 0; h < bh; ++h) {
    auto at = [&](const HostTensor& x, std::int64_t t, std::int64_t d) { return x.get((h * t_len + t) * dh + d); };
    for (std::int64_t t = 0; t < t_len; ++t) {
      std::vector<double> weights;
      double total = 0;
      for (std::int64_t u = 0; u <= t; ++u) {
        double score = 0;
        for (std::int64_t d = 0; d < dh; ++d) score += at(q, t, d) * at(k, u, d);
        weights.push_back(std::exp(score * scale));
        total += weights.back();
      }
      if (lse) lse->push_back(std::log(total));
      for (std::int64_t d = 0; d < dh; ++d) {
        double o = 0;
        for (std::int64_t u = 0; u <= t; ++u) o += weights[static_cast<std::size_t>(u)] / total * at(v, u, d);
        out[static_cast<std::size_t>((h * t_len + t) * dh + d)] = o;
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("layer_norm and rms_norm match their formulas", "[cpu][nn]") {
  std::mt19937 rng(21);
  for (DType dtype : kFloatTypes) {
    for (const Shape& shape : std::vector<Shape>{{4, 6}, {1, 1}, {2, 3, 5}, {7}}) {
      const std::int64_t c = shape.back();
      HostTensor x = random_tensor(TensorType{dtype, shape}, rng, -3, 3);
      HostTensor gamma = random_tensor(TensorType{dtype, {c}}, rng), beta = random_tensor(TensorType{dtype, {c}}, rng);
      const double eps = 1e-5;
      std::vector<double> ln, rms;
      for (std::int64_t i = 0; i < x.numel(); ++i) {
        std::int64_t row = i / c * c, j = i % c;
        double mean = 0, var = 0, sq = 0;
        for (std::int64_t u = 0; u < c; ++u) mean += x.get(row + u) / static_cast<double>(c);
        for (std::int64_t u = 0; u < c; ++u) var += std::pow(x.get(row + u) - mean, 2) / static_cast<double>(c);
        for (std::int64_t u = 0; u < c; ++u) sq += std::pow(x.get(row + u), 2) / static_cast<double>(c);
        ln.push_back((x.get(i) - mean) / std::sqrt(var + eps) * gamma.get(j) + beta.get(j));
        rms.push_back(x.get(i) / std::sqrt(sq + eps) * gamma.get(j));
      }
      check_close(run_op1(OpKind::LayerNorm, {x, gamma, beta}, {{"eps", eps}}), ln, tolerance(dtype) * 10, "layer_norm");
      check_close(run_op1(OpKind::RmsNorm, {x, gamma}, {{"eps", eps}}), rms, tolerance(dtype) * 10, "rms_norm");
    }
  }
}

TEST_CASE("layer_norm_grad and rms_norm_grad match finite differences (f64)", "[cpu][nn][grad]") {
  std::mt19937 rng(22);
  for (const Shape& shape : std::vector<Shape>{{3, 5}, {2, 1, 4}, {1, 1}}) {
    const std::int64_t c = shape.back();
    HostTensor x = random_tensor(TensorType{DType::f64, shape}, rng, -2, 2);
    HostTensor gamma = random_tensor(TensorType{DType::f64, {c}}, rng), beta = random_tensor(TensorType{DType::f64, {c}}, rng);
    HostTensor dy = random_tensor(TensorType{DType::f64, shape}, rng);
    AttrList attrs{{"eps", 1e-3}};
    auto ln = run_op(OpKind::LayerNormGrad, {x, gamma, dy}, attrs);
    REQUIRE(ln.size() == 3);
    check_close(ln[0], numeric_grad(OpKind::LayerNorm, {x, gamma, beta}, attrs, dy, 0), 1e-7, "layer_norm dx");
    check_close(ln[1], numeric_grad(OpKind::LayerNorm, {x, gamma, beta}, attrs, dy, 1), 1e-7, "layer_norm dgamma");
    check_close(ln[2], numeric_grad(OpKind::LayerNorm, {x, gamma, beta}, attrs, dy, 2), 1e-7, "layer_norm dbeta");
    auto rms = run_op(OpKind::RmsNormGrad, {x, gamma, dy}, attrs);
    REQUIRE(rms.size() == 2);
    check_close(rms[0], numeric_grad(OpKind::RmsNorm, {x, gamma}, attrs, dy, 0), 1e-7, "rms_norm dx");
    check_close(rms[1], numeric_grad(OpKind::RmsNorm, {x, gamma}, attrs, dy, 1), 1e-7, "rms_norm dgamma");
  }
}

TEST_CASE("attention matches a naive causal attention", "[cpu][nn][attention]") {
  std::mt19937 rng(23);
  for (DType dtype : kFloatTypes) {
    for (const Shape& shape : std::vector<Shape>{{2, 3, 5, 4}, {1, 1, 1, 1}, {1, 2, 7, 3}}) {
      for (double scale : {0.0, 0.7}) {
        HostTensor q = random_tensor(TensorType{dtype, shape}, rng), k = random_tensor(TensorType{dtype, shape}, rng),
                   v = random_tensor(TensorType{dtype, shape}, rng);
        std::vector<double> lse;
        std::vector<double> want = naive_attention(q, k, v, scale, &lse);
        auto got = run_op(OpKind::Attention, {q, k, v}, {{"scale", scale}});
        REQUIRE(got.size() == 2);
        check_close(got[0], want, tolerance(dtype) * 10, "attention");
        CHECK(got[1].dtype() == dtype);
        CHECK(got[1].shape() == Shape{shape[0], shape[1], shape[2]});
        check_close(got[1], lse, tolerance(dtype) * 10, "attention lse");
      }
    }
  }
  // The first token attends only to itself: out[0] = v[0] whatever q, k are.
  HostTensor q = random_tensor(TensorType{DType::f32, {1, 1, 3, 2}}, rng), v = random_tensor(TensorType{DType::f32, {1, 1, 3, 2}}, rng);
  HostTensor out = run_op1(OpKind::Attention, {q, q, v}, {{"scale", 0.0}});
  CHECK(out.get(0) == Approx(v.get(0)));
  CHECK(out.get(1) == Approx(v.get(1)));
}

TEST_CASE("attention_grad matches finite differences (f64)", "[cpu][nn][attention][grad]") {
  std::mt19937 rng(24);
  for (const Shape& shape : std::vector<Shape>{{1, 2, 4, 3}, {2, 1, 3, 2}}) {
    for (double scale : {0.0, 0.9}) {
      std::vector<HostTensor> qkv;
      for (int i = 0; i < 3; ++i) qkv.push_back(random_tensor(TensorType{DType::f64, shape}, rng));
      HostTensor dout = random_tensor(TensorType{DType::f64, shape}, rng);
      AttrList attrs{{"scale", scale}};
      auto fwd = run_op(OpKind::Attention, qkv, attrs);
      auto grads = run_op(OpKind::AttentionGrad, {qkv[0], qkv[1], qkv[2], fwd[0], fwd[1], dout}, attrs);
      REQUIRE(grads.size() == 3);
      const char* names[] = {"dq", "dk", "dv"};
      for (int i = 0; i < 3; ++i)
        check_close(grads[static_cast<std::size_t>(i)], numeric_grad(OpKind::Attention, qkv, attrs, dout, i), 1e-7, names[i]);
    }
  }
  // f32 agrees with f64.
  HostTensor q = random_tensor(TensorType{DType::f64, {1, 1, 4, 2}}, rng), dout = random_tensor(TensorType{DType::f64, {1, 1, 4, 2}}, rng);
  auto f64 = run_op(OpKind::Attention, {q, q, q}, {{"scale", 0.0}});
  auto g64 = run_op(OpKind::AttentionGrad, {q, q, q, f64[0], f64[1], dout}, {{"scale", 0.0}});
  const HostTensor q32 = q.cast(DType::f32);
  auto f32 = run_op(OpKind::Attention, {q32, q32, q32}, {{"scale", 0.0}});
  auto g32 = run_op(OpKind::AttentionGrad, {q32, q32, q32, f32[0], f32[1], dout.cast(DType::f32)}, {{"scale", 0.0}});
  for (int i = 0; i < 3; ++i) check_close(g32[static_cast<std::size_t>(i)], g64[static_cast<std::size_t>(i)], 1e-5);
}

TEST_CASE("cross_entropy and its gradient", "[cpu][nn]") {
  std::mt19937 rng(25);
  for (DType dtype : kFloatTypes) {
    for (auto [rows, vocab] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4, 7}, {1, 1}, {3, 2}}) {
      HostTensor logits = random_tensor(TensorType{dtype, {rows, vocab}}, rng, -4, 4);
      HostTensor targets = random_ints({rows}, rng, 0, static_cast<int>(vocab));
      double want = 0;
      for (std::int64_t n = 0; n < rows; ++n) {
        double z = 0;
        for (std::int64_t j = 0; j < vocab; ++j) z += std::exp(logits.get(n * vocab + j));
        want += (std::log(z) - logits.get(n * vocab + static_cast<std::int64_t>(targets.get(n)))) / static_cast<double>(rows);
      }
      HostTensor loss = run_op1(OpKind::CrossEntropy, {logits, targets});
      REQUIRE(loss.type() == TensorType{dtype, {}});
      check_close(loss, {want}, tolerance(dtype), "cross_entropy");

      HostTensor dloss = HostTensor::scalar(0.75, dtype);
      std::vector<double> grad;
      for (std::int64_t n = 0; n < rows; ++n) {
        double z = 0;
        for (std::int64_t j = 0; j < vocab; ++j) z += std::exp(logits.get(n * vocab + j));
        for (std::int64_t j = 0; j < vocab; ++j)
          grad.push_back((std::exp(logits.get(n * vocab + j)) / z - (j == targets.get(n) ? 1.0 : 0.0)) * 0.75 /
                         static_cast<double>(rows));
      }
      HostTensor dlogits = run_op1(OpKind::CrossEntropyGrad, {logits, targets, dloss});
      check_close(dlogits, grad, tolerance(dtype), "cross_entropy_grad");
      if (dtype == DType::f64) check_close(dlogits, numeric_grad(OpKind::CrossEntropy, {logits, targets}, {}, dloss, 0), 1e-7);
    }
  }
  HostTensor logits = random_tensor(TensorType{DType::f32, {2, 3}}, rng);
  std::vector<std::int32_t> bad = {1, 3};
  CHECK_THROWS_WITH(run_op1(OpKind::CrossEntropy, {logits, HostTensor::from_ints({2}, bad)}),
                    Catch::Contains("mj.cross_entropy") && Catch::Contains("targets[1]") && Catch::Contains("found 3"));
}

TEST_CASE("embedding gathers rows and embedding_grad scatter-adds", "[cpu][nn]") {
  std::mt19937 rng(26);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    HostTensor table = random_tensor(TensorType{dtype, {5, 3}}, rng);
    for (const Shape& id_shape : std::vector<Shape>{{4}, {2, 3}, {1}, {}}) {
      HostTensor ids = random_ints(id_shape, rng, 0, 5);
      HostTensor y = run_op1(OpKind::Embedding, {table, ids});
      Shape want_shape = id_shape;
      want_shape.push_back(3);
      REQUIRE(y.shape() == want_shape);
      std::vector<double> want;
      for (std::int64_t i = 0; i < ids.numel(); ++i)
        for (std::int64_t d = 0; d < 3; ++d) want.push_back(table.get(static_cast<std::int64_t>(ids.get(i)) * 3 + d));
      check_close(y, want, 0.0, "embedding");
      if (dtype == DType::bf16) continue;
      HostTensor dy = random_tensor(TensorType{dtype, want_shape}, rng);
      HostTensor dtable = run_op1(OpKind::EmbeddingGrad, {ids, dy}, {{"num_embeddings", std::int64_t{6}}});
      REQUIRE(dtable.shape() == Shape{6, 3});
      std::vector<double> grad(18, 0.0);
      for (std::int64_t i = 0; i < ids.numel(); ++i)
        for (std::int64_t d = 0; d < 3; ++d) grad[static_cast<std::size_t>(ids.get(i) * 3 + d)] += dy.get(i * 3 + d);
      check_close(dtable, grad, tolerance(dtype), "embedding_grad");
    }
  }
  // An id out of range names the op, the index and the value.
  HostTensor table = random_tensor(TensorType{DType::f32, {5, 3}}, rng);
  std::vector<std::int32_t> ids = {0, 4, 5};
  CHECK_THROWS_WITH(run_op1(OpKind::Embedding, {table, HostTensor::from_ints({3}, ids)}),
                    Catch::Contains("mj.embedding") && Catch::Contains("ids[2]") && Catch::Contains("found 5"));
  std::vector<std::int32_t> negative = {-1};
  CHECK_THROWS_WITH(run_op1(OpKind::EmbeddingGrad, {HostTensor::from_ints({1}, negative), random_tensor(TensorType{DType::f32, {1, 3}}, rng)},
                            {{"num_embeddings", std::int64_t{5}}}),
                    Catch::Contains("mj.embedding_grad") && Catch::Contains("ids[0]") && Catch::Contains("found -1"));
}

TEST_CASE("adamw over 3 steps matches the torch.optim.AdamW formula", "[cpu][nn][adamw]") {
  const double lr = 0.01, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  Graph graph("adamw_step");
  Builder b(graph);
  Tensor param = b.param("w", {2, 3});
  Tensor m = b.state("m", {2, 3});
  Tensor v = b.state("v", {2, 3});
  Tensor grad = b.input("grad", {2, 3});
  Tensor lr_t = b.input("lr", {});
  Tensor step = b.input("step", {});
  auto [new_param, new_m, new_v] = b.adamw(param, grad, m, v, lr_t, step, {beta1, beta2, eps, weight_decay});
  b.output(new_param, "new_w", "w");
  b.output(new_m, "new_m", "m");
  b.output(new_v, "new_v", "v");
  auto exe = make_cpu_backend()->compile(graph);

  std::mt19937 rng(27);
  HostTensor w0 = random_tensor(TensorType{DType::f32, {2, 3}}, rng);
  exe->set("w", w0);
  exe->set("m", HostTensor(TensorType{DType::f32, {2, 3}}));
  exe->set("v", HostTensor(TensorType{DType::f32, {2, 3}}));
  exe->set("lr", HostTensor::scalar(lr));
  std::vector<double> w = w0.to_doubles(), mm(6, 0.0), vv(6, 0.0);
  for (int t = 1; t <= 3; ++t) {
    HostTensor g = random_tensor(TensorType{DType::f32, {2, 3}}, rng);
    exe->set("grad", g);
    exe->set("step", HostTensor::scalar(t));
    exe->run();
    for (std::size_t i = 0; i < 6; ++i) {
      double gi = g.get(static_cast<std::int64_t>(i));
      mm[i] = beta1 * mm[i] + (1 - beta1) * gi;
      vv[i] = beta2 * vv[i] + (1 - beta2) * gi * gi;
      double m_hat = mm[i] / (1 - std::pow(beta1, t)), v_hat = vv[i] / (1 - std::pow(beta2, t));
      w[i] = w[i] - lr * (m_hat / (std::sqrt(v_hat) + eps) + weight_decay * w[i]);
    }
    // The updates replaced the bound arguments: read both ways.
    check_close(exe->get("w"), w, 1e-5, "param after step " + std::to_string(t));
    check_close(exe->get("new_w"), w, 1e-5);
    check_close(exe->get("m"), mm, 1e-5, "m");
    check_close(exe->get("v"), vv, 1e-5, "v");
  }
  exe->set("step", HostTensor::scalar(0.0));
  CHECK_THROWS_WITH(exe->run(), Catch::Contains("mj.adamw") && Catch::Contains("step"));
}
