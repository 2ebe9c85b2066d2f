// See codegen/simt_matmul.h.
#include "codegen/simt_matmul.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

namespace moejit::codegen {

void launch_simt_matmul(EmitContext& ctx, const TileConfig& c, const mj::MatmulArgs<void>& a, std::int64_t batch, DType dtype, Buffer lhs,
                        Buffer rhs, Buffer out) {
  const std::string type = template_type(dtype);
  const std::string bm = std::to_string(c.tile_m), bn = std::to_string(c.tile_n), bk = std::to_string(c.tile_k),
                    threads = std::to_string(c.threads);
  if (c.split_k <= 1) {
    ctx.launch("matmul", instantiation("matmul_kernel", {type, bm, bn, bk, threads}), c, {tiles(a.N, c.tile_n), tiles(a.M, c.tile_m), static_cast<unsigned>(batch)},
               a, {{&a.a, lhs}, {&a.b, rhs}, {&a.c, out}});
    return;
  }
  mj::MatmulSplitArgs<void> s{};
  s.M = a.M;
  s.N = a.N;
  s.K = a.K;
  s.a_sm = a.a_sm;
  s.a_sk = a.a_sk;
  s.b_sk = a.b_sk;
  s.b_sn = a.b_sn;
  s.a_batch = a.a_batch;
  s.b_batch = a.b_batch;
  s.batch = batch;
  // Slices of whole tile_k steps; the last may be shorter, and a split that
  // rounds to fewer slices launches fewer.
  const std::int64_t acc_bytes = dtype == DType::f64 ? 8 : 4;
  if (a.N <= 32 && a.a_sm == 1) {
    // Narrow, with A's M contiguous (a router's x^T dlogits): the warp
    // shape of matmul_split_k_narrow_kernel, its own split: about two
    // blocks per SM, one wave (the kernel's ~100 registers a thread fit two
    // 256-thread blocks on an SM; four per SM made two waves of short
    // slices), slices of at least 64 k.
    const int np = a.N <= 8 ? 8 : a.N <= 16 ? 16 : 32;
    const int vec = std::min(16 / static_cast<int>(dtype_size(dtype)), 32 / np);
    const std::int64_t m_blocks = (a.M + 32 * vec - 1) / (32 * vec);
    const std::int64_t wanted = std::clamp<std::int64_t>((2 * ctx.target().sm_count + m_blocks * batch - 1) / (m_blocks * batch), 1, 65535);
    s.chunk = std::max<std::int64_t>((a.K + wanted - 1) / wanted, 64);
    s.chunk = (s.chunk + 31) / 32 * 32;
    s.split = (a.K + s.chunk - 1) / s.chunk;
    TileConfig narrow = TileConfig::fixed_threads(256);
    narrow.split_k = static_cast<int>(s.split);
    narrow.note = fmt::format("narrow split-K: N {} in {} registers, {} rows per lane, {} slices of {}", a.N, np, vec, s.split, s.chunk);
    const std::int64_t partials = ctx.scratch(batch * s.split * a.M * a.N * acc_bytes);
    const std::vector<Bind> pointers = {{&s.a, lhs}, {&s.b, rhs}, {&s.c, out}, {&s.partials, Buffer::scratch(partials)}};
    ctx.launch("matmul", instantiation("matmul_split_k_narrow_kernel", {type, std::to_string(np), std::to_string(vec), "256"}), narrow,
               {static_cast<unsigned>(m_blocks), static_cast<unsigned>(s.split), static_cast<unsigned>(batch)}, s, pointers);
    // A warp per output adds its slices (matmul_split_k_finish_warp_kernel).
    TileConfig finish = TileConfig::fixed_threads(256);
    ctx.launch("matmul", instantiation("matmul_split_k_finish_warp_kernel", {type, "256"}), finish, {blocks_for(batch * a.M * a.N * 32)}, s,
               pointers);
    return;
  }
  const std::int64_t steps = (a.K + c.tile_k - 1) / c.tile_k;
  s.chunk = (steps + c.split_k - 1) / c.split_k * c.tile_k;
  s.split = (a.K + s.chunk - 1) / s.chunk;
  const std::int64_t partials = ctx.scratch(batch * s.split * a.M * a.N * acc_bytes);
  const std::vector<Bind> pointers = {{&s.a, lhs}, {&s.b, rhs}, {&s.c, out}, {&s.partials, Buffer::scratch(partials)}};
  ctx.launch("matmul", instantiation("matmul_split_k_kernel", {type, bm, bn, bk, threads}), c,
             {tiles(a.N, c.tile_n), tiles(a.M, c.tile_m), static_cast<unsigned>(batch * s.split)}, s, pointers);
  TileConfig finish = TileConfig::fixed_threads(256);
  ctx.launch("matmul", instantiation("matmul_split_k_finish_kernel", {type, "256"}), finish, {blocks_for(batch * a.M * a.N)}, s, pointers);
}

}  // namespace moejit::codegen
