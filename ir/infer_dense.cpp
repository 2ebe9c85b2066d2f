// Shape rules of the dense ops (mj.*).
#include <algorithm>
#include <numeric>

#include "ir/attention_layout.h"
#include "ir/infer.h"

namespace moejit {

using namespace infer_util;

namespace infer_util {

bool expect_rank(InferCtx& ctx, int i, int rank) {
  const auto& t = ctx.operands[static_cast<std::size_t>(i)];
  if (t.rank() == rank) return true;
  return ctx.fail(fmt::format("{}: expected rank {}, found {}", ctx.operand_label(i), rank, t.str()));
}

bool expect_float(InferCtx& ctx, int i) {
  const auto& t = ctx.operands[static_cast<std::size_t>(i)];
  if (is_float(t.dtype)) return true;
  return ctx.fail(fmt::format("{}: expected a float tensor, found {}", ctx.operand_label(i), t.str()));
}

bool expect_dtype(InferCtx& ctx, int i, DType dtype) {
  const auto& t = ctx.operands[static_cast<std::size_t>(i)];
  if (t.dtype == dtype) return true;
  return ctx.fail(fmt::format("{}: expected dtype {}, found {}", ctx.operand_label(i), dtype_name(dtype), t.str()));
}

bool expect_same_type(InferCtx& ctx, int i, int j) {
  const auto& a = ctx.operands[static_cast<std::size_t>(i)];
  const auto& b = ctx.operands[static_cast<std::size_t>(j)];
  if (a == b) return true;
  return ctx.fail(fmt::format("{}: expected {} (the type of {}), found {}", ctx.operand_label(j), a.str(),
                              ctx.operand_label(i), b.str()));
}

bool normalize_axis(InferCtx& ctx, std::int64_t& axis, int rank, std::string_view what) {
  std::int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    return ctx.fail(fmt::format("{}: expected an axis in [{}, {}), found {}", what, -rank, rank, axis));
  axis = a;
  return true;
}

bool expect_one_of(InferCtx& ctx, std::string_view attr, std::initializer_list<std::string_view> allowed) {
  const std::string& v = ctx.attrs.get_string(attr);
  for (auto a : allowed)
    if (v == a) return true;
  return ctx.fail(fmt::format("attribute '{}': expected one of \"{}\", found \"{}\"", attr, fmt::join(allowed, "\", \""), v));
}

bool expect_positive_dims(InferCtx& ctx, const Shape& shape, std::string_view what) {
  for (auto d : shape)
    if (d <= 0) return ctx.fail(fmt::format("{}: expected positive dimensions, found {}", what, shape_str(shape)));
  return true;
}

}  // namespace infer_util

namespace {
const TensorType& operand(InferCtx& ctx, int i) { return ctx.operands[static_cast<std::size_t>(i)]; }
bool ok(InferCtx& ctx, TensorType t) {
  ctx.results.push_back(std::move(t));
  return true;
}
// The optional step_offset operand of the random ops (mj.dropout,
// mj.random_normal), when present at index i: a rank-0 i64 tensor.
bool expect_step_offset(InferCtx& ctx, int i) {
  if (static_cast<int>(ctx.operands.size()) <= i) return true;
  const auto& t = operand(ctx, i);
  if (t.dtype == DType::i64 && t.rank() == 0) return true;
  return ctx.fail(fmt::format("{}: expected a rank-0 i64 tensor (tensor<i64>, added to the attribute 'offset'), found {}",
                              ctx.operand_label(i), t.str()));
}
}  // namespace

bool infer_unary_float(InferCtx& ctx) {
  if (!expect_float(ctx, 0)) return false;
  if ((ctx.info.kind == OpKind::Softmax || ctx.info.kind == OpKind::LogSoftmax) && operand(ctx, 0).rank() == 0)
    return ctx.fail(fmt::format("{}: expected rank >= 1, found {}", ctx.operand_label(0), operand(ctx, 0).str()));
  if (ctx.info.kind == OpKind::Dropout) {
    double p = ctx.attrs.get_float("p");
    if (!(p >= 0.0 && p < 1.0)) return ctx.fail(fmt::format("attribute 'p': expected 0 <= p < 1, found {}", p));
    if (!expect_step_offset(ctx, 1)) return false;
  }
  return ok(ctx, operand(ctx, 0));
}

bool infer_binary(InferCtx& ctx) {
  if (!expect_same_type(ctx, 0, 1)) return false;
  if (operand(ctx, 0).dtype == DType::i1)
    return ctx.fail(fmt::format("{}: expected a numeric tensor, found {}", ctx.operand_label(0), operand(ctx, 0).str()));
  if (ctx.info.kind == OpKind::GeluGrad && !expect_float(ctx, 0)) return false;
  return ok(ctx, operand(ctx, 0));
}

bool infer_compare(InferCtx& ctx) {
  if (!expect_same_type(ctx, 0, 1)) return false;
  if (!expect_one_of(ctx, "predicate", {"lt", "le", "gt", "ge", "eq", "ne"})) return false;
  return ok(ctx, TensorType{DType::i1, operand(ctx, 0).shape});
}

bool infer_where(InferCtx& ctx) {
  if (!expect_dtype(ctx, 0, DType::i1) || !expect_same_type(ctx, 1, 2)) return false;
  if (operand(ctx, 0).shape != operand(ctx, 1).shape)
    return ctx.fail(fmt::format("{}: expected shape {} (the shape of the condition), found {}", ctx.operand_label(1),
                                shape_str(operand(ctx, 0).shape), operand(ctx, 1).str()));
  return ok(ctx, operand(ctx, 1));
}

bool infer_cast(InferCtx& ctx) { return ok(ctx, TensorType{ctx.attrs.get_dtype("dtype"), operand(ctx, 0).shape}); }

bool infer_constant(InferCtx& ctx) {
  const auto& shape = ctx.attrs.get_ints("shape");
  if (!expect_positive_dims(ctx, shape, "attribute 'shape'")) return false;
  return ok(ctx, TensorType{ctx.attrs.get_dtype("dtype"), shape});
}

bool infer_random_normal(InferCtx& ctx) {
  if (!expect_step_offset(ctx, 0)) return false;
  const auto& shape = ctx.attrs.get_ints("shape");
  if (!expect_positive_dims(ctx, shape, "attribute 'shape'")) return false;
  DType dtype = ctx.attrs.get_dtype("dtype");
  if (!is_float(dtype))
    return ctx.fail(fmt::format("attribute 'dtype': expected a float dtype, found {}", dtype_name(dtype)));
  return ok(ctx, TensorType{dtype, shape});
}

bool infer_reduce(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  if (x.dtype == DType::i1) return ctx.fail(fmt::format("{}: expected a numeric tensor, found {}", ctx.operand_label(0), x.str()));
  if (ctx.info.kind == OpKind::Mean && !expect_float(ctx, 0)) return false;
  std::vector<bool> reduced(static_cast<std::size_t>(x.rank()), false);
  for (auto axis : ctx.attrs.get_ints("axes")) {
    if (!normalize_axis(ctx, axis, x.rank(), "attribute 'axes'")) return false;
    if (reduced[static_cast<std::size_t>(axis)])
      return ctx.fail(fmt::format("attribute 'axes': expected distinct axes, found axis {} twice", axis));
    reduced[static_cast<std::size_t>(axis)] = true;
  }
  bool keepdims = ctx.attrs.get_bool("keepdims");
  Shape out;
  for (int i = 0; i < x.rank(); ++i) {
    if (!reduced[static_cast<std::size_t>(i)])
      out.push_back(x.shape[static_cast<std::size_t>(i)]);
    else if (keepdims)
      out.push_back(1);
  }
  return ok(ctx, TensorType{x.dtype, out});
}

bool infer_layer_norm(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  if (!expect_float(ctx, 0)) return false;
  if (x.rank() < 1) return ctx.fail(fmt::format("{}: expected rank >= 1, found {}", ctx.operand_label(0), x.str()));
  TensorType vec{x.dtype, {x.dim(-1)}};
  int params = ctx.info.kind == OpKind::LayerNorm ? 2 : 1;
  for (int i = 1; i <= params; ++i)
    if (operand(ctx, i) != vec)
      return ctx.fail(fmt::format("{}: expected {} (the last dim of x), found {}", ctx.operand_label(i), vec.str(),
                                  operand(ctx, i).str()));
  return ok(ctx, x);
}

bool infer_rms_norm(InferCtx& ctx) { return infer_layer_norm(ctx); }

bool infer_layer_norm_grad(InferCtx& ctx) {
  // x gamma dy -> dx dgamma dbeta (layer_norm) or dx dgamma (rms_norm)
  const auto& x = operand(ctx, 0);
  if (!expect_float(ctx, 0) || !expect_same_type(ctx, 0, 2)) return false;
  if (x.rank() < 1) return ctx.fail(fmt::format("{}: expected rank >= 1, found {}", ctx.operand_label(0), x.str()));
  TensorType vec{x.dtype, {x.dim(-1)}};
  if (operand(ctx, 1) != vec)
    return ctx.fail(fmt::format("{}: expected {}, found {}", ctx.operand_label(1), vec.str(), operand(ctx, 1).str()));
  ctx.results = {x, vec};
  if (ctx.info.kind == OpKind::LayerNormGrad) ctx.results.push_back(vec);
  return true;
}

bool infer_rms_norm_grad(InferCtx& ctx) { return infer_layer_norm_grad(ctx); }

bool infer_matmul(InferCtx& ctx) {
  auto a = operand(ctx, 0), b = operand(ctx, 1);
  if (!expect_float(ctx, 0) || !expect_float(ctx, 1)) return false;
  if (a.dtype != b.dtype) return expect_same_type(ctx, 0, 1);
  if (a.rank() < 2) return ctx.fail(fmt::format("{}: expected rank >= 2, found {}", ctx.operand_label(0), a.str()));
  if (b.rank() != 2 && b.rank() != a.rank())
    return ctx.fail(fmt::format("{}: expected rank 2 or {} (the rank of a), found {}", ctx.operand_label(1), a.rank(), b.str()));
  if (b.rank() == a.rank()) {
    for (int i = 0; i + 2 < a.rank(); ++i)
      if (a.shape[static_cast<std::size_t>(i)] != b.shape[static_cast<std::size_t>(i)])
        return ctx.fail(fmt::format("{}: expected batch dims {} (those of a), found {}", ctx.operand_label(1),
                                    shape_str(Shape(a.shape.begin(), a.shape.end() - 2)), b.str()));
  }
  std::int64_t m = a.dim(-2), k = a.dim(-1), k2 = b.dim(-2), n = b.dim(-1);
  if (ctx.attrs.get_bool("transpose_a")) std::swap(m, k);
  if (ctx.attrs.get_bool("transpose_b")) std::swap(k2, n);
  if (k != k2)
    return ctx.fail(fmt::format("{}: expected contraction dim {} (from a {}), found {} in {}", ctx.operand_label(1), k,
                                a.str(), k2, b.str()));
  Shape out(a.shape.begin(), a.shape.end() - 2);
  out.push_back(m);
  out.push_back(n);
  return ok(ctx, TensorType{a.dtype, out});
}

bool infer_embedding(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_dtype(ctx, 1, DType::i32)) return false;
  Shape out = operand(ctx, 1).shape;
  out.push_back(operand(ctx, 0).dim(1));
  return ok(ctx, TensorType{operand(ctx, 0).dtype, out});
}

bool infer_embedding_grad(InferCtx& ctx) {
  // ids [...] i32, dy [..., D] -> [num_embeddings, D]
  const auto& ids = operand(ctx, 0);
  const auto& dy = operand(ctx, 1);
  if (!expect_dtype(ctx, 0, DType::i32) || !expect_float(ctx, 1)) return false;
  Shape expected = ids.shape;
  if (dy.rank() != ids.rank() + 1 || !std::equal(expected.begin(), expected.end(), dy.shape.begin()))
    return ctx.fail(fmt::format("{}: expected shape {} + [D], found {}", ctx.operand_label(1), shape_str(expected), dy.str()));
  std::int64_t v = ctx.attrs.get_int("num_embeddings");
  if (v <= 0) return ctx.fail(fmt::format("attribute 'num_embeddings': expected > 0, found {}", v));
  return ok(ctx, TensorType{dy.dtype, {v, dy.dim(-1)}});
}

bool infer_reshape(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  Shape shape = ctx.attrs.get_ints("shape");
  int inferred = -1;
  std::int64_t known = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1 && inferred < 0) {
      inferred = static_cast<int>(i);
    } else if (shape[i] <= 0) {
      return ctx.fail(fmt::format("attribute 'shape': expected positive dims and at most one -1, found {}", shape_str(shape)));
    } else if (__builtin_mul_overflow(known, shape[i], &known)) {
      return ctx.fail(fmt::format("attribute 'shape': expected {} elements (those of {}), found more in {}", x.numel(), x.str(),
                                  shape_str(shape)));
    }
  }
  if (inferred >= 0) {
    if (x.numel() % known != 0)
      return ctx.fail(fmt::format("attribute 'shape': cannot infer -1 in {} for {} elements", shape_str(shape), x.numel()));
    shape[static_cast<std::size_t>(inferred)] = x.numel() / known;
    known = x.numel();
  }
  if (known != x.numel())
    return ctx.fail(fmt::format("attribute 'shape': expected {} elements (those of {}), found {} in {}", x.numel(), x.str(),
                                known, shape_str(shape)));
  return ok(ctx, TensorType{x.dtype, shape});
}

bool infer_transpose(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  const auto& perm = ctx.attrs.get_ints("perm");
  std::vector<std::int64_t> sorted(perm);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> iota(static_cast<std::size_t>(x.rank()));
  std::iota(iota.begin(), iota.end(), 0);
  if (sorted != iota)
    return ctx.fail(fmt::format("attribute 'perm': expected a permutation of 0..{}, found {}", x.rank() - 1, shape_str(perm)));
  Shape out;
  for (auto p : perm) out.push_back(x.shape[static_cast<std::size_t>(p)]);
  return ok(ctx, TensorType{x.dtype, out});
}

bool infer_broadcast(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  const auto& shape = ctx.attrs.get_ints("shape");
  if (!expect_positive_dims(ctx, shape, "attribute 'shape'")) return false;
  bool fits = static_cast<int>(shape.size()) >= x.rank();
  for (int i = 1; fits && i <= x.rank(); ++i) {
    auto xd = x.shape[x.shape.size() - static_cast<std::size_t>(i)];
    auto sd = shape[shape.size() - static_cast<std::size_t>(i)];
    fits = xd == sd || xd == 1;
  }
  if (!fits)
    return ctx.fail(fmt::format("attribute 'shape': expected a shape {} broadcasts to, found {}", x.str(), shape_str(shape)));
  return ok(ctx, TensorType{x.dtype, shape});
}

bool infer_slice(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  const auto& start = ctx.attrs.get_ints("start");
  const auto& limit = ctx.attrs.get_ints("limit");
  if (static_cast<int>(start.size()) != x.rank() || static_cast<int>(limit.size()) != x.rank())
    return ctx.fail(fmt::format("attributes 'start' and 'limit': expected {} entries (the rank of x), found {} and {}", x.rank(),
                                start.size(), limit.size()));
  Shape out;
  for (std::size_t i = 0; i < start.size(); ++i) {
    if (start[i] < 0 || limit[i] > x.shape[i] || start[i] >= limit[i])
      return ctx.fail(fmt::format("dim {}: expected 0 <= start < limit <= {}, found start {} limit {}", i, x.shape[i], start[i],
                                  limit[i]));
    out.push_back(limit[i] - start[i]);
  }
  return ok(ctx, TensorType{x.dtype, out});
}

bool infer_pad(InferCtx& ctx) {
  const auto& x = operand(ctx, 0);
  const auto& low = ctx.attrs.get_ints("low");
  const auto& high = ctx.attrs.get_ints("high");
  if (static_cast<int>(low.size()) != x.rank() || static_cast<int>(high.size()) != x.rank())
    return ctx.fail(fmt::format("attributes 'low' and 'high': expected {} entries (the rank of x), found {} and {}", x.rank(),
                                low.size(), high.size()));
  Shape out;
  for (std::size_t i = 0; i < low.size(); ++i) {
    constexpr std::int64_t kMaxPad = std::int64_t{1} << 40;  // keeps the padded size from overflowing
    if (low[i] < 0 || high[i] < 0 || low[i] > kMaxPad || high[i] > kMaxPad)
      return ctx.fail(fmt::format("dim {}: expected padding in [0, 2^40], found low {} high {}", i, low[i], high[i]));
    out.push_back(x.shape[i] + low[i] + high[i]);
  }
  return ok(ctx, TensorType{x.dtype, out});
}

bool infer_concat(InferCtx& ctx) {
  TensorType out = operand(ctx, 0);
  std::int64_t axis = ctx.attrs.get_int("axis");
  if (!normalize_axis(ctx, axis, out.rank(), "attribute 'axis'")) return false;
  auto a = static_cast<std::size_t>(axis);
  for (int i = 1; i < static_cast<int>(ctx.operands.size()); ++i) {
    TensorType t = operand(ctx, i);
    TensorType want = out;
    want.shape[a] = t.rank() == out.rank() ? t.shape[a] : -1;
    if (t != want)
      return ctx.fail(fmt::format("{}: expected the type of operand #0 except along axis {}, found {} and {}", ctx.operand_label(i),
                                  axis, operand(ctx, 0).str(), t.str()));
    out.shape[a] += t.shape[a];
  }
  return ok(ctx, out);
}

// The log-sum-exp statistics of attention over q (either head layout):
// [B, H, T], f64 for f64 q, else f32 (a bf16/f16 attention keeps f32
// statistics).
static TensorType lse_type(const TensorType& q, const AttentionGeometry& g) {
  return TensorType{q.dtype == DType::f64 ? DType::f64 : DType::f32, {g.batch, g.heads, g.tokens}};
}
static TensorType attention_lse_type(const TensorType& q, HeadLayout layout) { return lse_type(q, attention_geometry(q, layout)); }

// The optional attribute 'layout' (ir/attention_layout.h).
static bool expect_head_layout(InferCtx& ctx, HeadLayout& layout) {
  std::optional<HeadLayout> found = find_head_layout(ctx.attrs);
  if (!found)
    return ctx.fail(fmt::format("attribute 'layout': expected one of \"bhtd\", \"bthd\", found \"{}\"", ctx.attrs.get_string("layout")));
  layout = *found;
  return true;
}

bool infer_attention(InferCtx& ctx) {
  // q, k, v [B, H, T, Dh] (layout "bthd": [B, T, H, Dh]) -> out (q's type), lse [B, H, T]
  HeadLayout layout{};
  if (!expect_head_layout(ctx, layout) || !expect_rank(ctx, 0, 4) || !expect_float(ctx, 0) || !expect_same_type(ctx, 0, 1) ||
      !expect_same_type(ctx, 0, 2))
    return false;
  ctx.results = {operand(ctx, 0), attention_lse_type(operand(ctx, 0), layout)};
  return true;
}

bool infer_attention_grad(InferCtx& ctx) {
  // q, k, v, out (q's layout), lse [B, H, T], dout (q's type) -> dq, dk, dv
  HeadLayout layout{};
  if (!expect_head_layout(ctx, layout) || !expect_rank(ctx, 0, 4) || !expect_float(ctx, 0)) return false;
  for (int i : {1, 2, 3, 5})
    if (!expect_same_type(ctx, 0, i)) return false;
  const TensorType lse = attention_lse_type(operand(ctx, 0), layout);
  if (operand(ctx, 4) != lse)
    return ctx.fail(fmt::format("{}: expected {} (the log-sum-exp result of mj.attention), found {}", ctx.operand_label(4), lse.str(),
                                operand(ctx, 4).str()));
  ctx.results = {operand(ctx, 0), operand(ctx, 0), operand(ctx, 0)};
  return true;
}

// The packed form (ir/attention_layout.h): qkv [B, T, 3, H, Dh] -> out
// [B, T, H, Dh] (qkv's dtype), lse [B, H, T].
static bool expect_packed_qkv(InferCtx& ctx, TensorType& out, TensorType& lse) {
  if (!expect_rank(ctx, 0, 5) || !expect_float(ctx, 0)) return false;
  const TensorType& qkv = operand(ctx, 0);
  if (qkv.dim(2) != 3)
    return ctx.fail(fmt::format("{}: expected [B, T, 3, H, Dh] (q, k, v packed along axis 2), found {}", ctx.operand_label(0), qkv.str()));
  out = TensorType{qkv.dtype, {qkv.dim(0), qkv.dim(1), qkv.dim(3), qkv.dim(4)}};
  lse = lse_type(qkv, packed_attention_geometry(qkv));
  return true;
}

bool infer_attention_qkv(InferCtx& ctx) {
  TensorType out, lse;
  if (!expect_packed_qkv(ctx, out, lse)) return false;
  ctx.results = {out, lse};
  return true;
}

bool infer_attention_qkv_grad(InferCtx& ctx) {
  // qkv [B, T, 3, H, Dh], out [B, T, H, Dh], lse [B, H, T], dout (out's type) -> dqkv (qkv's type)
  TensorType out, lse;
  if (!expect_packed_qkv(ctx, out, lse)) return false;
  const std::pair<int, const TensorType*> want[] = {{1, &out}, {2, &lse}, {3, &out}};
  for (const auto& [i, type] : want)
    if (operand(ctx, i) != *type)
      return ctx.fail(fmt::format("{}: expected {} (from qkv {}), found {}", ctx.operand_label(i), type->str(), operand(ctx, 0).str(),
                                  operand(ctx, i).str()));
  ctx.results = {operand(ctx, 0)};
  return true;
}

bool infer_cross_entropy(InferCtx& ctx) {
  if (!expect_rank(ctx, 0, 2) || !expect_float(ctx, 0) || !expect_rank(ctx, 1, 1) || !expect_dtype(ctx, 1, DType::i32))
    return false;
  if (operand(ctx, 1).dim(0) != operand(ctx, 0).dim(0))
    return ctx.fail(fmt::format("{}: expected {} rows (those of logits), found {}", ctx.operand_label(1), operand(ctx, 0).dim(0),
                                operand(ctx, 1).str()));
  return ok(ctx, TensorType{operand(ctx, 0).dtype, {}});
}

bool infer_cross_entropy_grad(InferCtx& ctx) {
  // logits [N, V], targets [N] i32, dloss [] f32 -> dlogits [N, V]
  if (!infer_cross_entropy(ctx)) return false;
  ctx.results.clear();
  TensorType scalar{operand(ctx, 0).dtype, {}};
  if (operand(ctx, 2) != scalar)
    return ctx.fail(fmt::format("{}: expected {}, found {}", ctx.operand_label(2), scalar.str(), operand(ctx, 2).str()));
  return ok(ctx, operand(ctx, 0));
}

bool infer_adamw(InferCtx& ctx) {
  // param grad m v [...] f32, lr [] f32, step [] f32
  if (!expect_dtype(ctx, 0, DType::f32)) return false;
  for (int i = 1; i < 4; ++i)
    if (!expect_same_type(ctx, 0, i)) return false;
  for (int i = 4; i < 6; ++i)
    if (operand(ctx, i) != TensorType{DType::f32, {}})
      return ctx.fail(fmt::format("{}: expected tensor<f32>, found {}", ctx.operand_label(i), operand(ctx, i).str()));
  for (const char* name : {"beta1", "beta2"}) {
    double b = ctx.attrs.get_float(name);
    if (!(b >= 0.0 && b < 1.0)) return ctx.fail(fmt::format("attribute '{}': expected 0 <= {} < 1, found {}", name, name, b));
  }
  ctx.results = {operand(ctx, 0), operand(ctx, 0), operand(ctx, 0)};
  return true;
}

}  // namespace moejit
