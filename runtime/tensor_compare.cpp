// normalized_error and tolerance (see tensor_compare.h).
#include "runtime/tensor_compare.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "ir/error.h"

namespace moejit {

double normalized_error(const HostTensor& got, const HostTensor& reference) {
  if (got.type() != reference.type())
    throw Error(fmt::format("normalized_error: types differ, {} vs reference {}", got.type().str(), reference.type().str()));
  double diff = 0.0, norm = 0.0;
  for (std::int64_t i = 0; i < reference.numel(); ++i) {
    double x = got.get(i), y = reference.get(i);
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    if (std::isnan(x)) continue;
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  double floor = 1e-4 * static_cast<double>(reference.numel());  // (0.01 sqrt(n))^2
  return std::sqrt(diff / std::max(norm, floor));
}

double tolerance(DType dtype, double slack) {
  switch (dtype) {
    case DType::f32: return 1e-4 * slack;
    case DType::f64: return 1e-10 * slack;
    case DType::bf16: return 2e-2 * slack;
    case DType::f16: return 5e-3 * slack;
    default: return 0.0;
  }
}

double max_relative_difference(const HostTensor& got, const HostTensor& reference) {
  double diff = 0.0, scale = 0.0;
  for (std::int64_t i = 0; i < reference.numel(); ++i) {
    diff = std::max(diff, std::abs(got.get(i) - reference.get(i)));
    scale = std::max(scale, std::abs(reference.get(i)));
  }
  return scale > 0.0 ? diff / scale : diff;
}

}  // namespace moejit
