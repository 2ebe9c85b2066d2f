// HostTensor storage, element access through doubles, dtype casts, and the
// bf16/f16 <-> f32 conversions (round to nearest even, NaN stays NaN, values
// past the largest finite number become infinity).
//
// The cast rules here are the semantics of the mj.cast op (the CPU kernel
// calls HostTensor::cast):
//   float -> float   round to nearest even (f64 -> bf16/f16 goes through f32)
//   float -> int     truncate toward zero; NaN -> 0; saturate at the int range
//   int   -> int     two's complement wrap (i64 -> i32 keeps the low 32 bits)
//   any   -> i1      nonzero -> 1 (NaN counts as nonzero)
//   i1    -> any     0 or 1
#include "runtime/host_tensor.h"

#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ir/error.h"

namespace moejit {

// ---- bf16 / f16 ----

std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // keep sign, force quiet
  // Round to nearest even on the 16 dropped bits; a carry into the exponent
  // is the correct result (up to infinity).
  std::uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7FFFu + lsb;
  return static_cast<std::uint16_t>(bits >> 16);
}

float bf16_to_float(std::uint16_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t float_to_f16(float value) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  std::uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);  // NaN
  if (abs_bits >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  int exponent = static_cast<int>(abs_bits >> 23) - 127;                           // unbiased
  std::uint32_t mantissa = (abs_bits & 0x7FFFFFu) | 0x800000u;                      // with the hidden bit
  if (abs_bits < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
  // f16 keeps 10 fraction bits for normals (exponent >= -14); below that the
  // value is a subnormal with fewer bits. `shift` is how many of the 24
  // mantissa bits are dropped.
  int shift = exponent >= -14 ? 13 : 13 + (-14 - exponent);
  std::uint32_t kept = mantissa >> shift;
  std::uint32_t rest = mantissa & ((1u << shift) - 1u);
  std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u))) ++kept;
  std::uint32_t result;
  if (exponent >= -14) {
    // kept holds the hidden bit at 2^10; a rounding carry to 2^11 bumps the exponent.
    result = (static_cast<std::uint32_t>(exponent + 15) << 10) + (kept - 0x400u);
  } else {
    result = kept;  // subnormal (a carry to 2^10 is the smallest normal, correctly)
  }
  return static_cast<std::uint16_t>(sign | result);
}

float f16_to_float(std::uint16_t bits) {
  std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  std::uint32_t exponent = (bits >> 10) & 0x1Fu;
  std::uint32_t fraction = bits & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (fraction << 13));  // inf / NaN
  if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (fraction << 13));
  // zero or subnormal: fraction * 2^-24
  float magnitude = std::ldexp(static_cast<float>(fraction), -24);
  return sign ? -magnitude : magnitude;
}

// ---- HostTensor ----

HostTensor::HostTensor(TensorType type) : type_(std::move(type)), data_(type_.bytes()) {
  for (auto d : type_.shape)
    if (d < 0) throw Error(fmt::format("HostTensor: expected non-negative dims, found {}", shape_str(type_.shape)));
}

namespace {

template <typename T>
constexpr bool holds(DType dtype) {
  switch (dtype) {
    case DType::f32: return std::is_same_v<T, float>;
    case DType::f64: return std::is_same_v<T, double>;
    case DType::bf16:
    case DType::f16: return std::is_same_v<T, std::uint16_t>;
    case DType::i32: return std::is_same_v<T, std::int32_t>;
    case DType::i64: return std::is_same_v<T, std::int64_t>;
    case DType::i1: return std::is_same_v<T, std::uint8_t>;
  }
  return false;
}

void check_count(const TensorType& type, std::size_t count) {
  if (static_cast<std::int64_t>(count) != type.numel())
    throw Error(fmt::format("HostTensor: expected {} values for {}, found {}", type.numel(), type.str(), count));
}

// Saturating float -> integer conversion (truncation toward zero, NaN -> 0).
template <typename Int>
Int float_to_int(double value) {
  if (std::isnan(value)) return 0;
  double t = std::trunc(value);
  if (t <= static_cast<double>(std::numeric_limits<Int>::min())) return std::numeric_limits<Int>::min();
  if (t >= static_cast<double>(std::numeric_limits<Int>::max())) return std::numeric_limits<Int>::max();
  return static_cast<Int>(t);
}

// Element i as an int64 (for integer and i1 dtypes; exact).
std::int64_t get_int(const HostTensor& t, std::int64_t i) {
  switch (t.dtype()) {
    case DType::i32: return t.values<std::int32_t>()[static_cast<std::size_t>(i)];
    case DType::i64: return t.values<std::int64_t>()[static_cast<std::size_t>(i)];
    case DType::i1: return t.values<std::uint8_t>()[static_cast<std::size_t>(i)] != 0;
    default: MOEJIT_ASSERT(false, "get_int on a float tensor");
  }
  return 0;
}

void set_int(HostTensor& t, std::int64_t i, std::int64_t value) {
  auto index = static_cast<std::size_t>(i);
  switch (t.dtype()) {
    case DType::i32: t.values<std::int32_t>()[index] = static_cast<std::int32_t>(static_cast<std::uint32_t>(value)); break;
    case DType::i64: t.values<std::int64_t>()[index] = value; break;
    case DType::i1: t.values<std::uint8_t>()[index] = value != 0; break;
    default: MOEJIT_ASSERT(false, "set_int on a float tensor");
  }
}

bool is_int_like(DType d) { return is_integer(d) || d == DType::i1; }

}  // namespace

template <typename T>
std::span<T> HostTensor::values() {
  MOEJIT_ASSERT(holds<T>(type_.dtype), fmt::format("typed view of the wrong element type on {}", type_.str()));
  return {reinterpret_cast<T*>(data_.data()), static_cast<std::size_t>(numel())};
}

template <typename T>
std::span<const T> HostTensor::values() const {
  MOEJIT_ASSERT(holds<T>(type_.dtype), fmt::format("typed view of the wrong element type on {}", type_.str()));
  return {reinterpret_cast<const T*>(data_.data()), static_cast<std::size_t>(numel())};
}

#define MOEJIT_INSTANTIATE_VALUES(T)               \
  template std::span<T> HostTensor::values<T>(); \
  template std::span<const T> HostTensor::values<T>() const;
MOEJIT_INSTANTIATE_VALUES(float)
MOEJIT_INSTANTIATE_VALUES(double)
MOEJIT_INSTANTIATE_VALUES(std::uint16_t)
MOEJIT_INSTANTIATE_VALUES(std::int32_t)
MOEJIT_INSTANTIATE_VALUES(std::int64_t)
MOEJIT_INSTANTIATE_VALUES(std::uint8_t)
#undef MOEJIT_INSTANTIATE_VALUES

HostTensor HostTensor::from_doubles(TensorType type, std::span<const double> values) {
  check_count(type, values.size());
  HostTensor t(std::move(type));
  for (std::size_t i = 0; i < values.size(); ++i) t.set(static_cast<std::int64_t>(i), values[i]);
  return t;
}

HostTensor HostTensor::from_floats(Shape shape, std::span<const float> values) {
  HostTensor t(TensorType{DType::f32, std::move(shape)});
  check_count(t.type(), values.size());
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size_bytes());
  return t;
}

HostTensor HostTensor::from_ints(Shape shape, std::span<const std::int32_t> values) {
  HostTensor t(TensorType{DType::i32, std::move(shape)});
  check_count(t.type(), values.size());
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size_bytes());
  return t;
}

HostTensor HostTensor::scalar(double value, DType dtype) {
  HostTensor t(TensorType{dtype, {}});
  t.set(0, value);
  return t;
}

double HostTensor::get(std::int64_t i) const {
  MOEJIT_ASSERT(i >= 0 && i < numel(), fmt::format("element {} of {}", i, type_.str()));
  auto index = static_cast<std::size_t>(i);
  switch (type_.dtype) {
    case DType::f32: return values<float>()[index];
    case DType::f64: return values<double>()[index];
    case DType::bf16: return bf16_to_float(values<std::uint16_t>()[index]);
    case DType::f16: return f16_to_float(values<std::uint16_t>()[index]);
    case DType::i32:
    case DType::i64:
    case DType::i1: return static_cast<double>(get_int(*this, i));
  }
  return 0.0;
}

void HostTensor::set(std::int64_t i, double value) {
  MOEJIT_ASSERT(i >= 0 && i < numel(), fmt::format("element {} of {}", i, type_.str()));
  auto index = static_cast<std::size_t>(i);
  switch (type_.dtype) {
    case DType::f32: values<float>()[index] = static_cast<float>(value); break;
    case DType::f64: values<double>()[index] = value; break;
    case DType::bf16: values<std::uint16_t>()[index] = float_to_bf16(static_cast<float>(value)); break;
    case DType::f16: values<std::uint16_t>()[index] = float_to_f16(static_cast<float>(value)); break;
    case DType::i32: values<std::int32_t>()[index] = float_to_int<std::int32_t>(value); break;
    case DType::i64: values<std::int64_t>()[index] = float_to_int<std::int64_t>(value); break;
    case DType::i1: values<std::uint8_t>()[index] = value != 0.0; break;
  }
}

std::vector<double> HostTensor::to_doubles() const {
  std::vector<double> out(static_cast<std::size_t>(numel()));
  for (std::int64_t i = 0; i < numel(); ++i) out[static_cast<std::size_t>(i)] = get(i);
  return out;
}

HostTensor HostTensor::cast(DType dtype) const {
  HostTensor out(TensorType{dtype, type_.shape});
  const std::int64_t n = numel();
  if (dtype == type_.dtype) {
    if (!data_.empty()) std::memcpy(out.raw(), raw(), data_.size());
  } else if (is_int_like(type_.dtype) && is_int_like(dtype)) {
    for (std::int64_t i = 0; i < n; ++i) set_int(out, i, get_int(*this, i));  // exact, wraps
  } else {
    // Through double: exact for every float dtype and for i32; i64 beyond
    // 2^53 rounds. f64 -> bf16/f16 rounds to f32 first (see set()).
    for (std::int64_t i = 0; i < n; ++i) out.set(i, get(i));
  }
  return out;
}

}  // namespace moejit
