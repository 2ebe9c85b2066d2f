// Elementwise ops and reductions of the CPU backend against per-element
// formulas written here (in double), for f32 and f64, several shapes
// including size-1 dims and scalars, and the integer forms.
#include <functional>
#include <limits>
#include <numbers>

#include "cpu_test_util.h"

using namespace moejit;
using namespace moejit::cpu_test;

namespace {

const std::vector<Shape> kShapes = {{}, {1}, {3, 1, 4}, {2, 5}, {1, 1}};

double gelu_formula(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

}  // namespace

TEST_CASE("unary float ops match their formulas", "[cpu][elementwise]") {
  struct Case {
    OpKind kind;
    std::function<double(double)> formula;
    double lo, hi;  // input range
  };
  const std::vector<Case> cases = {
      {OpKind::Neg, [](double x) { return -x; }, -3, 3},
      {OpKind::Exp, [](double x) { return std::exp(x); }, -3, 3},
      {OpKind::Log, [](double x) { return std::log(x); }, 0.1, 5},
      {OpKind::Sqrt, [](double x) { return std::sqrt(x); }, 0, 5},
      {OpKind::Rsqrt, [](double x) { return 1.0 / std::sqrt(x); }, 0.1, 5},
      {OpKind::Tanh, [](double x) { return std::tanh(x); }, -3, 3},
      {OpKind::Relu, [](double x) { return x > 0 ? x : 0.0; }, -3, 3},
      {OpKind::Gelu, gelu_formula, -4, 4},
      {OpKind::Silu, [](double x) { return x / (1.0 + std::exp(-x)); }, -6, 6},
      {OpKind::Sigmoid, [](double x) { return 1.0 / (1.0 + std::exp(-x)); }, -6, 6},
      {OpKind::Softplus, [](double x) { return std::log(1.0 + std::exp(x)); }, -20, 20},
  };
  std::mt19937 rng(1);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (const Shape& shape : kShapes) {
        HostTensor x = random_tensor(TensorType{dtype, shape}, rng, c.lo, c.hi);
        HostTensor y = run_op1(c.kind, {x});
        std::vector<double> want;
        for (double v : x.to_doubles()) want.push_back(c.formula(v));
        check_close(y, want, tolerance(dtype), std::string(op_name(c.kind)));
      }
    }
    // bf16 and f16 compute in f32 and round once: within half an ulp of the
    // rounded result, plus f32's error.
    for (DType half : {DType::bf16, DType::f16}) {
      HostTensor x = random_tensor(TensorType{half, {4, 3}}, rng, c.lo, c.hi);
      HostTensor y = run_op1(c.kind, {x});
      REQUIRE(y.dtype() == half);
      std::vector<double> want;
      for (double v : x.to_doubles()) want.push_back(c.formula(v));
      check_close(y, want, half == DType::bf16 ? 1.0 / 128 : 1.0 / 1024, std::string(op_name(c.kind)) + " half");
    }
  }
  // Large softplus inputs neither overflow nor lose precision.
  HostTensor big = HostTensor::from_doubles(TensorType{DType::f32, {2}}, std::vector<double>{100.0, -100.0});
  check_close(run_op1(OpKind::Softplus, {big}), {100.0, std::exp(-100.0)}, 1e-6);
}

TEST_CASE("binary ops on floats and integers", "[cpu][elementwise]") {
  struct Case {
    OpKind kind;
    std::function<double(double, double)> formula;
  };
  const std::vector<Case> cases = {
      {OpKind::Add, [](double a, double b) { return a + b; }},
      {OpKind::Sub, [](double a, double b) { return a - b; }},
      {OpKind::Mul, [](double a, double b) { return a * b; }},
      {OpKind::Div, [](double a, double b) { return a / b; }},
      {OpKind::Maximum, [](double a, double b) { return a > b ? a : b; }},
      {OpKind::Minimum, [](double a, double b) { return a < b ? a : b; }},
  };
  std::mt19937 rng(2);
  for (const Case& c : cases) {
    for (DType dtype : kFloatTypes) {
      for (const Shape& shape : kShapes) {
        HostTensor a = random_tensor(TensorType{dtype, shape}, rng);
        HostTensor b = random_tensor(TensorType{dtype, shape}, rng, 0.5, 3);
        std::vector<double> want;
        for (std::int64_t i = 0; i < a.numel(); ++i) want.push_back(c.formula(a.get(i), b.get(i)));
        check_close(run_op1(c.kind, {a, b}), want, tolerance(dtype), std::string(op_name(c.kind)));
      }
    }
    for (DType dtype : {DType::i32, DType::i64}) {
      HostTensor a = random_ints({3, 4}, rng, -50, 50, dtype);
      HostTensor b = random_ints({3, 4}, rng, 1, 9, dtype);
      std::vector<double> want;
      for (std::int64_t i = 0; i < a.numel(); ++i) {
        double w = c.formula(a.get(i), b.get(i));
        want.push_back(c.kind == OpKind::Div ? std::trunc(w) : w);  // integer division truncates
      }
      HostTensor y = run_op1(c.kind, {a, b});
      REQUIRE(y.dtype() == dtype);
      check_close(y, want, 0.0, std::string(op_name(c.kind)) + " int");
    }
  }
  // NaN propagates through maximum and minimum.
  double nan = std::numeric_limits<double>::quiet_NaN();
  HostTensor a = HostTensor::from_doubles(TensorType{DType::f32, {2}}, std::vector<double>{nan, 1.0});
  HostTensor b = HostTensor::from_doubles(TensorType{DType::f32, {2}}, std::vector<double>{1.0, nan});
  check_close(run_op1(OpKind::Maximum, {a, b}), {nan, nan}, 0.0);
  check_close(run_op1(OpKind::Minimum, {a, b}), {nan, nan}, 0.0);
  // i32 add wraps around; integer division by zero is an error naming the element.
  HostTensor big = HostTensor::from_doubles(TensorType{DType::i32, {1}}, std::vector<double>{2147483647.0});
  HostTensor one = HostTensor::from_doubles(TensorType{DType::i32, {1}}, std::vector<double>{1.0});
  check_close(run_op1(OpKind::Add, {big, one}), {-2147483648.0}, 0.0);
  HostTensor zero = HostTensor::from_doubles(TensorType{DType::i32, {1}}, std::vector<double>{0.0});
  CHECK_THROWS_WITH(run_op1(OpKind::Div, {one, zero}), Catch::Contains("mj.div") && Catch::Contains("element 0"));
}

TEST_CASE("compare, where and constant", "[cpu][elementwise]") {
  std::mt19937 rng(3);
  const std::vector<std::pair<std::string, std::function<bool(double, double)>>> predicates = {
      {"lt", std::less<double>()},     {"le", std::less_equal<double>()}, {"gt", std::greater<double>()},
      {"ge", std::greater_equal<double>()}, {"eq", std::equal_to<double>()}, {"ne", std::not_equal_to<double>()}};
  for (DType dtype : {DType::f32, DType::f64, DType::i32, DType::i64, DType::bf16}) {
    HostTensor a = is_float(dtype) ? random_tensor(TensorType{dtype, {4, 5}}, rng) : random_ints({4, 5}, rng, -3, 3, dtype);
    HostTensor b = is_float(dtype) ? random_tensor(TensorType{dtype, {4, 5}}, rng) : random_ints({4, 5}, rng, -3, 3, dtype);
    for (std::int64_t i = 0; i < a.numel(); i += 3) b.set(i, a.get(i));  // ties
    for (const auto& [name, test] : predicates) {
      HostTensor c = run_op1(OpKind::Compare, {a, b}, {{"predicate", name}});
      REQUIRE(c.dtype() == DType::i1);
      std::vector<double> want;
      for (std::int64_t i = 0; i < a.numel(); ++i) want.push_back(test(a.get(i), b.get(i)) ? 1.0 : 0.0);
      check_close(c, want, 0.0, name);
    }
  }
  for (DType dtype : {DType::f32, DType::f64, DType::i64, DType::f16}) {
    HostTensor cond = random_ints({2, 3, 1}, rng, 0, 2, DType::i1);
    HostTensor a = random_tensor(TensorType{dtype, {2, 3, 1}}, rng, -9, 9);
    HostTensor b = random_tensor(TensorType{dtype, {2, 3, 1}}, rng, -9, 9);
    std::vector<double> want;
    for (std::int64_t i = 0; i < a.numel(); ++i) want.push_back(cond.get(i) != 0 ? a.get(i) : b.get(i));
    check_close(run_op1(OpKind::Where, {cond, a, b}), want, 0.0, "where");
  }
  HostTensor c = run_op1(OpKind::Constant, {}, {{"dtype", DType::f32}, {"shape", std::vector<std::int64_t>{2, 3}}, {"value", 1.5}});
  check_close(c, std::vector<double>(6, 1.5), 0.0);
  HostTensor ci = run_op1(OpKind::Constant, {}, {{"dtype", DType::i32}, {"shape", std::vector<std::int64_t>{}}, {"value", -3.7}});
  REQUIRE(ci.type() == TensorType{DType::i32, {}});
  check_close(ci, {-3.0}, 0.0);
}

TEST_CASE("gelu_grad is the derivative of gelu", "[cpu][elementwise]") {
  std::mt19937 rng(4);
  for (DType dtype : kFloatTypes) {
    HostTensor x = random_tensor(TensorType{dtype, {3, 7}}, rng, -4, 4);
    HostTensor dy = random_tensor(TensorType{dtype, {3, 7}}, rng);
    std::vector<double> want;
    const double h = 1e-5;
    for (std::int64_t i = 0; i < x.numel(); ++i)
      want.push_back(dy.get(i) * (gelu_formula(x.get(i) + h) - gelu_formula(x.get(i) - h)) / (2 * h));
    check_close(run_op1(OpKind::GeluGrad, {x, dy}), want, dtype == DType::f64 ? 1e-8 : 2e-5);
  }
}

namespace {

// Reduction reference: for each element of the keepdims-shaped output, visit
// every input element whose kept coordinates match.
std::vector<double> reduce_reference(const HostTensor& x, std::vector<std::int64_t> axes, const std::string& how) {
  const Shape& shape = x.shape();
  const int rank = static_cast<int>(shape.size());
  std::vector<bool> reduced(shape.size(), false);
  for (auto a : axes) reduced[static_cast<std::size_t>(a < 0 ? a + rank : a)] = true;
  Shape kept = shape;
  for (int d = 0; d < rank; ++d)
    if (reduced[static_cast<std::size_t>(d)]) kept[static_cast<std::size_t>(d)] = 1;
  TensorType kept_type{DType::f64, kept};
  std::vector<double> result;
  for (std::int64_t o = 0; o < kept_type.numel(); ++o) {
    auto out_index = multi_index(kept, o);
    double acc = how == "max" ? -std::numeric_limits<double>::infinity() : 0.0;
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      auto in_index = multi_index(shape, i);
      bool match = true;
      for (int d = 0; d < rank; ++d)
        if (!reduced[static_cast<std::size_t>(d)] && in_index[static_cast<std::size_t>(d)] != out_index[static_cast<std::size_t>(d)])
          match = false;
      if (!match) continue;
      acc = how == "max" ? std::max(acc, x.get(i)) : acc + x.get(i);
      ++count;
    }
    result.push_back(how == "mean" ? acc / static_cast<double>(count) : acc);
  }
  return result;
}

}  // namespace

TEST_CASE("sum, mean and max over axes, keepdims, negative axes", "[cpu][reduce]") {
  std::mt19937 rng(5);
  const std::vector<std::pair<Shape, std::vector<std::vector<std::int64_t>>>> cases = {
      {{2, 3, 4}, {{}, {0}, {-1}, {1}, {0, 2}, {-3, -2}, {0, 1, 2}}},
      {{1, 3, 1}, {{0}, {2}, {0, 2}, {-2}}},
      {{5}, {{0}, {-1}}},
  };
  const std::pair<OpKind, std::string> kinds[] = {{OpKind::Sum, "sum"}, {OpKind::Mean, "mean"}, {OpKind::Max, "max"}};
  for (const auto& [shape, axes_list] : cases) {
    for (const auto& axes : axes_list) {
      for (bool keepdims : {false, true}) {
        for (const auto& [kind, how] : kinds) {
          for (DType dtype : {DType::f32, DType::f64, DType::i32, DType::i64}) {
            if (kind == OpKind::Mean && !is_float(dtype)) continue;
            HostTensor x = is_float(dtype) ? random_tensor(TensorType{dtype, shape}, rng) : random_ints(shape, rng, -20, 20, dtype);
            HostTensor y = run_op1(kind, {x}, {{"axes", axes}, {"keepdims", keepdims}});
            // Shape: reduced dims dropped, or kept as 1.
            Shape want_shape;
            for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
              bool r = false;
              for (auto a : axes) r = r || (a < 0 ? a + static_cast<int>(shape.size()) : a) == d;
              if (!r) want_shape.push_back(shape[static_cast<std::size_t>(d)]);
              else if (keepdims) want_shape.push_back(1);
            }
            REQUIRE(y.shape() == want_shape);
            check_close(y, reduce_reference(x, axes, how), is_float(dtype) ? tolerance(dtype) : 0.0, how);
          }
        }
      }
    }
  }
}

TEST_CASE("softmax and log_softmax over the last axis", "[cpu][reduce]") {
  std::mt19937 rng(6);
  for (DType dtype : kFloatTypes) {
    for (const Shape& shape : std::vector<Shape>{{3, 5}, {1}, {2, 1, 4}, {2, 3, 1}}) {
      HostTensor x = random_tensor(TensorType{dtype, shape}, rng, -5, 5);
      const std::int64_t c = shape.back();
      std::vector<double> soft, log_soft;
      for (std::int64_t i = 0; i < x.numel(); ++i) {
        std::int64_t row_start = i / c * c;
        double denominator = 0;
        for (std::int64_t j = 0; j < c; ++j) denominator += std::exp(x.get(row_start + j));
        soft.push_back(std::exp(x.get(i)) / denominator);
        log_soft.push_back(x.get(i) - std::log(denominator));
      }
      check_close(run_op1(OpKind::Softmax, {x}), soft, tolerance(dtype), "softmax");
      check_close(run_op1(OpKind::LogSoftmax, {x}), log_soft, tolerance(dtype), "log_softmax");
    }
  }
  // Large logits do not overflow.
  HostTensor big = HostTensor::from_doubles(TensorType{DType::f32, {2}}, std::vector<double>{1000.0, 1000.0});
  check_close(run_op1(OpKind::Softmax, {big}), {0.5, 0.5}, 1e-6);
}
