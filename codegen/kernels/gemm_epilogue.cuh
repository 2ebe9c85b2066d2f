// Activation math of the tensor-core GEMM epilogues (the sm90 and sm80
// families): what an mj.gelu or mj.gelu_grad folded into the GEMM that
// produces its operand (passes/fuse_gemm_epilogue.cpp) computes on the
// accumulator registers before the store.
//
// The unfused graph rounds the GEMM's result to its 16-bit type and then
// applies the elementwise op in f32 to that rounded value; the epilogues do
// the same (the caller rounds first), so a fused and an unfused run differ
// only in the tanh: here the hardware approximation `tanh.approx.f32`
// (relative error about 2^-11, below half a bf16 ulp), one MUFU operation
// plus a few FMAs per element, against tanhf's dozens of instructions.
#pragma once

#include "codegen/kernels/common.cuh"

#if MOEJIT_DEVICE_CODE
namespace moejit::epilogue {

__device__ __forceinline__ float tanh_fast(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// gelu, tanh form (as mj.gelu): 0.5 x (1 + tanh(c (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu(float x) {
  const float c = 0.7978845608028654f, c3 = 0.7978845608028654f * 0.044715f;
  const float t = tanh_fast(x * fmaf(c3, x * x, c));
  const float h = 0.5f * x;
  return fmaf(h, t, h);
}

// dy * gelu'(x) (as mj.gelu_grad):
// gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2).
__device__ __forceinline__ float gelu_grad(float x, float dy) {
  const float c = 0.7978845608028654f, c3 = 0.7978845608028654f * 0.044715f;
  const float x2 = x * x;
  const float t = tanh_fast(x * fmaf(c3, x2, c));
  const float du = fmaf(3.0f * c3, x2, c);  // d/dx of c (x + 0.044715 x^3)
  const float d = fmaf(0.5f * x * fmaf(-t, t, 1.0f), du, 0.5f * (1.0f + t));
  return dy * d;
}

// A float rounded to bf16 / f16 (nearest even, as the unfused GEMM's store) and back.
__device__ __forceinline__ float round_bf16(float v) {
  unsigned two;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(two) : "f"(0.0f), "f"(v));
  return __uint_as_float(two << 16);
}
__device__ __forceinline__ float round_f16(float v) {
  unsigned short h;
  float r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h));
  return r;
}
__device__ __forceinline__ float bf16_lo(unsigned two) { return __uint_as_float(two << 16); }
__device__ __forceinline__ float bf16_hi(unsigned two) { return __uint_as_float(two & 0xFFFF0000u); }

}  // namespace moejit::epilogue
#endif  // MOEJIT_DEVICE_CODE
