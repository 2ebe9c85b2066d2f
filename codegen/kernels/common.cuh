// Kernel library, the common part: element types and conversions, block
// reductions, and the structs that host C++ and NVRTC share (Dims,
// TmaDescriptor).
//
// Every codegen/kernels/*.cuh is an ordinary header. CMake embeds each one's
// text in the library (codegen/kernel_headers.cpp) and NVRTC receives them as
// named headers under their source-tree paths, so `#include
// "codegen/kernels/common.cuh"` names the same file for the host compiler
// and for NVRTC. The host compiler sees only the argument structs: device
// code sits inside `#if MOEJIT_DEVICE_CODE`. Everything is in namespace mj.
//
// No CUDA headers are used: bf16 and f16 are 16-bit storage types converted
// here exactly as runtime/host_tensor.cpp does (round to nearest even), so
// the GPU and the CPU round the same way.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define MOEJIT_DEVICE_CODE 1
#else
#define MOEJIT_DEVICE_CODE 0
#endif

namespace mj {

typedef long long i64;

// Up to 8 dims of index arithmetic, passed to kernels by value.
#define MOEJIT_MAX_RANK 8
struct Dims {
  int rank;
  i64 size[MOEJIT_MAX_RANK];
  i64 stride[MOEJIT_MAX_RANK];  // of the tensor read or written through these dims
};

// Where the rows of attention head pair bh = b * H + h live in a tensor
// (ir/attention_layout.h's HeadView): element (b, h, t, d) at
// b * batch + h * head + t * row + d.
struct HeadStrides {
  i64 batch, head, row;
};

// A CUtensorMap (the 128-byte TMA descriptor that cuTensorMapEncodeTiled
// writes), declared here so that NVRTC needs no cuda.h. A family's argument
// struct holds it by value (pass the struct as `const __grid_constant__`);
// the executor encodes it once the arena is allocated, from the
// TensorMapField the emitter attached to the launch (codegen/cuda_codegen.h).
struct alignas(64) TmaDescriptor {
  unsigned long long opaque[16];
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// ---- element types ----
typedef unsigned char bool_t;  // i1: one byte per element
struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

// The arithmetic type of an element type: bf16 and f16 compute in f32, every
// other type in itself.
template <class T> struct acc_of { typedef T type; };
template <> struct acc_of<bf16_t> { typedef float type; };
template <> struct acc_of<f16_t> { typedef float type; };

__device__ __forceinline__ float bf16_to_float(bf16_t x) { return __uint_as_float(((unsigned)x.bits) << 16); }
__device__ __forceinline__ bf16_t float_to_bf16(float v) {
  unsigned bits = __float_as_uint(v);
  bf16_t r;
  if (v != v) { r.bits = (unsigned short)((bits >> 16) | 0x0040u); return r; }
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  r.bits = (unsigned short)(bits >> 16);
  return r;
}
__device__ __forceinline__ float f16_to_float(f16_t x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
__device__ __forceinline__ f16_t float_to_f16(float v) {
  f16_t r;
  if (v != v) { r.bits = (unsigned short)((__float_as_uint(v) >> 16 & 0x8000u) | 0x7E00u); return r; }
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
  return r;
}

// ld: element -> arithmetic type; st<T>: arithmetic type -> element (one rounding).
__device__ __forceinline__ float ld(bf16_t x) { return bf16_to_float(x); }
__device__ __forceinline__ float ld(f16_t x) { return f16_to_float(x); }
__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ double ld(double x) { return x; }
__device__ __forceinline__ int ld(int x) { return x; }
__device__ __forceinline__ i64 ld(i64 x) { return x; }
__device__ __forceinline__ bool_t ld(bool_t x) { return x; }
template <class T> __device__ __forceinline__ T st(typename acc_of<T>::type v) { return v; }
template <> __device__ __forceinline__ bf16_t st<bf16_t>(float v) { return float_to_bf16(v); }
template <> __device__ __forceinline__ f16_t st<f16_t>(float v) { return float_to_f16(v); }

// Conversions through double, with the rules of mj.cast: float -> int
// truncates toward zero and saturates, NaN -> 0 (what cvt.rzi does);
// anything -> i1 is "nonzero"; float -> float rounds to nearest even.
__device__ __forceinline__ double to_double(bf16_t x) { return (double)bf16_to_float(x); }
__device__ __forceinline__ double to_double(f16_t x) { return (double)f16_to_float(x); }
__device__ __forceinline__ double to_double(float x) { return (double)x; }
__device__ __forceinline__ double to_double(double x) { return x; }
__device__ __forceinline__ double to_double(int x) { return (double)x; }
__device__ __forceinline__ double to_double(i64 x) { return (double)x; }
__device__ __forceinline__ double to_double(bool_t x) { return x ? 1.0 : 0.0; }
template <class T> __device__ __forceinline__ T from_double(double v);
template <> __device__ __forceinline__ float from_double<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double from_double<double>(double v) { return v; }
template <> __device__ __forceinline__ bf16_t from_double<bf16_t>(double v) { return float_to_bf16((float)v); }
template <> __device__ __forceinline__ f16_t from_double<f16_t>(double v) { return float_to_f16((float)v); }
template <> __device__ __forceinline__ int from_double<int>(double v) { return (int)v; }
template <> __device__ __forceinline__ i64 from_double<i64>(double v) { return (i64)v; }
template <> __device__ __forceinline__ bool_t from_double<bool_t>(double v) { return v != 0.0 ? 1 : 0; }
// Integer -> integer casts keep the value modulo the width (no trip through double).
template <class To, class From> __device__ __forceinline__ To cast_to(From x) { return from_double<To>(to_double(x)); }
template <> __device__ __forceinline__ int cast_to<int, i64>(i64 x) { return (int)(unsigned)(unsigned long long)x; }
template <> __device__ __forceinline__ i64 cast_to<i64, int>(int x) { return (i64)x; }
template <> __device__ __forceinline__ i64 cast_to<i64, i64>(i64 x) { return x; }
template <> __device__ __forceinline__ int cast_to<int, int>(int x) { return x; }

// ---- math on the arithmetic types (float and double overloads) ----
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }

template <class A> __device__ __forceinline__ A lowest_value();
template <> __device__ __forceinline__ float lowest_value<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double lowest_value<double>() { return -__longlong_as_double(0x7ff0000000000000ll); }
template <> __device__ __forceinline__ int lowest_value<int>() { return (int)0x80000000; }
template <> __device__ __forceinline__ i64 lowest_value<i64>() { return (i64)0x8000000000000000ull; }

// ---- reductions inside a block (deterministic: a fixed tree) ----
struct SumOp { template <class A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; } };
struct MaxOp {
  template <class A> __device__ __forceinline__ A operator()(A a, A b) const {
    if (a != a) return a;  // NaN wins and stays
    if (b != b) return b;
    return a > b ? a : b;
  }
};

template <class A, class Op> __device__ __forceinline__ A warp_reduce(A v, Op op) {
  for (int delta = 16; delta > 0; delta >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, delta));
  return v;
}

// Every thread of the block gets the reduction of `v` over the block.
// blockDim.x must be a multiple of 32 (at most 1024); `scratch` holds 33 A.
template <class A, class Op> __device__ A block_reduce(A v, Op op, A* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    A w = scratch[0];
    for (int i = 1; i < warps; ++i) w = op(w, scratch[i]);
    scratch[32] = w;
  }
  __syncthreads();
  return scratch[32];
}

// N elements of T moved as one load or store (16 bytes at most per
// instruction: a Pack of 8 floats is two). Its alignment is its size capped
// at 16 bytes, so the pointer of a Pack access must be aligned to that.
template <class T, int N> struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};
// Elements of T in 16 bytes.
template <class T> struct pack16 {
  static constexpr int n = 16 / (int)sizeof(T);
};
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }

// Each warp of the grid walks rows r = warp, warp + warps, ...: `lane` and
// `warp` / `warps` of the calling thread (grid-stride over warps).
struct WarpRows {
  int lane;
  i64 warp, warps;
  __device__ __forceinline__ WarpRows()
      : lane((int)(threadIdx.x & 31)),
        warp(((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5),
        warps(((i64)gridDim.x * blockDim.x) >> 5) {}
};

// Grid-stride loop over [0, n).
#define MOEJIT_FOR_EACH(i, n) \
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// The offset of the flat (row-major over size) index i under `stride`.
__device__ __forceinline__ i64 dims_offset(const Dims& d, i64 i) {
  i64 offset = 0;
  for (int k = d.rank - 1; k >= 0; --k) {
    i64 c = i % d.size[k];
    i /= d.size[k];
    offset += c * d.stride[k];
  }
  return offset;
}
// The offset of head pair bh's row 0 in a tensor of HeadStrides s.
__device__ __forceinline__ i64 head_base(const HeadStrides& s, i64 H, i64 bh) { return (bh / H) * s.batch + (bh % H) * s.head; }

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
