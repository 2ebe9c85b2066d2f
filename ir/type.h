// TensorType: a dtype and a static shape, printed as tensor<4x8xf32>.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ir/dtype.h"

namespace moejit {

using Shape = std::vector<std::int64_t>;

struct TensorType {
  DType dtype = DType::f32;
  Shape shape;  // empty for a scalar (rank 0)

  int rank() const { return static_cast<int>(shape.size()); }
  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
  // dim(-1) is the last dimension.
  std::int64_t dim(int axis) const;
  std::string str() const;  // tensor<4x8xf32>, tensor<f32> for a scalar
  bool operator==(const TensorType&) const = default;
};

std::string shape_str(const Shape& shape);  // [4, 8]

}  // namespace moejit
