// The op table built from ir/ops.def: parses each row's operand and attribute
// signature once, and checks attributes generically before a shape rule runs.
#include "ir/op_table.h"

#include <fmt/format.h>

#include <array>
#include <sstream>

#include "ir/error.h"
#include "ir/infer.h"

namespace moejit {

namespace {

struct OpRow {
  OpKind kind;
  std::string_view name;
  std::string_view operands;
  int results;
  std::string_view attrs;
  bool differentiable;
  InferFn infer;
};

constexpr bool Diff = true;
constexpr bool NotDiff = false;

constexpr OpRow kRows[] = {
#define MOEJIT_OP(kind, name, operands, results, attrs, diff, infer) \
  {OpKind::kind, name, operands, results, attrs, diff, &infer},
#include "ir/ops.def"
#undef MOEJIT_OP
};
static_assert(std::size(kRows) == kNumOps, "every op of ops.def has one row");

std::vector<std::string> split_words(std::string_view s) {
  std::vector<std::string> words;
  std::istringstream in{std::string(s)};
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

OpInfo build_info(const OpRow& row) {
  OpInfo info;
  info.kind = row.kind;
  info.name = row.name;
  info.num_results = row.results;
  info.differentiable = row.differentiable;
  info.infer = row.infer;
  for (auto& word : split_words(row.operands)) {
    OperandSpec spec;
    if (word.ends_with("...")) {
      spec.variadic = true;
      word.resize(word.size() - 3);
    } else if (word.ends_with("?")) {
      spec.optional = true;
      word.pop_back();
    }
    spec.name = word;
    info.operands.push_back(spec);
  }
  for (const auto& spec : info.operands) {
    if (spec.variadic) {
      info.max_operands = -1;
      info.min_operands += 1;
    } else {
      info.max_operands += 1;
      if (!spec.optional) info.min_operands += 1;
    }
  }
  for (const auto& word : split_words(row.attrs)) {
    auto colon = word.find(':');
    MOEJIT_ASSERT(colon != std::string::npos, word);
    AttrSpec spec;
    spec.name = word.substr(0, colon);
    if (spec.name.ends_with("?")) {
      spec.optional = true;
      spec.name.pop_back();
    }
    std::string kind = word.substr(colon + 1);
    bool found = false;
    for (int k = 0; k <= static_cast<int>(AttrKind::DType); ++k) {
      if (attr_kind_name(static_cast<AttrKind>(k)) == kind) {
        spec.kind = static_cast<AttrKind>(k);
        found = true;
      }
    }
    MOEJIT_ASSERT(found, fmt::format("{}: unknown attribute kind '{}'", row.name, kind));
    info.attrs.push_back(spec);
  }
  return info;
}

const std::vector<OpInfo>& table() {
  static const std::vector<OpInfo> infos = [] {
    std::vector<OpInfo> v;
    for (const auto& row : kRows) {
      MOEJIT_ASSERT(static_cast<int>(row.kind) == static_cast<int>(v.size()));
      v.push_back(build_info(row));
    }
    return v;
  }();
  return infos;
}

}  // namespace

const AttrSpec* OpInfo::find_attr(std::string_view attr_name) const {
  for (const auto& a : attrs)
    if (a.name == attr_name) return &a;
  return nullptr;
}

std::string InferCtx::operand_label(int index) const {
  std::string_view name = "?";
  if (!info.operands.empty()) {
    auto i = std::min<std::size_t>(static_cast<std::size_t>(index), info.operands.size() - 1);
    name = info.operands[i].name;
  }
  return fmt::format("operand #{} ({})", index, name);
}

const OpInfo& op_info(OpKind kind) { return table().at(static_cast<std::size_t>(kind)); }
std::string_view op_name(OpKind kind) { return op_info(kind).name; }
std::span<const OpInfo> all_ops() { return table(); }

std::optional<OpKind> find_op(std::string_view name) {
  for (const auto& info : table())
    if (info.name == name) return info.kind;
  return std::nullopt;
}

std::optional<std::vector<TensorType>> infer_op(OpKind kind, std::span<const TensorType> operand_types,
                                                const AttrList& attrs, std::string* error) {
  const OpInfo& info = op_info(kind);
  auto fail = [&](std::string msg) -> std::optional<std::vector<TensorType>> {
    if (error) *error = std::move(msg);
    return std::nullopt;
  };
  int n = static_cast<int>(operand_types.size());
  if (n < info.min_operands || (info.max_operands >= 0 && n > info.max_operands)) {
    std::string expected = info.max_operands < 0 ? fmt::format("at least {}", info.min_operands)
                           : info.min_operands == info.max_operands
                               ? fmt::format("{}", info.min_operands)
                               : fmt::format("{} to {}", info.min_operands, info.max_operands);
    return fail(fmt::format("expected {} operands, found {}", expected, n));
  }
  for (const auto& attr : attrs.items()) {
    const AttrSpec* spec = info.find_attr(attr.name);
    if (!spec) {
      // Discardable attributes carry a dialect prefix, as in MLIR: annotations
      // a pass leaves for a backend (mj.fusion_group) that no op declares.
      if (attr.name.find('.') != std::string::npos) continue;
      return fail(fmt::format("unknown attribute '{}'", attr.name));
    }
    if (attr_kind_of(attr.value) != spec->kind)
      return fail(fmt::format("attribute '{}': expected {}, found {}", attr.name, attr_kind_name(spec->kind),
                              attr_kind_name(attr_kind_of(attr.value))));
  }
  for (const auto& spec : info.attrs)
    if (!spec.optional && !attrs.has(spec.name))
      return fail(fmt::format("missing attribute '{}' ({})", spec.name, attr_kind_name(spec.kind)));
  InferCtx ctx{info, operand_types, attrs, {}, {}};
  if (!info.infer(ctx)) return fail(ctx.error);
  MOEJIT_ASSERT(static_cast<int>(ctx.results.size()) == info.num_results, std::string(info.name));
  return ctx.results;
}

}  // namespace moejit
