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
#include <string>

#include "codegen/target.h"
#include "codegen/tile_config.h"
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

struct GemmChoice {
  GemmFamily family = GemmFamily::simt;
  TileConfig config;
};

// `op` is the op whose attributes may carry tile_m / tile_n / tile_k (all
// three or none). Throws moejit::Error naming the op for a tile attribute
// the chosen family cannot take.
GemmChoice choose_gemm(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target);

}  // namespace moejit::codegen
