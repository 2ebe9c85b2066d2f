// Typed op attributes. Printed as MLIR attributes:
//   bool      true / false
//   int       2 : i64
//   float     0.5 : f64
//   string    "softmax"
//   ints      [1, 0]
//   dtype     bf16
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ir/dtype.h"

namespace moejit {

enum class AttrKind : std::uint8_t { Bool, Int, Float, String, Ints, DType };

using AttrValue = std::variant<bool, std::int64_t, double, std::string, std::vector<std::int64_t>, DType>;

std::string_view attr_kind_name(AttrKind kind);  // "bool", "i64", ...
AttrKind attr_kind_of(const AttrValue& value);

struct Attr {
  std::string name;
  AttrValue value;
  bool operator==(const Attr&) const = default;
};

// Attributes of one op, kept sorted by name (as MLIR's dictionaries are), so
// printing is deterministic and equality is structural.
class AttrList {
 public:
  AttrList() = default;
  AttrList(std::initializer_list<Attr> attrs);

  void set(std::string name, AttrValue value);
  bool has(std::string_view name) const;
  const AttrValue* find(std::string_view name) const;
  void erase(std::string_view name);

  // Typed getters: the verifier has checked kinds, so a missing attribute or a
  // wrong kind here is a library bug (assertion).
  bool get_bool(std::string_view name) const;
  std::int64_t get_int(std::string_view name) const;
  double get_float(std::string_view name) const;
  const std::string& get_string(std::string_view name) const;
  const std::vector<std::int64_t>& get_ints(std::string_view name) const;
  DType get_dtype(std::string_view name) const;

  // Getters with a default for optional attributes.
  bool get_bool_or(std::string_view name, bool fallback) const;
  std::int64_t get_int_or(std::string_view name, std::int64_t fallback) const;
  double get_float_or(std::string_view name, double fallback) const;

  const std::vector<Attr>& items() const { return items_; }
  bool empty() const { return items_.empty(); }
  bool operator==(const AttrList&) const = default;

 private:
  std::vector<Attr> items_;
};

// MLIR text of one attribute value ("2 : i64", "[1, 0]", "\"softmax\"").
std::string attr_value_str(const AttrValue& value);

}  // namespace moejit
