// The GEMM family and TileConfig of every matrix product (see gemm_select.h).
//
// SIMT family (codegen/kernels/matmul.cuh), constraints of its thread grid:
// tile_m and tile_n powers of two in [8, 128], tile_k a power of two in
// [4, 64], threads = clamp(tile_m * tile_n / 16, 32, 256) (16 outputs per
// thread at most), and the two staged slices, tile_k x (tile + 1) values of
// the arithmetic type each, within 48 KiB of static shared memory (tile_k
// is halved until they fit; the config's note says so).
//   attribute: tile_m/n/k from the op (moe-tiling sets them on the expert matmuls);
//   heuristic: 64 x 64 x 16, 256 threads.
#include "codegen/gemm_select.h"

#include <fmt/format.h>

#include <algorithm>

#include "ir/error.h"
#include "ir/printer.h"

namespace moejit::codegen {

namespace {

bool power_of_two_in(std::int64_t v, std::int64_t lo, std::int64_t hi) { return v >= lo && v <= hi && (v & (v - 1)) == 0; }

[[noreturn]] void fail(const Graph& graph, const Op& op, const std::string& message) {
  throw Error(fmt::format("{} = \"{}\": the CUDA backend {}", value_ref(graph, op.results.empty() ? kNoValue : op.results[0]),
                          op_name(op.kind), message));
}

TileConfig simt_config(const Graph& graph, const Op& op, const GemmProblem& problem) {
  TileConfig c;
  const AttrValue* m = op.attrs.find("tile_m");
  if (m && problem.kind == GemmProblem::Kind::grouped) {
    c.tile_m = static_cast<int>(op.attrs.get_int("tile_m"));
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.tile_k = static_cast<int>(op.attrs.get_int("tile_k"));
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
  c.threads = std::clamp(c.tile_m * c.tile_n / 16, 32, 256);
  const int acc_bytes = problem.dtype == DType::f64 ? 8 : 4;
  const int requested_k = c.tile_k;
  while (c.tile_k > 4 && c.tile_k * (c.tile_m + 1 + c.tile_n + 1) * acc_bytes > 48 * 1024) c.tile_k /= 2;
  if (c.tile_k != requested_k) c.note = fmt::format("tile_k {} -> {} to fit 48 KiB of shared memory", requested_k, c.tile_k);
  return c;
}

}  // namespace

GemmChoice choose_gemm(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  (void)target;  // every target runs the SIMT family; a tensor-core family would test target.sm() here
  GemmChoice choice;
  choice.family = GemmFamily::simt;
  choice.config = simt_config(graph, op, problem);
  return choice;
}

}  // namespace moejit::codegen
