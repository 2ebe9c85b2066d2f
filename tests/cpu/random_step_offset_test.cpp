// The run-time step_offset operand of mj.dropout and mj.random_normal: the
// Philox base position is the `offset` attribute plus the operand (unsigned,
// wrapping), read when the graph runs, so one compiled graph draws fresh
// numbers for each value it is fed. References here are the same ops with
// the offset folded into the attribute (their own Philox mapping is checked
// against an independent reference in host_tensor_random_test.cpp), plus a
// direct Philox reference for one case.
#include <cstring>

#include "cpu_test_util.h"
#include "ir/philox.h"

using namespace moejit;
using namespace moejit::cpu_test;

namespace {

const std::int64_t kSeed = 0x5eed'0000'1234LL;

HostTensor i64_scalar(std::int64_t value) {
  HostTensor t(TensorType{DType::i64, {}});
  t.values<std::int64_t>()[0] = value;
  return t;
}

HostTensor ones(std::int64_t n, DType dtype = DType::f32) {
  return HostTensor::from_doubles(TensorType{DType::f64, {n}}, std::vector<double>(static_cast<std::size_t>(n), 1.0)).cast(dtype);
}

AttrList dropout_attrs(std::int64_t offset, double p = 0.5) { return {{"p", p}, {"seed", kSeed}, {"offset", offset}}; }

AttrList normal_attrs(std::int64_t offset, std::int64_t n, DType dtype = DType::f32) {
  return {{"shape", std::vector<std::int64_t>{n}}, {"seed", kSeed}, {"offset", offset}, {"dtype", dtype}};
}

std::int64_t count_differences(const HostTensor& a, const HostTensor& b) {
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) differ += a.get(i) != b.get(i);
  return differ;
}

}  // namespace

TEST_CASE("dropout step_offset: deterministic, fresh per value, equal to the folded attribute offset", "[cpu][dropout][step_offset]") {
  const std::int64_t n = 4096;
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    INFO("dtype " << dtype_name(dtype));
    const HostTensor x = ones(n, dtype);
    HostTensor a = run_op1(OpKind::Dropout, {x, i64_scalar(1000)}, dropout_attrs(7));
    HostTensor again = run_op1(OpKind::Dropout, {x, i64_scalar(1000)}, dropout_attrs(7));
    HostTensor next = run_op1(OpKind::Dropout, {x, i64_scalar(1000 + n)}, dropout_attrs(7));
    CHECK(count_differences(a, again) == 0);  // same seed, offset and step_offset: same mask
    CHECK(count_differences(a, next) > n / 4);  // another step_offset: another mask (p = 0.5: about half differ)
    // step_offset k is bit-identical to attribute offset + k without the operand.
    HostTensor folded = run_op1(OpKind::Dropout, {x}, dropout_attrs(1007));
    REQUIRE(a.type() == folded.type());
    CHECK(std::memcmp(a.raw(), folded.raw(), a.bytes()) == 0);
    // An operand of 0 is the attribute alone.
    HostTensor zero_step = run_op1(OpKind::Dropout, {x, i64_scalar(0)}, dropout_attrs(7));
    HostTensor plain = run_op1(OpKind::Dropout, {x}, dropout_attrs(7));
    CHECK(std::memcmp(zero_step.raw(), plain.raw(), plain.bytes()) == 0);
  }
}

TEST_CASE("dropout step_offset follows Philox at position offset + step_offset + i, wrapping mod 2^64", "[cpu][dropout][step_offset]") {
  const std::int64_t n = 512;
  const double p = 0.3;
  // offset 5 and step_offset -7: base = 2^64 - 2, so elements 0 and 1 sit at
  // the top of the 64-bit position space and element 2 wraps to position 0.
  HostTensor got = run_op1(OpKind::Dropout, {ones(n), i64_scalar(-7)}, dropout_attrs(5, p));
  const double keep_scale = static_cast<double>(static_cast<float>(1.0 / (1.0 - p)));
  for (std::int64_t i = 0; i < n; ++i) {
    const unsigned long long position = 0xFFFF'FFFF'FFFF'FFFEull + static_cast<unsigned long long>(i);  // wraps
    const unsigned long long block = position / 4;
    Philox4x32Block r = philox4x32_10(static_cast<unsigned int>(block), static_cast<unsigned int>(block >> 32), 0, 0,
                                      static_cast<unsigned int>(kSeed), static_cast<unsigned int>(static_cast<unsigned long long>(kSeed) >> 32));
    const bool keep = (r.word[position % 4] >> 8) * std::ldexp(1.0, -24) >= p;
    INFO("element " << i);
    REQUIRE(got.get(i) == (keep ? keep_scale : 0.0));
  }
  // The wrapped tail equals a mask drawn from offset 0.
  HostTensor from_zero = run_op1(OpKind::Dropout, {ones(n - 2)}, dropout_attrs(0, p));
  for (std::int64_t i = 2; i < n; ++i) REQUIRE(got.get(i) == from_zero.get(i - 2));
}

TEST_CASE("random_normal step_offset: deterministic, fresh per value, equal to the folded attribute offset", "[cpu][random][step_offset]") {
  const std::int64_t n = 1000;
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO("dtype " << dtype_name(dtype));
    HostTensor a = run_op1(OpKind::RandomNormal, {i64_scalar(12345)}, normal_attrs(3, n, dtype));
    HostTensor again = run_op1(OpKind::RandomNormal, {i64_scalar(12345)}, normal_attrs(3, n, dtype));
    HostTensor next = run_op1(OpKind::RandomNormal, {i64_scalar(12345 + n)}, normal_attrs(3, n, dtype));
    HostTensor folded = run_op1(OpKind::RandomNormal, {}, normal_attrs(12348, n, dtype));
    CHECK(std::memcmp(a.raw(), again.raw(), a.bytes()) == 0);
    CHECK(std::memcmp(a.raw(), folded.raw(), a.bytes()) == 0);  // bit-identical
    CHECK(count_differences(a, next) > n * 9 / 10);              // continuous values: essentially all differ
    // An odd step_offset shifts by one element within a Box-Muller pair.
    HostTensor shifted = run_op1(OpKind::RandomNormal, {i64_scalar(12346)}, normal_attrs(3, n, dtype));
    for (std::int64_t i = 0; i + 1 < n; ++i) REQUIRE(shifted.get(i) == a.get(i + 1));
  }
}

TEST_CASE("one compiled graph reads step_offset at run time", "[cpu][dropout][random][step_offset]") {
  const std::int64_t n = 256;
  Graph graph("per_step_randomness");
  Builder b(graph);
  Tensor x = b.input("x", {n});
  Tensor step = b.input("rng_offset", {}, DType::i64);
  b.output(b.dropout(x, 0.25, kSeed, 11, &step), "dropped");
  b.output(b.random_normal({n}, kSeed, 11, DType::f32, &step), "noise");
  auto exe = make_cpu_backend()->compile(graph);
  exe->set("x", ones(n));
  for (std::int64_t step_value : {0LL, 5000LL, 123456789012LL}) {
    INFO("rng_offset " << step_value);
    exe->set("rng_offset", i64_scalar(step_value));
    exe->run();
    HostTensor want_dropped = run_op1(OpKind::Dropout, {ones(n)}, dropout_attrs(11 + step_value, 0.25));
    HostTensor want_noise = run_op1(OpKind::RandomNormal, {}, normal_attrs(11 + step_value, n));
    CHECK(count_differences(exe->get("dropped"), want_dropped) == 0);
    CHECK(count_differences(exe->get("noise"), want_noise) == 0);
  }
}

TEST_CASE("step_offset must be a rank-0 i64 tensor", "[cpu][step_offset][errors]") {
  Graph graph("bad_step_offset");
  Builder b(graph);
  Tensor x = b.input("x", {8});
  Tensor as_i32 = b.input("as_i32", {}, DType::i32);
  Tensor as_vector = b.input("as_vector", {1}, DType::i64);
  auto message_of = [](auto&& build) {
    try {
      build();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string wrong_dtype = message_of([&] { b.dropout(x, 0.1, 1, 0, &as_i32); });
  INFO(wrong_dtype);
  CHECK(wrong_dtype.find("mj.dropout") != std::string::npos);
  CHECK(wrong_dtype.find("step_offset") != std::string::npos);
  CHECK(wrong_dtype.find("i64") != std::string::npos);
  CHECK(wrong_dtype.find("tensor<i32>") != std::string::npos);
  std::string wrong_rank = message_of([&] { b.random_normal({4}, 1, 0, DType::f32, &as_vector); });
  INFO(wrong_rank);
  CHECK(wrong_rank.find("mj.random_normal") != std::string::npos);
  CHECK(wrong_rank.find("step_offset") != std::string::npos);
  CHECK(wrong_rank.find("tensor<1xi64>") != std::string::npos);
}
