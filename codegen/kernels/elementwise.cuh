// Kernel family "elementwise": the elementwise ops as device functions on
// the arithmetic type, the kernel every fused chain instantiates, and the
// generators (Philox dropout, random normal), AdamW, and the multi-tensor
// kernels of the optimizer step (every AdamW of a step, the squares of the
// global gradient norm) that codegen/op_groups.cpp groups.
//
// A chain (one op, or a group of fuse-elementwise) is a functor the
// generated layer writes: `struct chain_<hash> { static void apply(const
// ElementwiseArgs&, i64 i); }` loads element i of its inputs, computes every
// op in registers (rounding each value to its dtype, as the unfused ops do)
// and stores the values read outside the chain; `apply8(a, i)` does the same
// for elements i .. i+7 with packed loads and stores, and `packed(a)` says
// whether every pointer allows them. elementwise_kernel<Chain, THREADS> runs
// them over a grid-stride loop. The formulas are those of
// runtime/cpu/cpu_elementwise.cpp.
#pragma once
#include "codegen/kernels/common.cuh"
#include "ir/philox.h"

namespace mj {

// Limits of one chain (the emitter checks them, naming the op).
constexpr int kChainMaxInputs = 24;
constexpr int kChainMaxOutputs = 8;
constexpr int kChainMaxDropouts = 8;

struct ElementwiseArgs {
  const void* in[kChainMaxInputs];
  void* out[kChainMaxOutputs];
  i64 n;
  // The `offset` attribute of each dropout of the chain, in chain order: a
  // kernel argument, so the source does not depend on it.
  unsigned long long dropout_offset[kChainMaxDropouts];
};

// mj.random_normal: out [n]; base = offset + *step_offset (null: offset alone).
template <class T> struct RandomNormalArgs {
  T* out;
  i64 n;
  unsigned long long seed, offset;
  const i64* step_offset;
};

// mj.adamw (f32); lr and step are device scalars.
struct AdamWArgs {
  const float *param, *grad, *m, *v, *lr, *step;
  float *new_param, *new_m, *new_v;
  i64 n;
  double beta1, beta2;
  float eps, weight_decay;
};

// ---- multi-tensor kernels (one launch for many tensors) ----
// A launch walks a table of up to kMultiTensorMax tensors, cut into chunks
// of kMultiTensorChunk elements; chunk_begin[k] is the first chunk of tensor
// k (chunk_begin[tensors] the total), and block b takes chunks b, b + grid,
// ... . The table is part of the argument struct (under 4 KiB).
constexpr int kMultiTensorMax = 32;
constexpr int kMultiTensorChunk = 2048;

// Every mj.adamw of a step that shares lr, step and the attributes. With
// grad_scale (a one-element f32, or null), the gradient is
// grad * grad_scale[0] rounded to f32: the clip's mj.mul of
// frontends/optim.cpp, fused.
struct AdamWTensor {
  const float *param, *grad, *grad_scale, *m, *v;
  float *new_param, *new_m, *new_v;
  i64 n;
};
struct MultiAdamWArgs {
  const float *lr, *step;
  double beta1, beta2;
  float eps, weight_decay;
  int tensors;
  i64 chunk_begin[kMultiTensorMax + 1];
  AdamWTensor t[kMultiTensorMax];
};

// Every standalone mj.cast f32 -> bf16 of an argument (the mixed-precision
// graph's weight casts): y[k] = bf16(x[k]), nearest even.
struct MultiCastArgs {
  int tensors;
  i64 chunk_begin[kMultiTensorMax + 1];
  const float* x[kMultiTensorMax];
  unsigned short* y[kMultiTensorMax];  // bf16 bits (bf16_t is device code's)
  i64 n[kMultiTensorMax];
};

// sum(x * x) over all of each tensor's elements (the square rounded to T,
// as mj.mul rounds it), for the global gradient norm. Part 1: one block per
// chunk writes the chunk's sum (a fixed tree, in double) to partials[chunk];
// part 2: one block per tensor adds its chunks' partials (a fixed tree) and
// writes out[k]. Deterministic.
template <class T> struct MultiSumSquaresArgs {
  int tensors;
  i64 chunk_begin[kMultiTensorMax + 1];
  const T* x[kMultiTensorMax];
  T* out[kMultiTensorMax];
  i64 n[kMultiTensorMax];
  double* partials;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// ---- unary (float arithmetic types) ----
template <class A> __device__ __forceinline__ A ew_neg(A x) { return -x; }
template <class A> __device__ __forceinline__ A ew_exp(A x) { return m_exp(x); }
template <class A> __device__ __forceinline__ A ew_log(A x) { return m_log(x); }
template <class A> __device__ __forceinline__ A ew_sqrt(A x) { return m_sqrt(x); }
template <class A> __device__ __forceinline__ A ew_rsqrt(A x) { return A(1) / m_sqrt(x); }
template <class A> __device__ __forceinline__ A ew_tanh(A x) { return m_tanh(x); }
template <class A> __device__ __forceinline__ A ew_relu(A x) { return x < A(0) ? A(0) : x; }
template <class A> __device__ __forceinline__ A ew_sigmoid(A x) { return A(1) / (A(1) + m_exp(-x)); }
template <class A> __device__ __forceinline__ A ew_silu(A x) { return x * ew_sigmoid(x); }
template <class A> __device__ __forceinline__ A ew_softplus(A x) {
  return (x > A(0) ? x : A(0)) + m_log1p(m_exp(-m_abs(x)));
}
// The tanh inside gelu and its gradient: tanh(u) = 1 - 2 / (1 + e^(2u)) on
// the fast exp2 and reciprocal (two MUFU instructions; tanhf is about 20
// instructions and made the standalone gelu kernels compute-bound, not
// memory-bound). Its absolute error is a few 1e-7 everywhere (e^(2u) = inf
// gives 1, 0 gives -1), and gelu uses t only as 1 + t, x (1 - t^2) and
// 1 - t^2, so the results keep f32's relative accuracy. f64 keeps tanh.
__device__ __forceinline__ float gelu_tanh(float u) { return 1.0f - __fdividef(2.0f, 1.0f + __expf(2.0f * u)); }
__device__ __forceinline__ double gelu_tanh(double u) { return tanh(u); }

// gelu, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class A> __device__ __forceinline__ A ew_gelu(A x) {
  const A c = A(0.79788456080286535588);
  return A(0.5) * x * (A(1) + gelu_tanh(c * (x + A(0.044715) * x * x * x)));
}
template <class A> __device__ __forceinline__ A ew_gelu_grad(A x, A dy) {
  const A c = A(0.79788456080286535588);
  A t = gelu_tanh(c * (x + A(0.044715) * x * x * x));
  return dy * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * c * (A(1) + A(3 * 0.044715) * x * x));
}

// ---- binary (float or integer arithmetic types; integers wrap) ----
template <class A> __device__ __forceinline__ A ew_add(A a, A b) { return a + b; }
template <> __device__ __forceinline__ int ew_add<int>(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_add<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a + (unsigned long long)b); }
template <class A> __device__ __forceinline__ A ew_sub(A a, A b) { return a - b; }
template <> __device__ __forceinline__ int ew_sub<int>(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_sub<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a - (unsigned long long)b); }
template <class A> __device__ __forceinline__ A ew_mul(A a, A b) { return a * b; }
template <> __device__ __forceinline__ int ew_mul<int>(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
template <> __device__ __forceinline__ i64 ew_mul<i64>(i64 a, i64 b) { return (i64)((unsigned long long)a * (unsigned long long)b); }
// Integer division by zero gives 0 here (the CPU backend reports an error).
template <class A> __device__ __forceinline__ A ew_div(A a, A b) { return a / b; }
template <> __device__ __forceinline__ int ew_div<int>(int a, int b) { return (b == 0 || (b == -1 && a == (int)0x80000000)) ? 0 : a / b; }
template <> __device__ __forceinline__ i64 ew_div<i64>(i64 a, i64 b) {
  return (b == 0 || (b == -1 && a == (i64)0x8000000000000000ull)) ? 0 : a / b;
}
template <class A> __device__ __forceinline__ A ew_maximum(A a, A b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
template <class A> __device__ __forceinline__ A ew_minimum(A a, A b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }

// ---- Philox (ir/philox.h) ----
// dropout: position n (= base + element index, base = offset + step_offset)
// is kept iff dropout_uniform24(seed, n) >= threshold24 = ceil(p 2^24); kept
// elements are multiplied by scale = 1 / (1 - p) in the arithmetic type.
template <class T> __device__ __forceinline__ T dropout_value(T x, unsigned long long seed, unsigned long long n,
                                                            unsigned threshold24, double scale) {
  typedef typename acc_of<T>::type A;
  return moejit::dropout_uniform24(seed, n) >= threshold24 ? st<T>(ld(x) * A(scale)) : st<T>(A(0));
}

// random_normal: Box-Muller on one Philox call per pair of elements, in double.
__device__ __forceinline__ double philox_normal_dev(unsigned long long seed, unsigned long long n) {
  moejit::Philox4x32Block b = moejit::philox_block(seed, n / 2, moejit::kPhiloxStreamNormal);
  const double two_pow_minus_32 = 1.0 / 4294967296.0;
  double u1 = ((double)b.word[0] + 0.5) * two_pow_minus_32;
  double u2 = (double)b.word[1] * two_pow_minus_32;
  double radius = sqrt(-2.0 * log(u1));
  double theta = 2.0 * 3.141592653589793 * u2;
  return n % 2 == 0 ? radius * cos(theta) : radius * sin(theta);
}

// ---- kernels ----
// __grid_constant__: Chain::apply takes the arguments by reference without a
// local copy of the struct.
// Eight elements per step (Chain::apply8: every operand and result moved as
// a Pack of 8) when n is a multiple of 8 and every pointer is 16-byte
// aligned, else one element per step; both compute the same values.
template <class Chain, int THREADS>
__global__ void __launch_bounds__(THREADS) elementwise_kernel(const __grid_constant__ ElementwiseArgs a) {
  if (a.n % 8 == 0 && Chain::packed(a)) {
    MOEJIT_FOR_EACH(p, a.n / 8) Chain::apply8(a, p * 8);
  } else {
    MOEJIT_FOR_EACH(i, a.n) Chain::apply(a, i);
  }
}

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) random_normal_kernel(const RandomNormalArgs<T> a) {
  const unsigned long long base = a.offset + (a.step_offset ? (unsigned long long)*a.step_offset : 0ull);
  MOEJIT_FOR_EACH(i, a.n) a.out[i] = from_double<T>(philox_normal_dev(a.seed, base + (unsigned long long)i));
}

// AdamW, decoupled weight decay, bias correction with the 1-based step.
template <int THREADS> __global__ void __launch_bounds__(THREADS) adamw_kernel(const AdamWArgs a) {
  float lr = *a.lr;
  double step = *a.step;
  float correction1 = (float)(1.0 - pow(a.beta1, step));
  float correction2 = (float)(1.0 - pow(a.beta2, step));
  float b1 = (float)a.beta1, b2 = (float)a.beta2;
  MOEJIT_FOR_EACH(i, a.n) {
    float g = a.grad[i];
    float m1 = b1 * a.m[i] + (1.0f - b1) * g;
    float v1 = b2 * a.v[i] + (1.0f - b2) * g * g;
    float m_hat = m1 / correction1;
    float v_hat = v1 / correction2;
    float p = a.param[i];
    a.new_param[i] = p - lr * (m_hat / (sqrtf(v_hat) + a.eps) + a.weight_decay * p);
    a.new_m[i] = m1;
    a.new_v[i] = v1;
  }
}

// The tensor of chunk `chunk` (the table is short: a linear walk).
__device__ __forceinline__ int multi_tensor_of(const i64* chunk_begin, int tensors, i64 chunk) {
  int k = 0;
  while (k + 1 < tensors && chunk >= chunk_begin[k + 1]) ++k;
  return k;
}

// One element of multi_adamw_kernel: the formulas of adamw_kernel.
struct AdamWStep {
  float lr, correction1, correction2, b1, b2, eps, weight_decay;
  __device__ __forceinline__ void apply(float g, float& p, float& m, float& v) const {
    const float m1 = b1 * m + (1.0f - b1) * g;
    const float v1 = b2 * v + (1.0f - b2) * g * g;
    const float m_hat = m1 / correction1;
    const float v_hat = v1 / correction2;
    p = p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
    m = m1;
    v = v1;
  }
};

// A chunk's elements four at a time (float4 loads and stores) when every
// pointer of its tensor is 16-byte aligned (a chunk starts at a multiple of
// kMultiTensorChunk), the rest one at a time; the same values either way.
template <int THREADS> __global__ void __launch_bounds__(THREADS) multi_adamw_kernel(const __grid_constant__ MultiAdamWArgs a) {
  const double step = *a.step;
  AdamWStep f;
  f.lr = *a.lr;
  f.correction1 = (float)(1.0 - pow(a.beta1, step));
  f.correction2 = (float)(1.0 - pow(a.beta2, step));
  f.b1 = (float)a.beta1;
  f.b2 = (float)a.beta2;
  f.eps = a.eps;
  f.weight_decay = a.weight_decay;
  for (i64 chunk = blockIdx.x; chunk < a.chunk_begin[a.tensors]; chunk += gridDim.x) {
    const int k = multi_tensor_of(a.chunk_begin, a.tensors, chunk);
    const AdamWTensor& t = a.t[k];
    const float scale = t.grad_scale ? *t.grad_scale : 1.0f;
    const i64 first = (chunk - a.chunk_begin[k]) * kMultiTensorChunk;
    const i64 last = first + kMultiTensorChunk < t.n ? first + kMultiTensorChunk : t.n;
    i64 scalar_from = first;
    if (aligned16(t.param) && aligned16(t.grad) && aligned16(t.m) && aligned16(t.v) && aligned16(t.new_param) && aligned16(t.new_m) &&
        aligned16(t.new_v)) {
      const i64 quads = (last - first) / 4;
      for (i64 q = threadIdx.x; q < quads; q += THREADS) {
        const i64 i = first + 4 * q;
        const Pack<float, 4> g4 = *reinterpret_cast<const Pack<float, 4>*>(t.grad + i);
        Pack<float, 4> p4 = *reinterpret_cast<const Pack<float, 4>*>(t.param + i);
        Pack<float, 4> m4 = *reinterpret_cast<const Pack<float, 4>*>(t.m + i);
        Pack<float, 4> v4 = *reinterpret_cast<const Pack<float, 4>*>(t.v + i);
#pragma unroll
        for (int e = 0; e < 4; ++e) f.apply(t.grad_scale ? g4.v[e] * scale : g4.v[e], p4.v[e], m4.v[e], v4.v[e]);
        *reinterpret_cast<Pack<float, 4>*>(t.new_param + i) = p4;
        *reinterpret_cast<Pack<float, 4>*>(t.new_m + i) = m4;
        *reinterpret_cast<Pack<float, 4>*>(t.new_v + i) = v4;
      }
      scalar_from = first + 4 * quads;
    }
    for (i64 i = scalar_from + threadIdx.x; i < last; i += THREADS) {
      float p = t.param[i], m = t.m[i], v = t.v[i];
      f.apply(t.grad_scale ? t.grad[i] * scale : t.grad[i], p, m, v);
      t.new_param[i] = p;
      t.new_m[i] = m;
      t.new_v[i] = v;
    }
  }
}

// Four elements at a time (a float4 load, an 8-byte store) where both
// pointers allow it, the rest one at a time; the same values either way.
template <int THREADS> __global__ void __launch_bounds__(THREADS) multi_cast_kernel(const __grid_constant__ MultiCastArgs a) {
  for (i64 chunk = blockIdx.x; chunk < a.chunk_begin[a.tensors]; chunk += gridDim.x) {
    const int k = multi_tensor_of(a.chunk_begin, a.tensors, chunk);
    const float* x = a.x[k];
    bf16_t* y = reinterpret_cast<bf16_t*>(a.y[k]);
    const i64 first = (chunk - a.chunk_begin[k]) * kMultiTensorChunk;
    const i64 last = first + kMultiTensorChunk < a.n[k] ? first + kMultiTensorChunk : a.n[k];
    i64 scalar_from = first;
    if (aligned16(x) && ((unsigned long long)y & 7) == 0) {
      const i64 quads = (last - first) / 4;
      for (i64 q = threadIdx.x; q < quads; q += THREADS) {
        const i64 i = first + 4 * q;
        const Pack<float, 4> v = *reinterpret_cast<const Pack<float, 4>*>(x + i);
        Pack<bf16_t, 4> r;
#pragma unroll
        for (int e = 0; e < 4; ++e) r.v[e] = st<bf16_t>(v.v[e]);
        *reinterpret_cast<Pack<bf16_t, 4>*>(y + i) = r;
      }
      scalar_from = first + 4 * quads;
    }
    for (i64 i = scalar_from + threadIdx.x; i < last; i += THREADS) y[i] = st<bf16_t>(x[i]);
  }
}

template <class T, int THREADS>
__global__ void __launch_bounds__(THREADS) multi_sum_squares_parts_kernel(const __grid_constant__ MultiSumSquaresArgs<T> a) {
  __shared__ double scratch[33];
  for (i64 chunk = blockIdx.x; chunk < a.chunk_begin[a.tensors]; chunk += gridDim.x) {
    const int k = multi_tensor_of(a.chunk_begin, a.tensors, chunk);
    const i64 first = (chunk - a.chunk_begin[k]) * kMultiTensorChunk;
    const i64 last = first + kMultiTensorChunk < a.n[k] ? first + kMultiTensorChunk : a.n[k];
    double sum = 0.0;
    for (i64 i = first + threadIdx.x; i < last; i += THREADS) {
      const typename acc_of<T>::type x = ld(a.x[k][i]);
      sum += (double)ld(st<T>(x * x));
    }
    sum = block_reduce(sum, SumOp(), scratch);
    if (threadIdx.x == 0) a.partials[chunk] = sum;
  }
}

template <class T, int THREADS>
__global__ void __launch_bounds__(THREADS) multi_sum_squares_finish_kernel(const __grid_constant__ MultiSumSquaresArgs<T> a) {
  __shared__ double scratch[33];
  for (int k = blockIdx.x; k < a.tensors; k += gridDim.x) {
    double sum = 0.0;
    for (i64 c = a.chunk_begin[k] + threadIdx.x; c < a.chunk_begin[k + 1]; c += THREADS) sum += a.partials[c];
    sum = block_reduce(sum, SumOp(), scratch);
    if (threadIdx.x == 0) a.out[k][0] = st<T>((typename acc_of<T>::type)sum);
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
