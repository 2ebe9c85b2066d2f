// CPU kernels of the elementwise ops: unary float math, binary arithmetic
// (float and integer), compare, where, cast, constant, and gelu's backward.
// Every tensor here is contiguous and all operands have the result's shape,
// so each kernel is one loop over the flat index i.
//
// Float ops compute in the element type (f32 in f32, f64 in f64); bf16 and
// f16 compute in f32 and round once (see for_float in cpu_util.h).
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

// y[i] = f(x[i]) for x, y [...] of one float dtype.
template <class F>
void unary(const KernelArgs& args, F f) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0);
    auto y = out<T>(a, 0);
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  });
}

// c[i] = f(a[i], b[i]) for a, b, c [...] of one dtype: float or i32/i64.
template <class F>
void binary(const KernelArgs& args, F f) {
  auto loop = [&](auto zero, const KernelArgs& a) {
    using T = decltype(zero);
    auto x = in<T>(a, 0);
    auto y = in<T>(a, 1);
    auto z = out<T>(a, 0);
    for (std::size_t i = 0; i < x.size(); ++i) z[i] = f(x[i], y[i]);
  };
  switch (input(args, 0).dtype()) {
    case DType::i32: loop(std::int32_t{}, args); break;
    case DType::i64: loop(std::int64_t{}, args); break;
    default: for_float(args, [&](const KernelArgs& a, auto zero) { loop(zero, a); });
  }
}

// Integer add/sub/mul wrap around (two's complement) instead of overflowing.
template <typename T>
T wrap(T a, T b, char op) {
  using U = std::make_unsigned_t<T>;
  U ua = static_cast<U>(a), ub = static_cast<U>(b);
  U r = op == '+' ? ua + ub : op == '-' ? ua - ub : static_cast<U>(ua * ub);
  return static_cast<T>(r);
}

template <typename T>
T add(T a, T b) {
  if constexpr (std::is_integral_v<T>) return wrap(a, b, '+');
  else return a + b;
}
template <typename T>
T sub(T a, T b) {
  if constexpr (std::is_integral_v<T>) return wrap(a, b, '-');
  else return a - b;
}
template <typename T>
T mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) return wrap(a, b, '*');
  else return a * b;
}

// gelu, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <typename T>
T gelu(T x) {
  const T c = static_cast<T>(std::sqrt(2.0 / std::numbers::pi));
  return T(0.5) * x * (T(1) + std::tanh(c * (x + T(0.044715) * x * x * x)));
}

// d gelu / dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2),
// with u = c (x + 0.044715 x^3).
template <typename T>
T gelu_derivative(T x) {
  const T c = static_cast<T>(std::sqrt(2.0 / std::numbers::pi));
  T t = std::tanh(c * (x + T(0.044715) * x * x * x));
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(3 * 0.044715) * x * x);
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace

// ---- unary: x [...] float -> y [...] ----

/// neg: y = -x.
void kernel_Neg(const KernelArgs& args) { unary(args, [](auto x) { return -x; }); }
/// exp: y = e^x.
void kernel_Exp(const KernelArgs& args) { unary(args, [](auto x) { return std::exp(x); }); }
/// log: y = ln x (NaN below 0, -inf at 0).
void kernel_Log(const KernelArgs& args) { unary(args, [](auto x) { return std::log(x); }); }
/// sqrt: y = sqrt(x).
void kernel_Sqrt(const KernelArgs& args) { unary(args, [](auto x) { return std::sqrt(x); }); }
/// rsqrt: y = 1 / sqrt(x).
void kernel_Rsqrt(const KernelArgs& args) {
  unary(args, [](auto x) { return decltype(x)(1) / std::sqrt(x); });
}
/// tanh: y = tanh(x).
void kernel_Tanh(const KernelArgs& args) { unary(args, [](auto x) { return std::tanh(x); }); }
/// relu: y = max(x, 0) (NaN stays NaN).
void kernel_Relu(const KernelArgs& args) {
  unary(args, [](auto x) { return x < decltype(x)(0) ? decltype(x)(0) : x; });
}
/// gelu: the tanh approximation (see gelu() above).
void kernel_Gelu(const KernelArgs& args) { unary(args, [](auto x) { return gelu(x); }); }
/// silu: y = x * sigmoid(x).
void kernel_Silu(const KernelArgs& args) { unary(args, [](auto x) { return x * sigmoid(x); }); }
/// sigmoid: y = 1 / (1 + e^-x).
void kernel_Sigmoid(const KernelArgs& args) { unary(args, [](auto x) { return sigmoid(x); }); }
/// softplus: y = ln(1 + e^x), computed as max(x, 0) + log1p(e^-|x|) so it
/// neither overflows for large x nor loses small values for negative x.
void kernel_Softplus(const KernelArgs& args) {
  unary(args, [](auto x) { return std::max(x, decltype(x)(0)) + std::log1p(std::exp(-std::abs(x))); });
}

// ---- binary: a, b [...] same type -> c [...] ----

/// add: c = a + b (integers wrap).
void kernel_Add(const KernelArgs& args) { binary(args, [](auto a, auto b) { return add(a, b); }); }
/// sub: c = a - b (integers wrap).
void kernel_Sub(const KernelArgs& args) { binary(args, [](auto a, auto b) { return sub(a, b); }); }
/// mul: c = a * b (integers wrap).
void kernel_Mul(const KernelArgs& args) { binary(args, [](auto a, auto b) { return mul(a, b); }); }
/// div: c = a / b. Integers truncate toward zero; an integer division by
/// zero (or INT_MIN / -1) is an error naming the element.
void kernel_Div(const KernelArgs& args) {
  auto integer_div = [&](auto zero) {
    using T = decltype(zero);
    auto a = in<T>(args, 0);
    auto b = in<T>(args, 1);
    auto c = out<T>(args, 0);
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (b[i] == 0 || (b[i] == -1 && a[i] == std::numeric_limits<T>::min()))
        throw Error(fmt::format("element {}: expected a nonzero divisor (and not MIN / -1), found {} / {}", i, a[i], b[i]));
      c[i] = static_cast<T>(a[i] / b[i]);
    }
  };
  switch (input(args, 0).dtype()) {
    case DType::i32: integer_div(std::int32_t{}); break;
    case DType::i64: integer_div(std::int64_t{}); break;
    default: binary(args, [](auto a, auto b) { return a / b; });
  }
}
/// maximum: c = max(a, b); NaN in either operand gives NaN.
void kernel_Maximum(const KernelArgs& args) {
  binary(args, [](auto a, auto b) { return (a != a || b != b) ? a + b : (a > b ? a : b); });
}
/// minimum: c = min(a, b); NaN in either operand gives NaN.
void kernel_Minimum(const KernelArgs& args) {
  binary(args, [](auto a, auto b) { return (a != a || b != b) ? a + b : (a < b ? a : b); });
}

/// compare: a, b [...] same type -> c [...] i1, c = a <predicate> b with the
/// predicate one of lt le gt ge eq ne (IEEE: every comparison with NaN is
/// false except ne). bf16/f16 compare their exact f32 values.
void kernel_Compare(const KernelArgs& args) {
  const std::string& predicate = args.op.attrs.get_string("predicate");
  auto test = [&](auto a, auto b) -> bool {
    if (predicate == "lt") return a < b;
    if (predicate == "le") return a <= b;
    if (predicate == "gt") return a > b;
    if (predicate == "ge") return a >= b;
    if (predicate == "eq") return a == b;
    return a != b;  // "ne" (the verifier allows nothing else)
  };
  const HostTensor& a = input(args, 0);
  const HostTensor& b = input(args, 1);
  auto c = out<std::uint8_t>(args, 0);
  switch (a.dtype()) {
    case DType::f32: {
      auto x = a.values<float>(), y = b.values<float>();
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = test(x[i], y[i]);
      break;
    }
    case DType::f64: {
      auto x = a.values<double>(), y = b.values<double>();
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = test(x[i], y[i]);
      break;
    }
    case DType::i64: {
      auto x = a.values<std::int64_t>(), y = b.values<std::int64_t>();
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = test(x[i], y[i]);
      break;
    }
    default:  // bf16, f16, i32, i1: exact as doubles
      for (std::size_t i = 0; i < c.size(); ++i)
        c[i] = test(a.get(static_cast<std::int64_t>(i)), b.get(static_cast<std::int64_t>(i)));
  }
}

/// where: cond [...] i1, a, b [...] same type -> c[i] = cond[i] ? a[i] : b[i]
/// (any dtype: elements are copied as bytes).
void kernel_Where(const KernelArgs& args) {
  auto cond = in<std::uint8_t>(args, 0);
  const std::size_t size = dtype_size(input(args, 1).dtype());
  const std::byte* a = input(args, 1).raw();
  const std::byte* b = input(args, 2).raw();
  std::byte* c = output(args, 0).raw();
  for (std::size_t i = 0; i < cond.size(); ++i) std::memcpy(c + i * size, (cond[i] ? a : b) + i * size, size);
}

/// cast: x [...] -> [...] dtype, the rules of HostTensor::cast
/// (runtime/host_tensor.cpp): float rounding to nearest even, float -> int
/// truncating and saturating, NaN -> 0, nonzero -> true for i1.
void kernel_Cast(const KernelArgs& args) { output(args, 0) = input(args, 0).cast(output(args, 0).dtype()); }

/// constant: -> [shape] dtype, every element `value` (converted as
/// HostTensor::set does).
void kernel_Constant(const KernelArgs& args) {
  HostTensor& y = output(args, 0);
  if (y.numel() == 0) return;
  y.set(0, args.op.attrs.get_float("value"));
  const std::size_t size = dtype_size(y.dtype());
  for (std::int64_t i = 1; i < y.numel(); ++i) std::memcpy(y.raw() + idx(i) * size, y.raw(), size);
}

/// gelu_grad: x, dy [...] float -> dx = dy * gelu'(x) (tanh approximation).
void kernel_GeluGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0);
    auto dy = in<T>(a, 1);
    auto dx = out<T>(a, 0);
    for (std::size_t i = 0; i < x.size(); ++i) dx[i] = dy[i] * gelu_derivative(x[i]);
  });
}

}  // namespace moejit::cpu
