// The sm90 GEMM family's launches (see gemm_sm90_launch.h). Tensor maps are
// 3-D {inner, outer, group}, innermost first, with 128-byte swizzle and
// zero fill past the bounds; the boxes are what the kernel's producer and
// TMA-store epilogue expect (codegen/kernels/gemm_sm90.cuh).
#include "codegen/gemm_sm90_launch.h"

#include <fmt/format.h>

#include "codegen/kernels/gemm_sm90.cuh"
#include "codegen/kernels/gemm_sm90_streamk.cuh"
#include "codegen/kernels/matmul.cuh"

namespace moejit::codegen {

namespace {

// bf16 boxes are 64 elements (128 bytes) wide; f32 ones (the widening
// epilogue's c) 32.
TensorMapField map_3d(Buffer buffer, std::int64_t inner, std::int64_t outer, std::int64_t groups, std::int64_t outer_stride,
                      std::int64_t group_stride, std::uint32_t box_outer, DType dtype = DType::bf16) {
  TensorMapField m;
  m.buffer = buffer;
  m.dtype = dtype;
  m.rank = 3;
  m.dims[0] = inner;
  m.dims[1] = outer;
  m.dims[2] = groups;
  m.strides[1] = outer_stride;
  m.strides[2] = group_stride;
  m.box[0] = dtype == DType::f32 ? 32 : 64;
  m.box[1] = box_outer;
  m.box[2] = 1;
  m.swizzle = TensorMapField::Swizzle::b128;
  return m;
}

// config.split_k > 1 (codegen/gemm_select.cpp, sm90_split_k): C = A B with
// A stored [K, M] and B stored [K, N] runs as a batched product of
// split_k slices of K / split_k rows each -- slice s of A (and of B) is the
// plain view K / split_k rows further on -- into f32 partials [split_k, M,
// N], which matmul_split_k_finish_kernel adds in slice order into C (the
// same bits every run).
void launch_sm90_split_k(EmitContext& ctx, const TileConfig& config, const Sm90Gemm& g) {
  const std::int64_t split = config.split_k, slice = g.k / split;
  // The widening epilogue (an mj.cast to f32 folded in) is the finish's: it
  // stores the f32 of the rounded bf16 sum; no other epilogue there.
  const bool widen = g.epilogue == Sm90Gemm::Epilogue::widen;
  if (g.epilogue != Sm90Gemm::Epilogue::store && !(widen && g.aux.kind == Buffer::Kind::null))
    ctx.fail("(sm90 GEMM) has no GELU epilogue for split-K partials, nor a second output");
  if (g.mode != Sm90Gemm::Mode::batched || g.groups != 1 || g.a_k_major || g.b_k_major || g.k % (split * 64) != 0)
    ctx.fail(fmt::format("(sm90 GEMM) split_k {} takes one product with A stored [K, M], B stored [K, N] and K a multiple of {}; "
                         "found {} groups, K {}", split, split * 64, g.groups, g.k));
  sm90::GemmArgs args{};
  args.m = g.m;
  args.n = g.n;
  args.k = slice;
  args.groups = static_cast<int>(split);
  args.a_batched = 1;
  args.b_batched = 1;
  args.ldc = g.n;
  args.c_group_stride = g.m * g.n;
  const TensorMapField a_map = map_3d(g.a, g.m, slice, split, g.m, g.m * slice, 64);
  const TensorMapField b_map = map_3d(g.b, g.n, slice, split, g.n, g.n * slice, 64);
  const Buffer partials = Buffer::scratch(ctx.scratch(split * g.m * g.n * 4));
  const std::string kernel = fmt::format("moejit::sm90::gemm_sm90_kernel<128, {}, 64, {}, false, false, moejit::sm90::StoreF32>",
                                         config.tile_n, config.stages);
  const auto smem = static_cast<unsigned>(sm90::smem_bytes(128, config.tile_n, 64, config.stages, split));
  ctx.launch("gemm_sm90", kernel, config, {static_cast<unsigned>(ctx.target().sm_count)}, args, {{&args.c, partials}}, smem,
             {{&args.a, a_map}, {&args.b, b_map}});
  mj::MatmulSplitArgs<void> finish{};
  finish.M = g.m;
  finish.N = g.n;
  finish.K = g.k;
  finish.batch = 1;
  finish.split = split;
  const std::string finish_kernel = widen ? instantiation("matmul_split_k_finish_kernel", {"mj::bf16_t", "256", "true"})
                                          : instantiation("matmul_split_k_finish_kernel", {"mj::bf16_t", "256"});
  ctx.launch("matmul", finish_kernel, TileConfig::fixed_threads(256), {blocks_for(g.m * g.n)}, finish,
             {{&finish.c, g.c}, {&finish.partials, partials}});
}

}  // namespace

void launch_sm90_gemm(EmitContext& ctx, const TileConfig& config, const Sm90Gemm& g) {
  using Mode = Sm90Gemm::Mode;
  if (config.split_k > 1) return launch_sm90_split_k(ctx, config, g);
  if (config.stream_k && g.mode != Mode::wgrad) ctx.fail("(sm90 GEMM) stream-K schedules weight gradients only");
  sm90::StreamKArgs stream_k{};  // the stream-K kernel's arguments hold the family's
  sm90::GemmArgs& args = stream_k.gemm;
  args.m = g.m;
  args.n = g.n;
  args.k = g.k;
  args.groups = static_cast<int>(g.groups);
  args.varlen_k = g.mode == Mode::wgrad ? 1 : 0;
  args.a_batched = g.a_batched ? 1 : 0;
  args.b_batched = g.mode == Mode::grouped || (g.mode == Mode::batched && g.b_batched) ? 1 : 0;
  args.ldc = g.n;
  const std::int64_t tile_n = config.tile_n;
  // Rows of A and C, and how many group slices each tensor map spans.
  std::int64_t a_rows = g.m, a_groups = g.a_batched ? g.groups : 1, c_rows = g.m, c_groups = g.groups;
  if (g.mode == Mode::grouped) c_groups = 1;
  if (g.mode == Mode::wgrad) a_rows = g.m;  // A is [k rows, m]: inner m
  args.c_group_stride = g.mode == Mode::grouped ? 0 : c_rows * g.n;

  TensorMapField a_map, b_map;
  if (g.mode == Mode::wgrad) {
    a_map = map_3d(g.a, g.m, g.k, 1, g.m, g.m * g.k, 64);  // xs [rows, m], M-major
    b_map = map_3d(g.b, g.n, g.k, 1, g.n, g.n * g.k, 64);  // dys [rows, n], N-major
  } else {
    a_map = g.a_k_major ? map_3d(g.a, g.k, a_rows, a_groups, g.k, a_rows * g.k, 128)
                        : map_3d(g.a, a_rows, g.k, a_groups, a_rows, a_rows * g.k, 64);
    const std::int64_t b_groups = args.b_batched ? g.groups : 1;
    b_map = g.b_k_major ? map_3d(g.b, g.k, g.n, b_groups, g.k, g.n * g.k, static_cast<std::uint32_t>(tile_n))
                        : map_3d(g.b, g.n, g.k, b_groups, g.n, g.n * g.k, 64);
  }
  const bool widen = g.epilogue == Sm90Gemm::Epilogue::widen;  // c is f32 (and aux, when set, bf16)
  const bool tma_store = g.n % 8 == 0;
  TensorMapField c_map = map_3d(g.c, g.n, c_rows, c_groups, g.n, c_rows * g.n, 64, widen ? DType::f32 : DType::bf16);
  const char* tma = tma_store ? "true" : "false";
  std::string epilogue = tma_store ? "moejit::sm90::StoreBf16" : "moejit::sm90::StoreBf16Direct";
  if (g.epilogue == Sm90Gemm::Epilogue::gelu) epilogue = fmt::format("moejit::sm90::StoreGeluBf16<{}>", tma);
  if (g.epilogue == Sm90Gemm::Epilogue::gelu_grad) epilogue = fmt::format("moejit::sm90::StoreGeluGradBf16<{}>", tma);
  if (widen) epilogue = fmt::format("moejit::sm90::StoreWidenF32<{}>", tma);
  const bool gather = g.gather_slots.kind != Buffer::Kind::null;
  const bool gather_fits = (g.mode == Mode::grouped && g.a_k_major && g.k % 8 == 0) || (g.mode == Mode::wgrad && g.m % 8 == 0);
  if (gather && (!gather_fits || config.stream_k))
    ctx.fail(fmt::format("(sm90 GEMM) gathers the rows of A in grouped mode (K-major A, K a multiple of 8) or in a weight gradient "
                         "(M a multiple of 8), not on the stream-K schedule; found mode {}, M {}, K {}, stream-K {}",
                         static_cast<int>(g.mode), g.m, g.k, config.stream_k));
  if (gather) args.gather_top_k = static_cast<int>(g.gather_top_k);
  const bool a_k_major = g.mode == Mode::wgrad ? false : g.a_k_major;
  const bool b_k_major = g.mode == Mode::wgrad ? false : g.b_k_major;
  std::string kernel = fmt::format("moejit::sm90::gemm_sm90_kernel<128, {}, 64, {}, {}, {}, {}{}>", tile_n, config.stages,
                                   a_k_major ? "true" : "false", b_k_major ? "true" : "false", epilogue,
                                   gather ? (config.overlap ? ", true, true" : ", false, true") : (config.overlap ? ", true" : ""));
  const auto smem = static_cast<unsigned>(sm90::smem_bytes(128, config.tile_n, 64, config.stages, g.groups));
  std::vector<Bind> pointers = {{&args.c, g.c}};
  const bool has_aux = g.epilogue != Sm90Gemm::Epilogue::store && g.aux.kind != Buffer::Kind::null;
  if (g.epilogue == Sm90Gemm::Epilogue::gelu_grad && !has_aux) ctx.fail("(sm90 GEMM, GELU-backward epilogue) needs the pre-activation");
  if (has_aux) pointers.push_back({&args.aux, g.aux});
  if (g.mode != Mode::batched) pointers.push_back({&args.group_offsets, g.offsets});
  if (gather) {  // A is read through the slots, not through a tensor map
    pointers.push_back({&args.gather_src, g.a});
    pointers.push_back({&args.gather_slots, g.gather_slots});
  }
  std::vector<TensorMapBind> maps = {{&args.b, b_map}};
  if (!gather) maps.push_back({&args.a, a_map});
  if (tma_store) maps.push_back({&args.c_map, c_map});
  if (tma_store && has_aux && (g.epilogue == Sm90Gemm::Epilogue::gelu || widen))
    maps.push_back({&args.aux_map, map_3d(g.aux, g.n, c_rows, c_groups, g.n, c_rows * g.n, 64)});
  const auto grid = static_cast<unsigned>(ctx.target().sm_count);
  if (config.stream_k) {
    // One partial tile and two flags per block (codegen/kernels/gemm_sm90_streamk.cuh); the flags start at zero.
    const std::int64_t flag_bytes = grid * 2 * 4;
    const Buffer partials = Buffer::scratch(ctx.scratch(grid * sm90::streamk_partial_floats(128, config.tile_n) * 4));
    const Buffer flags = Buffer::scratch(ctx.scratch(flag_bytes));
    ctx.zero(flags, flag_bytes);
    pointers.push_back({&stream_k.partials, partials});
    pointers.push_back({&stream_k.flags, flags});
    kernel = fmt::format("moejit::sm90::gemm_sm90_streamk_kernel<128, {}, 64, {}, {}>", tile_n, config.stages, epilogue);
    const auto streamk_smem =
        static_cast<unsigned>(sm90::smem_bytes(128, config.tile_n, 64, config.stages, sm90::streamk_smem_groups(g.groups, grid)));
    ctx.launch("gemm_sm90_streamk", kernel, config, {grid}, stream_k, pointers, streamk_smem, maps);
    return;
  }
  ctx.launch("gemm_sm90", kernel, config, {grid}, args, pointers, smem, maps);
}

}  // namespace moejit::codegen
