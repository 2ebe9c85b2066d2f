// Emitters of the dense ops (mj.*): elementwise (through the chain
// generator), reductions and row-wise normalizations, matmul, layout,
// attention, cross entropy, random numbers and AdamW. Each emitter turns
// the op's shapes and attributes into launches of kernel library templates.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "codegen/cuda_codegen.h"
#include "ir/error.h"

namespace moejit::codegen {

namespace {

using Arg = KernelArg;

void elementwise(EmitContext& ctx) {
  std::vector<bool> stored(static_cast<std::size_t>(ctx.graph().num_values()), true);
  emit_elementwise_chain(ctx.graph(), {ctx.op_index()}, stored, ctx.step(), ctx.kernels());
}

std::int64_t product(const Shape& shape, std::size_t begin, std::size_t end) {
  std::int64_t p = 1;
  for (std::size_t i = begin; i < end; ++i) p *= shape[i];
  return p;
}

void check_rank(EmitContext& ctx, const TensorType& t) {
  if (t.rank() > 8) ctx.fail(fmt::format("supports tensors of rank <= 8, found {}", t.str()));
}

const char* copy_element(std::size_t bytes) {
  switch (bytes) {
    case 1: return "unsigned char";
    case 2: return "unsigned short";
    case 4: return "unsigned int";
    default: return "unsigned long long";
  }
}

// One strided copy: region `sizes`, read through src strides at src_offset,
// written through dst strides at dst_offset (elements).
void strided_copy(EmitContext& ctx, ValueId src, ValueId dst, const Shape& sizes, const std::vector<std::int64_t>& src_strides,
                  const std::vector<std::int64_t>& dst_strides, std::int64_t src_offset, std::int64_t dst_offset) {
  if (sizes.size() > 8) ctx.fail(fmt::format("supports layout ops of rank <= 8, found rank {}", sizes.size()));
  const char* e = copy_element(dtype_size(ctx.graph().type(src).dtype));
  std::string kernel = ctx.define(fmt::format("copy{}", dtype_size(ctx.graph().type(src).dtype)),
                                  fmt::format("const {0}* src, {0}* dst, Dims src_dims, Dims dst_dims, i64 src_offset, i64 dst_offset, i64 n", e),
                                  fmt::format("  copy_impl<{}>(src, dst, src_dims, dst_dims, src_offset, dst_offset, n);\n", e));
  std::int64_t n = product(sizes, 0, sizes.size());
  ctx.launch(kernel, blocks_for(n),
             {Arg::of(src), Arg::of(dst), dims_arg(sizes, src_strides), dims_arg(sizes, dst_strides), Arg::i64(src_offset),
              Arg::i64(dst_offset), Arg::i64(n)});
}

// sum / mean / max over axes. kind: 0 sum, 1 mean, 2 max.
void reduction(EmitContext& ctx, int kind) {
  const TensorType& x = ctx.in(0);
  check_rank(ctx, x);
  std::vector<bool> reduced(static_cast<std::size_t>(x.rank()), false);
  for (auto axis : ctx.attrs().get_ints("axes")) reduced[static_cast<std::size_t>(axis < 0 ? axis + x.rank() : axis)] = true;
  auto strides = contiguous_strides(x.shape);
  std::vector<std::int64_t> kept_sizes, kept_strides, red_sizes, red_strides;
  for (int i = 0; i < x.rank(); ++i) {
    auto& sizes = reduced[static_cast<std::size_t>(i)] ? red_sizes : kept_sizes;
    auto& st = reduced[static_cast<std::size_t>(i)] ? red_strides : kept_strides;
    sizes.push_back(x.shape[static_cast<std::size_t>(i)]);
    st.push_back(strides[static_cast<std::size_t>(i)]);
  }
  std::int64_t outputs = product(kept_sizes, 0, kept_sizes.size()), count = product(red_sizes, 0, red_sizes.size());
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("reduce{}_{}", kind, t),
                                  fmt::format("const {0}* x, {0}* y, Dims kept, Dims reduced, i64 outputs, i64 count", t),
                                  fmt::format("  reduce_impl<{}, {}>(x, y, kept, reduced, outputs, count);\n", t, kind));
  ctx.launch(kernel, static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(outputs, 1), 65535)),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.result(0)), dims_arg(kept_sizes, kept_strides), dims_arg(red_sizes, red_strides),
              Arg::i64(outputs), Arg::i64(count)});
}

unsigned row_blocks(std::int64_t rows) { return static_cast<unsigned>(std::clamp<std::int64_t>(rows, 1, 65535)); }

void softmax(EmitContext& ctx, int log) {
  const TensorType& x = ctx.in(0);
  std::int64_t c = x.dim(-1), rows = x.numel() / c;
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("{}_{}", log ? "log_softmax" : "softmax", t), fmt::format("const {0}* x, {0}* y, i64 rows, i64 c", t),
                                  fmt::format("  softmax_impl<{}, {}>(x, y, rows, c);\n", t, log));
  ctx.launch(kernel, row_blocks(rows), {Arg::of(ctx.operand(0)), Arg::of(ctx.result(0)), Arg::i64(rows), Arg::i64(c)});
}

void norm(EmitContext& ctx, bool layer) {
  const TensorType& x = ctx.in(0);
  std::int64_t c = x.dim(-1), rows = x.numel() / c;
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("norm_{}", t), fmt::format("const {0}* x, const {0}* gamma, const {0}* beta, {0}* y, i64 rows, i64 c, double eps", t),
                                  fmt::format("  norm_impl<{}>(x, gamma, beta, y, rows, c, eps);\n", t));
  ctx.launch(kernel, row_blocks(rows),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), layer ? Arg::of(ctx.operand(2)) : Arg::none(), Arg::of(ctx.result(0)),
              Arg::i64(rows), Arg::i64(c), Arg::f64(ctx.attrs().get_float("eps"))});
}

void norm_grad(EmitContext& ctx, bool layer) {
  const TensorType& x = ctx.in(0);
  std::int64_t c = x.dim(-1), rows = x.numel() / c;
  const char* t = ctx.in_type(0);
  std::int64_t stats = ctx.scratch(rows * 2 * 8);
  std::string rows_kernel = ctx.define(
      fmt::format("norm_grad_rows_{}", t), fmt::format("const {0}* x, const {0}* gamma, const {0}* dy, {0}* dx, double* stats, i64 rows, i64 c, double eps, int rms", t),
      fmt::format("  norm_grad_rows_impl<{}>(x, gamma, dy, dx, stats, rows, c, eps, rms);\n", t));
  ctx.launch(rows_kernel, row_blocks(rows),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.result(0)), Arg::scratch(stats),
              Arg::i64(rows), Arg::i64(c), Arg::f64(ctx.attrs().get_float("eps")), Arg::i32(layer ? 0 : 1)});
  std::string params_kernel = ctx.define(
      fmt::format("norm_grad_params_{}", t), fmt::format("const {0}* x, const {0}* dy, const double* stats, {0}* dgamma, {0}* dbeta, i64 rows, i64 c", t),
      fmt::format("  norm_grad_params_impl<{}>(x, dy, stats, dgamma, dbeta, rows, c);\n", t));
  ctx.launch(params_kernel, blocks_for(c, 128),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(2)), Arg::scratch(stats), Arg::of(ctx.result(1)),
              layer ? Arg::of(ctx.result(2)) : Arg::none(), Arg::i64(rows), Arg::i64(c)},
             128);
}

unsigned tiles(std::int64_t n, std::int64_t tile) { return static_cast<unsigned>(std::max<std::int64_t>((n + tile - 1) / tile, 1)); }

}  // namespace

// ---- elementwise ----
void emit_Neg(EmitContext& ctx) { elementwise(ctx); }
void emit_Exp(EmitContext& ctx) { elementwise(ctx); }
void emit_Log(EmitContext& ctx) { elementwise(ctx); }
void emit_Sqrt(EmitContext& ctx) { elementwise(ctx); }
void emit_Rsqrt(EmitContext& ctx) { elementwise(ctx); }
void emit_Tanh(EmitContext& ctx) { elementwise(ctx); }
void emit_Relu(EmitContext& ctx) { elementwise(ctx); }
void emit_Gelu(EmitContext& ctx) { elementwise(ctx); }
void emit_Silu(EmitContext& ctx) { elementwise(ctx); }
void emit_Sigmoid(EmitContext& ctx) { elementwise(ctx); }
void emit_Softplus(EmitContext& ctx) { elementwise(ctx); }
void emit_Add(EmitContext& ctx) { elementwise(ctx); }
void emit_Sub(EmitContext& ctx) { elementwise(ctx); }
void emit_Mul(EmitContext& ctx) { elementwise(ctx); }
void emit_Div(EmitContext& ctx) { elementwise(ctx); }
void emit_Maximum(EmitContext& ctx) { elementwise(ctx); }
void emit_Minimum(EmitContext& ctx) { elementwise(ctx); }
void emit_Compare(EmitContext& ctx) { elementwise(ctx); }
void emit_Where(EmitContext& ctx) { elementwise(ctx); }
void emit_Cast(EmitContext& ctx) { elementwise(ctx); }
void emit_Constant(EmitContext& ctx) { elementwise(ctx); }
void emit_GeluGrad(EmitContext& ctx) { elementwise(ctx); }
void emit_Dropout(EmitContext& ctx) { elementwise(ctx); }

// ---- reductions and normalizations ----
void emit_Sum(EmitContext& ctx) { reduction(ctx, 0); }
void emit_Mean(EmitContext& ctx) { reduction(ctx, 1); }
void emit_Max(EmitContext& ctx) { reduction(ctx, 2); }
void emit_Softmax(EmitContext& ctx) { softmax(ctx, 0); }
void emit_LogSoftmax(EmitContext& ctx) { softmax(ctx, 1); }
void emit_LayerNorm(EmitContext& ctx) { norm(ctx, true); }
void emit_RmsNorm(EmitContext& ctx) { norm(ctx, false); }
void emit_LayerNormGrad(EmitContext& ctx) { norm_grad(ctx, true); }
void emit_RmsNormGrad(EmitContext& ctx) { norm_grad(ctx, false); }

// ---- matmul ----
// a [..., M, K] (stored [..., K, M] with transpose_a), b [K, N] or [..., K, N]
// (stored [.., N, K] with transpose_b) -> c [..., M, N].
void emit_Matmul(EmitContext& ctx) {
  const TensorType& a = ctx.in(0);
  const TensorType& b = ctx.in(1);
  bool ta = ctx.attrs().get_bool("transpose_a"), tb = ctx.attrs().get_bool("transpose_b");
  std::int64_t M = ta ? a.dim(-1) : a.dim(-2), K = ta ? a.dim(-2) : a.dim(-1);
  std::int64_t N = tb ? b.dim(-2) : b.dim(-1);
  std::int64_t a_sm = ta ? 1 : a.dim(-1), a_sk = ta ? a.dim(-1) : 1;
  std::int64_t b_sk = tb ? 1 : b.dim(-1), b_sn = tb ? b.dim(-1) : 1;
  std::int64_t batch = product(a.shape, 0, a.shape.size() - 2);
  if (batch > 65535) ctx.fail(fmt::format("supports matmul batches of at most 65535, found {}", batch));
  std::int64_t a_batch = a.dim(-2) * a.dim(-1), b_batch = b.rank() == 2 ? 0 : b.dim(-2) * b.dim(-1);
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("matmul_{}", t),
                                  fmt::format("const {0}* a, const {0}* b, {0}* c, i64 M, i64 N, i64 K, i64 a_sm, i64 a_sk, i64 b_sk, i64 b_sn, i64 a_batch, i64 b_batch", t),
                                  fmt::format("  matmul_impl<{}>(a, b, c, M, N, K, a_sm, a_sk, b_sk, b_sn, a_batch, b_batch);\n", t));
  Launch& l = ctx.launch(kernel, tiles(N, 64),
                         {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.result(0)), Arg::i64(M), Arg::i64(N), Arg::i64(K),
                          Arg::i64(a_sm), Arg::i64(a_sk), Arg::i64(b_sk), Arg::i64(b_sn), Arg::i64(a_batch), Arg::i64(b_batch)});
  l.grid[1] = tiles(M, 64);
  l.grid[2] = static_cast<unsigned>(batch);
}

// ---- embedding ----
void emit_Embedding(EmitContext& ctx) {
  const TensorType& table = ctx.in(0);
  std::int64_t n = ctx.in(1).numel(), V = table.dim(0), D = table.dim(1);
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("embedding_{}", t), fmt::format("const {0}* table, const int* ids, {0}* out, i64 n, i64 V, i64 D", t),
                                  fmt::format("  embedding_impl<{}>(table, ids, out, n, V, D);\n", t));
  ctx.launch(kernel, blocks_for(n * D), {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.result(0)), Arg::i64(n), Arg::i64(V), Arg::i64(D)});
}

void emit_EmbeddingGrad(EmitContext& ctx) {
  std::int64_t n = ctx.in(0).numel(), V = ctx.out(0).dim(0), D = ctx.out(0).dim(1);
  const char* t = ctx.out_type(0);
  std::string kernel = ctx.define(fmt::format("embedding_grad_{}", t), fmt::format("const int* ids, const {0}* dy, {0}* dtable, i64 n, i64 V, i64 D", t),
                                  fmt::format("  embedding_grad_impl<{}>(ids, dy, dtable, n, V, D);\n", t));
  ctx.launch(kernel, blocks_for(V * D, 128), {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.result(0)), Arg::i64(n), Arg::i64(V), Arg::i64(D)},
             128);
}

// ---- layout ----
void emit_Reshape(EmitContext& ctx) { ctx.copy(Arg::of(ctx.operand(0)), Arg::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes())); }

void emit_Transpose(EmitContext& ctx) {
  const TensorType& x = ctx.in(0);
  const auto& perm = ctx.attrs().get_ints("perm");
  auto xs = contiguous_strides(x.shape);
  std::vector<std::int64_t> src;
  for (auto p : perm) src.push_back(xs[static_cast<std::size_t>(p)]);
  strided_copy(ctx, ctx.operand(0), ctx.result(0), ctx.out(0).shape, src, contiguous_strides(ctx.out(0).shape), 0, 0);
}

void emit_Broadcast(EmitContext& ctx) {
  const TensorType& x = ctx.in(0);
  const Shape& shape = ctx.out(0).shape;
  auto xs = contiguous_strides(x.shape);
  std::vector<std::int64_t> src(shape.size(), 0);
  std::size_t lead = shape.size() - x.shape.size();
  for (std::size_t i = 0; i < x.shape.size(); ++i) src[lead + i] = x.shape[i] == 1 ? 0 : xs[i];
  strided_copy(ctx, ctx.operand(0), ctx.result(0), shape, src, contiguous_strides(shape), 0, 0);
}

void emit_Slice(EmitContext& ctx) {
  auto xs = contiguous_strides(ctx.in(0).shape);
  const auto& start = ctx.attrs().get_ints("start");
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < start.size(); ++i) offset += start[i] * xs[i];
  strided_copy(ctx, ctx.operand(0), ctx.result(0), ctx.out(0).shape, xs, contiguous_strides(ctx.out(0).shape), offset, 0);
}

void emit_Pad(EmitContext& ctx) {
  auto os = contiguous_strides(ctx.out(0).shape);
  const auto& low = ctx.attrs().get_ints("low");
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < low.size(); ++i) offset += low[i] * os[i];
  ctx.zero(Arg::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes()));
  strided_copy(ctx, ctx.operand(0), ctx.result(0), ctx.in(0).shape, contiguous_strides(ctx.in(0).shape), os, 0, offset);
}

void emit_Concat(EmitContext& ctx) {
  const TensorType& out = ctx.out(0);
  std::int64_t axis = ctx.attrs().get_int("axis");
  if (axis < 0) axis += out.rank();
  auto os = contiguous_strides(out.shape);
  std::int64_t at = 0;
  for (std::size_t i = 0; i < ctx.op().operands.size(); ++i) {
    const TensorType& in = ctx.in(static_cast<int>(i));
    strided_copy(ctx, ctx.operand(static_cast<int>(i)), ctx.result(0), in.shape, contiguous_strides(in.shape), os, 0,
                 at * os[static_cast<std::size_t>(axis)]);
    at += in.shape[static_cast<std::size_t>(axis)];
  }
}

// ---- model-level ----
namespace {
struct AttentionShape {
  std::int64_t bh, tokens, head_dim;
  float scale;
};
AttentionShape attention_shape(EmitContext& ctx) {
  const TensorType& q = ctx.in(0);
  double scale = ctx.attrs().get_float("scale");
  if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(q.dim(3)));
  return {q.dim(0) * q.dim(1), q.dim(2), q.dim(3), static_cast<float>(scale)};
}
unsigned attention_smem(EmitContext& ctx, const AttentionShape& s, int rows_of_t, int rows_of_d) {
  std::int64_t elem = ctx.in(0).dtype == DType::f64 ? 8 : 4;
  std::int64_t bytes = (rows_of_t * s.tokens + rows_of_d * s.head_dim) * elem;
  if (bytes > 227 * 1024) ctx.fail(fmt::format("needs {} bytes of shared memory per row for T = {} (at most 227 KiB)", bytes, s.tokens));
  return static_cast<unsigned>(bytes);
}
}  // namespace

void emit_Attention(EmitContext& ctx) {
  AttentionShape s = attention_shape(ctx);
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("attention_{}", t), fmt::format("const {0}* q, const {0}* k, const {0}* v, {0}* out, i64 BH, i64 T, i64 Dh, float scale", t),
                                  fmt::format("  attention_impl<{}>(q, k, v, out, BH, T, Dh, scale);\n", t));
  ctx.launch(kernel, static_cast<unsigned>(std::min<std::int64_t>(s.bh * s.tokens, 1 << 20)),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.result(0)), Arg::i64(s.bh),
              Arg::i64(s.tokens), Arg::i64(s.head_dim), Arg::f32(s.scale)},
             128, attention_smem(ctx, s, 1, 1));
}

void emit_AttentionGrad(EmitContext& ctx) {
  AttentionShape s = attention_shape(ctx);
  const char* t = ctx.in_type(0);
  std::int64_t stats = ctx.scratch(s.bh * s.tokens * 2 * 8);
  unsigned rows = static_cast<unsigned>(std::min<std::int64_t>(s.bh * s.tokens, 1 << 20));
  std::string q_kernel = ctx.define(
      fmt::format("attention_grad_q_{}", t),
      fmt::format("const {0}* q, const {0}* k, const {0}* v, const {0}* dout, {0}* dq, double* stats, i64 BH, i64 T, i64 Dh, float scale", t),
      fmt::format("  attention_grad_q_impl<{}>(q, k, v, dout, dq, stats, BH, T, Dh, scale);\n", t));
  ctx.launch(q_kernel, rows,
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.operand(3)), Arg::of(ctx.result(0)),
              Arg::scratch(stats), Arg::i64(s.bh), Arg::i64(s.tokens), Arg::i64(s.head_dim), Arg::f32(s.scale)},
             128, attention_smem(ctx, s, 2, 2));
  std::string kv_kernel = ctx.define(
      fmt::format("attention_grad_kv_{}", t),
      fmt::format("const {0}* q, const {0}* k, const {0}* v, const {0}* dout, const double* stats, {0}* dk, {0}* dv, i64 BH, i64 T, i64 Dh, float scale", t),
      fmt::format("  attention_grad_kv_impl<{}>(q, k, v, dout, stats, dk, dv, BH, T, Dh, scale);\n", t));
  ctx.launch(kv_kernel, rows,
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.operand(3)), Arg::scratch(stats),
              Arg::of(ctx.result(1)), Arg::of(ctx.result(2)), Arg::i64(s.bh), Arg::i64(s.tokens), Arg::i64(s.head_dim), Arg::f32(s.scale)},
             128, attention_smem(ctx, s, 2, 2));
}

void emit_CrossEntropy(EmitContext& ctx) {
  std::int64_t rows = ctx.in(0).dim(0), V = ctx.in(0).dim(1);
  const char* t = ctx.in_type(0);
  std::int64_t losses = ctx.scratch(rows * 8);
  std::string rows_kernel = ctx.define(fmt::format("cross_entropy_rows_{}", t), fmt::format("const {0}* logits, const int* targets, double* row_loss, i64 rows, i64 V", t),
                                       fmt::format("  cross_entropy_rows_impl<{}>(logits, targets, row_loss, rows, V);\n", t));
  ctx.launch(rows_kernel, row_blocks(rows), {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::scratch(losses), Arg::i64(rows), Arg::i64(V)});
  std::string mean_kernel = ctx.define(fmt::format("mean_of_values_{}", t), fmt::format("const double* values, i64 n, double coeff, {}* out", t),
                                       fmt::format("  mean_of_values_impl<{}>(values, n, coeff, out);\n", t));
  ctx.launch(mean_kernel, 1, {Arg::scratch(losses), Arg::i64(rows), Arg::f64(1.0), Arg::of(ctx.result(0))});
}

void emit_CrossEntropyGrad(EmitContext& ctx) {
  std::int64_t rows = ctx.in(0).dim(0), V = ctx.in(0).dim(1);
  const char* t = ctx.in_type(0);
  std::string kernel = ctx.define(fmt::format("cross_entropy_grad_{}", t),
                                  fmt::format("const {0}* logits, const int* targets, const {0}* dloss, {0}* dlogits, i64 rows, i64 V", t),
                                  fmt::format("  cross_entropy_grad_impl<{}>(logits, targets, dloss, dlogits, rows, V);\n", t));
  ctx.launch(kernel, row_blocks(rows),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.result(0)), Arg::i64(rows), Arg::i64(V)});
}

// Seed and offset are kernel arguments and step_offset a device scalar (null
// when absent) read by the kernel, so one kernel serves every random_normal
// of a dtype and a new step_offset needs no new source.
void emit_RandomNormal(EmitContext& ctx) {
  std::int64_t n = ctx.out(0).numel();
  const char* t = ctx.out_type(0);
  std::string kernel = ctx.define(fmt::format("random_normal_{}", t),
                                  fmt::format("{}* out, i64 n, unsigned long long seed, unsigned long long offset, const i64* step_offset", t),
                                  fmt::format("  random_normal_impl<{}>(out, n, seed, offset, step_offset);\n", t));
  ctx.launch(kernel, blocks_for(n),
             {Arg::of(ctx.result(0)), Arg::i64(n), Arg::i64(ctx.attrs().get_int("seed")), Arg::i64(ctx.attrs().get_int("offset")),
              ctx.has_operand(0) ? Arg::of(ctx.operand(0)) : Arg::none()});
}

void emit_AdamW(EmitContext& ctx) {
  std::int64_t n = ctx.in(0).numel();
  std::string kernel = ctx.define(
      "adamw_f32",
      "const float* param, const float* grad, const float* m, const float* v, const float* lr, const float* step, float* new_param, "
      "float* new_m, float* new_v, i64 n, double beta1, double beta2, float eps, float weight_decay",
      "  adamw_impl(param, grad, m, v, lr, step, new_param, new_m, new_v, n, beta1, beta2, eps, weight_decay);\n");
  const auto& a = ctx.attrs();
  ctx.launch(kernel, blocks_for(n),
             {Arg::of(ctx.operand(0)), Arg::of(ctx.operand(1)), Arg::of(ctx.operand(2)), Arg::of(ctx.operand(3)), Arg::of(ctx.operand(4)),
              Arg::of(ctx.operand(5)), Arg::of(ctx.result(0)), Arg::of(ctx.result(1)), Arg::of(ctx.result(2)), Arg::i64(n),
              Arg::f64(a.get_float("beta1")), Arg::f64(a.get_float("beta2")), Arg::f32(a.get_float("eps")), Arg::f32(a.get_float("weight_decay"))});
}

}  // namespace moejit::codegen
