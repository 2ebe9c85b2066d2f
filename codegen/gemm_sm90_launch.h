// Launches of the Hopper GEMM family (codegen/kernels/gemm_sm90.cuh), shared
// by the dense and the MoE emitters: one description of the product (which
// buffers, which mode, which layouts) becomes the argument struct, its three
// TMA descriptors and the instantiation named by the TileConfig.
#pragma once
#include <cstdint>

#include "codegen/cuda_codegen.h"

namespace moejit::codegen {

struct Sm90Gemm {
  enum class Mode {
    batched,  // `groups` products of m x n x k (groups = 1: one GEMM)
    grouped,  // rows of A and C split by `offsets` into groups (experts), B[g] per group
    wgrad,    // K split by `offsets`: C[g] = A[:, seg g] B[seg g, :] (A M-major, B N-major)
  };
  // What the epilogue makes of the accumulators (codegen/kernels/gemm_epilogue.cuh):
  //   store:     c = acc;
  //   gelu:      c = gelu(acc) and, when aux is set, aux = acc (the pre-activation);
  //   gelu_grad: c = gelu_grad(aux, acc) (aux: the pre-activation, read).
  // gelu and gelu_grad are for 16-bit results; c and aux have the same layout.
  using Epilogue = GemmEpilogue::Kind;
  Mode mode = Mode::batched;
  Epilogue epilogue = Epilogue::store;
  Buffer a, b, c, offsets;
  Buffer aux;  // see Epilogue
  std::int64_t m = 0, n = 0, k = 0;   // batched: per group; grouped: m = all rows; wgrad: k = all rows
  std::int64_t groups = 1;
  bool a_k_major = true, b_k_major = false;
  bool a_batched = false, b_batched = false;  // batched mode: A / B differ per group (else shared)
  // Grouped and wgrad modes: when set, row r of A (wgrad: K-row r) is row
  // gather_slots[r] / gather_top_k of `a` ([*, k], wgrad [*, m]; zeros for a
  // negative slot), loaded by the producer warpgroup through cp.async (the
  // kernel's GATHER_A): the gathered rows are never stored.
  Buffer gather_slots;
  std::int64_t gather_top_k = 1;
};

// Appends the launch (bf16 operands and result; `config` from choose_gemm).
void launch_sm90_gemm(EmitContext& ctx, const TileConfig& config, const Sm90Gemm& gemm);

}  // namespace moejit::codegen
