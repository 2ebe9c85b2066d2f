// Which GEMM family serves a matrix product, and with which TileConfig: the
// one place that decides it (per op kind, from the problem, the dtypes, the
// op's tile attributes and the target). Today there is one family, the SIMT
// tile of codegen/kernels/matmul.cuh, for every dtype and target, and the
// Hopper tensor-core family of codegen/kernels/gemm_sm90.cuh (wgmma, TMA)
// for bf16 products on sm_90a whose rows the copy engine can address, the
// Ampere family of codegen/kernels/gemm_sm80.cuh (mma.sync, cp.async) for the
// other bf16 / f16 products on sm_80 .. sm_90; SIMT stays the fallback for
// f32/f64, for older targets and for moe.route's skinny router product.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "codegen/target.h"
#include "codegen/tile_config.h"
#include "codegen/tuning_db.h"
#include "ir/graph.h"

namespace moejit::codegen {

enum class GemmFamily {
  simt,  // codegen/kernels/matmul.cuh: matmul_kernel, grouped_matmul_kernel, grouped_wgrad_kernel
  sm90,  // codegen/kernels/gemm_sm90.cuh: gemm_sm90_kernel (tile_m 128, tile_k 64, tile_n 64/128/256)
  sm80,  // codegen/kernels/gemm_sm80.cuh: gemm_sm80_kernel (tile 128 x 128 x 32, 2 to 4 stages)
};

struct GemmProblem {
  enum class Kind {
    matmul,   // mj.matmul (batched, either operand transposed); moe.route's router
    grouped,  // moe.grouped_matmul, moe.gather_matmul, moe.matmul_combine: rows of experts' segments
    wgrad,    // moe.grouped_matmul_wgrad: per expert, xs^T dys
  };
  Kind kind = Kind::matmul;
  DType dtype = DType::f32;         // operands and result (f32 accumulation for 16-bit types)
  std::int64_t m = 0, n = 0, k = 0;  // grouped: m = all rows (every expert's segment together)
  std::int64_t batch = 1;            // matmul batches, or experts
  bool a_k_major = true, b_k_major = false;  // whether K is the contiguous axis of A / of B
  bool gathered = false;                     // grouped: A's rows are read through slots (the sm80 family gathers in
                                             // its loads; SIMT and sm90 get them permuted into a contiguous copy first)
};

// The problem the op's emitter hands to choose_gemm: mj.matmul, moe.route's
// router product, moe.grouped_matmul, moe.gather_matmul, moe.matmul_combine
// and moe.grouped_matmul_wgrad; nullopt for every other op. The emitters and
// `moejit tune` (codegen/tuning_space.h) both call it, so what is tuned is
// exactly what codegen chooses a tile for.
std::optional<GemmProblem> gemm_problem_of(const Graph& graph, const Op& op);

// "matmul", "grouped", "wgrad": the problem kind as the tuning database names it.
const char* gemm_kind_name(GemmProblem::Kind kind);
// "matmul_simt", "gemm_sm90": the family as the tuning database names it.
const char* gemm_family_name(GemmFamily family);
// The database key of the problem in `family`: its dtype, its kind with the
// layout ("matmul", "matmul_at", "matmul_bt", "matmul_at_bt"; "grouped",
// "grouped_wt" for transpose_w; "wgrad") and the buckets of m, n, k.
TuningKey gemm_tuning_key(const char* family, const GemmProblem& problem);

// The attribute moe-tiling sets beside the tile attributes it chose itself
// ("mj.tiled_by" = "moe-tiling"): such tiles are a heuristic, so a tuning
// database entry for the problem replaces them; tile attributes without it
// (written by a user) win over the database.
inline constexpr const char* kTiledByAttr = "mj.tiled_by";

struct GemmChoice {
  GemmFamily family = GemmFamily::simt;
  TileConfig config;
};

// `op` is the op whose attributes may carry tile_m / tile_n / tile_k (all
// three or none). Throws moejit::Error naming the op for a tile attribute
// the chosen family cannot take.
GemmChoice choose_gemm(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target);

// Whether the sm90 family gathers moe.gather_matmul's rows in its producer
// (cp.async through the slots) instead of copying them into contiguous
// scratch for TMA first, for a product of `column_tiles` output tiles
// across: by default where each row tile is read by at most 2 column tiles
// (the gathered loads are slower than TMA's, and every column tile repeats
// them: on an H200 the gather took the D1536 F256 E128 forward from 1.507
// to 1.335 ms, one column tile, but D384 F1536 from 0.318 to 0.337, six);
// MOEJIT_SM90_GATHER=1: always, 0: never (to compare with).
bool sm90_gathers_rows(std::int64_t column_tiles);

// The moe.permute whose rows moe.grouped_matmul_wgrad `wgrad` multiplies
// (its operand 0) when the sm90 family reads them from the permute's x
// through its slots instead (data-parallel schedule, sm90_gathers_rows);
// else null.
const Op* sm90_wgrad_gathered_permute(const Graph& graph, const Op& wgrad, const Target& target);
// Whether moe.permute `permute` need not run: every reader of its result is
// a weight gradient that gathers the rows itself (above), and it is no graph
// output.
bool sm90_permute_elided(const Graph& graph, const Op& permute, const Target& target);

}  // namespace moejit::codegen
