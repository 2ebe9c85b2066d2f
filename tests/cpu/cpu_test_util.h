// Helpers of the CPU backend tests: run one op through the real backend
// (builder -> compile -> set -> run -> get), random tensors, and a
// comparison against reference values computed independently in the tests.
#pragma once
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "ir/builder.h"
#include "ir/error.h"
#include "runtime/backend.h"

namespace moejit::cpu_test {

inline constexpr DType kFloatTypes[] = {DType::f32, DType::f64};

// Runs a graph holding one op on `operands` (bound as inputs x0, x1, ...) and
// returns its results.
inline std::vector<HostTensor> run_op(OpKind kind, const std::vector<HostTensor>& operands, AttrList attrs = {}) {
  Graph graph("single_op");
  Builder b(graph);
  std::vector<Tensor> inputs;
  for (std::size_t i = 0; i < operands.size(); ++i)
    inputs.push_back(b.input("x" + std::to_string(i), operands[i].shape(), operands[i].dtype()));
  std::vector<Tensor> results = b.op(kind, inputs, std::move(attrs));
  for (std::size_t j = 0; j < results.size(); ++j) b.output(results[j], "y" + std::to_string(j));
  auto exe = make_cpu_backend()->compile(graph);
  for (std::size_t i = 0; i < operands.size(); ++i) exe->set("x" + std::to_string(i), operands[i]);
  exe->run();
  std::vector<HostTensor> out;
  for (std::size_t j = 0; j < results.size(); ++j) out.push_back(exe->get("y" + std::to_string(j)));
  return out;
}

inline HostTensor run_op1(OpKind kind, const std::vector<HostTensor>& operands, AttrList attrs = {}) {
  return run_op(kind, operands, std::move(attrs)).at(0);
}

// Uniform random values in [lo, hi), of any dtype (rounded as the dtype does).
inline HostTensor random_tensor(TensorType type, std::mt19937& rng, double lo = -2.0, double hi = 2.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> values(static_cast<std::size_t>(type.numel()));
  for (auto& v : values) v = dist(rng);
  return HostTensor::from_doubles(std::move(type), values);
}

inline HostTensor random_ints(Shape shape, std::mt19937& rng, int lo, int hi, DType dtype = DType::i32) {
  std::uniform_int_distribution<int> dist(lo, hi - 1);
  TensorType type{dtype, std::move(shape)};
  std::vector<double> values(static_cast<std::size_t>(type.numel()));
  for (auto& v : values) v = dist(rng);
  return HostTensor::from_doubles(std::move(type), values);
}

// Tolerance of a comparison with a double-precision reference.
inline double tolerance(DType dtype) { return dtype == DType::f64 ? 1e-11 : 2e-5; }

// Checks |got - want| <= tol * (1 + |want|) elementwise; reports the first
// mismatch. NaN matches NaN.
inline void check_close(const HostTensor& got, const std::vector<double>& want, double tol, const std::string& what = "") {
  INFO(what << " " << got.type().str());
  REQUIRE(static_cast<std::size_t>(got.numel()) == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    double g = got.get(static_cast<std::int64_t>(i));
    bool ok = (std::isnan(g) && std::isnan(want[i])) || std::abs(g - want[i]) <= tol * (1.0 + std::abs(want[i]));
    if (!ok) {
      INFO("element " << i << ": got " << g << ", want " << want[i]);
      REQUIRE(ok);
    }
  }
}

inline void check_close(const HostTensor& got, const HostTensor& want, double tol, const std::string& what = "") {
  REQUIRE(got.shape() == want.shape());
  check_close(got, want.to_doubles(), tol, what);
}

// Row-major flat index of a multi-index.
inline std::int64_t flat_index(const Shape& shape, const std::vector<std::int64_t>& index) {
  std::int64_t flat = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + index[d];
  return flat;
}

// The multi-index of a row-major flat index.
inline std::vector<std::int64_t> multi_index(const Shape& shape, std::int64_t flat) {
  std::vector<std::int64_t> index(shape.size());
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    index[static_cast<std::size_t>(d)] = flat % shape[static_cast<std::size_t>(d)];
    flat /= shape[static_cast<std::size_t>(d)];
  }
  return index;
}

}  // namespace moejit::cpu_test
