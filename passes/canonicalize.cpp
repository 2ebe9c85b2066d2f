// canonicalize: constant folding and algebraic simplification.
//
// Why: graphs built by nn blocks and by autodiff carry constants combined
// with constants, multiplications by one, reshapes of reshapes and casts to
// the dtype a value already has. Folding them here means fusion and the
// backends see fewer, simpler ops, and later passes can match patterns
// without first looking through no-op wrappers.
//
// What it does (mj.constant is a splat: every element is attribute `value`):
//   folding, when every operand is an mj.constant:
//     unary float ops (neg exp log sqrt rsqrt tanh relu gelu silu sigmoid
//     softplus), binary ops (add sub mul div maximum minimum; div for floats
//     only), compare, cast, and the layout ops reshape, broadcast, transpose;
//     mj.where with a constant condition picks its branch, and where(c, a, a)
//     is a.
//   identities:
//     x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1   -> x
//     x * 0, 0 * x                               -> 0 for integer dtypes only
//     neg(neg(x))                                -> x
//     reshape to x's own shape, broadcast to x's own shape, transpose with the
//     identity perm, cast to x's own dtype       -> x
//     reshape(reshape(x)) -> reshape(x); broadcast(broadcast(x)) ->
//     broadcast(x); transpose(transpose(x)) -> one transpose (or x).
//   Finally every op whose results no longer reach an output is erased (as
//   MLIR's canonicalizer does), using dce's routine. Arguments and outputs
//   stay: an output whose value folds away points at the replacement.
//
// Floating-point choices:
//   - x * 0 is NOT folded for floats: NaN * 0 and inf * 0 are NaN and
//     -3 * 0 is -0, so the result is not a constant.
//   - x + 0 IS folded for floats although (-0) + (+0) is +0, not -0: the
//     sign of a zero changes no loss, gradient or comparison in a model and
//     the pattern is common (autodiff's zero seeds). x - 0, x * 1 and x / 1
//     are exact for every x, NaN and -0 included.
//   - Folding computes in double and rounds once to the result dtype, so a
//     folded f32 value can differ from the kernel's f32 arithmetic in the
//     last bit. Only f32, f64, i32, i64 and i1 constants are folded (bf16 and
//     f16 rounding is left to the kernels); NaN operands are never folded,
//     nor integer results that overflow their dtype or are not exact in a
//     double. Layout ops on a constant fold for every dtype (the value stays).
//
// Algorithm: one forward sweep in topological order (repeated while it
// changes something; in practice once). Each op's operands are first
// rewritten through the replacements found so far; so when an op is visited
// its operands' producers are already in final form and the patterns only
// look one level up. An op is either replaced by an existing value (recorded
// in the replacement map), or rewritten in place (turned into an mj.constant,
// or given new operands/attributes) keeping its result value.
//
// Statistics: constants-folded, identities-removed, ops-combined, ops-erased.
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>

#include "passes/passes.h"

namespace moejit {

namespace {

constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53

bool foldable_dtype(DType d) {
  return d == DType::f32 || d == DType::f64 || d == DType::i32 || d == DType::i64 || d == DType::i1;
}

// The value a constant of dtype d holds when `v` is stored into it, or
// nullopt when it cannot be folded exactly.
std::optional<double> as_dtype(double v, DType d) {
  switch (d) {
    case DType::f64: return v;
    case DType::f32: return static_cast<double>(static_cast<float>(v));
    case DType::i32:
      if (!std::isfinite(v) || v != std::trunc(v) || v < -2147483648.0 || v > 2147483647.0) return std::nullopt;
      return v;
    case DType::i64:
      if (!std::isfinite(v) || v != std::trunc(v) || std::fabs(v) > kMaxExactInteger) return std::nullopt;
      return v;
    case DType::i1:
      if (v != 0.0 && v != 1.0) return std::nullopt;
      return v;
    default: return std::nullopt;
  }
}

std::optional<double> fold_unary(OpKind kind, double x) {
  switch (kind) {
    case OpKind::Neg: return -x;
    case OpKind::Exp: return std::exp(x);
    case OpKind::Log: return std::log(x);
    case OpKind::Sqrt: return std::sqrt(x);
    case OpKind::Rsqrt: return 1.0 / std::sqrt(x);
    case OpKind::Tanh: return std::tanh(x);
    case OpKind::Relu: return x > 0.0 ? x : 0.0;
    case OpKind::Gelu: {  // the tanh approximation, as the kernels compute it
      const double k = std::sqrt(2.0 / M_PI);
      return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
    }
    case OpKind::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case OpKind::Silu: return x / (1.0 + std::exp(-x));
    case OpKind::Softplus: return std::fmax(x, 0.0) + std::log1p(std::exp(-std::fabs(x)));
    default: return std::nullopt;
  }
}

std::optional<double> fold_binary(OpKind kind, double a, double b, DType dtype) {
  switch (kind) {
    case OpKind::Add: return a + b;
    case OpKind::Sub: return a - b;
    case OpKind::Mul: return a * b;
    case OpKind::Div:
      if (!is_float(dtype)) return std::nullopt;  // integer division: left to the kernel's rule
      return a / b;
    case OpKind::Maximum: return std::fmax(a, b);
    case OpKind::Minimum: return std::fmin(a, b);
    default: return std::nullopt;
  }
}

std::optional<double> fold_compare(const std::string& predicate, double a, double b) {
  if (predicate == "lt") return a < b ? 1.0 : 0.0;
  if (predicate == "le") return a <= b ? 1.0 : 0.0;
  if (predicate == "gt") return a > b ? 1.0 : 0.0;
  if (predicate == "ge") return a >= b ? 1.0 : 0.0;
  if (predicate == "eq") return a == b ? 1.0 : 0.0;
  if (predicate == "ne") return a != b ? 1.0 : 0.0;
  return std::nullopt;
}

bool is_unary_float(OpKind k) {
  switch (k) {
    case OpKind::Neg: case OpKind::Exp: case OpKind::Log: case OpKind::Sqrt: case OpKind::Rsqrt:
    case OpKind::Tanh: case OpKind::Relu: case OpKind::Gelu: case OpKind::Silu: case OpKind::Sigmoid:
    case OpKind::Softplus:
      return true;
    default: return false;
  }
}

bool is_binary(OpKind k) {
  switch (k) {
    case OpKind::Add: case OpKind::Sub: case OpKind::Mul: case OpKind::Div: case OpKind::Maximum:
    case OpKind::Minimum:
      return true;
    default: return false;
  }
}

class Canonicalizer {
 public:
  explicit Canonicalizer(Graph& graph) : graph_(graph), producer_(graph.producers()) {
    replacement_.resize(static_cast<std::size_t>(graph.num_values()));
    for (std::size_t v = 0; v < replacement_.size(); ++v) replacement_[v] = static_cast<ValueId>(v);
  }

  // One sweep; returns whether anything changed.
  bool sweep() {
    bool changed = false;
    auto& ops = graph_.mutable_ops();
    replaced_.resize(ops.size(), false);
    for (std::size_t i = 0; i < ops.size(); ++i) {
      if (replaced_[i]) continue;  // dead now; erased at the end
      for (auto& v : ops[i].operands) v = replacement_[static_cast<std::size_t>(v)];
      current_ = i;
      changed = visit(ops[i]) || changed;
    }
    for (auto& out : graph_.mutable_outputs()) out.value = replacement_[static_cast<std::size_t>(out.value)];
    return changed;
  }

  std::int64_t folded = 0, identities = 0, combined = 0;

 private:
  const Op* producer(ValueId v) const {
    int index = producer_[static_cast<std::size_t>(v)];
    return index < 0 ? nullptr : &graph_.ops()[static_cast<std::size_t>(index)];
  }
  // The raw value of a splat constant, or nullopt.
  std::optional<double> splat(ValueId v) const {
    const Op* def = producer(v);
    if (!def || def->kind != OpKind::Constant) return std::nullopt;
    return def->attrs.get_float("value");
  }
  // The value a constant operand holds in its dtype, when it can be folded.
  std::optional<double> foldable_splat(ValueId v) const {
    auto raw = splat(v);
    if (!raw || std::isnan(*raw) || !foldable_dtype(graph_.type(v).dtype)) return std::nullopt;
    return as_dtype(*raw, graph_.type(v).dtype);
  }

  bool replace(const Op& op, ValueId with) {
    replacement_[static_cast<std::size_t>(op.results[0])] = with;
    replaced_[current_] = true;
    ++identities;
    return true;
  }
  // Turns `op` into an mj.constant of its own result type, if `value` fits
  // (rounded to the dtype; layout ops copy their operand's value as it is).
  bool make_constant(Op& op, std::optional<double> value, bool round = true) {
    if (!value) return false;
    const TensorType& type = graph_.type(op.results[0]);
    auto stored = round ? as_dtype(*value, type.dtype) : value;
    if (!stored) return false;
    op.kind = OpKind::Constant;
    op.operands.clear();
    op.attrs = AttrList{{"dtype", type.dtype}, {"shape", type.shape}, {"value", *stored}};
    ++folded;
    return true;
  }

  bool visit(Op& op) {
    if (op.results.size() != 1) return false;
    const TensorType& result = graph_.type(op.results[0]);
    if (is_unary_float(op.kind)) {
      ValueId x = op.operands[0];
      if (op.kind == OpKind::Neg) {
        const Op* def = producer(x);
        if (def && def->kind == OpKind::Neg) return replace(op, def->operands[0]);
      }
      if (auto c = foldable_splat(x)) return make_constant(op, fold_unary(op.kind, *c));
      return false;
    }
    if (is_binary(op.kind)) return visit_binary(op, result.dtype);
    switch (op.kind) {
      case OpKind::Compare: {
        auto a = foldable_splat(op.operands[0]), b = foldable_splat(op.operands[1]);
        if (a && b) return make_constant(op, fold_compare(op.attrs.get_string("predicate"), *a, *b));
        return false;
      }
      case OpKind::Where: {
        if (op.operands[1] == op.operands[2]) return replace(op, op.operands[1]);
        if (auto cond = splat(op.operands[0])) return replace(op, *cond != 0.0 ? op.operands[1] : op.operands[2]);
        return false;
      }
      case OpKind::Cast: {
        ValueId x = op.operands[0];
        if (graph_.type(x).dtype == result.dtype) return replace(op, x);
        auto c = foldable_splat(x);
        if (!c || result.dtype == DType::i1 || !foldable_dtype(result.dtype)) return false;
        // float -> integer truncates toward zero (as the kernels do).
        double converted = is_integer(result.dtype) ? std::trunc(*c) : *c;
        return make_constant(op, converted);
      }
      case OpKind::Reshape: {
        ValueId x = op.operands[0];
        if (graph_.type(x).shape == result.shape) return replace(op, x);
        if (auto c = splat(x)) return make_constant(op, *c, false);
        const Op* def = producer(x);
        if (def && def->kind == OpKind::Reshape) {
          ValueId inner = def->operands[0];
          if (graph_.type(inner).shape == result.shape) return replace(op, inner);
          op.operands[0] = inner;
          op.attrs.set("shape", result.shape);  // resolves any -1
          ++combined;
          return true;
        }
        return false;
      }
      case OpKind::Broadcast: {
        ValueId x = op.operands[0];
        if (graph_.type(x).shape == result.shape) return replace(op, x);
        if (auto c = splat(x)) return make_constant(op, *c, false);
        const Op* def = producer(x);
        if (def && def->kind == OpKind::Broadcast) {  // numpy broadcasting composes
          op.operands[0] = def->operands[0];
          ++combined;
          return true;
        }
        return false;
      }
      case OpKind::Transpose: return visit_transpose(op);
      default: return false;
    }
  }

  bool visit_binary(Op& op, DType dtype) {
    ValueId a = op.operands[0], b = op.operands[1];
    auto ca = splat(a), cb = splat(b);
    if (ca && cb) {
      auto fa = foldable_splat(a), fb = foldable_splat(b);
      if (fa && fb) return make_constant(op, fold_binary(op.kind, *fa, *fb, dtype));
    }
    switch (op.kind) {
      case OpKind::Add:
        if (cb && *cb == 0.0) return replace(op, a);
        if (ca && *ca == 0.0) return replace(op, b);
        return false;
      case OpKind::Sub:
        if (cb && *cb == 0.0) return replace(op, a);
        return false;
      case OpKind::Mul:
        if (cb && *cb == 1.0) return replace(op, a);
        if (ca && *ca == 1.0) return replace(op, b);
        if (is_integer(dtype) && ((ca && *ca == 0.0) || (cb && *cb == 0.0))) return make_constant(op, 0.0);
        return false;
      case OpKind::Div:
        if (cb && *cb == 1.0) return replace(op, a);
        return false;
      default: return false;
    }
  }

  bool visit_transpose(Op& op) {
    ValueId x = op.operands[0];
    const auto& perm = op.attrs.get_ints("perm");
    auto is_identity = [](const std::vector<std::int64_t>& p) {
      for (std::size_t i = 0; i < p.size(); ++i)
        if (p[i] != static_cast<std::int64_t>(i)) return false;
      return true;
    };
    if (is_identity(perm)) return replace(op, x);
    if (auto c = splat(x)) return make_constant(op, *c, false);
    const Op* def = producer(x);
    if (def && def->kind == OpKind::Transpose) {
      // result dim i = x dim perm[i] = inner operand dim inner_perm[perm[i]]
      const auto& inner_perm = def->attrs.get_ints("perm");
      std::vector<std::int64_t> composed;
      for (auto p : perm) composed.push_back(inner_perm[static_cast<std::size_t>(p)]);
      ValueId inner = def->operands[0];
      if (is_identity(composed)) return replace(op, inner);
      op.operands[0] = inner;
      op.attrs.set("perm", composed);
      ++combined;
      return true;
    }
    return false;
  }

  Graph& graph_;
  std::vector<int> producer_;
  std::vector<ValueId> replacement_;
  std::vector<bool> replaced_;  // per op: its result was replaced
  std::size_t current_ = 0;     // index of the op being visited
};

class CanonicalizePass final : public Pass {
 public:
  std::string_view name() const override { return "canonicalize"; }
  void run(Graph& graph) override {
    Canonicalizer canonicalizer(graph);
    for (int round = 0; round < 8 && canonicalizer.sweep(); ++round) {
    }
    count("constants-folded", canonicalizer.folded);
    count("identities-removed", canonicalizer.identities);
    count("ops-combined", canonicalizer.combined);
    count("ops-erased", erase_ops_not_reaching_outputs(graph));
  }
};

}  // namespace

std::unique_ptr<Pass> create_canonicalize_pass(const PassOptions&) { return std::make_unique<CanonicalizePass>(); }

}  // namespace moejit
