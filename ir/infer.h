// Shape rules of the op table (private to ir/). Each checks its operands and
// attributes and fills ctx.results, or fails with "expected ..., found ...".
#pragma once
#include <fmt/format.h>

#include "ir/op_table.h"

namespace moejit {

#define MOEJIT_OP(kind, name, operands, results, attrs, diff, infer) bool infer(InferCtx& ctx);
#include "ir/ops.def"
#undef MOEJIT_OP

// Helpers shared by the rules.
namespace infer_util {
// Fails unless operand `i` has the given rank.
bool expect_rank(InferCtx& ctx, int i, int rank);
bool expect_float(InferCtx& ctx, int i);
bool expect_dtype(InferCtx& ctx, int i, DType dtype);
bool expect_same_type(InferCtx& ctx, int i, int j);
// Normalizes a possibly negative axis; fails if out of range.
bool normalize_axis(InferCtx& ctx, std::int64_t& axis, int rank, std::string_view what);
bool expect_one_of(InferCtx& ctx, std::string_view attr, std::initializer_list<std::string_view> allowed);
bool expect_positive_dims(InferCtx& ctx, const Shape& shape, std::string_view what);
}  // namespace infer_util

}  // namespace moejit
