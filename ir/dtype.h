// Element types of moejit tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moejit {

// f64 is meant for the CPU backend's gradient checks; i1 holds booleans
// (one byte per element in memory).
enum class DType : std::uint8_t { f32, f64, bf16, f16, i32, i64, i1 };

std::string_view dtype_name(DType dtype);                // "f32"
std::optional<DType> parse_dtype(std::string_view name);  // nullopt if unknown
std::size_t dtype_size(DType dtype);                      // bytes per element
bool is_float(DType dtype);
bool is_integer(DType dtype);  // i32, i64 (not i1)

}  // namespace moejit
