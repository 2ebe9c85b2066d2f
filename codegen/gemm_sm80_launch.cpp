// The sm80 GEMM family's launches (see gemm_sm80_launch.h): the argument
// struct of codegen/kernels/gemm_sm80.cuh, the instantiation (layouts, and
// whether every stored row of A and B starts on 16 bytes, which lets
// cp.async copy them), and a persistent grid of two blocks per SM.
#include "codegen/gemm_sm80_launch.h"

#include <fmt/format.h>

#include "codegen/kernels/gemm_sm80.cuh"
#include "codegen/kernels/matmul.cuh"

namespace moejit::codegen {

void launch_sm80_gemm(EmitContext& ctx, const TileConfig& config, const Sm80Gemm& given) {
  using Mode = Sm80Gemm::Mode;
  // split_k (gemm_select.cpp, weight_gradient_split_k): A stored [K, M] and
  // B stored [K, N] as a batched product of split_k slices of K (slice s is
  // the view K / split_k rows further on: the batched mode's group strides
  // m * k and n * k) into f32 partials, added in slice order by
  // matmul_split_k_finish_kernel.
  const std::int64_t split = config.split_k;
  Sm80Gemm g = given;
  Buffer partials;
  if (split > 1) {
    if (g.mode != Mode::batched || g.groups != 1 || g.a_k_major || g.b_k_major || g.k % (split * 64) != 0)
      ctx.fail(fmt::format("(sm80 GEMM) split_k {} takes one product with A stored [K, M], B stored [K, N] and K a multiple of {}; "
                           "found {} groups, K {}", split, split * 64, g.groups, g.k));
    partials = Buffer::scratch(ctx.scratch(split * g.m * g.n * 4));
    g.groups = split;
    g.k /= split;
    g.a_batched = g.b_batched = true;
    g.c = partials;
  }
  sm80::GemmArgs args{};
  args.m = g.m;
  args.n = g.n;
  args.k = g.k;
  args.groups = static_cast<int>(g.groups);
  args.varlen_k = g.mode == Mode::wgrad ? 1 : 0;
  args.a_row_div = static_cast<int>(g.top_k);
  args.ldc = g.n;
  const bool a_k_major = g.mode == Mode::wgrad ? false : g.a_k_major;
  const bool b_k_major = g.mode == Mode::wgrad ? false : g.b_k_major;
  // The stored operands: A K-major [rows, K] or M-major [K, rows]; B K-major [N, K] or N-major [K, N].
  args.lda = a_k_major ? g.k : g.m;
  args.ldb = b_k_major ? g.k : g.n;
  if (g.mode == Mode::batched) {
    args.a_group_stride = g.a_batched ? g.m * g.k : 0;
    args.b_group_stride = g.b_batched ? g.n * g.k : 0;
    args.c_group_stride = g.m * g.n;
  } else if (g.mode == Mode::grouped) {
    args.b_group_stride = g.n * g.k;
  } else {
    args.c_group_stride = g.m * g.n;
  }
  // Arena buffers start on 256 bytes, so rows start on 16 bytes when the row strides are multiples of 8 elements.
  const bool vec16 = args.lda % 8 == 0 && args.ldb % 8 == 0;
  const int bm = config.tile_m, bn = config.tile_n, bk = config.tile_k;
  // Split K (codegen/gemm_select.cpp): f32 partials, so a plain store; else the epilogue's functor.
  // The widening epilogue (an mj.cast to f32 folded in) of a split product
  // is the finish's: it stores the f32 of the rounded 16-bit sum.
  const bool widen = g.epilogue == Sm80Gemm::Epilogue::widen;
  const char* functor = g.epilogue == Sm80Gemm::Epilogue::gelu        ? "StoreGelu16"
                        : g.epilogue == Sm80Gemm::Epilogue::gelu_grad ? "StoreGeluGrad16"
                        : widen                                       ? "StoreWiden16"
                                                                      : "Store16";
  if (split > 1 && g.epilogue != Sm80Gemm::Epilogue::store && !(widen && g.aux.kind == Buffer::Kind::null))
    ctx.fail("(sm80 GEMM) has no GELU epilogue for split-K partials, nor a second output");
  const std::string store = split > 1 ? "moejit::sm80::StoreF32" : fmt::format("moejit::sm80::{}<{}>", functor, template_type(g.dtype));
  const std::string kernel = fmt::format("moejit::sm80::gemm_sm80_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}>", template_type(g.dtype), bm, bn,
                                         bk, config.stages, a_k_major, b_k_major, vec16, store);
  const bool grouped = g.mode == Mode::grouped;
  const auto smem = static_cast<unsigned>(sm80::smem_bytes(bm, bn, bk, config.stages, g.groups, grouped));
  // Tiles the walk can have: exact for batched and wgrad; for grouped rows
  // at most one partial row tile per group beyond the full ones.
  const std::int64_t tiles_n = (g.n + bn - 1) / bn;
  const std::int64_t tiles = grouped ? ((g.m + bm - 1) / bm + g.groups) * tiles_n : g.groups * ((g.m + bm - 1) / bm) * tiles_n;
  const unsigned grid = persistent_grid(ctx.target(), tiles, 2);  // 255 registers x 128 threads: two blocks per SM
  std::vector<Bind> pointers = {{&args.a, g.a}, {&args.b, g.b}, {&args.c, g.c}};
  const bool has_aux = g.epilogue != Sm80Gemm::Epilogue::store && g.aux.kind != Buffer::Kind::null;
  if (g.epilogue == Sm80Gemm::Epilogue::gelu_grad && !has_aux) ctx.fail("(sm80 GEMM, GELU-backward epilogue) needs the pre-activation");
  if (has_aux) pointers.push_back({&args.aux, g.aux});
  if (g.mode != Mode::batched) pointers.push_back({&args.group_offsets, g.offsets});
  if (grouped && g.slots.kind != Buffer::Kind::null) pointers.push_back({&args.a_rows, g.slots});
  ctx.launch("gemm_sm80", kernel, config, {grid}, args, pointers, smem);
  if (split > 1) {
    mj::MatmulSplitArgs<void> finish{};
    finish.M = g.m;
    finish.N = g.n;
    finish.K = g.k * split;
    finish.batch = 1;
    finish.split = split;
    const std::string finish_kernel = widen ? instantiation("matmul_split_k_finish_kernel", {template_type(g.dtype), "256", "true"})
                                            : instantiation("matmul_split_k_finish_kernel", {template_type(g.dtype), "256"});
    ctx.launch("matmul", finish_kernel, TileConfig::fixed_threads(256), {blocks_for(g.m * g.n)}, finish,
               {{&finish.c, given.c}, {&finish.partials, partials}});
  }
}

}  // namespace moejit::codegen
