// Kernel family "model": causal attention (forward, and a backward in two
// passes: per query row for dq, per key row for dk and dv), cross entropy
// and its gradient. Attention: one block per row; scores live in dynamic
// shared memory (T values per row), so T is bounded by shared memory.
#pragma once
#include "codegen/kernels/common.cuh"
#include "codegen/kernels/reduce.cuh"

namespace mj {

// mj.attention (f32/f64, and bf16/f16 where the flash family of
// attention.cuh does not serve): q, k, v, out BH heads of [T, Dh] rows in
// any head layout (H and HeadStrides qkv, o: as in attention.cuh);
// out[t] = softmax_{s<=t}(q_t . k_s * scale) v; lse [BH, T] of the
// arithmetic type (f32, or f64 for f64).
template <class T> struct AttentionArgs {
  const T *q, *k, *v;
  T* out;
  void* lse;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// mj.attention_grad, pass 1: dq and per-row stats [BH*T, 2] (logsumexp, D_t).
template <class T> struct AttentionGradQArgs {
  const T *q, *k, *v, *dout;
  T* dq;
  double* stats;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// Pass 2: dk, dv from the stats of pass 1.
template <class T> struct AttentionGradKvArgs {
  const T *q, *k, *v, *dout;
  const double* stats;
  T *dk, *dv;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// mj.cross_entropy, pass 1: row_loss[n] = logsumexp(logits[n]) - logits[n, targets[n]].
template <class T> struct CrossEntropyRowsArgs {
  const T* logits;
  const int* targets;
  double* row_loss;
  i64 rows, V;
};

// mj.cross_entropy_grad: dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dloss / rows.
template <class T> struct CrossEntropyGradArgs {
  const T* logits;
  const int* targets;
  const T* dloss;
  T* dlogits;
  i64 rows, V;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

extern __shared__ double moejit_dynamic_smem[];

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) attention_kernel(const AttentionArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  const i64 Tn = a.Tn, Dh = a.Dh, rs = a.qkv.row, ors = a.o.row;
  A* scores = (A*)moejit_dynamic_smem;
  A* qrow = scores + Tn;
  for (i64 row = blockIdx.x; row < a.BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, t = row % Tn, base = head_base(a.qkv, a.H, bh), obase = head_base(a.o, a.H, bh);
    const T* kb = a.k + base;
    const T* vb = a.v + base;
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) qrow[d] = ld(a.q[base + t * rs + d]);
    __syncthreads();
    A max = lowest_value<A>();
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      A dot = A(0);
      for (i64 d = 0; d < Dh; ++d) dot += qrow[d] * ld(kb[s * rs + d]);
      dot *= A(a.scale);
      scores[s] = dot;
      max = MaxOp()(max, dot);
    }
    max = block_reduce(max, MaxOp(), scratch);
    A sum = A(0);
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      A e = m_exp(scores[s] - max);
      scores[s] = e;
      sum += e;
    }
    sum = block_reduce(sum, SumOp(), scratch);
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      A acc = A(0);
      for (i64 s = 0; s <= t; ++s) acc += scores[s] * ld(vb[s * rs + d]);
      a.out[obase + t * ors + d] = st<T>(acc / sum);
    }
    if (threadIdx.x == 0) ((A*)a.lse)[row] = max + m_log(sum);
    __syncthreads();
  }
}

// Pass 1 (one block per query row t):
//   P = softmax row, dP_s = dout_t . v_s, D_t = sum_s P_s dP_s,
//   dS_s = P_s (dP_s - D_t), dq_t = scale sum_s dS_s k_s;
// stats[2 row] = logsumexp of the scaled scores, stats[2 row + 1] = D_t.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) attention_grad_q_kernel(const AttentionGradQArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  const i64 Tn = a.Tn, Dh = a.Dh, rs = a.qkv.row, ors = a.o.row;
  A* p = (A*)moejit_dynamic_smem;
  A* dp = p + Tn;
  A* qrow = dp + Tn;
  A* dorow = qrow + Dh;
  for (i64 row = blockIdx.x; row < a.BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, t = row % Tn, base = head_base(a.qkv, a.H, bh), obase = head_base(a.o, a.H, bh);
    const T* kb = a.k + base;
    const T* vb = a.v + base;
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      qrow[d] = ld(a.q[base + t * rs + d]);
      dorow[d] = ld(a.dout[obase + t * ors + d]);
    }
    __syncthreads();
    A max = lowest_value<A>();
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      A dot = A(0), dpv = A(0);
      for (i64 d = 0; d < Dh; ++d) {
        dot += qrow[d] * ld(kb[s * rs + d]);
        dpv += dorow[d] * ld(vb[s * rs + d]);
      }
      p[s] = dot * A(a.scale);
      dp[s] = dpv;
      max = MaxOp()(max, p[s]);
    }
    max = block_reduce(max, MaxOp(), scratch);
    A sum = A(0);
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) sum += m_exp(p[s] - max);
    sum = block_reduce(sum, SumOp(), scratch);
    A pdp = A(0);
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      p[s] = m_exp(p[s] - max) / sum;
      pdp += p[s] * dp[s];
    }
    A delta = block_reduce(pdp, SumOp(), scratch);
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) p[s] = p[s] * (dp[s] - delta);  // dS
    __syncthreads();
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      A acc = A(0);
      for (i64 s = 0; s <= t; ++s) acc += p[s] * ld(kb[s * rs + d]);
      a.dq[base + t * rs + d] = st<T>(acc * A(a.scale));
    }
    if (threadIdx.x == 0) {
      a.stats[2 * row] = (double)(max + m_log(sum));
      a.stats[2 * row + 1] = (double)delta;
    }
    __syncthreads();
  }
}

// Pass 2 (one block per key row s): for t >= s, P_ts = exp(q_t . k_s scale - lse_t),
// dS_ts = P_ts (dout_t . v_s - D_t); dv_s = sum_t P_ts dout_t, dk_s = scale sum_t dS_ts q_t.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) attention_grad_kv_kernel(const AttentionGradKvArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const i64 Tn = a.Tn, Dh = a.Dh, rs = a.qkv.row, ors = a.o.row;
  A* p = (A*)moejit_dynamic_smem;
  A* ds = p + Tn;
  A* krow = ds + Tn;
  A* vrow = krow + Dh;
  for (i64 row = blockIdx.x; row < a.BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, s = row % Tn, base = head_base(a.qkv, a.H, bh);
    const T* qb = a.q + base;
    const T* db = a.dout + head_base(a.o, a.H, bh);
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      krow[d] = ld(a.k[base + s * rs + d]);
      vrow[d] = ld(a.v[base + s * rs + d]);
    }
    __syncthreads();
    for (i64 t = s + threadIdx.x; t < Tn; t += blockDim.x) {
      A dot = A(0), dpv = A(0);
      for (i64 d = 0; d < Dh; ++d) {
        dot += ld(qb[t * rs + d]) * krow[d];
        dpv += ld(db[t * ors + d]) * vrow[d];
      }
      i64 qrow_index = bh * Tn + t;
      A pv = m_exp(dot * A(a.scale) - A(a.stats[2 * qrow_index]));
      p[t - s] = pv;
      ds[t - s] = pv * (dpv - A(a.stats[2 * qrow_index + 1]));
    }
    __syncthreads();
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      A acc_v = A(0), acc_k = A(0);
      for (i64 t = s; t < Tn; ++t) {
        acc_v += p[t - s] * ld(db[t * ors + d]);
        acc_k += ds[t - s] * ld(qb[t * rs + d]);
      }
      a.dv[base + s * rs + d] = st<T>(acc_v);
      a.dk[base + s * rs + d] = st<T>(acc_k * A(a.scale));
    }
    __syncthreads();
  }
}

// ---- cross entropy ----
// Two shapes of the same computation, chosen by the emitter from V:
//   *_warp_kernel<T, PER_LANE>: one warp per row, V <= 32 PER_LANE; the row
//     is read once into registers (lane l holds columns l + 32 j), reduced
//     with shuffles, and the gradient is written from the registers;
//   *_block_kernel: one block per row for large V (32k-128k): one pass
//     with an online max and sum (the sum rescaled when the max grows) for
//     the logsumexp; the gradient then reads the row a second time.
// Statistics in the arithmetic type (f32 for bf16/f16/f32). A target
// outside 0..V-1 gives a NaN loss (the CPU backend reports it as an error).

__device__ __forceinline__ double cross_entropy_nan() { return __longlong_as_double(0x7ff8000000000000ll); }

// The running (max, sum of exp(x - max)) of a stream of values.
template <class A> struct OnlineLse {
  A max, sum;
  __device__ __forceinline__ void add(A x) {
    if (x > max) {
      sum = sum * m_exp(max - x) + A(1);  // exp(-inf) = 0 for the first value
      max = x;
    } else if (x != lowest_value<A>()) {  // -inf adds nothing (and -inf - -inf would be NaN)
      sum += m_exp(x - max);  // NaN x makes the sum NaN, as the CPU's
    }
  }
  __device__ __forceinline__ void merge(A other_max, A other_sum) {
    if (other_max > max) {
      sum = sum * m_exp(max - other_max) + other_sum;
      max = other_max;
    } else if (other_sum != A(0) || other_max != other_max) {
      sum += other_sum * m_exp(other_max - max);
    }
  }
};

template <class T, int PER_LANE, class A>
__device__ __forceinline__ A warp_row_logsumexp(const T* xr, i64 V, int lane, A (&x)[PER_LANE]) {
  A max = lowest_value<A>();
#pragma unroll
  for (int j = 0; j < PER_LANE; ++j) {
    const i64 column = lane + 32 * j;
    x[j] = column < V ? ld(xr[column]) : lowest_value<A>();
    max = MaxOp()(max, x[j]);
  }
  max = warp_reduce(max, MaxOp());
  A sum = A(0);
#pragma unroll
  for (int j = 0; j < PER_LANE; ++j)
    if (lane + 32 * j < V) sum += m_exp(x[j] - max);
  sum = warp_reduce(sum, SumOp());
  return max + m_log(sum);
}

template <class T, class A> __device__ A block_row_logsumexp(const T* xr, i64 V, A* scratch) {
  OnlineLse<A> acc{lowest_value<A>(), A(0)};
  for (i64 i = threadIdx.x; i < V; i += blockDim.x) acc.add(ld(xr[i]));
  for (int delta = 16; delta > 0; delta >>= 1) {
    const A other_max = __shfl_xor_sync(0xffffffffu, acc.max, delta);
    const A other_sum = __shfl_xor_sync(0xffffffffu, acc.sum, delta);
    acc.merge(other_max, other_sum);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read by the previous row
  if (lane == 0) {
    scratch[2 * warp] = acc.max;
    scratch[2 * warp + 1] = acc.sum;
  }
  __syncthreads();
  OnlineLse<A> total{scratch[0], scratch[1]};
  for (int w = 1; w < warps; ++w) total.merge(scratch[2 * w], scratch[2 * w + 1]);
  return total.max + m_log(total.sum);
}

template <class T, int PER_LANE, int THREADS>
__global__ void __launch_bounds__(THREADS) cross_entropy_rows_warp_kernel(const CrossEntropyRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const int lane = threadIdx.x & 31;
  for (i64 row = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; row < a.rows; row += (i64)gridDim.x * THREADS / 32) {
    const T* xr = a.logits + row * a.V;
    A x[PER_LANE];
    const A lse = warp_row_logsumexp<T, PER_LANE, A>(xr, a.V, lane, x);
    if (lane == 0) {
      const int target = a.targets[row];
      a.row_loss[row] = (target >= 0 && target < a.V) ? (double)(lse - ld(xr[target])) : cross_entropy_nan();
    }
  }
}

template <class T, int PER_LANE, int THREADS>
__global__ void __launch_bounds__(THREADS) cross_entropy_grad_warp_kernel(const CrossEntropyGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const A scale = ld(a.dloss[0]) / A(a.rows);
  const int lane = threadIdx.x & 31;
  for (i64 row = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; row < a.rows; row += (i64)gridDim.x * THREADS / 32) {
    const T* xr = a.logits + row * a.V;
    A x[PER_LANE];
    const A lse = warp_row_logsumexp<T, PER_LANE, A>(xr, a.V, lane, x);
    const int target = a.targets[row];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const i64 column = lane + 32 * j;
      if (column < a.V) a.dlogits[row * a.V + column] = st<T>((m_exp(x[j] - lse) - (column == target ? A(1) : A(0))) * scale);
    }
  }
}

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) cross_entropy_rows_block_kernel(const CrossEntropyRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[64];
  for (i64 row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* xr = a.logits + row * a.V;
    const A lse = block_row_logsumexp<T, A>(xr, a.V, scratch);
    if (threadIdx.x == 0) {
      const int target = a.targets[row];
      a.row_loss[row] = (target >= 0 && target < a.V) ? (double)(lse - ld(xr[target])) : cross_entropy_nan();
    }
  }
}

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) cross_entropy_grad_block_kernel(const CrossEntropyGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[64];
  const A scale = ld(a.dloss[0]) / A(a.rows);
  for (i64 row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const T* xr = a.logits + row * a.V;
    const A lse = block_row_logsumexp<T, A>(xr, a.V, scratch);
    const int target = a.targets[row];
    for (i64 i = threadIdx.x; i < a.V; i += blockDim.x)
      a.dlogits[row * a.V + i] = st<T>((m_exp(ld(xr[i]) - lse) - (i == target ? A(1) : A(0))) * scale);
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
