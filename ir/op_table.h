// The op table (ir/ops.def) as C++: OpKind, and one OpInfo per op with its
// name, operand and attribute signature, differentiability and shape rule.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ir/attr.h"
#include "ir/type.h"

namespace moejit {

enum class OpKind : std::uint16_t {
#define MOEJIT_OP(kind, ...) kind,
#include "ir/ops.def"
#undef MOEJIT_OP
};

inline constexpr int kNumOps = 0
#define MOEJIT_OP(kind, ...) +1
#include "ir/ops.def"
#undef MOEJIT_OP
    ;

struct AttrSpec {
  std::string name;
  AttrKind kind;
  bool optional = false;
};

struct OperandSpec {
  std::string name;
  bool optional = false;
  bool variadic = false;
};

struct OpInfo;

// What a shape rule sees, and what it fills in: result types, or an error
// that says what was expected and what was found (without the op's name,
// which the caller adds).
struct InferCtx {
  const OpInfo& info;
  std::span<const TensorType> operands;
  const AttrList& attrs;
  std::vector<TensorType> results;
  std::string error;

  bool fail(std::string message) {
    error = std::move(message);
    return false;
  }
  // "operand #1 (w)"
  std::string operand_label(int index) const;
};

using InferFn = bool (*)(InferCtx&);

struct OpInfo {
  OpKind kind;
  std::string_view name;  // "moe.gate"
  std::vector<OperandSpec> operands;
  int min_operands = 0;
  int max_operands = 0;  // -1: variadic
  int num_results = 1;
  std::vector<AttrSpec> attrs;
  bool differentiable = false;
  InferFn infer = nullptr;

  const AttrSpec* find_attr(std::string_view attr_name) const;
};

const OpInfo& op_info(OpKind kind);
std::string_view op_name(OpKind kind);
std::optional<OpKind> find_op(std::string_view name);  // by "mj.add"
std::span<const OpInfo> all_ops();

// Checks operand count, attribute names and kinds, then runs the shape rule.
// Returns the result types, or nullopt with *error set.
std::optional<std::vector<TensorType>> infer_op(OpKind kind, std::span<const TensorType> operand_types,
                                                const AttrList& attrs, std::string* error);

}  // namespace moejit
