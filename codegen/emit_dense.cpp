// Emitters of the dense ops (mj.*): elementwise (through the chain
// generator), reductions and row-wise normalizations, matmul, layout,
// attention, cross entropy, random numbers and AdamW. Each emitter fills
// its kernel family's argument struct from the op's shapes and attributes,
// binds the struct's pointer fields to buffers, and names the
// instantiation its TileConfig selects.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "codegen/attention_select.h"
#include "codegen/cuda_codegen.h"
#include "codegen/gemm_sm80_launch.h"
#include "codegen/gemm_sm90_launch.h"
#include "codegen/gemm_select.h"
#include "codegen/kernels/attention.cuh"
#include "codegen/kernels/elementwise.cuh"
#include "codegen/kernels/layout.cuh"
#include "codegen/kernels/matmul.cuh"
#include "codegen/kernels/model.cuh"
#include "codegen/kernels/reduce.cuh"
#include "codegen/simt_matmul.h"
#include "ir/attention_layout.h"
#include "ir/error.h"

namespace moejit::codegen {

namespace {

using B = Buffer;

std::string threads_of(const TileConfig& c) { return std::to_string(c.threads); }

void elementwise(EmitContext& ctx) {
  std::vector<bool> stored(static_cast<std::size_t>(ctx.graph().num_values()), true);
  emit_elementwise_chain(ctx, {ctx.op_index()}, stored);
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

unsigned row_blocks(std::int64_t rows) { return static_cast<unsigned>(std::clamp<std::int64_t>(rows, 1, 65535)); }

// One strided copy: region `sizes`, read through src strides at src_offset,
// written through dst strides at dst_offset (elements).
void strided_copy(EmitContext& ctx, ValueId src, ValueId dst, const Shape& sizes, const std::vector<std::int64_t>& src_strides,
                  const std::vector<std::int64_t>& dst_strides, std::int64_t src_offset, std::int64_t dst_offset) {
  if (sizes.size() > 8) ctx.fail(fmt::format("supports layout ops of rank <= 8, found rank {}", sizes.size()));
  TileConfig config = TileConfig::fixed_threads(256);
  mj::CopyArgs<void> a{};
  a.src_dims = make_dims(sizes, src_strides);
  a.dst_dims = make_dims(sizes, dst_strides);
  a.src_offset = src_offset;
  a.dst_offset = dst_offset;
  a.n = product(sizes, 0, sizes.size());
  ctx.launch("layout", instantiation("copy_kernel", {copy_element(dtype_size(ctx.graph().type(src).dtype)), threads_of(config)}), config,
             {blocks_for(a.n)}, a, {{&a.src, B::of(src)}, {&a.dst, B::of(dst)}});
}

// sum / mean / max over axes. kind: 0 sum, 1 mean, 2 max.
// Merges neighbouring dims that are contiguous with each other (stride of
// the outer = size * stride of the inner): fewer divisions per element.
void collapse_contiguous(std::vector<std::int64_t>& sizes, std::vector<std::int64_t>& strides) {
  for (std::size_t i = sizes.size(); i-- > 1;) {
    if (strides[i - 1] == sizes[i] * strides[i]) {
      sizes[i - 1] *= sizes[i];
      strides[i - 1] = strides[i];
      sizes.erase(sizes.begin() + static_cast<std::ptrdiff_t>(i));
      strides.erase(strides.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
}

// chain: the fused elementwise chain computing x (null: x is read).
void reduction(EmitContext& ctx, int kind, const ChainFunctor* chain = nullptr) {
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
  collapse_contiguous(kept_sizes, kept_strides);
  collapse_contiguous(red_sizes, red_strides);
  TileConfig config = TileConfig::fixed_threads(256);
  const std::int64_t outputs = product(kept_sizes, 0, kept_sizes.size()), count = product(red_sizes, 0, red_sizes.size());
  // Few outputs over many elements: split each output's elements into
  // chunks of at least 16K, about eight blocks per SM in all (2048 threads,
  // the most an SM holds: the bytes in flight bound these reductions).
  const std::int64_t blocks_wanted = 8 * static_cast<std::int64_t>(ctx.target().sm_count);
  const std::int64_t chunks = outputs < blocks_wanted ? std::clamp<std::int64_t>(count / 16384, 1, blocks_wanted / std::max<std::int64_t>(outputs, 1)) : 1;
  // The template arguments and the input's binds: x, or the chain's values.
  auto kernel = [&](const char* name) {
    if (!chain) return instantiation(name, {ctx.in_type(0), std::to_string(kind), threads_of(config)});
    return instantiation(name, {ctx.in_type(0), std::to_string(kind), threads_of(config), chain->functor});
  };
  auto input = [&](const void* x_field, mj::ElementwiseArgs& chain_field) {
    if (!chain) return std::vector<Bind>{{x_field, B::of(ctx.operand(0))}};
    chain_field = chain->args;
    return chain->binds(chain_field);
  };
  if (chunks > 1) {
    mj::ReducePartsArgs<void> p{};
    p.kept = make_dims(kept_sizes, kept_strides);
    p.reduced = make_dims(red_sizes, red_strides);
    p.outputs = outputs;
    p.count = count;
    p.chunks = chunks;
    p.chunk = (count + chunks - 1) / chunks;
    const std::int64_t partials = ctx.scratch(outputs * chunks * 8);  // f32, f64 or i64 each
    std::vector<Bind> binds = input(&p.x, p.chain);
    binds.push_back({&p.partials, B::scratch(partials)});
    ctx.launch("reduce", kernel("reduce_parts_kernel"), config, {static_cast<unsigned>(std::min<std::int64_t>(outputs * chunks, 65535))},
               p, binds);
    mj::ReduceFinishArgs<void> f{};
    f.outputs = outputs;
    f.count = count;
    f.chunks = chunks;
    ctx.launch("reduce", instantiation("reduce_finish_kernel", {ctx.in_type(0), std::to_string(kind), threads_of(config)}), config,
               {static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(outputs, 1), 65535))}, f,
               {{&f.partials, B::scratch(partials)}, {&f.y, B::of(ctx.result(0))}});
    return;
  }
  mj::ReduceArgs<void> a{};
  a.kept = make_dims(kept_sizes, kept_strides);
  a.reduced = make_dims(red_sizes, red_strides);
  a.outputs = outputs;
  a.count = count;
  std::vector<Bind> binds = input(&a.x, a.chain);
  binds.push_back({&a.y, B::of(ctx.result(0))});
  if (count <= 64 && outputs >= 256) {  // a block per output would leave most of its threads idle
    ctx.launch("reduce", kernel("reduce_thread_kernel"), config, {blocks_for(outputs)}, a, binds);
    return;
  }
  if (count <= 4096 && outputs >= 256 && warp_kernels_enabled()) {  // a warp per output, none of them waiting on a block
    ctx.launch("reduce", kernel("reduce_warp_kernel"), config, {blocks_for(outputs * 32)}, a, binds);
    return;
  }
  ctx.launch("reduce", kernel("reduce_kernel"), config,
             {static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(a.outputs, 1), 65535))}, a, binds);
}

}  // namespace

void emit_reduction_of_chain(EmitContext& ctx, const std::vector<int>& ops) {
  const ChainFunctor chain = chain_functor(ctx, ops, [](ValueId) { return false; }, true);
  const OpKind kind = ctx.op().kind;
  MOEJIT_ASSERT(kind == OpKind::Sum || kind == OpKind::Mean || kind == OpKind::Max, "a reduction");
  reduction(ctx, kind == OpKind::Sum ? 0 : kind == OpKind::Mean ? 1 : 2, &chain);
}

namespace {

// The lanes' share of a row of c values in the warp kernels (a power of
// two, at most 32), or 0 when c is over 1024 and a block takes each row.
int warp_row_per_lane(std::int64_t c) {
  if (c > 1024) return 0;
  int per_lane = 1;
  while (32 * per_lane < c) per_lane *= 2;
  return per_lane;
}

// The vectorized warp-per-row shape for rows of c <= 1024 elements of
// `bytes` each: lane l holds elements (32 j + l) vec .. + vec - 1 of a row,
// j < groups. vec is the widest power of two within 16 bytes that divides
// c, preferring one for which whole warps cover the row (c a multiple of
// 32 vec: no idle lanes); groups = ceil(c / (32 vec)).
struct WarpRowShape {
  int vec, groups;
};
WarpRowShape warp_row_shape(std::int64_t c, std::size_t bytes) {
  const int widest = std::max(1, static_cast<int>(16 / bytes));
  int vec = 1;
  for (int v = widest; v >= 1; v /= 2)
    if (c % (32 * v) == 0) {
      vec = v;
      break;
    }
  if (c % (32 * vec) != 0)
    for (int v = widest; v >= 1; v /= 2)
      if (c % v == 0) {
        vec = v;
        break;
      }
  return {vec, static_cast<int>((c + 32 * vec - 1) / (32 * vec))};
}

// Blocks of 256 threads, one warp per row.
unsigned warp_row_blocks(std::int64_t rows) { return static_cast<unsigned>(std::clamp<std::int64_t>((rows + 7) / 8, 1, 1 << 20)); }

void softmax(EmitContext& ctx, int log) {
  const TensorType& x = ctx.in(0);
  TileConfig config = TileConfig::fixed_threads(256);
  mj::SoftmaxArgs<void> a{};
  a.c = x.dim(-1);
  a.rows = x.numel() / a.c;
  const std::vector<Bind> pointers = {{&a.x, B::of(ctx.operand(0))}, {&a.y, B::of(ctx.result(0))}};
  if (const int per_lane = warp_row_per_lane(a.c)) {
    ctx.launch("reduce", instantiation("softmax_warp_kernel", {ctx.in_type(0), std::to_string(log), std::to_string(per_lane), threads_of(config)}),
               config, {warp_row_blocks(a.rows)}, a, pointers);
    return;
  }
  ctx.launch("reduce", instantiation("softmax_kernel", {ctx.in_type(0), std::to_string(log), threads_of(config)}), config,
             {row_blocks(a.rows)}, a, pointers);
}

// layer_norm / rms_norm; `add` (or null): the mj.add whose result is x,
// computed in the same kernel (norm_takes_residual must hold);
// `cast` (or null): the mj.cast of the norm's result to bf16 (norm_takes_cast),
// written by the same kernel; store_y false: the norm's own result is not
// stored (only the cast reads it). `widened` (or null): an mj.cast to f32
// of a bf16 tensor, read only by `add`: the kernel reads the bf16 tensor.
void norm(EmitContext& ctx, bool layer, const Op* add, const Op* cast = nullptr, bool store_y = true, const Op* widened = nullptr) {
  const TensorType& x = ctx.in(0);
  TileConfig config = TileConfig::fixed_threads(256);
  mj::NormArgs<void> a{};
  a.c = x.dim(-1);
  a.rows = x.numel() / a.c;
  a.eps = ctx.attrs().get_float("eps");
  std::vector<Bind> pointers = {{&a.x, B::of(ctx.operand(0))},
                                {&a.gamma, B::of(ctx.operand(1))},
                                {&a.beta, layer ? B::of(ctx.operand(2)) : B::none()},
                                {&a.y, store_y ? B::of(ctx.result(0)) : B::none()}};
  MOEJIT_ASSERT(store_y || cast, "norm: a result to store");
  if (cast) pointers.push_back({&a.y16, B::of(cast->results[0])});
  if (add && widened) {
    const int w = add->operands[0] == widened->results[0] ? 0 : 1;  // x + r == r + x: either order, the same bits
    pointers[0] = {&a.x, B::of(add->operands[1 - w])};
    pointers.push_back({&a.residual16, B::of(widened->operands[0])});
    pointers.push_back({&a.sum, B::of(add->results[0])});
  } else if (add) {
    pointers[0] = {&a.x, B::of(add->operands[0])};
    pointers.push_back({&a.residual, B::of(add->operands[1])});
    pointers.push_back({&a.sum, B::of(add->results[0])});
  }
  if (warp_row_per_lane(a.c)) {
    const WarpRowShape shape = warp_row_shape(a.c, dtype_size(x.dtype));
    ctx.launch("reduce",
               instantiation("norm_warp_kernel", {ctx.in_type(0), std::to_string(shape.vec), std::to_string(shape.groups), threads_of(config)}),
               config, {warp_row_blocks(a.rows)}, a, pointers);
    return;
  }
  MOEJIT_ASSERT(!add && !cast, "a fused residual add or cast needs the warp kernel");
  ctx.launch("reduce", instantiation("norm_kernel", {ctx.in_type(0), threads_of(config)}), config, {row_blocks(a.rows)}, a, pointers);
}

// layer_norm_grad / rms_norm_grad; `add` (or null): the mj.add of dx and
// another gradient, computed in the row kernel (norm_grad_takes_addend).
// `cast` (or null): an mj.cast to bf16 of what the row kernel writes (dx,
// or the add's result): it writes that bf16 copy too.
// `dy_add` (or null): dy is that add of an f32 tensor and `dy_cast`, an
// mj.cast to f32 of a bf16 tensor (add_takes_widened): the kernel reads both.
void norm_grad(EmitContext& ctx, bool layer, const Op* add, const Op* cast = nullptr, const Op* dy_add = nullptr,
               const Op* dy_cast = nullptr) {
  const TensorType& x = ctx.in(0);
  std::int64_t c = x.dim(-1), rows = x.numel() / c;
  TileConfig row_config = TileConfig::fixed_threads(256);
  mj::NormGradRowsArgs<void> r{};
  r.rows = rows;
  r.c = c;
  r.eps = ctx.attrs().get_float("eps");
  r.rms = layer ? 0 : 1;
  std::vector<Bind> row_pointers = {{&r.x, B::of(ctx.operand(0))},
                                    {&r.gamma, B::of(ctx.operand(1))},
                                    {&r.dy, B::of(ctx.operand(2))},
                                    {&r.dx, B::of(ctx.result(0))}};
  if (add) {
    row_pointers[3] = {&r.dx, B::of(add->results[0])};
    row_pointers.push_back({&r.dx_addend, B::of(add->operands[add->operands[0] == ctx.result(0) ? 1 : 0])});
  }
  if (cast) row_pointers.push_back({&r.dx16, B::of(cast->results[0])});
  if (dy_add) {
    MOEJIT_ASSERT(dy_cast && dy_add->results[0] == ctx.operand(2) && add_takes_widened(ctx.graph(), *dy_add, *dy_cast),
                  "norm_grad: dy is the add of the widened bf16 tensor");
    const int w = dy_add->operands[0] == dy_cast->results[0] ? 0 : 1;
    row_pointers[2] = {&r.dy, B::of(dy_add->operands[1 - w])};
    row_pointers.push_back({&r.dy16, B::of(dy_cast->operands[0])});
  }
  MOEJIT_ASSERT((!add && !cast && !dy_add) || warp_row_per_lane(c) > 0, "a fused gradient add or cast needs the warp kernel");
  TileConfig column_config = TileConfig::fixed_threads(128);
  const unsigned finish_blocks = static_cast<unsigned>(std::clamp<std::int64_t>((c + 3) / 4, 1, 1 << 20));  // a warp per column
  if (warp_row_per_lane(c)) {
    // The warp kernel with the parameter sums fused: one partial per block
    // (about four blocks of 256 threads per SM), then the in-order finish.
    const WarpRowShape shape = warp_row_shape(c, dtype_size(x.dtype));
    const unsigned blocks = persistent_grid(ctx.target(), (rows + 7) / 8, 4);
    const std::int64_t partials = ctx.scratch(static_cast<std::int64_t>(blocks) * c * 2 * 8);
    row_pointers.push_back({&r.partials, B::scratch(partials)});
    ctx.launch("reduce",
               instantiation("norm_grad_rows_warp_kernel",
                             {ctx.in_type(0), std::to_string(shape.vec), std::to_string(shape.groups), threads_of(row_config)}),
               row_config, {blocks}, r, row_pointers);
    mj::NormGradParamsArgs<void> p{};
    p.rows = rows;
    p.c = c;
    p.chunks = blocks;
    const std::vector<Bind> pointers = {{&p.dgamma, B::of(ctx.result(1))},
                                        {&p.dbeta, layer ? B::of(ctx.result(2)) : B::none()},
                                        {&p.partials, B::scratch(partials)}};
    ctx.launch("reduce", instantiation("norm_grad_params_finish_kernel", {ctx.in_type(0), threads_of(column_config)}), column_config,
               {finish_blocks}, p, pointers);
    return;
  }
  const std::int64_t stats = ctx.scratch(rows * 2 * 8);
  row_pointers.push_back({&r.stats, B::scratch(stats)});
  ctx.launch("reduce", instantiation("norm_grad_rows_kernel", {ctx.in_type(0), threads_of(row_config)}), row_config, {row_blocks(rows)}, r,
             row_pointers);
  mj::NormGradParamsArgs<void> p{};
  p.rows = rows;
  p.c = c;
  // About four blocks of part 2a per SM: chunks of at least 8 rows (more
  // when the partials would pass 16 MiB); part 2b then sums each column's
  // chunk partials with a warp.
  const std::int64_t column_blocks = (c + column_config.threads - 1) / column_config.threads;
  const std::int64_t chunks_wanted = std::max<std::int64_t>(4 * ctx.target().sm_count / column_blocks, 1);
  p.chunk = std::max({std::int64_t{8}, (rows + chunks_wanted - 1) / chunks_wanted, (rows * c * 16 + (16 << 20) - 1) / (16 << 20)});
  p.chunks = std::max<std::int64_t>((rows + p.chunk - 1) / p.chunk, 1);
  const std::int64_t partials = ctx.scratch(p.chunks * c * 2 * 8);
  const std::vector<Bind> pointers = {{&p.x, B::of(ctx.operand(0))},       {&p.dy, B::of(ctx.operand(2))},
                                      {&p.stats, B::scratch(stats)},       {&p.dgamma, B::of(ctx.result(1))},
                                      {&p.dbeta, layer ? B::of(ctx.result(2)) : B::none()}, {&p.partials, B::scratch(partials)}};
  ctx.launch("reduce", instantiation("norm_grad_params_parts_kernel", {ctx.in_type(0), threads_of(column_config)}), column_config,
             {static_cast<unsigned>(std::min<std::int64_t>(p.chunks * column_blocks, 65535))}, p, pointers);
  ctx.launch("reduce", instantiation("norm_grad_params_finish_kernel", {ctx.in_type(0), threads_of(column_config)}), column_config,
             {finish_blocks}, p, pointers);
}

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
void emit_LayerNorm(EmitContext& ctx) { norm(ctx, true, nullptr); }
void emit_RmsNorm(EmitContext& ctx) { norm(ctx, false, nullptr); }

bool norm_takes_residual(const Graph& graph, const Op& norm_op, const Op& add) {
  if (norm_op.kind != OpKind::LayerNorm && norm_op.kind != OpKind::RmsNorm) return false;
  if (add.kind != OpKind::Add || add.results.size() != 1 || norm_op.operands[0] != add.results[0]) return false;
  const TensorType& x = graph.type(add.results[0]);
  if (!is_float(x.dtype) || x.rank() < 1 || warp_row_per_lane(x.dim(-1)) == 0) return false;
  return graph.type(add.operands[0]) == x && graph.type(add.operands[1]) == x;
}

bool norm_grad_takes_addend(const Graph& graph, const Op& norm_grad_op, const Op& add) {
  if (norm_grad_op.kind != OpKind::LayerNormGrad && norm_grad_op.kind != OpKind::RmsNormGrad) return false;
  if (add.kind != OpKind::Add || add.results.size() != 1) return false;
  const ValueId dx = norm_grad_op.results[0];
  if ((add.operands[0] == dx) == (add.operands[1] == dx)) return false;  // dx exactly once
  const TensorType& t = graph.type(dx);
  if (!is_float(t.dtype) || t.rank() < 1 || warp_row_per_lane(t.dim(-1)) == 0) return false;
  return graph.type(add.operands[0]) == t && graph.type(add.operands[1]) == t;
}

bool norm_grad_takes_cast(const Graph& graph, const Op& norm_grad_op, const Op* add, const Op& cast) {
  if (norm_grad_op.kind != OpKind::LayerNormGrad && norm_grad_op.kind != OpKind::RmsNormGrad) return false;
  const ValueId written = add ? add->results[0] : norm_grad_op.results[0];
  if (cast.kind != OpKind::Cast || cast.operands[0] != written) return false;
  const TensorType& t = graph.type(written);
  if (t.dtype != DType::f32 || t.rank() < 1 || warp_row_per_lane(t.dim(-1)) == 0) return false;
  const TensorType& c = graph.type(cast.results[0]);
  return c.dtype == DType::bf16 && c.shape == t.shape;
}

void emit_norm_grad_group(EmitContext& ctx, const Op* add, const Op* cast, const Op* dy_add, const Op* dy_cast) {
  MOEJIT_ASSERT(!add || norm_grad_takes_addend(ctx.graph(), ctx.op(), *add), "emit_norm_grad_group: dx feeds the add");
  MOEJIT_ASSERT(!cast || norm_grad_takes_cast(ctx.graph(), ctx.op(), add, *cast), "emit_norm_grad_group: the cast reads dx");
  norm_grad(ctx, ctx.op().kind == OpKind::LayerNormGrad, add, cast, dy_add, dy_cast);
}

bool norm_takes_cast(const Graph& graph, const Op& norm_op, const Op& cast) {
  if (norm_op.kind != OpKind::LayerNorm && norm_op.kind != OpKind::RmsNorm) return false;
  if (cast.kind != OpKind::Cast || cast.operands[0] != norm_op.results[0]) return false;
  const TensorType& y = graph.type(norm_op.results[0]);
  if (y.dtype != DType::f32 || y.rank() < 1 || warp_row_per_lane(y.dim(-1)) == 0) return false;
  const TensorType& c = graph.type(cast.results[0]);
  return c.dtype == DType::bf16 && c.shape == y.shape;
}

void emit_norm_group(EmitContext& ctx, const Op* add, const Op* cast, bool store_y, const Op* widened) {
  MOEJIT_ASSERT(!add || norm_takes_residual(ctx.graph(), ctx.op(), *add), "emit_norm_group: the add feeds the norm");
  MOEJIT_ASSERT(!cast || norm_takes_cast(ctx.graph(), ctx.op(), *cast), "emit_norm_group: the cast reads the norm");
  MOEJIT_ASSERT(!widened || (add && add_takes_widened(ctx.graph(), *add, *widened)), "emit_norm_group: the widened operand feeds the add");
  norm(ctx, ctx.op().kind == OpKind::LayerNorm, add, cast, store_y, widened);
}

bool norm_grad_takes_widened_dy(const Graph& graph, const Op& norm_grad_op, const Op& add, const Op& cast) {
  if (norm_grad_op.kind != OpKind::LayerNormGrad && norm_grad_op.kind != OpKind::RmsNormGrad) return false;
  if (add.results.size() != 1 || norm_grad_op.operands[2] != add.results[0] || !add_takes_widened(graph, add, cast)) return false;
  const TensorType& dy = graph.type(add.results[0]);
  return dy.dtype == DType::f32 && dy.rank() >= 1 && warp_row_per_lane(dy.dim(-1)) != 0 && dy == graph.type(norm_grad_op.results[0]);
}

bool add_takes_widened(const Graph& graph, const Op& add, const Op& cast) {
  if (add.kind != OpKind::Add || cast.kind != OpKind::Cast || add.results.size() != 1) return false;
  const ValueId w = cast.results[0];
  if ((add.operands[0] == w) == (add.operands[1] == w)) return false;  // exactly once
  const TensorType &from = graph.type(cast.operands[0]), &to = graph.type(w);
  return from.dtype == DType::bf16 && to.dtype == DType::f32 && from.shape == to.shape;
}
void emit_LayerNormGrad(EmitContext& ctx) { norm_grad(ctx, true, nullptr); }
void emit_RmsNormGrad(EmitContext& ctx) { norm_grad(ctx, false, nullptr); }

// ---- matmul ----
// a [..., M, K] (stored [..., K, M] with transpose_a), b [K, N] or [..., K, N]
// (stored [.., N, K] with transpose_b) -> c [..., M, N].
void emit_Matmul(EmitContext& ctx) { emit_matmul_with_epilogue(ctx, {}); }

void emit_matmul_with_epilogue(EmitContext& ctx, const GemmEpilogue& epilogue) {
  const TensorType& at = ctx.in(0);
  const TensorType& bt = ctx.in(1);
  bool ta = ctx.attrs().get_bool("transpose_a"), tb = ctx.attrs().get_bool("transpose_b");
  std::int64_t batch = product(at.shape, 0, at.shape.size() - 2);
  if (batch > 65535) ctx.fail(fmt::format("supports matmul batches of at most 65535, found {}", batch));
  mj::MatmulArgs<void> a{};
  a.M = ta ? at.dim(-1) : at.dim(-2);
  a.K = ta ? at.dim(-2) : at.dim(-1);
  a.N = tb ? bt.dim(-2) : bt.dim(-1);
  a.a_sm = ta ? 1 : at.dim(-1);
  a.a_sk = ta ? at.dim(-1) : 1;
  a.b_sk = tb ? 1 : bt.dim(-1);
  a.b_sn = tb ? bt.dim(-1) : 1;
  a.a_batch = at.dim(-2) * at.dim(-1);
  a.b_batch = bt.rank() == 2 ? 0 : bt.dim(-2) * bt.dim(-1);
  const GemmProblem problem = *gemm_problem_of(ctx.graph(), ctx.op());
  GemmChoice choice = choose_gemm(ctx.graph(), ctx.op(), problem, ctx.target());
  const TileConfig& c = choice.config;
  const bool plain = epilogue.kind == GemmEpilogue::Kind::store;
  if (!plain && choice.family != GemmFamily::sm90 && choice.family != GemmFamily::sm80)
    ctx.fail("(SIMT matmul) has no GELU epilogue");  // gemm_has_epilogue said otherwise: a bug
  if (choice.family == GemmFamily::sm90) {
    Sm90Gemm g;
    g.a = B::of(ctx.operand(0));
    g.b = B::of(ctx.operand(1));
    g.c = plain ? B::of(ctx.result(0)) : epilogue.out;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.n = a.N;
    g.k = a.K;
    g.a_k_major = !ta;
    g.b_k_major = tb;
    const bool b_batched = bt.rank() > 2;
    if (!ta && !b_batched) {
      g.m = batch * a.M;  // one B for every batch: the batches are just more rows of A
    } else {
      g.m = a.M;
      g.groups = batch;
      g.a_batched = batch > 1;
      g.b_batched = b_batched;
    }
    launch_sm90_gemm(ctx, c, g);
    return;
  }
  if (choice.family == GemmFamily::sm80) {
    Sm80Gemm g;
    g.dtype = at.dtype;
    g.a = B::of(ctx.operand(0));
    g.b = B::of(ctx.operand(1));
    g.c = plain ? B::of(ctx.result(0)) : epilogue.out;
    g.epilogue = epilogue.kind;
    g.aux = epilogue.aux;
    g.n = a.N;
    g.k = a.K;
    g.a_k_major = !ta;
    g.b_k_major = tb;
    g.b_batched = bt.rank() > 2;
    g.m = a.M;
    g.groups = batch;
    g.a_batched = true;
    if (!ta && !g.b_batched) {
      g.m = batch * a.M;  // one B for every batch: the batches are just more rows of A
      g.groups = 1;
    }
    launch_sm80_gemm(ctx, c, g);
    return;
  }
  launch_simt_matmul(ctx, c, a, batch, at.dtype, B::of(ctx.operand(0)), B::of(ctx.operand(1)), B::of(ctx.result(0)));
}

// ---- embedding ----
void emit_Embedding(EmitContext& ctx) {
  TileConfig config = TileConfig::fixed_threads(256);
  mj::EmbeddingArgs<void> a{};
  a.n = ctx.in(1).numel();
  a.V = ctx.in(0).dim(0);
  a.D = ctx.in(0).dim(1);
  ctx.launch("layout", instantiation("embedding_kernel", {ctx.in_type(0), threads_of(config)}), config, {warp_row_blocks(a.n)}, a,
             {{&a.table, B::of(ctx.operand(0))}, {&a.ids, B::of(ctx.operand(1))}, {&a.out, B::of(ctx.result(0))}});
}

// The counting sort of codegen/kernels/layout.cuh: a memset and four launches.
void emit_EmbeddingGrad(EmitContext& ctx) {
  TileConfig config = TileConfig::fixed_threads(mj::kEmbeddingChunk);
  mj::EmbeddingGradArgs<void> a{};
  a.n = ctx.in(0).numel();
  a.V = ctx.out(0).dim(0);
  a.D = ctx.out(0).dim(1);
  a.chunks = std::max<std::int64_t>((a.n + mj::kEmbeddingChunk - 1) / mj::kEmbeddingChunk, 1);
  if (a.n > 0x7fffffff || a.V * a.chunks >= 0x7fffffff)
    ctx.fail(fmt::format("sorts at most 2^31 tokens and ids x chunks, found {} tokens and {} ids", a.n, a.V));
  const std::int64_t counts_bytes = (a.V * a.chunks + 1) * 4;
  const std::int64_t rank = ctx.scratch(std::max<std::int64_t>(a.n, 1) * 4), counts = ctx.scratch(counts_bytes),
                     order = ctx.scratch(std::max<std::int64_t>(a.n, 1) * 4);
  const std::vector<Bind> pointers = {{&a.ids, B::of(ctx.operand(0))},   {&a.dy, B::of(ctx.operand(1))},
                                      {&a.dtable, B::of(ctx.result(0))}, {&a.rank, B::scratch(rank)},
                                      {&a.chunk_counts, B::scratch(counts)}, {&a.order, B::scratch(order)}};
  const std::string type = ctx.out_type(0);
  ctx.zero(B::scratch(counts), counts_bytes);
  const unsigned chunk_blocks = static_cast<unsigned>(std::min<std::int64_t>(a.chunks, 1 << 20));
  ctx.launch("layout", instantiation("embedding_grad_count_kernel", {type, threads_of(config)}), config, {chunk_blocks}, a, pointers);
  TileConfig scan_config = TileConfig::fixed_threads(1024);
  ctx.launch("layout", instantiation("embedding_grad_scan_kernel", {type, threads_of(scan_config)}), scan_config, {1}, a, pointers);
  ctx.launch("layout", instantiation("embedding_grad_place_kernel", {type, threads_of(config)}), config,
             {blocks_for(a.n, mj::kEmbeddingChunk)}, a, pointers);
  const std::int64_t column_blocks = (a.D + 32 * mj::kEmbeddingColumnsPerLane - 1) / (32 * mj::kEmbeddingColumnsPerLane);
  TileConfig sum_config = TileConfig::fixed_threads(1024);  // a block per (id, column block)
  ctx.launch("layout", instantiation("embedding_grad_sum_kernel", {type, threads_of(sum_config)}), sum_config,
             {static_cast<unsigned>(std::clamp<std::int64_t>(a.V * column_blocks, 1, 1 << 20))}, a, pointers);
}

// ---- layout ----
void emit_Reshape(EmitContext& ctx) { ctx.copy(B::of(ctx.operand(0)), B::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes())); }

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
  ctx.zero(B::of(ctx.result(0)), static_cast<std::int64_t>(ctx.out(0).bytes()));
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
// The sizes, scale and head strides (ir/attention_layout.h) of every
// attention kernel's arguments: the kernels index (batch, head) bh's rows
// from its head offset in each tensor with that tensor's row stride, so
// [B, T, H, Dh] operands and the packed [B, T, 3, H, Dh] qkv are read and
// written in place.
AttentionGeometry geometry_of(EmitContext& ctx) {
  const OpKind kind = ctx.op().kind;
  if (kind == OpKind::AttentionQkv || kind == OpKind::AttentionQkvGrad) return packed_attention_geometry(ctx.in(0));
  return attention_geometry(ctx.in(0), head_layout(ctx.attrs()));
}
mj::HeadStrides strides_of(const HeadView& v) { return {v.batch_stride, v.head_stride, v.row_stride}; }
template <class Args> void attention_sizes(EmitContext& ctx, const AttentionGeometry& g, Args& a) {
  double scale = ctx.attrs().get_float("scale");
  if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
  a.BH = g.batch * g.heads;
  a.Tn = g.tokens;
  a.Dh = g.head_dim;
  a.scale = static_cast<float>(scale);
  a.H = g.heads;
  a.qkv = strides_of(g.qkv);
  a.o = strides_of(g.out);
}
// Dynamic shared memory of an attention kernel: rows of T and of Dh values.
unsigned attention_smem(EmitContext& ctx, std::int64_t tokens, std::int64_t head_dim, int rows_of_t, int rows_of_d) {
  std::int64_t elem = ctx.in(0).dtype == DType::f64 ? 8 : 4;
  std::int64_t bytes = (rows_of_t * tokens + rows_of_d * head_dim) * elem;
  if (bytes > ctx.target().shared_memory_per_block_optin)
    ctx.fail(fmt::format("needs {} bytes of shared memory per row for T = {} (at most {} KiB on {})", bytes, tokens,
                         ctx.target().shared_memory_per_block_optin / 1024, ctx.target().arch));
  return static_cast<unsigned>(bytes);
}
unsigned attention_blocks(std::int64_t rows) { return static_cast<unsigned>(std::min<std::int64_t>(rows, 1 << 20)); }

// The buffers of one attention: q, k, v (three values, or three views H Dh
// apart into the packed qkv), out, lse; for the backward also dout and dq,
// dk, dv (three values, or views into one dqkv).
struct AttentionBuffers {
  B q, k, v, out, lse, dout, dq, dk, dv;
};
// A view `elements` into value v (q, k, v of a packed qkv).
B view(EmitContext& ctx, ValueId v, std::int64_t elements) {
  B b = B::of(v);
  b.offset = elements * static_cast<std::int64_t>(dtype_size(ctx.graph().type(v).dtype));
  return b;
}
AttentionBuffers attention_buffers(EmitContext& ctx, const AttentionGeometry& g) {
  AttentionBuffers b;
  switch (ctx.op().kind) {
    case OpKind::Attention:
      b.q = B::of(ctx.operand(0)), b.k = B::of(ctx.operand(1)), b.v = B::of(ctx.operand(2));
      b.out = B::of(ctx.result(0)), b.lse = B::of(ctx.result(1));  // the forward: no gradients
      break;
    case OpKind::AttentionGrad:
      b = {B::of(ctx.operand(0)), B::of(ctx.operand(1)), B::of(ctx.operand(2)), B::of(ctx.operand(3)), B::of(ctx.operand(4)),
           B::of(ctx.operand(5)), B::of(ctx.result(0)), B::of(ctx.result(1)), B::of(ctx.result(2))};
      break;
    case OpKind::AttentionQkv: {
      const ValueId qkv = ctx.operand(0);
      b.q = B::of(qkv), b.k = view(ctx, qkv, g.k_offset), b.v = view(ctx, qkv, g.v_offset);
      b.out = B::of(ctx.result(0)), b.lse = B::of(ctx.result(1));
      break;
    }
    default: {  // AttentionQkvGrad: qkv, out, lse, dout -> dqkv
      const ValueId qkv = ctx.operand(0), dqkv = ctx.result(0);
      b = {B::of(qkv),          view(ctx, qkv, g.k_offset), view(ctx, qkv, g.v_offset),  B::of(ctx.operand(1)),
           B::of(ctx.operand(2)), B::of(ctx.operand(3)),     B::of(dqkv),                  view(ctx, dqkv, g.k_offset),
           view(ctx, dqkv, g.v_offset)};
      break;
    }
  }
  return b;
}
}  // namespace

// bf16/f16 attention with Dh <= 128 on sm_80+ runs the flash family
// (codegen/kernels/attention.cuh: tensor cores, K/V tiles, no T x T
// scores), with the tile shapes of choose_flash (attention_select.h: the
// tuning database's, else the heuristic's); f32/f64, larger heads and older
// targets run the row kernels of the model family (scores of one row in
// shared memory).
namespace {
std::optional<FlashChoice> flash_choice(EmitContext& ctx) {
  const std::optional<AttentionProblem> problem = attention_problem_of(ctx.graph(), ctx.op());
  if (!problem || !flash_attention_serves(*problem, ctx.target())) return std::nullopt;
  return choose_flash(*problem, ctx.target());
}
// The TileConfig of one flash kernel: 64-row tiles of `queries` queries (or
// keys) against `columns` keys (or queries), Dh padded as tile_k.
TileConfig flash_config(const FlashChoice& choice, std::int64_t head_dim, int rows, int columns) {
  TileConfig config = TileConfig::fixed_threads(mj::FlashTile::kThreads);
  config.tile_m = rows;
  config.tile_n = columns;
  config.tile_k = mj::FlashTile::padded_dim(head_dim);
  config.stages = 2;  // K/V (or Q/dout) tiles double-buffered with cp.async
  config.source = choice.source;
  config.note = choice.note;
  return config;
}

// mj.attention and mj.attention_qkv.
void emit_attention_forward(EmitContext& ctx) {
  const AttentionGeometry g = geometry_of(ctx);
  const AttentionBuffers buf = attention_buffers(ctx, g);
  if (const std::optional<FlashChoice> choice = flash_choice(ctx)) {
    mj::FlashAttentionFwdArgs<void> a{};
    attention_sizes(ctx, g, a);
    const int fragments = choice->fwd_fragments;
    const TileConfig config = flash_config(*choice, a.Dh, mj::FlashTile::kRows * fragments, mj::FlashTile::kCols);
    const int dp = config.tile_k;
    // Grid (BH, tiles): the kernels start the heaviest tiles of all heads first.
    const unsigned tiles = static_cast<unsigned>((a.Tn + config.tile_m - 1) / config.tile_m);
    if (a.Tn > 65535 * std::int64_t{64}) ctx.fail(fmt::format("supports at most {} tokens, found {}", 65535 * 64, a.Tn));
    ctx.launch("attention", instantiation("flash_attention_fwd_kernel", {ctx.in_type(0), std::to_string(dp), std::to_string(fragments)}),
               config, {static_cast<unsigned>(a.BH), tiles}, a,
               {{&a.q, buf.q}, {&a.k, buf.k}, {&a.v, buf.v}, {&a.out, buf.out}, {&a.lse, buf.lse}},
               static_cast<unsigned>(mj::FlashTile::fwd_smem(dp, fragments)));
    return;
  }
  TileConfig config = TileConfig::fixed_threads(128);
  mj::AttentionArgs<void> a{};
  attention_sizes(ctx, g, a);
  ctx.launch("model", instantiation("attention_kernel", {ctx.in_type(0), threads_of(config)}), config, {attention_blocks(a.BH * a.Tn)}, a,
             {{&a.q, buf.q}, {&a.k, buf.k}, {&a.v, buf.v}, {&a.out, buf.out}, {&a.lse, buf.lse}}, attention_smem(ctx, a.Tn, a.Dh, 1, 1));
}

// mj.attention_grad and mj.attention_qkv_grad. The flash path reads out and
// lse (two kernels: dq with delta = dout . out into scratch, then dk and
// dv); the row kernels recompute the statistics from q, k, v, dout. The
// kernels write dq, dk, dv whole, so a packed dqkv needs no memset.
void emit_attention_backward(EmitContext& ctx) {
  const AttentionGeometry g = geometry_of(ctx);
  const AttentionBuffers buf = attention_buffers(ctx, g);
  if (const std::optional<FlashChoice> choice = flash_choice(ctx)) {
    mj::FlashAttentionBwdDqArgs<void> q{};
    attention_sizes(ctx, g, q);
    const int dp = mj::FlashTile::padded_dim(q.Dh), fragments = choice->dq_fragments;
    const TileConfig dq_config = flash_config(*choice, q.Dh, mj::FlashTile::kRows * fragments, mj::FlashTile::kCols);
    const unsigned key_tiles = static_cast<unsigned>((q.Tn + mj::FlashTile::kRows - 1) / mj::FlashTile::kRows);
    const unsigned query_tiles = static_cast<unsigned>((q.Tn + dq_config.tile_m - 1) / dq_config.tile_m);
    if (q.Tn > 65535 * std::int64_t{64}) ctx.fail(fmt::format("supports at most {} tokens, found {}", 65535 * 64, q.Tn));
    const std::int64_t delta = ctx.scratch(q.BH * q.Tn * 4);
    ctx.launch("attention", instantiation("flash_attention_bwd_dq_kernel", {ctx.in_type(0), std::to_string(dp), std::to_string(fragments)}),
               dq_config, {static_cast<unsigned>(q.BH), query_tiles}, q,
               {{&q.q, buf.q},
                {&q.k, buf.k},
                {&q.v, buf.v},
                {&q.out, buf.out},
                {&q.lse, buf.lse},
                {&q.dout, buf.dout},
                {&q.delta, B::scratch(delta)},
                {&q.dq, buf.dq}},
               static_cast<unsigned>(mj::FlashTile::bwd_dq_smem(dp, fragments)));
    mj::FlashAttentionBwdDkdvArgs<void> kv{};
    attention_sizes(ctx, g, kv);
    const int queries = choice->dkdv_queries;
    const TileConfig dkdv_config = flash_config(*choice, kv.Dh, mj::FlashTile::kRows, queries);
    ctx.launch("attention", instantiation("flash_attention_bwd_dkdv_kernel", {ctx.in_type(0), std::to_string(dp), std::to_string(queries)}),
               dkdv_config, {static_cast<unsigned>(kv.BH), key_tiles}, kv,
               {{&kv.q, buf.q},
                {&kv.k, buf.k},
                {&kv.v, buf.v},
                {&kv.dout, buf.dout},
                {&kv.lse, buf.lse},
                {&kv.delta, B::scratch(delta)},
                {&kv.dk, buf.dk},
                {&kv.dv, buf.dv}},
               static_cast<unsigned>(mj::FlashTile::bwd_dkdv_smem(dp, queries)));
    return;
  }
  TileConfig config = TileConfig::fixed_threads(128);
  mj::AttentionGradQArgs<void> q{};
  attention_sizes(ctx, g, q);
  std::int64_t stats = ctx.scratch(q.BH * q.Tn * 2 * 8);
  unsigned smem = attention_smem(ctx, q.Tn, q.Dh, 2, 2);
  ctx.launch("model", instantiation("attention_grad_q_kernel", {ctx.in_type(0), threads_of(config)}), config, {attention_blocks(q.BH * q.Tn)}, q,
             {{&q.q, buf.q}, {&q.k, buf.k}, {&q.v, buf.v}, {&q.dout, buf.dout}, {&q.dq, buf.dq}, {&q.stats, B::scratch(stats)}}, smem);
  mj::AttentionGradKvArgs<void> kv{};
  attention_sizes(ctx, g, kv);
  ctx.launch("model", instantiation("attention_grad_kv_kernel", {ctx.in_type(0), threads_of(config)}), config,
             {attention_blocks(kv.BH * kv.Tn)}, kv,
             {{&kv.q, buf.q},
              {&kv.k, buf.k},
              {&kv.v, buf.v},
              {&kv.dout, buf.dout},
              {&kv.stats, B::scratch(stats)},
              {&kv.dk, buf.dk},
              {&kv.dv, buf.dv}},
             smem);
}
}  // namespace

void emit_Attention(EmitContext& ctx) { emit_attention_forward(ctx); }
void emit_AttentionQkv(EmitContext& ctx) { emit_attention_forward(ctx); }
void emit_AttentionGrad(EmitContext& ctx) { emit_attention_backward(ctx); }
void emit_AttentionQkvGrad(EmitContext& ctx) { emit_attention_backward(ctx); }

namespace {
// Cross entropy's kernel shape for rows of V logits: one warp per row with
// the row in registers (PER_LANE values per lane) when V <= 1024, else one
// block per row. Returns the instantiation and sets config and grid.
std::string cross_entropy_kernel(EmitContext& ctx, const char* stem, std::int64_t rows, std::int64_t V, TileConfig& config,
                                 unsigned& grid) {
  const std::string type = ctx.in_type(0);
  if (const int per_lane = warp_row_per_lane(V)) {
    config = TileConfig::fixed_threads(256);
    grid = warp_row_blocks(rows);
    return instantiation(fmt::format("{}_warp_kernel", stem), {type, std::to_string(per_lane), threads_of(config)});
  }
  config = TileConfig::fixed_threads(V >= 16384 ? 1024 : 256);
  grid = static_cast<unsigned>(std::clamp<std::int64_t>(rows, 1, 1 << 20));
  return instantiation(fmt::format("{}_block_kernel", stem), {type, threads_of(config)});
}
}  // namespace

void emit_CrossEntropy(EmitContext& ctx) {
  mj::CrossEntropyRowsArgs<void> r{};
  r.rows = ctx.in(0).dim(0);
  r.V = ctx.in(0).dim(1);
  std::int64_t losses = ctx.scratch(r.rows * 8);
  TileConfig config;
  unsigned grid = 1;
  std::string kernel = cross_entropy_kernel(ctx, "cross_entropy_rows", r.rows, r.V, config, grid);
  ctx.launch("model", kernel, config, {grid}, r,
             {{&r.logits, B::of(ctx.operand(0))}, {&r.targets, B::of(ctx.operand(1))}, {&r.row_loss, B::scratch(losses)}});
  TileConfig mean_config = TileConfig::fixed_threads(256);
  mj::MeanOfValuesArgs<void> m{};
  m.n = r.rows;
  m.coeff = 1.0;
  ctx.launch("reduce", instantiation("mean_of_values_kernel", {ctx.in_type(0), threads_of(mean_config)}), mean_config, {1}, m,
             {{&m.values, B::scratch(losses)}, {&m.out, B::of(ctx.result(0))}});
}

void emit_CrossEntropyGrad(EmitContext& ctx) {
  mj::CrossEntropyGradArgs<void> a{};
  a.rows = ctx.in(0).dim(0);
  a.V = ctx.in(0).dim(1);
  TileConfig config;
  unsigned grid = 1;
  std::string kernel = cross_entropy_kernel(ctx, "cross_entropy_grad", a.rows, a.V, config, grid);
  ctx.launch("model", kernel, config, {grid}, a,
             {{&a.logits, B::of(ctx.operand(0))},
              {&a.targets, B::of(ctx.operand(1))},
              {&a.dloss, B::of(ctx.operand(2))},
              {&a.dlogits, B::of(ctx.result(0))}});
}

// Seed and offset are kernel arguments and step_offset a device scalar (null
// when absent) read by the kernel, so one kernel serves every random_normal
// of a dtype and a new step_offset needs no new source.
void emit_RandomNormal(EmitContext& ctx) {
  TileConfig config = TileConfig::fixed_threads(256);
  mj::RandomNormalArgs<void> a{};
  a.n = ctx.out(0).numel();
  a.seed = static_cast<unsigned long long>(ctx.attrs().get_int("seed"));
  a.offset = static_cast<unsigned long long>(ctx.attrs().get_int("offset"));
  ctx.launch("elementwise", instantiation("random_normal_kernel", {ctx.out_type(0), threads_of(config)}), config, {blocks_for(a.n)}, a,
             {{&a.out, B::of(ctx.result(0))}, {&a.step_offset, ctx.has_operand(0) ? B::of(ctx.operand(0)) : B::none()}});
}

void emit_AdamW(EmitContext& ctx) {
  TileConfig config = TileConfig::fixed_threads(256);
  const auto& attrs = ctx.attrs();
  mj::AdamWArgs a{};
  a.n = ctx.in(0).numel();
  a.beta1 = attrs.get_float("beta1");
  a.beta2 = attrs.get_float("beta2");
  a.eps = static_cast<float>(attrs.get_float("eps"));
  a.weight_decay = static_cast<float>(attrs.get_float("weight_decay"));
  ctx.launch("elementwise", instantiation("adamw_kernel", {threads_of(config)}), config, {blocks_for(a.n)}, a,
             {{&a.param, B::of(ctx.operand(0))},
              {&a.grad, B::of(ctx.operand(1))},
              {&a.m, B::of(ctx.operand(2))},
              {&a.v, B::of(ctx.operand(3))},
              {&a.lr, B::of(ctx.operand(4))},
              {&a.step, B::of(ctx.operand(5))},
              {&a.new_param, B::of(ctx.result(0))},
              {&a.new_m, B::of(ctx.result(1))},
              {&a.new_v, B::of(ctx.result(2))}});
}

}  // namespace moejit::codegen
