// HostTensor: a typed, contiguous, row-major tensor in host memory. What
// users bind to and read from an Executable, on every backend.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "ir/type.h"

namespace moejit {

class HostTensor {
 public:
  HostTensor() = default;
  explicit HostTensor(TensorType type);  // zero-filled

  // From values given as doubles (converted to the dtype).
  static HostTensor from_doubles(TensorType type, std::span<const double> values);
  static HostTensor from_floats(Shape shape, std::span<const float> values);
  static HostTensor from_ints(Shape shape, std::span<const std::int32_t> values);
  static HostTensor scalar(double value, DType dtype = DType::f32);

  const TensorType& type() const { return type_; }
  const Shape& shape() const { return type_.shape; }
  DType dtype() const { return type_.dtype; }
  std::int64_t numel() const { return type_.numel(); }
  std::size_t bytes() const { return data_.size(); }

  std::byte* raw() { return data_.data(); }
  const std::byte* raw() const { return data_.data(); }
  // Typed views; the element type must match the dtype (assertion).
  template <typename T>
  std::span<T> values();
  template <typename T>
  std::span<const T> values() const;

  // Element i (flat index) as a double, and back, for any dtype.
  double get(std::int64_t i) const;
  void set(std::int64_t i, double value);
  std::vector<double> to_doubles() const;
  // The same values in another dtype (rounding as the cast op does).
  HostTensor cast(DType dtype) const;

 private:
  TensorType type_;
  std::vector<std::byte> data_;
};

// bf16 and f16 conversions (round to nearest even), shared by the CPU
// backend and the host side of the CUDA backend.
std::uint16_t float_to_bf16(float value);
float bf16_to_float(std::uint16_t bits);
std::uint16_t float_to_f16(float value);
float f16_to_float(std::uint16_t bits);

}  // namespace moejit
