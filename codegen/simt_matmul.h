// The launch of the SIMT matmul (codegen/kernels/matmul.cuh) for mj.matmul
// and the router product of moe.route, given the TileConfig choose_gemm
// picked: one matmul_kernel grid, or with split_k > 1 the K slices into
// partials of the arithmetic type (step scratch) and the finish pass that
// adds each output's slices in order (deterministic). A split product with
// N <= 32 whose A has M contiguous (a router's x^T dlogits) takes the warp
// shape matmul_split_k_narrow_kernel instead, with a split of its own
// (about four blocks per SM); the TileConfig's tile is then unused.
#pragma once
#include <cstdint>

#include "codegen/cuda_codegen.h"
#include "codegen/kernels/matmul.cuh"

namespace moejit::codegen {

// a: the product's sizes and strides (M, N, K, a_*, b_*); batch: the grid's z.
void launch_simt_matmul(EmitContext& ctx, const TileConfig& c, const mj::MatmulArgs<void>& a, std::int64_t batch, DType dtype, Buffer lhs,
                        Buffer rhs, Buffer out);

}  // namespace moejit::codegen
