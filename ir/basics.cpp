// DType, TensorType, AttrList and the assertion handler.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "ir/attr.h"
#include "ir/error.h"
#include "ir/type.h"

namespace moejit {

void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
  fmt::print(stderr, "moejit: internal error at {}:{}: assertion `{}` failed{}{}\n", file, line, expr,
             msg.empty() ? "" : ": ", msg);
  std::abort();
}

// ---- DType ----
namespace {
struct DTypeRow {
  DType dtype;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::f32, "f32", 4}, {DType::f64, "f64", 8}, {DType::bf16, "bf16", 2}, {DType::f16, "f16", 2},
    {DType::i32, "i32", 4}, {DType::i64, "i64", 8}, {DType::i1, "i1", 1},
};
}  // namespace

std::string_view dtype_name(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }
std::size_t dtype_size(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }
std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& row : kDTypes)
    if (row.name == name) return row.dtype;
  return std::nullopt;
}
bool is_float(DType d) { return d == DType::f32 || d == DType::f64 || d == DType::bf16 || d == DType::f16; }
bool is_integer(DType d) { return d == DType::i32 || d == DType::i64; }

// ---- TensorType ----
std::int64_t TensorType::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::int64_t TensorType::dim(int axis) const {
  int r = rank();
  int a = axis < 0 ? axis + r : axis;
  MOEJIT_ASSERT(a >= 0 && a < r, fmt::format("axis {} of {}", axis, str()));
  return shape[static_cast<std::size_t>(a)];
}

std::string TensorType::str() const {
  std::string s = "tensor<";
  for (auto d : shape) s += fmt::format("{}x", d);
  s += dtype_name(dtype);
  s += ">";
  return s;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// ---- attributes ----
std::string_view attr_kind_name(AttrKind kind) {
  switch (kind) {
    case AttrKind::Bool: return "bool";
    case AttrKind::Int: return "int";
    case AttrKind::Float: return "float";
    case AttrKind::String: return "string";
    case AttrKind::Ints: return "ints";
    case AttrKind::DType: return "dtype";
  }
  return "?";
}

AttrKind attr_kind_of(const AttrValue& value) { return static_cast<AttrKind>(value.index()); }

AttrList::AttrList(std::initializer_list<Attr> attrs) {
  for (const auto& a : attrs) set(a.name, a.value);
}

void AttrList::set(std::string name, AttrValue value) {
  auto it = std::lower_bound(items_.begin(), items_.end(), name,
                             [](const Attr& a, const std::string& n) { return a.name < n; });
  if (it != items_.end() && it->name == name)
    it->value = std::move(value);
  else
    items_.insert(it, Attr{std::move(name), std::move(value)});
}

const AttrValue* AttrList::find(std::string_view name) const {
  for (const auto& a : items_)
    if (a.name == name) return &a.value;
  return nullptr;
}

bool AttrList::has(std::string_view name) const { return find(name) != nullptr; }

void AttrList::erase(std::string_view name) {
  std::erase_if(items_, [&](const Attr& a) { return a.name == name; });
}

namespace {
template <typename T>
const T& get_as(const AttrList& list, std::string_view name) {
  const AttrValue* v = list.find(name);
  MOEJIT_ASSERT(v != nullptr, fmt::format("missing attribute '{}'", name));
  const T* p = std::get_if<T>(v);
  MOEJIT_ASSERT(p != nullptr, fmt::format("attribute '{}' has another kind", name));
  return *p;
}
}  // namespace

bool AttrList::get_bool(std::string_view n) const { return get_as<bool>(*this, n); }
std::int64_t AttrList::get_int(std::string_view n) const { return get_as<std::int64_t>(*this, n); }
double AttrList::get_float(std::string_view n) const { return get_as<double>(*this, n); }
const std::string& AttrList::get_string(std::string_view n) const { return get_as<std::string>(*this, n); }
const std::vector<std::int64_t>& AttrList::get_ints(std::string_view n) const {
  return get_as<std::vector<std::int64_t>>(*this, n);
}
DType AttrList::get_dtype(std::string_view n) const { return get_as<DType>(*this, n); }
bool AttrList::get_bool_or(std::string_view n, bool fallback) const { return has(n) ? get_bool(n) : fallback; }
std::int64_t AttrList::get_int_or(std::string_view n, std::int64_t fallback) const {
  return has(n) ? get_int(n) : fallback;
}
double AttrList::get_float_or(std::string_view n, double fallback) const { return has(n) ? get_float(n) : fallback; }

namespace {
// MLIR float literals need a '.'; the shortest round-trip digits keep the
// text exact. Non-finite values use MLIR's hexadecimal bit-pattern form.
std::string float_literal(double v) {
  if (!std::isfinite(v)) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return fmt::format("0x{:016X}", bits);
  }
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".e") == std::string::npos) return s + ".0";
  auto e = s.find('e');
  if (e != std::string::npos && s.find('.') == std::string::npos) s.insert(e, ".0");
  return s;
}

std::string escape_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\')
      out += fmt::format("\\{}", static_cast<char>(c));
    else if (c < 0x20 || c >= 0x7f)
      out += fmt::format("\\{:02X}", c);
    else
      out += static_cast<char>(c);
  }
  return out + "\"";
}
}  // namespace

std::string attr_value_str(const AttrValue& value) {
  struct Visitor {
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(std::int64_t i) const { return fmt::format("{} : i64", i); }
    std::string operator()(double d) const { return float_literal(d) + " : f64"; }
    std::string operator()(const std::string& s) const { return escape_string(s); }
    std::string operator()(const std::vector<std::int64_t>& v) const { return fmt::format("[{}]", fmt::join(v, ", ")); }
    std::string operator()(DType d) const { return std::string(dtype_name(d)); }
  };
  return std::visit(Visitor{}, value);
}

}  // namespace moejit
