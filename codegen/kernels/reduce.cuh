// Kernel family "reduce": reductions over axes, the row-wise ops over the
// last axis (softmax, log_softmax, layer_norm, rms_norm and their backward),
// and the "mean of per-row values" finisher of the scalar losses. One block
// per output element or row (a warp per output of up to 4096 elements when
// there are many, a thread each for up to 64; one warp per row for norms of
// rows up to 1024),
// a fixed reduction tree, so results do not depend on timing. Float math accumulates in f32 (f64 for f64 tensors);
// integer sums wrap.
#pragma once
#include "codegen/kernels/common.cuh"
#include "codegen/kernels/elementwise.cuh"

namespace mj {

// y[o] = reduce over the reduced dims of x. `kept` walks the outputs (sizes
// of the kept dims, x's strides), `reduced` walks one output's inputs.
// With a Chain (the kernels' last template argument; codegen/op_groups.cpp,
// reduce_chain) x is not read: element i of the reduced input is
// Chain::value(chain, i), the fused elementwise chain that produces it,
// computed where it is summed and never stored.
template <class T> struct ReduceArgs {
  const T* x;
  T* y;
  Dims kept, reduced;
  i64 outputs, count;
  ElementwiseArgs chain;
};

// A reduction with few outputs over many elements, in two launches (one
// block per output would leave the GPU idle and latency-bound): part 1
// reduces chunk c of output o's `count` elements into partials[o * chunks +
// c] (the accumulation type: f32, f64 or i64); part 2 reduces each output's
// `chunks` partials in order, so the result is deterministic.
template <class T> struct ReducePartsArgs {
  const T* x;
  void* partials;
  Dims kept, reduced;
  i64 outputs, count, chunk, chunks;
  ElementwiseArgs chain;
};
template <class T> struct ReduceFinishArgs {
  const void* partials;
  T* y;
  i64 outputs, count, chunks;
};

// softmax / log_softmax over rows of length c.
template <class T> struct SoftmaxArgs {
  const T* x;
  T* y;
  i64 rows, c;
};

// layer_norm (beta != null) or rms_norm (beta == null) over rows of length c.
// With `residual` (the warp kernel only), the norm reads x + residual,
// rounded to T as mj.add rounds it, and also writes that sum to `sum`: an
// mj.add feeding the norm, fused (the residual stream still needs the sum).
// `residual16` instead: the residual is bf16, widened exactly (an mj.cast
// to f32 of a bf16 product feeding that add, fused too).
// With `y16` (the warp kernel only), y rounded to bf16 is written there too
// (an mj.cast of the norm's result to bf16, fused: the copy a bf16 matmul
// reads); y may then be null (nothing else reads it).
template <class T> struct NormArgs {
  const T *x, *gamma, *beta;
  T* y;
  const T* residual;
  const unsigned short* residual16;  // bf16 bits, or null
  T* sum;
  unsigned short* y16;  // bf16 bits (mj::bf16_t is device-only)
  i64 rows, c;
  double eps;
};

// Their backward, part 1: dx, and each row's (mean, rstd) into stats [rows, 2].
// With `dx_addend` (the warp kernel only), dx is written as dx + dx_addend
// (dx rounded to T first, then the sum, as mj.add would): the backward's
// residual-gradient add fused. The warp kernel also does part 2a below:
// block b writes the sums over its rows of dy xhat and dy into
// partials[(b * c + column) * 2 + {0, 1}] (no stats), so x and dy are read
// once.
// With `dx16` (the warp kernel only), what is written to dx is also written
// rounded to bf16 there (an mj.cast of it to bf16, fused).
// With `dy16` (the warp kernel only), dy is dy + f32(dy16), rounded to T as
// mj.add rounds it: the mixed-precision x + f32(bf16 gradient) feeding the
// norm backward, fused (neither the f32 copy nor the sum is stored).
template <class T> struct NormGradRowsArgs {
  const T *x, *gamma, *dy;
  const unsigned short* dy16;  // bf16 bits, or null
  T* dx;
  double* stats;
  const T* dx_addend;
  unsigned short* dx16;  // bf16 bits (mj::bf16_t is device-only)
  double* partials;
  i64 rows, c;
  double eps;
  int rms;
};

// Part 2, dgamma and dbeta: sums over rows, in two launches so that every
// SM works: block b of part 2a sums rows [b * chunk, (b + 1) * chunk) of each
// column into partials[(b * c + column) * 2 + {0, 1}]; part 2b adds each
// column's `chunks` partials in order (deterministic).
template <class T> struct NormGradParamsArgs {
  const T *x, *dy;
  const double* stats;
  T *dgamma, *dbeta;
  double* partials;
  i64 rows, c, chunk, chunks;
};

// out = coeff * (sum of values[0..n)) / n.
template <class T> struct MeanOfValuesArgs {
  const double* values;
  T* out;
  i64 n;
  double coeff;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

template <class T> struct reduce_acc { typedef typename acc_of<T>::type type; };
template <> struct reduce_acc<int> { typedef i64 type; };

// dims_offset without the divisions when the dims collapsed to one (the
// emitter merges contiguous dims, so a reduction over the last axes or over
// everything has rank 1 here).
__device__ __forceinline__ i64 reduce_offset(const Dims& d, i64 i) { return d.rank == 1 ? i * d.stride[0] : dims_offset(d, i); }

// The sum rounds each addition (__fadd_rn is never contracted into an FMA
// with the multiply of a fused chain), so a chain fused into the reduction
// gives the bits of the stored chain read back.
__device__ __forceinline__ float add_rounded(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rounded(double a, double b) { return __dadd_rn(a, b); }
template <class A> __device__ __forceinline__ A add_rounded(A a, A b) { return a + b; }

template <int KIND, class A> __device__ __forceinline__ A reduce_combine(A acc, A v) {
  return KIND == 2 ? MaxOp()(acc, v) : add_rounded(acc, v);
}

// Element i of the reduced input: read from x, or computed by the chain.
template <class Chain, class T> struct ReduceInput {
  static __device__ __forceinline__ T at(const T*, const ElementwiseArgs& chain, i64 i) { return Chain::value(chain, i); }
};
template <class T> struct ReduceInput<void, T> {
  static __device__ __forceinline__ T at(const T* x, const ElementwiseArgs&, i64 i) { return x[i]; }
};

// acc combined with elements first, first + step, ... < last of one output
// (`base` the offset of the output's first element); a plain strided loop
// when the reduced dims are one.
template <int KIND, class Chain, class A, class T>
__device__ __forceinline__ A reduce_elements(const T* x, const ElementwiseArgs& chain, i64 base, const Dims& reduced, i64 first,
                                             i64 last, i64 step, A acc) {
  typedef ReduceInput<Chain, T> In;
  if (reduced.rank == 1) {
    const i64 stride = reduced.stride[0];
    // Eight loads in flight a thread (the adds stay in order): a mean over
    // 151 MB ran at 2.5 TB/s with four.
#pragma unroll 8
    for (i64 r = first; r < last; r += step) acc = reduce_combine<KIND>(acc, (A)ld(In::at(x, chain, base + r * stride)));
  } else {
    for (i64 r = first; r < last; r += step) acc = reduce_combine<KIND>(acc, (A)ld(In::at(x, chain, base + dims_offset(reduced, r))));
  }
  return acc;
}

// KIND: 0 sum, 1 mean, 2 max.
template <class T, int KIND, int THREADS, class Chain = void>
__global__ void __launch_bounds__(THREADS) reduce_kernel(const __grid_constant__ ReduceArgs<T> a) {
  typedef typename reduce_acc<T>::type A;
  __shared__ A scratch[33];
  for (i64 o = blockIdx.x; o < a.outputs; o += gridDim.x) {
    A acc = reduce_elements<KIND, Chain>(a.x, a.chain, reduce_offset(a.kept, o), a.reduced, threadIdx.x, a.count, blockDim.x,
                                         KIND == 2 ? lowest_value<A>() : A(0));
    if (KIND == 2) acc = block_reduce(acc, MaxOp(), scratch);
    else acc = block_reduce(acc, SumOp(), scratch);
    if (threadIdx.x == 0) {
      if (KIND == 1) acc = acc / (A)a.count;
      a.y[o] = st<T>((typename acc_of<T>::type)acc);
    }
  }
}

// Many outputs of a few elements each (a sum over the batch, over top_k):
// one thread per output walks its elements in order; neighbouring threads
// read neighbouring outputs, so the loads coalesce when the kept dims are
// the inner ones.
template <class T, int KIND, int THREADS, class Chain = void>
__global__ void __launch_bounds__(THREADS) reduce_thread_kernel(const __grid_constant__ ReduceArgs<T> a) {
  typedef typename reduce_acc<T>::type A;
  MOEJIT_FOR_EACH(o, a.outputs) {
    A acc = reduce_elements<KIND, Chain>(a.x, a.chain, reduce_offset(a.kept, o), a.reduced, 0, a.count, 1,
                                         KIND == 2 ? lowest_value<A>() : A(0));
    if (KIND == 1) acc = acc / (A)a.count;
    a.y[o] = st<T>((typename acc_of<T>::type)acc);
  }
}

// Many outputs of up to a few thousand elements each (the softmax
// backward's sum over 128 experts): a warp per output. A block per output
// would leave most of its threads idle and wait on a block-wide reduction
// for every output.
template <class T, int KIND, int THREADS, class Chain = void>
__global__ void __launch_bounds__(THREADS) reduce_warp_kernel(const __grid_constant__ ReduceArgs<T> a) {
  typedef typename reduce_acc<T>::type A;
  const int lane = threadIdx.x & 31;
  for (i64 o = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; o < a.outputs; o += ((i64)gridDim.x * blockDim.x) >> 5) {
    A acc = reduce_elements<KIND, Chain>(a.x, a.chain, reduce_offset(a.kept, o), a.reduced, lane, a.count, 32,
                                         KIND == 2 ? lowest_value<A>() : A(0));
    if (KIND == 2) acc = warp_reduce(acc, MaxOp());
    else acc = warp_reduce(acc, SumOp());
    if (lane == 0) {
      if (KIND == 1) acc = acc / (A)a.count;
      a.y[o] = st<T>((typename acc_of<T>::type)acc);
    }
  }
}

template <class T, int KIND, int THREADS, class Chain = void>
__global__ void __launch_bounds__(THREADS) reduce_parts_kernel(const __grid_constant__ ReducePartsArgs<T> a) {
  typedef typename reduce_acc<T>::type A;
  __shared__ A scratch[33];
  for (i64 w = blockIdx.x; w < a.outputs * a.chunks; w += gridDim.x) {
    const i64 o = w / a.chunks, first = (w % a.chunks) * a.chunk;
    const i64 last = first + a.chunk < a.count ? first + a.chunk : a.count;
    A acc = reduce_elements<KIND, Chain>(a.x, a.chain, reduce_offset(a.kept, o), a.reduced, first + threadIdx.x, last, blockDim.x,
                                         KIND == 2 ? lowest_value<A>() : A(0));
    if (KIND == 2) acc = block_reduce(acc, MaxOp(), scratch);
    else acc = block_reduce(acc, SumOp(), scratch);
    if (threadIdx.x == 0) static_cast<A*>(a.partials)[w] = acc;
  }
}

template <class T, int KIND, int THREADS> __global__ void __launch_bounds__(THREADS) reduce_finish_kernel(const ReduceFinishArgs<T> a) {
  typedef typename reduce_acc<T>::type A;
  __shared__ A scratch[33];
  for (i64 o = blockIdx.x; o < a.outputs; o += gridDim.x) {
    const A* parts = static_cast<const A*>(a.partials) + o * a.chunks;
    A acc = KIND == 2 ? lowest_value<A>() : A(0);
    for (i64 c = threadIdx.x; c < a.chunks; c += blockDim.x) acc = KIND == 2 ? MaxOp()(acc, parts[c]) : acc + parts[c];
    if (KIND == 2) acc = block_reduce(acc, MaxOp(), scratch);
    else acc = block_reduce(acc, SumOp(), scratch);
    if (threadIdx.x == 0) {
      if (KIND == 1) acc = acc / (A)a.count;
      a.y[o] = st<T>((typename acc_of<T>::type)acc);
    }
  }
}

// softmax (LOG = 0) or log_softmax (LOG = 1).
template <class T, int LOG, int THREADS> __global__ void __launch_bounds__(THREADS) softmax_kernel(const SoftmaxArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* xr = a.x + row * a.c;
    T* yr = a.y + row * a.c;
    A max = lowest_value<A>();
    for (i64 i = threadIdx.x; i < a.c; i += blockDim.x) max = MaxOp()(max, ld(xr[i]));
    max = block_reduce(max, MaxOp(), scratch);
    A sum = A(0);
    for (i64 i = threadIdx.x; i < a.c; i += blockDim.x) sum += m_exp(ld(xr[i]) - max);
    sum = block_reduce(sum, SumOp(), scratch);
    A log_sum = m_log(sum);
    for (i64 i = threadIdx.x; i < a.c; i += blockDim.x) {
      A shifted = ld(xr[i]) - max;
      yr[i] = st<T>(LOG ? shifted - log_sum : m_exp(shifted) / sum);
    }
  }
}

// The warp shape of softmax_kernel for rows of c <= 32 PER_LANE (the
// router's rows of num_experts values): one warp per row, in registers.
template <class T, int LOG, int PER_LANE, int THREADS> __global__ void __launch_bounds__(THREADS) softmax_warp_kernel(const SoftmaxArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const int lane = threadIdx.x & 31;
  for (i64 row = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; row < a.rows; row += (i64)gridDim.x * THREADS / 32) {
    A x[PER_LANE];
    A max = lowest_value<A>();
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const i64 column = lane + 32 * j;
      x[j] = column < a.c ? ld(a.x[row * a.c + column]) : lowest_value<A>();
      max = MaxOp()(max, x[j]);
    }
    max = warp_reduce(max, MaxOp());
    A sum = A(0);
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j)
      if (lane + 32 * j < a.c) sum += m_exp(x[j] - max);
    sum = warp_reduce(sum, SumOp());
    const A log_sum = m_log(sum);
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const i64 column = lane + 32 * j;
      if (column < a.c) a.y[row * a.c + column] = st<T>(LOG ? x[j] - max - log_sum : m_exp(x[j] - max) / sum);
    }
  }
}

// The mean and 1/sqrt(var + eps) of row `xr` (layer_norm), or only
// 1/sqrt(mean(x^2) + eps) (rms_norm, mean = 0).
template <class T, class A> __device__ void row_moments(const T* xr, i64 c, A eps, bool rms, A* scratch, A& mean, A& rstd) {
  mean = A(0);
  if (!rms) {
    A sum = A(0);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) sum += ld(xr[i]);
    mean = block_reduce(sum, SumOp(), scratch) / A(c);
  }
  A sq = A(0);
  for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
    A d = ld(xr[i]) - mean;
    sq += d * d;
  }
  A var = block_reduce(sq, SumOp(), scratch) / A(c);
  rstd = A(1) / m_sqrt(var + eps);
}

// y = (x - mean) * rstd * gamma (+ beta).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) norm_kernel(const NormArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* xr = a.x + row * a.c;
    A mean, rstd;
    row_moments(xr, a.c, A(a.eps), a.beta == nullptr, scratch, mean, rstd);
    for (i64 i = threadIdx.x; i < a.c; i += blockDim.x) {
      A v = (ld(xr[i]) - mean) * rstd * ld(a.gamma[i]);
      if (a.beta) v += ld(a.beta[i]);
      a.y[row * a.c + i] = st<T>(v);
    }
  }
}

// VEC neighbouring elements of a row at p, as one Pack when `packed`
// (every pointer aligned to it; the emitter makes c a multiple of VEC), as
// VEC loads or stores otherwise: the same values either way.
template <class T, int VEC, class A> __device__ __forceinline__ void load_vec(const T* p, bool packed, A (&out)[VEC]) {
  if (packed) {
    const Pack<T, VEC> q = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = ld(q.v[v]);
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = ld(p[v]);
  }
}
template <class T, int VEC> __device__ __forceinline__ void store_vec(T* p, bool packed, const T (&in)[VEC]) {
  if (packed) {
    Pack<T, VEC> q;
#pragma unroll
    for (int v = 0; v < VEC; ++v) q.v[v] = in[v];
    *reinterpret_cast<Pack<T, VEC>*>(p) = q;
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) p[v] = in[v];
  }
}
template <class T, int VEC> __device__ __forceinline__ bool vec_aligned(const T* p) {
  return p == nullptr || ((unsigned long long)p % sizeof(Pack<T, VEC>)) == 0;
}

// The warp shape of norm_kernel for rows of c <= 32 VEC GROUPS (c a
// multiple of VEC): one warp per row, the row in registers, statistics
// with shuffles (the same two passes over the values as row_moments). Lane
// l holds the columns (32 j + l) VEC .. + VEC - 1, j < GROUPS, so each load
// of a warp is 32 VEC neighbouring elements; gamma and beta are read once
// per warp.
template <class T, int VEC, int GROUPS, int THREADS> __global__ void __launch_bounds__(THREADS) norm_warp_kernel(const NormArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const int lane = threadIdx.x & 31;
  const i64 c = a.c;
  const bool packed = VEC > 1 && vec_aligned<T, VEC>(a.x) && vec_aligned<T, VEC>(a.gamma) && vec_aligned<T, VEC>(a.beta) &&
                      vec_aligned<T, VEC>(a.y) && vec_aligned<T, VEC>(a.residual) && vec_aligned<T, VEC>(a.sum) &&
                      vec_aligned<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.y16)) &&
                      vec_aligned<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.residual16));
  A gam[GROUPS][VEC], bet[GROUPS][VEC];
#pragma unroll
  for (int j = 0; j < GROUPS; ++j) {
    const i64 column = ((i64)32 * j + lane) * VEC;
#pragma unroll
    for (int v = 0; v < VEC; ++v) gam[j][v] = bet[j][v] = A(0);
    if (column < c) {
      load_vec<T, VEC>(a.gamma + column, packed, gam[j]);
      if (a.beta) load_vec<T, VEC>(a.beta + column, packed, bet[j]);
    }
  }
  for (i64 row = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; row < a.rows; row += (i64)gridDim.x * THREADS / 32) {
    A x[GROUPS][VEC];
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const i64 column = ((i64)32 * j + lane) * VEC;
#pragma unroll
      for (int v = 0; v < VEC; ++v) x[j][v] = A(0);
      if (column >= c) continue;
      load_vec<T, VEC>(a.x + row * c + column, packed, x[j]);
      if (a.residual || a.residual16) {
        A r[VEC];
        T sum[VEC];
        if (a.residual16) load_vec<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.residual16) + row * c + column, packed, r);
        else load_vec<T, VEC>(a.residual + row * c + column, packed, r);
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          sum[v] = st<T>(x[j][v] + r[v]);  // rounded to T, as mj.add
          x[j][v] = ld(sum[v]);
        }
        store_vec<T, VEC>(a.sum + row * c + column, packed, sum);
      }
    }
    // The moments, two passes as row_moments (zeros past the row's end add nothing).
    A mean = A(0);
    if (a.beta) {
      A total = A(0);
#pragma unroll
      for (int j = 0; j < GROUPS; ++j)
#pragma unroll
        for (int v = 0; v < VEC; ++v) total += x[j][v];
      mean = warp_reduce(total, SumOp()) / A(c);
    }
    A sq = A(0);
#pragma unroll
    for (int j = 0; j < GROUPS; ++j)
      if (((i64)32 * j + lane) * VEC < c)
#pragma unroll
        for (int v = 0; v < VEC; ++v) sq += (x[j][v] - mean) * (x[j][v] - mean);
    const A rstd = A(1) / m_sqrt(warp_reduce(sq, SumOp()) / A(c) + A(a.eps));
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const i64 column = ((i64)32 * j + lane) * VEC;
      if (column >= c) continue;
      T y[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        A value = (x[j][v] - mean) * rstd * gam[j][v];
        if (a.beta) value += bet[j][v];
        y[v] = st<T>(value);
      }
      if (a.y) store_vec<T, VEC>(a.y + row * c + column, packed, y);
      if (a.y16) {
        bf16_t h[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) h[v] = st<bf16_t>(ld(y[v]));  // as mj.cast: the T result, rounded again
        store_vec<bf16_t, VEC>(reinterpret_cast<bf16_t*>(a.y16) + row * c + column, packed, h);
      }
    }
  }
}

// The warp shape of norm_grad_rows_kernel (c <= 32 VEC GROUPS, c a multiple
// of VEC), with part 2a fused. Lane l holds the columns (32 j + l) VEC .. +
// VEC - 1 for j < GROUPS (those < c): each load of a warp is 32 VEC
// neighbouring elements. gamma is read once per warp; every lane sums dy
// xhat and dy of its columns over the warp's rows (row = warp of the grid,
// + every warp of the grid, ...), the block's warps add theirs in a fixed
// tree through shared memory, and warp 0 writes the block's partials. The
// grid is fixed by the shapes, so every sum has one order: the same bits
// every run.
template <class T, int VEC, int GROUPS, int THREADS>
__global__ void __launch_bounds__(THREADS) norm_grad_rows_warp_kernel(const NormGradRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  constexpr int WARPS = THREADS / 32, R = GROUPS * VEC;
  static_assert(THREADS % 32 == 0 && (WARPS & (WARPS - 1)) == 0, "a power-of-two count of warps");
  __shared__ A slot[(WARPS > 1 ? WARPS / 2 : 1) * R * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 c = a.c;
  const bool packed = VEC > 1 && vec_aligned<T, VEC>(a.x) && vec_aligned<T, VEC>(a.dy) && vec_aligned<T, VEC>(a.gamma) &&
                      vec_aligned<T, VEC>(a.dx) && vec_aligned<T, VEC>(a.dx_addend) &&
                      vec_aligned<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.dx16)) &&
                      vec_aligned<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.dy16));
  A gam[GROUPS][VEC], sum_dyx[GROUPS][VEC], sum_dy[GROUPS][VEC];
#pragma unroll
  for (int j = 0; j < GROUPS; ++j) {
    const i64 column = ((i64)32 * j + lane) * VEC;
#pragma unroll
    for (int v = 0; v < VEC; ++v) gam[j][v] = sum_dyx[j][v] = sum_dy[j][v] = A(0);
    if (column < c) load_vec<T, VEC>(a.gamma + column, packed, gam[j]);
  }
  for (i64 row = (i64)blockIdx.x * WARPS + warp; row < a.rows; row += (i64)gridDim.x * WARPS) {
    A x[GROUPS][VEC], dy[GROUPS][VEC];
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const i64 column = ((i64)32 * j + lane) * VEC;
#pragma unroll
      for (int v = 0; v < VEC; ++v) x[j][v] = dy[j][v] = A(0);
      if (column < c) {
        load_vec<T, VEC>(a.x + row * c + column, packed, x[j]);
        load_vec<T, VEC>(a.dy + row * c + column, packed, dy[j]);
        if (a.dy16) {
          A w[VEC];
          load_vec<bf16_t, VEC>(reinterpret_cast<const bf16_t*>(a.dy16) + row * c + column, packed, w);
#pragma unroll
          for (int v = 0; v < VEC; ++v) dy[j][v] = ld(st<T>(dy[j][v] + w[v]));  // rounded to T, as mj.add
        }
      }
    }
    // The moments, two passes as row_moments (zeros past the row's end add nothing).
    A mean = A(0);
    if (!a.rms) {
      A sum = A(0);
#pragma unroll
      for (int j = 0; j < GROUPS; ++j)
#pragma unroll
        for (int v = 0; v < VEC; ++v) sum += x[j][v];
      mean = warp_reduce(sum, SumOp()) / A(c);
    }
    A sq = A(0);
#pragma unroll
    for (int j = 0; j < GROUPS; ++j)
      if (((i64)32 * j + lane) * VEC < c)
#pragma unroll
        for (int v = 0; v < VEC; ++v) sq += (x[j][v] - mean) * (x[j][v] - mean);
    const A rstd = A(1) / m_sqrt(warp_reduce(sq, SumOp()) / A(c) + A(a.eps));
    A sum_g = A(0), sum_gx = A(0);
#pragma unroll
    for (int j = 0; j < GROUPS; ++j)
      if (((i64)32 * j + lane) * VEC < c)
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const A g = dy[j][v] * gam[j][v], xhat = (x[j][v] - mean) * rstd;
          sum_g += g;
          sum_gx += g * xhat;
          sum_dyx[j][v] += dy[j][v] * xhat;
          sum_dy[j][v] += dy[j][v];
        }
    const A mean_g = a.rms ? A(0) : warp_reduce(sum_g, SumOp()) / A(c);
    const A mean_gx = warp_reduce(sum_gx, SumOp()) / A(c);
#pragma unroll
    for (int j = 0; j < GROUPS; ++j) {
      const i64 column = ((i64)32 * j + lane) * VEC;
      if (column >= c) continue;
      T dx[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) dx[v] = st<T>(rstd * (dy[j][v] * gam[j][v] - mean_g - (x[j][v] - mean) * rstd * mean_gx));
      if (a.dx_addend) {
        A add[VEC];
        load_vec<T, VEC>(a.dx_addend + row * c + column, packed, add);
#pragma unroll
        for (int v = 0; v < VEC; ++v) dx[v] = st<T>(ld(dx[v]) + add[v]);
      }
      store_vec<T, VEC>(a.dx + row * c + column, packed, dx);
      if (a.dx16) {
        bf16_t h[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) h[v] = st<bf16_t>(ld(dx[v]));  // as mj.cast of the T result
        store_vec<bf16_t, VEC>(reinterpret_cast<bf16_t*>(a.dx16) + row * c + column, packed, h);
      }
    }
  }
  // The block's column sums: a fixed tree over its warps (warp w + half
  // into warp w), dy xhat first, then dy.
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    A (&acc)[GROUPS][VEC] = which == 0 ? sum_dyx : sum_dy;
    for (int half = WARPS / 2; half >= 1; half /= 2) {
      if (warp >= half && warp < 2 * half) {
#pragma unroll
        for (int j = 0; j < GROUPS; ++j)
#pragma unroll
          for (int v = 0; v < VEC; ++v) slot[((warp - half) * R + j * VEC + v) * 32 + lane] = acc[j][v];
      }
      __syncthreads();
      if (warp < half) {
#pragma unroll
        for (int j = 0; j < GROUPS; ++j)
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[j][v] += slot[(warp * R + j * VEC + v) * 32 + lane];
      }
      __syncthreads();
    }
  }
  if (warp != 0) return;
#pragma unroll
  for (int j = 0; j < GROUPS; ++j) {
    const i64 column = ((i64)32 * j + lane) * VEC;
    if (column >= c) continue;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      a.partials[((i64)blockIdx.x * c + column + v) * 2] = (double)sum_dyx[j][v];
      a.partials[((i64)blockIdx.x * c + column + v) * 2 + 1] = (double)sum_dy[j][v];
    }
  }
}

// Backward of layer_norm / rms_norm, part 1 (one block per row):
//   layer_norm: xhat = (x - mean) rstd, g = dy gamma,
//               dx = rstd (g - mean(g) - xhat mean(g xhat))
//   rms_norm:   xhat = x rstd,          dx = rstd (g - xhat mean(g xhat))
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) norm_grad_rows_kernel(const NormGradRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  const i64 c = a.c;
  for (i64 row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* xr = a.x + row * c;
    const T* dyr = a.dy + row * c;
    A mean, rstd;
    row_moments(xr, c, A(a.eps), a.rms != 0, scratch, mean, rstd);
    A sum_g = A(0), sum_gx = A(0);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A g = ld(dyr[i]) * ld(a.gamma[i]);
      sum_g += g;
      sum_gx += g * (ld(xr[i]) - mean) * rstd;
    }
    A mean_g = a.rms ? A(0) : block_reduce(sum_g, SumOp(), scratch) / A(c);
    A mean_gx = block_reduce(sum_gx, SumOp(), scratch) / A(c);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A xhat = (ld(xr[i]) - mean) * rstd;
      A g = ld(dyr[i]) * ld(a.gamma[i]);
      a.dx[row * c + i] = st<T>(rstd * (g - mean_g - xhat * mean_gx));
    }
    if (threadIdx.x == 0) {
      a.stats[2 * row] = (double)mean;
      a.stats[2 * row + 1] = (double)rstd;
    }
  }
}

// Part 2 (one thread per column, rows in order): dgamma = sum dy xhat, dbeta = sum dy.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) norm_grad_params_parts_kernel(const NormGradParamsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const i64 c = a.c;
  for (i64 w = blockIdx.x; w < a.chunks * ((c + THREADS - 1) / THREADS); w += gridDim.x) {
    const i64 chunk = w % a.chunks, column = (w / a.chunks) * THREADS + threadIdx.x;
    if (column >= c) continue;
    const i64 first = chunk * a.chunk, last = first + a.chunk < a.rows ? first + a.chunk : a.rows;
    A sum_gamma = A(0), sum_beta = A(0);
#pragma unroll 4
    for (i64 row = first; row < last; ++row) {
      A d = ld(a.dy[row * c + column]);
      sum_gamma += d * (ld(a.x[row * c + column]) - A(a.stats[2 * row])) * A(a.stats[2 * row + 1]);
      sum_beta += d;
    }
    a.partials[(chunk * c + column) * 2] = (double)sum_gamma;
    a.partials[(chunk * c + column) * 2 + 1] = (double)sum_beta;
  }
}

// Part 2b: one warp per column; lane l adds chunks l, l + 32, ... in order,
// then a fixed shuffle tree (deterministic).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) norm_grad_params_finish_kernel(const NormGradParamsArgs<T> a) {
  const int lane = threadIdx.x & 31;
  for (i64 column = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; column < a.c; column += (i64)gridDim.x * THREADS / 32) {
    double sum_gamma = 0.0, sum_beta = 0.0;
    for (i64 chunk = lane; chunk < a.chunks; chunk += 32) {
      sum_gamma += a.partials[(chunk * a.c + column) * 2];
      sum_beta += a.partials[(chunk * a.c + column) * 2 + 1];
    }
    sum_gamma = warp_reduce(sum_gamma, SumOp());
    sum_beta = warp_reduce(sum_beta, SumOp());
    if (lane == 0) {
      a.dgamma[column] = st<T>((typename acc_of<T>::type)sum_gamma);
      if (a.dbeta) a.dbeta[column] = st<T>((typename acc_of<T>::type)sum_beta);
    }
  }
}

// The logsumexp of a row (block-wide; every thread gets it).
template <class T, class A> __device__ A row_logsumexp(const T* xr, i64 c, A* scratch) {
  A max = lowest_value<A>();
  for (i64 i = threadIdx.x; i < c; i += blockDim.x) max = MaxOp()(max, ld(xr[i]));
  max = block_reduce(max, MaxOp(), scratch);
  A sum = A(0);
  for (i64 i = threadIdx.x; i < c; i += blockDim.x) sum += m_exp(ld(xr[i]) - max);
  sum = block_reduce(sum, SumOp(), scratch);
  return max + m_log(sum);
}

// One block, summed in a fixed order.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) mean_of_values_kernel(const MeanOfValuesArgs<T> a) {
  __shared__ double scratch[33];
  // Each thread adds values i, i + THREADS, ... in that order; eight loads
  // are issued before their adds (one load's latency per eight values, not
  // per value: a 16384-value loss took 17 us as a plain loop).
  constexpr int U = 8;
  double sum = 0.0;
  i64 i = threadIdx.x;
  for (; i + (i64)(U - 1) * THREADS < a.n; i += (i64)U * THREADS) {
    double v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = a.values[i + (i64)u * THREADS];
#pragma unroll
    for (int u = 0; u < U; ++u) sum += v[u];
  }
  for (; i < a.n; i += THREADS) sum += a.values[i];
  sum = block_reduce(sum, SumOp(), scratch);
  if (threadIdx.x == 0) a.out[0] = from_double<T>(a.coeff * sum / (double)a.n);
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
