// The GEMM family and TileConfig of every matrix product (see gemm_select.h).
//
// SIMT family (codegen/kernels/matmul.cuh), constraints of its thread grid:
// tile_m and tile_n powers of two in [8, 128], tile_k a power of two in
// [4, 64], at most 64 x 64 outputs per block (a larger tile halves its
// larger side: 16 outputs per thread, the registers and the blocks per
// expert of the 64 x 64 tile), threads = clamp(tile_m * tile_n / 16, 32,
// 256), and the two staged slices, tile_k x (tile + 1) values of the
// arithmetic type each, within 48 KiB of static shared memory (tile_k is
// halved until they fit). The config's note says what was adjusted.
//   attribute: tile_m/n/k from the op (moe-tiling sets them on the expert matmuls);
//   heuristic: 64 x 64 x 16, 256 threads.
//   For 16-bit operands moe-tiling writes tensor-core shapes (tile_m 128,
//   tile_k 64, tile_n up to 256); where the SIMT family serves such an op
//   (no sm_90a), tile_n and tile_m are clamped to 128 and tile_k to 64, with
//   a note.
//
// sm90 family (codegen/kernels/gemm_sm90.cuh), for bf16 on sm_90a when
// every operand's rows are 16-byte multiples (the copy engine's rule): a
// 128 x tile_n x 64 tile, 384 threads (a producer and two consumer
// warpgroups), one block per SM over a persistent grid.
//   attribute: tile_n from the op when tile_m = 128, tile_k = 64 and tile_n
//              is 64, 128 or 256 (other attributes: the SIMT family);
//   heuristic: tile_n 256 or 128, whichever pads N less (256 on a tie: it
//              reuses A twice as much);
//   stages: as many as fit (at most 6), after the C staging boxes.
#include "codegen/gemm_select.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/kernels/gemm_sm90.cuh"
#include "ir/error.h"
#include "ir/printer.h"

namespace moejit::codegen {

namespace {

bool power_of_two_in(std::int64_t v, std::int64_t lo, std::int64_t hi) { return v >= lo && v <= hi && (v & (v - 1)) == 0; }

[[noreturn]] void fail(const Graph& graph, const Op& op, const std::string& message) {
  throw Error(fmt::format("{} = \"{}\": the CUDA backend {}", value_ref(graph, op.results.empty() ? kNoValue : op.results[0]),
                          op_name(op.kind), message));
}

void add_note(TileConfig& c, const std::string& note) { c.note += (c.note.empty() ? "" : "; ") + note; }

TileConfig simt_config(const Graph& graph, const Op& op, const GemmProblem& problem) {
  TileConfig c;
  const AttrValue* m = op.attrs.find("tile_m");
  if (m && problem.kind == GemmProblem::Kind::grouped) {
    c.tile_m = static_cast<int>(op.attrs.get_int("tile_m"));
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.tile_k = static_cast<int>(op.attrs.get_int("tile_k"));
    if (dtype_size(problem.dtype) == 2 && (c.tile_m > 128 || c.tile_n > 128 || c.tile_k > 64)) {
      add_note(c, fmt::format("tensor-core tile {}x{}x{} clamped for the SIMT family", c.tile_m, c.tile_n, c.tile_k));
      c.tile_m = std::min(c.tile_m, 128);
      c.tile_n = std::min(c.tile_n, 128);
      c.tile_k = std::min(c.tile_k, 64);
    }
    if (!power_of_two_in(c.tile_m, 8, 128) || !power_of_two_in(c.tile_n, 8, 128) || !power_of_two_in(c.tile_k, 4, 64))
      fail(graph, op,
           fmt::format("(SIMT matmul) takes tile_m and tile_n powers of two in [8, 128] and tile_k a power of two in [4, 64], "
                       "found tile_m = {}, tile_n = {}, tile_k = {}",
                       c.tile_m, c.tile_n, c.tile_k));
    c.source = TileConfig::Source::attribute;
  } else {
    c.tile_m = 64;
    c.tile_n = 64;
    c.tile_k = 16;
    c.source = TileConfig::Source::heuristic;
  }
  // At most 64 x 64 outputs per block (16 per thread at 256 threads): a
  // larger tile (sized for tensor cores) halves its larger side, so the
  // registers per thread and the blocks per expert stay those of 64 x 64.
  const int requested_m = c.tile_m, requested_n = c.tile_n;
  while (c.tile_m * c.tile_n > 64 * 64) (c.tile_n > c.tile_m ? c.tile_n : c.tile_m) /= 2;
  if (c.tile_m != requested_m || c.tile_n != requested_n)
    add_note(c, fmt::format("tile {}x{} -> {}x{}: at most 16 outputs per thread", requested_m, requested_n, c.tile_m, c.tile_n));
  c.threads = std::clamp(c.tile_m * c.tile_n / 16, 32, 256);
  const int acc_bytes = problem.dtype == DType::f64 ? 8 : 4;
  const int requested_k = c.tile_k;
  while (c.tile_k > 4 && c.tile_k * (c.tile_m + 1 + c.tile_n + 1) * acc_bytes > 48 * 1024) c.tile_k /= 2;
  if (c.tile_k != requested_k) add_note(c, fmt::format("tile_k {} -> {} to fit 48 KiB of shared memory", requested_k, c.tile_k));
  return c;
}

bool rows_addressable(std::int64_t elements) { return elements % 8 == 0; }  // 16-byte rows of bf16

// Whether the sm90 family can run the problem: the target, the dtype, and
// TMA's rule that every row stride is a multiple of 16 bytes.
bool sm90_fits(const GemmProblem& p, const Target& target) {
  if (target.sm() != 90 || target.arch.empty() || target.arch.back() != 'a' || p.dtype != DType::bf16) return false;
  if (p.m <= 0 || p.n <= 0 || p.k < 0 || p.m >= (1ll << 31) || p.n >= (1ll << 31) || p.k >= (1ll << 31)) return false;
  switch (p.kind) {
    case GemmProblem::Kind::matmul:  // A [M, K] or [K, M]; B [K, N] or [N, K]
      return rows_addressable(p.a_k_major ? p.k : p.m) && rows_addressable(p.b_k_major ? p.k : p.n);
    case GemmProblem::Kind::grouped:  // xs [rows, K]; w[e] [K, N] or [N, K]
      return p.a_k_major && rows_addressable(p.k) && rows_addressable(p.b_k_major ? p.k : p.n) && p.batch < 100000;
    case GemmProblem::Kind::wgrad:  // xs [rows, M], dys [rows, N]
      return rows_addressable(p.m) && rows_addressable(p.n);
  }
  return false;
}

TileConfig sm90_config(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  c.tile_m = 128;
  c.tile_k = 64;
  c.threads = 384;
  c.consumers = 2;
  const AttrValue* m = op.attrs.find("tile_m");
  if (m && op.attrs.get_int("tile_m") == 128 && op.attrs.get_int("tile_k") == 64 &&
      (op.attrs.get_int("tile_n") == 64 || op.attrs.get_int("tile_n") == 128 || op.attrs.get_int("tile_n") == 256)) {
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.source = TileConfig::Source::attribute;
  } else {
    auto padded = [&](std::int64_t bn) { return (problem.n + bn - 1) / bn * bn; };
    c.tile_n = problem.n <= 64 ? 64 : padded(256) <= padded(128) ? 256 : 128;
    c.source = TileConfig::Source::heuristic;
  }
  const std::int64_t groups = problem.kind == GemmProblem::Kind::matmul ? 1 : problem.batch;
  c.stages = 6;
  while (c.stages > 2 && sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, groups) > target.shared_memory_per_block_optin) --c.stages;
  if (sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, groups) > target.shared_memory_per_block_optin)
    fail(graph, op, fmt::format("(sm90 GEMM) needs {} bytes of shared memory for {} groups; the target {} allows {}",
                                sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, groups), groups, target.arch,
                                target.shared_memory_per_block_optin));
  return c;
}

}  // namespace

GemmChoice choose_gemm(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  GemmChoice choice;
  const AttrValue* m = op.attrs.find("tile_m");
  const bool simt_attributes = m && problem.kind == GemmProblem::Kind::grouped &&
                               !(op.attrs.get_int("tile_m") == 128 && op.attrs.get_int("tile_k") == 64 && op.attrs.get_int("tile_n") >= 64);
  if (sm90_fits(problem, target) && !simt_attributes) {
    choice.family = GemmFamily::sm90;
    choice.config = sm90_config(graph, op, problem, target);
  } else {
    choice.family = GemmFamily::simt;
    choice.config = simt_config(graph, op, problem);
  }
  return choice;
}

}  // namespace moejit::codegen
