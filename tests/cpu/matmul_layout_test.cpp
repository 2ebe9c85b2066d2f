// mj.matmul against a naive triple loop (all transposes, batched, rank-2 b,
// threaded sizes) and the layout ops against index formulas written here.
#include <cstdlib>

#include "cpu_test_util.h"

using namespace moejit;
using namespace moejit::cpu_test;

namespace {

// c[batch, i, j] = sum_p A(batch, i, p) * B(batch, p, j), reading a and b
// through their stored layouts directly.
std::vector<double> naive_matmul(const HostTensor& a, const HostTensor& b, bool ta, bool tb) {
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  const std::size_t ar = as.size(), br = bs.size();
  std::int64_t m = ta ? as[ar - 1] : as[ar - 2], k = ta ? as[ar - 2] : as[ar - 1];
  std::int64_t n = tb ? bs[br - 2] : bs[br - 1];
  std::int64_t batches = a.numel() / (m * k);
  std::vector<double> c;
  for (std::int64_t batch = 0; batch < batches; ++batch) {
    std::int64_t b_batch = br == 2 ? 0 : batch;
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        double sum = 0;
        for (std::int64_t p = 0; p < k; ++p) {
          double av = a.get(batch * m * k + (ta ? p * m + i : i * k + p));
          double bv = b.get(b_batch * k * n + (tb ? j * k + p : p * n + j));
          sum += av * bv;
        }
        c.push_back(sum);
      }
    }
  }
  return c;
}

}  // namespace

TEST_CASE("matmul matches a naive triple loop", "[cpu][matmul]") {
  std::mt19937 rng(11);
  struct Case {
    Shape batch;
    std::int64_t m, k, n;
    bool b_shared;  // b of rank 2
  };
  const Case cases[] = {
      {{}, 3, 4, 5, false}, {{}, 1, 1, 1, false}, {{2}, 3, 1, 4, false}, {{2, 3}, 2, 5, 1, false},
      {{4}, 3, 6, 2, true}, {{2, 1}, 1, 3, 3, true}, {{}, 70, 90, 65, false},  // big enough to use threads
      {{3}, 40, 33, 50, true},
  };
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          Shape a_shape = c.batch, b_shape = c.b_shared ? Shape{} : c.batch;
          a_shape.push_back(ta ? c.k : c.m);
          a_shape.push_back(ta ? c.m : c.k);
          b_shape.push_back(tb ? c.n : c.k);
          b_shape.push_back(tb ? c.k : c.n);
          HostTensor a = random_tensor(TensorType{dtype, a_shape}, rng);
          HostTensor b = random_tensor(TensorType{dtype, b_shape}, rng);
          HostTensor y = run_op1(OpKind::Matmul, {a, b}, {{"transpose_a", ta}, {"transpose_b", tb}});
          Shape want_shape = c.batch;
          want_shape.push_back(c.m);
          want_shape.push_back(c.n);
          REQUIRE(y.shape() == want_shape);
          // f32 accumulates in f32: error grows like sqrt(k) ulps.
          check_close(y, naive_matmul(a, b, ta, tb), dtype == DType::f64 ? 1e-12 : 1e-5 * static_cast<double>(c.k),
                      "matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
        }
      }
    }
  }
  // bf16 operands compute in f32 and round the result once.
  HostTensor a = random_tensor(TensorType{DType::bf16, {4, 8}}, rng), b = random_tensor(TensorType{DType::bf16, {8, 3}}, rng);
  HostTensor y = run_op1(OpKind::Matmul, {a, b}, {{"transpose_a", false}, {"transpose_b", false}});
  REQUIRE(y.dtype() == DType::bf16);
  check_close(y, naive_matmul(a, b, false, false), 1.0 / 64);
}

TEST_CASE("reshape, transpose and broadcast", "[cpu][layout]") {
  std::mt19937 rng(12);
  for (DType dtype : {DType::f32, DType::f64, DType::i32, DType::i64, DType::bf16, DType::i1}) {
    HostTensor x = dtype == DType::i1 ? random_ints({2, 3, 4}, rng, 0, 2, dtype) : random_tensor(TensorType{dtype, {2, 3, 4}}, rng, -50, 50);
    // reshape keeps the row-major order.
    HostTensor r = run_op1(OpKind::Reshape, {x}, {{"shape", std::vector<std::int64_t>{4, -1, 1}}});
    REQUIRE(r.shape() == Shape{4, 6, 1});
    check_close(r, x.to_doubles(), 0.0, "reshape");
    // transpose: y[i0, i1, i2] = x at the index whose dim perm[d] is i_d.
    for (const std::vector<std::int64_t>& perm : {std::vector<std::int64_t>{2, 0, 1}, {1, 0, 2}, {0, 1, 2}, {2, 1, 0}}) {
      HostTensor y = run_op1(OpKind::Transpose, {x}, {{"perm", perm}});
      Shape y_shape = {x.shape()[static_cast<std::size_t>(perm[0])], x.shape()[static_cast<std::size_t>(perm[1])],
                       x.shape()[static_cast<std::size_t>(perm[2])]};
      REQUIRE(y.shape() == y_shape);
      std::vector<double> want;
      for (std::int64_t i = 0; i < y.numel(); ++i) {
        auto yi = multi_index(y_shape, i);
        std::vector<std::int64_t> xi(3);
        for (std::size_t d = 0; d < 3; ++d) xi[static_cast<std::size_t>(perm[d])] = yi[d];
        want.push_back(x.get(flat_index(x.shape(), xi)));
      }
      check_close(y, want, 0.0, "transpose");
    }
  }
  // broadcast: numpy rule, leading dims added, size-1 dims stretched.
  for (DType dtype : {DType::f32, DType::i64}) {
    for (const auto& [from, to] : std::vector<std::pair<Shape, Shape>>{
             {{3, 1}, {2, 3, 4}}, {{4}, {3, 4}}, {{}, {2, 2}}, {{1, 1}, {1, 5}}, {{2, 1, 3}, {2, 4, 3}}}) {
      HostTensor x = random_tensor(TensorType{dtype, from}, rng, -9, 9);
      HostTensor y = run_op1(OpKind::Broadcast, {x}, {{"shape", to}});
      REQUIRE(y.shape() == to);
      std::vector<double> want;
      for (std::int64_t i = 0; i < y.numel(); ++i) {
        auto yi = multi_index(to, i);
        std::vector<std::int64_t> xi;
        for (std::size_t d = 0; d < from.size(); ++d) {
          std::size_t yd = d + to.size() - from.size();
          xi.push_back(from[d] == 1 ? 0 : yi[yd]);
        }
        want.push_back(x.get(flat_index(from, xi)));
      }
      check_close(y, want, 0.0, "broadcast");
    }
  }
}

TEST_CASE("slice, pad and concat", "[cpu][layout]") {
  std::mt19937 rng(13);
  for (DType dtype : {DType::f32, DType::f64, DType::i32, DType::f16}) {
    HostTensor x = random_tensor(TensorType{dtype, {3, 4, 5}}, rng, -9, 9);
    std::vector<std::int64_t> start = {1, 0, 2}, limit = {3, 4, 3};
    HostTensor s = run_op1(OpKind::Slice, {x}, {{"start", start}, {"limit", limit}});
    REQUIRE(s.shape() == Shape{2, 4, 1});
    std::vector<double> want;
    for (std::int64_t i = 0; i < s.numel(); ++i) {
      auto si = multi_index(s.shape(), i);
      want.push_back(x.get(flat_index(x.shape(), {si[0] + 1, si[1], si[2] + 2})));
    }
    check_close(s, want, 0.0, "slice");

    std::vector<std::int64_t> low = {0, 2, 1}, high = {1, 0, 1};
    HostTensor p = run_op1(OpKind::Pad, {x}, {{"low", low}, {"high", high}});
    REQUIRE(p.shape() == Shape{4, 6, 7});
    want.clear();
    for (std::int64_t i = 0; i < p.numel(); ++i) {
      auto pi = multi_index(p.shape(), i);
      std::vector<std::int64_t> xi = {pi[0] - low[0], pi[1] - low[1], pi[2] - low[2]};
      bool inside = true;
      for (std::size_t d = 0; d < 3; ++d) inside = inside && xi[d] >= 0 && xi[d] < x.shape()[d];
      want.push_back(inside ? x.get(flat_index(x.shape(), xi)) : 0.0);
    }
    check_close(p, want, 0.0, "pad");

    // concat along each axis (also negative), three inputs of different sizes.
    for (std::int64_t axis : {0, 1, -1}) {
      std::size_t a = static_cast<std::size_t>(axis < 0 ? axis + 3 : axis);
      std::vector<HostTensor> parts;
      for (std::int64_t size : {2, 1, 3}) {
        Shape shape = {2, 3, 2};
        shape[a] = size;
        parts.push_back(random_tensor(TensorType{dtype, shape}, rng, -9, 9));
      }
      HostTensor y = run_op1(OpKind::Concat, parts, {{"axis", axis}});
      Shape y_shape = {2, 3, 2};
      y_shape[a] = 6;
      REQUIRE(y.shape() == y_shape);
      want.clear();
      for (std::int64_t i = 0; i < y.numel(); ++i) {
        auto yi = multi_index(y_shape, i);
        std::size_t part = 0;
        while (yi[a] >= parts[part].shape()[a]) yi[a] -= parts[part++].shape()[a];
        want.push_back(parts[part].get(flat_index(parts[part].shape(), yi)));
      }
      check_close(y, want, 0.0, "concat axis " + std::to_string(axis));
    }
  }
}

TEST_CASE("threaded kernels give the same bits on 1 and 2 threads", "[cpu][matmul][threads]") {
  std::mt19937 rng(14);
  HostTensor a = random_tensor(TensorType{DType::f32, {2, 64, 96}}, rng), b = random_tensor(TensorType{DType::f32, {96, 80}}, rng);
  HostTensor q = random_tensor(TensorType{DType::f32, {2, 2, 9, 4}}, rng);
  auto run_all = [&](const char* threads) {
    setenv("MOEJIT_CPU_THREADS", threads, 1);
    std::vector<HostTensor> results = {run_op1(OpKind::Matmul, {a, b}, {{"transpose_a", false}, {"transpose_b", false}}),
                                       run_op1(OpKind::Attention, {q, q, q}, {{"scale", 0.0}})};
    auto fwd = run_op(OpKind::Attention, {q, q, q}, {{"scale", 0.0}});
    for (const HostTensor& g : run_op(OpKind::AttentionGrad, {q, q, q, fwd[0], fwd[1], q}, {{"scale", 0.0}})) results.push_back(g);
    unsetenv("MOEJIT_CPU_THREADS");
    return results;
  };
  std::vector<HostTensor> one = run_all("1"), two = run_all("2");
  for (std::size_t i = 0; i < one.size(); ++i) CHECK(one[i].to_doubles() == two[i].to_doubles());
  check_close(one[0], naive_matmul(a, b, false, false), 1e-3);
}
