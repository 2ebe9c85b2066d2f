// HostTensor (bf16/f16 rounding, casts) and the Philox-based random ops
// (known-answer vectors, dropout and random_normal semantics and statistics).
#include <bit>
#include <cstring>
#include <limits>
#include <numbers>

#include "cpu_test_util.h"
#include "ir/philox.h"

using namespace moejit;
using namespace moejit::cpu_test;

namespace {

// ---- independent references for the half types ----

// Value of f16 bits, straight from the IEEE definition.
double f16_value(std::uint16_t bits) {
  int sign = bits >> 15, exponent = (bits >> 10) & 31, fraction = bits & 1023;
  double magnitude = exponent == 0 ? std::ldexp(fraction, -24) : std::ldexp(1.0 + fraction / 1024.0, exponent - 15);
  if (exponent == 31) magnitude = fraction ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  return sign ? -magnitude : magnitude;
}

double bf16_value(std::uint16_t bits) {
  int sign = bits >> 15, exponent = (bits >> 7) & 255, fraction = bits & 127;
  double magnitude = exponent == 0 ? std::ldexp(fraction, -133) : std::ldexp(1.0 + fraction / 128.0, exponent - 127);
  if (exponent == 255) magnitude = fraction ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  return sign ? -magnitude : magnitude;
}

// Round |v| to the nearest of the positive finite values decode(0..max_bits)
// (monotone in the bits), ties to even bits; past the largest finite value
// the next value is taken to be max + ulp, which rounds to infinity.
std::uint16_t round_reference(double v, std::uint16_t max_bits, std::uint16_t inf_bits, double (*decode)(std::uint16_t)) {
  std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  double a = std::abs(v);
  std::uint16_t lo = 0, hi = max_bits;  // largest b with decode(b) <= a
  if (a >= decode(max_bits)) {
    lo = max_bits;
  } else {
    while (lo < hi) {
      auto mid = static_cast<std::uint16_t>((lo + hi + 1) / 2);
      if (decode(mid) <= a) lo = mid;
      else hi = static_cast<std::uint16_t>(mid - 1);
    }
  }
  double below = decode(lo);
  if (below == a) return sign | lo;
  double above = lo == max_bits ? 2 * decode(max_bits) - decode(static_cast<std::uint16_t>(max_bits - 1)) : decode(static_cast<std::uint16_t>(lo + 1));
  std::uint16_t up = lo == max_bits ? inf_bits : static_cast<std::uint16_t>(lo + 1);
  if (a - below < above - a) return sign | lo;
  if (a - below > above - a) return sign | up;
  return sign | ((lo & 1) ? up : lo);
}

std::vector<float> interesting_floats(std::mt19937& rng) {
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 6e-8f, 2.98e-8f,
                               std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(1.5f, -25), 6.1e-5f, 3.0e38f,
                               3.4e38f, std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                               1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), 1.0f + std::ldexp(1.0f, -11),
                               1.0f + 3 * std::ldexp(1.0f, -11)};
  std::uniform_int_distribution<std::uint32_t> bits;
  std::uniform_real_distribution<float> wide(-70000.0f, 70000.0f);
  for (int i = 0; i < 3000; ++i) {
    float f = std::bit_cast<float>(bits(rng));
    if (!std::isnan(f) && !std::isinf(f)) values.push_back(f);
    values.push_back(wide(rng));
    values.push_back(wide(rng) * 1e-8f);
  }
  return values;
}

}  // namespace

TEST_CASE("bf16 and f16 conversions round to nearest even", "[cpu][host_tensor]") {
  std::mt19937 rng(7);
  for (float f : interesting_floats(rng)) {
    INFO("value " << f);
    CHECK(float_to_bf16(f) == round_reference(f, 0x7F7F, 0x7F80, bf16_value));
    CHECK(float_to_f16(f) == round_reference(f, 0x7BFF, 0x7C00, f16_value));
  }
  // Decoding every bit pattern agrees with the IEEE definition.
  for (std::uint32_t b = 0; b < 65536; ++b) {
    auto bits = static_cast<std::uint16_t>(b);
    double want16 = f16_value(bits), want_b = bf16_value(bits);
    if (std::isnan(want16)) CHECK(std::isnan(f16_to_float(bits)));
    else REQUIRE(f16_to_float(bits) == want16);
    if (std::isnan(want_b)) CHECK(std::isnan(bf16_to_float(bits)));
    else REQUIRE(bf16_to_float(bits) == want_b);
  }
  // NaN stays NaN; infinities stay infinite.
  float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK(std::isnan(bf16_to_float(float_to_bf16(nan))));
  CHECK(std::isnan(f16_to_float(float_to_f16(nan))));
  CHECK(std::isnan(bf16_to_float(float_to_bf16(-nan))));
  CHECK(bf16_to_float(float_to_bf16(-inf)) == -inf);
  CHECK(f16_to_float(float_to_f16(inf)) == inf);
}

TEST_CASE("HostTensor constructors, get/set and shape checks", "[cpu][host_tensor]") {
  HostTensor zeros(TensorType{DType::f32, {2, 3}});
  CHECK(zeros.numel() == 6);
  CHECK(zeros.bytes() == 24);
  for (double v : zeros.to_doubles()) CHECK(v == 0.0);
  std::vector<float> values = {1, 2, 3, 4};
  HostTensor t = HostTensor::from_floats({2, 2}, values);
  CHECK(t.get(3) == 4.0);
  t.set(3, 2.5);
  CHECK(t.values<float>()[3] == 2.5f);
  std::vector<std::int32_t> ids = {3, -1};
  CHECK(HostTensor::from_ints({2}, ids).get(1) == -1.0);
  CHECK(HostTensor::scalar(1.5, DType::bf16).get(0) == 1.5);
  CHECK(HostTensor::scalar(7.0, DType::i64).type() == TensorType{DType::i64, {}});
  CHECK_THROWS_AS(HostTensor::from_floats({3}, values), Error);
  std::vector<double> d = {1, 2};
  CHECK_THROWS_AS(HostTensor::from_doubles(TensorType{DType::f64, {3}}, d), Error);
}

TEST_CASE("cast between all dtypes", "[cpu][cast]") {
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::i1};
  // Values every dtype holds exactly (i1: 0 and 1 only).
  std::vector<double> small = {0, 1, 3, -2, 7, 1, 0, -5};
  for (DType from : all) {
    for (DType to : all) {
      INFO(dtype_name(from) << " -> " << dtype_name(to));
      std::vector<double> src = small;
      if (from == DType::i1)
        for (auto& v : src) v = v != 0;
      HostTensor x = HostTensor::from_doubles(TensorType{from, {2, 4}}, src);
      HostTensor y = run_op1(OpKind::Cast, {x}, {{"dtype", to}});
      REQUIRE(y.type() == TensorType{to, {2, 4}});
      std::vector<double> want = src;
      if (to == DType::i1)
        for (auto& v : want) v = v != 0;
      check_close(y, want, 0.0);
    }
  }
  // float -> int truncates toward zero, saturates, NaN -> 0.
  std::vector<double> floats = {2.7, -2.7, 0.5, -0.5, 3e9, -3e9, std::numeric_limits<double>::quiet_NaN(), 1e300};
  HostTensor y = run_op1(OpKind::Cast, {HostTensor::from_doubles(TensorType{DType::f64, {8}}, floats)}, {{"dtype", DType::i32}});
  check_close(y, {2, -2, 0, 0, 2147483647.0, -2147483648.0, 0, 2147483647.0}, 0.0);
  // f32 -> bf16 rounds to nearest even: 1 + 2^-8 ties down to 1, 1 + 3*2^-8 ties up to 1 + 2^-6.
  std::vector<double> ties = {1.0 + std::ldexp(1.0, -8), 1.0 + 3 * std::ldexp(1.0, -8), 1.0 + std::ldexp(1.0, -7) * 0.75};
  HostTensor b = run_op1(OpKind::Cast, {HostTensor::from_doubles(TensorType{DType::f32, {3}}, ties)}, {{"dtype", DType::bf16}});
  check_close(b, {1.0, 1.0 + std::ldexp(1.0, -6), 1.0 + std::ldexp(1.0, -7)}, 0.0);
  // i64 -> i32 keeps the low 32 bits; i64 -> i1 is "nonzero".
  HostTensor big(TensorType{DType::i64, {2}});
  big.values<std::int64_t>()[0] = (std::int64_t{1} << 32) + 5;
  big.values<std::int64_t>()[1] = std::int64_t{1} << 40;
  check_close(run_op1(OpKind::Cast, {big}, {{"dtype", DType::i32}}), {5, 0}, 0.0);
  check_close(run_op1(OpKind::Cast, {big}, {{"dtype", DType::i1}}), {1, 1}, 0.0);
  // HostTensor::cast agrees with the op.
  check_close(big.cast(DType::i32), {5, 0}, 0.0);
}

// ---- Philox ----

TEST_CASE("Philox4x32-10 matches Random123's known-answer vectors", "[cpu][philox]") {
  // Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key -> output.
  struct Kat {
    unsigned int counter[4], key[2], expected[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& kat : kats) {
    Philox4x32Block out = philox4x32_10(kat.counter[0], kat.counter[1], kat.counter[2], kat.counter[3], kat.key[0], kat.key[1]);
    for (int i = 0; i < 4; ++i) CHECK(out.word[i] == kat.expected[i]);
  }
  // It is constexpr on the host (the same text compiles as device code).
  static_assert(philox4x32_10(0, 0, 0, 0, 0, 0).word[0] == 0x6627e8d5u);
}

TEST_CASE("dropout follows the documented Philox mapping and statistics", "[cpu][dropout]") {
  const std::int64_t n = 8192;
  const double p = 0.3;
  const std::int64_t seed = 0x1234'5678'9abcLL;
  HostTensor ones = HostTensor::from_doubles(TensorType{DType::f32, {n}}, std::vector<double>(n, 1.0));
  auto dropout = [&](std::int64_t offset, DType dtype = DType::f32) {
    return run_op1(OpKind::Dropout, {ones.cast(dtype)}, {{"p", p}, {"seed", seed}, {"offset", offset}});
  };
  HostTensor a = dropout(0), again = dropout(0), shifted = dropout(1000);
  // Reference: element i keeps iff word (i % 4) of Philox(counter (i/4, 0, 0, 0),
  // key (seed lo, seed hi)), top 24 bits * 2^-24, is >= p.
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    Philox4x32Block r = philox4x32_10(static_cast<unsigned int>(i / 4), 0, 0, 0, static_cast<unsigned int>(seed),
                                      static_cast<unsigned int>(seed >> 32));
    bool keep = (r.word[i % 4] >> 8) * std::ldexp(1.0, -24) >= p;
    REQUIRE(a.get(i) == (keep ? static_cast<double>(static_cast<float>(1.0 / (1.0 - p))) : 0.0));
    kept += keep;
    REQUIRE(again.get(i) == a.get(i));  // same seed and offset: same mask
  }
  // Fraction kept ~ 1 - p (binomial: 4 standard deviations).
  double sigma = std::sqrt(n * p * (1 - p));
  CHECK(std::abs(static_cast<double>(kept) - n * (1 - p)) < 4 * sigma);
  // A different offset gives a different mask, which is the same mask shifted.
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < n; ++i) differ += (a.get(i) != shifted.get(i));
  CHECK(differ > n / 5);
  for (std::int64_t i = 0; i + 1000 < n; ++i) REQUIRE(shifted.get(i) == a.get(i + 1000));
  // f64 and bf16 use the same mask.
  HostTensor a64 = dropout(0, DType::f64), a16 = dropout(0, DType::bf16);
  for (std::int64_t i = 0; i < n; ++i) {
    REQUIRE((a64.get(i) == 0.0) == (a.get(i) == 0.0));
    REQUIRE((a16.get(i) == 0.0) == (a.get(i) == 0.0));
  }
  // p = 0 keeps everything unchanged.
  std::mt19937 rng(3);
  HostTensor x = random_tensor(TensorType{DType::f32, {3, 5}}, rng);
  check_close(run_op1(OpKind::Dropout, {x}, {{"p", 0.0}, {"seed", std::int64_t{1}}, {"offset", std::int64_t{0}}}), x, 0.0);
}

TEST_CASE("random_normal follows the documented Box-Muller mapping and statistics", "[cpu][random]") {
  const std::int64_t seed = 42, offset = 3, n = 20000;
  auto normal = [&](std::int64_t off, DType dtype) {
    return run_op1(OpKind::RandomNormal, {},
                   {{"shape", std::vector<std::int64_t>{n / 100, 100}}, {"seed", seed}, {"offset", off}, {"dtype", dtype}});
  };
  HostTensor z = normal(offset, DType::f64);
  REQUIRE(z.type() == TensorType{DType::f64, {n / 100, 100}});
  double sum = 0, sum_sq = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    // Reference: position m = offset + i; pair m / 2 is Philox counter (m/2, 0, 1, 0);
    // u1 = (w0 + 0.5) 2^-32, u2 = w1 2^-32; even m: r cos, odd m: r sin.
    std::int64_t m = offset + i;
    Philox4x32Block r = philox4x32_10(static_cast<unsigned int>(m / 2), 0, 1, 0, static_cast<unsigned int>(seed), 0);
    double u1 = (r.word[0] + 0.5) * std::ldexp(1.0, -32), u2 = r.word[1] * std::ldexp(1.0, -32);
    double radius = std::sqrt(-2 * std::log(u1)), angle = 2 * std::numbers::pi * u2;
    double want = m % 2 == 0 ? radius * std::cos(angle) : radius * std::sin(angle);
    REQUIRE(z.get(i) == Approx(want).epsilon(1e-14).margin(1e-14));
    sum += z.get(i);
    sum_sq += z.get(i) * z.get(i);
  }
  double mean = sum / n, var = sum_sq / n - mean * mean;
  CHECK(std::abs(mean) < 4.0 / std::sqrt(n));
  CHECK(std::abs(var - 1.0) < 0.05);
  // f32 is the f64 value rounded once; same seed/offset -> same values; another offset differs.
  HostTensor z32 = normal(offset, DType::f32);
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(z32.get(i) == static_cast<double>(static_cast<float>(z.get(i))));
  CHECK(normal(offset, DType::f32).to_doubles() == z32.to_doubles());
  CHECK(normal(offset + 1, DType::f32).to_doubles() != z32.to_doubles());
}
