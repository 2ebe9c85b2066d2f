// Kernel family "matmul_simt": one tiled matrix-product block on the CUDA
// cores and the ops built on it: batched matmul (with transposes), the
// expert matmuls (grouped, gathered through slots, and the weight gradient).
// The fallback GEMM for f32/f64 and for targets below sm_90; which family
// serves a matmul is decided in one place, codegen/gemm_select.cpp.
//
// A block of THREADS threads computes a BM x BN tile of C, stepping through
// K in slices of BK staged in shared memory in the arithmetic type. The
// threads form a TY x TX grid (TX = min(BN, 16), TY = THREADS / TX); each
// owns a (BM / TY) x (BN / TX) sub-tile spread at strides TY and TX, so
// neighbouring threads touch neighbouring shared-memory columns. Operands
// are read through (row, column) strides, so transposes cost no copy. f32
// accumulation whatever the element type (f64 for f64). BM, BN, BK, THREADS
// come from the launch's TileConfig (moe-tiling's tile_m/n/k, else the
// heuristic); gemm_select.cpp checks the constraints static_assert states.
#pragma once
#include "codegen/kernels/common.cuh"

namespace mj {

// mj.matmul: c[z] (M x N) = A[z] B[z], A(m, k) = a[z a_batch + m a_sm + k a_sk],
// B(k, n) = b[z b_batch + k b_sk + n b_sn] (b_batch 0: one b for every batch).
template <class T> struct MatmulArgs {
  const T *a, *b;
  T* c;
  i64 M, N, K, a_sm, a_sk, b_sk, b_sn, a_batch, b_batch;
};

// mj.matmul split over K (few output tiles, long K): part z*split + s of
// batch z multiplies the K slice [s*chunk, (s+1)*chunk) into partials (the
// arithmetic type) [batch, split, M, N]; the finish kernel adds each
// output's `split` partials in order (deterministic) into c.
template <class T> struct MatmulSplitArgs {
  const T *a, *b;
  T* c;
  void* partials;
  i64 M, N, K, a_sm, a_sk, b_sk, b_sn, a_batch, b_batch;
  i64 batch, split, chunk;
};

// moe.grouped_matmul / moe.gather_matmul: expert e multiplies the rows
// offsets[e] .. offsets[e+1]-1 by w[e] ([D, F], or [F, D] when transpose_w).
// With slots (gather), row i reads x[slots[i] / top_k] (zeros where < 0).
template <class T> struct GroupedMatmulArgs {
  const T *x, *w;
  const int *offsets, *slots;
  T* out;
  i64 D, F;
  int top_k, transpose_w;
};

// moe.grouped_matmul_wgrad: dw[e] = xs[seg e]^T dys[seg e].
template <class T> struct GroupedWgradArgs {
  const T *xs, *dys;
  const int* offsets;
  T* dw;
  i64 D, F;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// C(m, n) = sum_k A(m, k) B(k, n) for the tile (m0, n0), with
//   A(m, k) = a[row(m) * a_sm + k * a_sk], row(m) = m, or, with a_rows,
//             a_rows[m] / a_row_div (a row of zeros where a_rows[m] < 0);
//   B(k, n) = b[k * b_sk + n * b_sn];   C(m, n) at c[m * c_sm + n], stored
//   as C (T, or the arithmetic type for split-K partials).
// A_ALONG_K / B_ALONG_N: neighbouring threads stage neighbouring k (of A)
// and n (of B); false swaps the order, so a transposed operand (K not its
// contiguous axis) is still read in contiguous runs.
template <class T, int BM, int BN, int BK, int THREADS, class C = T, bool A_ALONG_K = true, bool B_ALONG_N = true>
__device__ void gemm_tile(const T* a, i64 a_sm, i64 a_sk, const int* a_rows, int a_row_div, const T* b, i64 b_sk, i64 b_sn, C* c,
                          i64 c_sm, i64 M, i64 N, i64 K, i64 m0, i64 n0) {
  typedef typename acc_of<T>::type A;
  constexpr int TX = BN < 16 ? BN : 16;
  constexpr int TY = THREADS / TX;
  constexpr int RM = BM / TY, RN = BN / TX;
  static_assert(THREADS % TX == 0 && BM % TY == 0 && BN % TX == 0 && RM >= 1, "tile shape does not fit the thread grid");
  __shared__ A As[BK][BM + 1];
  __shared__ A Bs[BK][BN + 1];
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  A acc[RM][RN];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] = A(0);
  for (i64 k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int e = tid; e < BM * BK; e += THREADS) {
      int mm = A_ALONG_K ? e / BK : e % BM, kk = A_ALONG_K ? e % BK : e / BM;
      i64 m = m0 + mm, k = k0 + kk;
      A v = A(0);
      if (m < M && k < K) {
        i64 row = a_rows ? (a_rows[m] < 0 ? -1 : a_rows[m] / a_row_div) : m;
        if (row >= 0) v = ld(a[row * a_sm + k * a_sk]);
      }
      As[kk][mm] = v;
    }
#pragma unroll
    for (int e = tid; e < BK * BN; e += THREADS) {
      int kk = B_ALONG_N ? e / BN : e % BK, nn = B_ALONG_N ? e % BN : e / BK;
      i64 k = k0 + kk, n = n0 + nn;
      Bs[kk][nn] = (k < K && n < N) ? ld(b[k * b_sk + n * b_sn]) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      A av[RM], bv[RN];
#pragma unroll
      for (int i = 0; i < RM; ++i) av[i] = As[kk][ty + TY * i];
#pragma unroll
      for (int j = 0; j < RN; ++j) bv[j] = Bs[kk][tx + TX * j];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < RN; ++j) {
      i64 m = m0 + ty + TY * i, n = n0 + tx + TX * j;
      if (m < M && n < N) c[m * c_sm + n] = st<C>(acc[i][j]);
    }
}

// Grid: x over N tiles, y over M tiles, z over batches.
template <class T, int BM, int BN, int BK, int THREADS>
__global__ void __launch_bounds__(THREADS) matmul_kernel(const MatmulArgs<T> a) {
  i64 z = blockIdx.z;
  gemm_tile<T, BM, BN, BK, THREADS>(a.a + z * a.a_batch, a.a_sm, a.a_sk, nullptr, 1, a.b + z * a.b_batch, a.b_sk, a.b_sn,
                                    a.c + z * a.M * a.N, a.N, a.M, a.N, a.K, (i64)blockIdx.y * BM, (i64)blockIdx.x * BN);
}

// Grid: x over N tiles, y over M tiles, z over batch * split (batch-major).
template <class T, int BM, int BN, int BK, int THREADS>
__global__ void __launch_bounds__(THREADS) matmul_split_k_kernel(const MatmulSplitArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const i64 z = blockIdx.z / a.split, s = blockIdx.z % a.split;
  const i64 k0 = s * a.chunk, k1 = k0 + a.chunk < a.K ? k0 + a.chunk : a.K;
  A* part = static_cast<A*>(a.partials) + (i64)blockIdx.z * a.M * a.N;
  const T* a0 = a.a + z * a.a_batch + k0 * a.a_sk;
  const T* b0 = a.b + z * a.b_batch + k0 * a.b_sk;
  const i64 m0 = (i64)blockIdx.y * BM, n0 = (i64)blockIdx.x * BN;
  // A transposed (a router's x^T): stage it along M, where x is contiguous.
  if (a.a_sk == 1)
    gemm_tile<T, BM, BN, BK, THREADS, A, true, true>(a0, a.a_sm, a.a_sk, nullptr, 1, b0, a.b_sk, a.b_sn, part, a.N, a.M, a.N, k1 - k0, m0, n0);
  else
    gemm_tile<T, BM, BN, BK, THREADS, A, false, true>(a0, a.a_sm, a.a_sk, nullptr, 1, b0, a.b_sk, a.b_sn, part, a.N, a.M, a.N, k1 - k0, m0, n0);
}

// c[z, m, n] = sum over s = 0 .. split-1, in order, of partials[z, s, m, n].
// WIDEN: c is f32 and holds that sum rounded to T and widened (the product
// and an mj.cast to f32 of it, folded: passes/fuse_gemm_epilogue.cpp).
template <class T, int THREADS, bool WIDEN = false>
__global__ void __launch_bounds__(THREADS) matmul_split_k_finish_kernel(const MatmulSplitArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const A* parts = static_cast<const A*>(a.partials);
  const i64 mn = a.M * a.N;
  MOEJIT_FOR_EACH(i, a.batch * mn) {
    const i64 z = i / mn, o = i % mn;
    const A* p = parts + z * a.split * mn + o;
    A acc = A(0);
    for (i64 s = 0; s < a.split; ++s) acc += p[s * mn];
    if constexpr (WIDEN) reinterpret_cast<float*>(a.c)[i] = (float)ld(st<T>(acc));
    else a.c[i] = st<T>(acc);
  }
}

// The same sum for matmul_split_k_narrow_kernel's partials, a warp per
// output: lane l adds slices l, l + 32, ... in order, then warp_reduce's
// fixed tree. A thread per output walked its ~170 slices one dependent
// load after another (15 us for 3072 outputs); the order of the sum is
// still fixed by the shapes, so the result is the same bits every run.
template <class T, int THREADS>
__global__ void __launch_bounds__(THREADS) matmul_split_k_finish_warp_kernel(const MatmulSplitArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const A* parts = static_cast<const A*>(a.partials);
  const i64 mn = a.M * a.N;
  const WarpRows w;
  for (i64 i = w.warp; i < a.batch * mn; i += w.warps) {
    const i64 z = i / mn, o = i % mn;
    const A* p = parts + z * a.split * mn + o;
    A acc = A(0);
    for (i64 s = w.lane; s < a.split; s += 32) acc += p[s * mn];
    acc = warp_reduce(acc, SumOp());
    if (w.lane == 0) a.c[i] = st<T>(acc);
  }
}

// The split-K shape for a narrow product (N <= NP <= 32) whose A has its M
// axis contiguous (a_sm == 1: the x^T of a router's weight gradient, x
// [tokens, D] read as A [D, tokens]), where the tiled kernel above leaves
// most threads idle and reads x in short runs. Lane l of a warp owns the
// VEC outputs rows m0 .. m0 + VEC - 1 (m0 = (32 blockIdx.x + l) VEC) and
// all N columns, in registers; the WARPS warps of a block take the k of
// the block's slice in turn (warp w: k0 + w, k0 + w + WARPS, ...), so one
// warp's load of A is 32 VEC contiguous values (packed when aligned) and
// its load of B one broadcast row. The warps' sums meet in a fixed tree
// through shared memory, and warp 0 writes the slice's partials
// [batch, split, M, N] for matmul_split_k_finish_kernel. Grid: x over
// M / (32 VEC), y = split, z = batch. The order of every sum is fixed by
// the shapes, so the result is the same bits every run.
template <class T, int NP, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS) matmul_split_k_narrow_kernel(const MatmulSplitArgs<T> a) {
  typedef typename acc_of<T>::type A;
  constexpr int WARPS = THREADS / 32, R = VEC * NP, U = 4;
  static_assert(THREADS % 32 == 0 && (WARPS & (WARPS - 1)) == 0 && R <= 32, "narrow split-K shape");
  __shared__ A slot[(WARPS > 1 ? WARPS / 2 : 1) * R * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 z = blockIdx.z, s = blockIdx.y;
  const i64 m0 = ((i64)blockIdx.x * 32 + lane) * VEC;
  const i64 k0 = s * a.chunk, k1 = k0 + a.chunk < a.K ? k0 + a.chunk : a.K;
  const T* ab = a.a + z * a.a_batch;
  const T* bb = a.b + z * a.b_batch;
  const int N = (int)a.N;
  // Packed loads of A need every row start aligned: a_sk and the base.
  const bool packed = VEC > 1 && m0 + VEC <= a.M && a.a_sk % VEC == 0 && ((unsigned long long)(ab + m0) % sizeof(Pack<T, VEC>)) == 0;
  A acc[VEC][NP];
#pragma unroll
  for (int v = 0; v < VEC; ++v)
#pragma unroll
    for (int n = 0; n < NP; ++n) acc[v][n] = A(0);
  for (i64 kb = k0 + warp; kb < k1; kb += (i64)WARPS * U) {
    A av[U][VEC], bv[U][NP];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const i64 k = kb + (i64)u * WARPS;
      const bool live = k < k1;
      const T* ap = ab + k * a.a_sk + m0;
      if (live && packed) {
        const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(ap);
#pragma unroll
        for (int v = 0; v < VEC; ++v) av[u][v] = ld(p.v[v]);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) av[u][v] = live && m0 + v < a.M ? ld(ap[v]) : A(0);
      }
#pragma unroll
      for (int n = 0; n < NP; ++n) bv[u][n] = live && n < N ? ld(bb[k * a.b_sk + n * a.b_sn]) : A(0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int v = 0; v < VEC; ++v)
#pragma unroll
        for (int n = 0; n < NP; ++n) acc[v][n] += av[u][v] * bv[u][n];
  }
  // Fixed tree over the warps: warp w + half adds into warp w.
  for (int half = WARPS / 2; half >= 1; half /= 2) {
    if (warp >= half && warp < 2 * half) {
#pragma unroll
      for (int v = 0; v < VEC; ++v)
#pragma unroll
        for (int n = 0; n < NP; ++n) slot[((warp - half) * R + v * NP + n) * 32 + lane] = acc[v][n];
    }
    __syncthreads();
    if (warp < half) {
#pragma unroll
      for (int v = 0; v < VEC; ++v)
#pragma unroll
        for (int n = 0; n < NP; ++n) acc[v][n] += slot[(warp * R + v * NP + n) * 32 + lane];
    }
    __syncthreads();
  }
  if (warp != 0) return;
  A* part = static_cast<A*>(a.partials) + (z * a.split + s) * a.M * a.N;
#pragma unroll
  for (int v = 0; v < VEC; ++v)
#pragma unroll
    for (int n = 0; n < NP; ++n)
      if (m0 + v < a.M && n < N) part[(m0 + v) * a.N + n] = acc[v][n];
}

// Grid: x over F tiles, y over row tiles of the whole [N, F] output, z = expert.
// Rows outside every segment are zeroed by a memset launched before.
template <class T, int BM, int BN, int BK, int THREADS>
__global__ void __launch_bounds__(THREADS) grouped_matmul_kernel(const GroupedMatmulArgs<T> a) {
  int e = blockIdx.z;
  i64 start = a.offsets[e], rows = (i64)a.offsets[e + 1] - start;
  i64 m0 = (i64)blockIdx.y * BM;
  if (m0 >= rows) return;
  const T* we = a.w + (i64)e * a.D * a.F;
  const T* x = a.slots ? a.x : a.x + start * a.D;
  const int* x_rows = a.slots ? a.slots + start : nullptr;
  gemm_tile<T, BM, BN, BK, THREADS>(x, a.D, 1, x_rows, a.top_k, we, a.transpose_w ? 1 : a.F, a.transpose_w ? a.D : 1,
                                    a.out + start * a.F, a.F, rows, a.F, a.D, m0, (i64)blockIdx.x * BN);
}

// An empty segment gives zeros. Grid: x over F tiles, y over D tiles, z = expert.
template <class T, int BM, int BN, int BK, int THREADS>
__global__ void __launch_bounds__(THREADS) grouped_wgrad_kernel(const GroupedWgradArgs<T> a) {
  int e = blockIdx.z;
  i64 start = a.offsets[e], rows = (i64)a.offsets[e + 1] - start;
  gemm_tile<T, BM, BN, BK, THREADS>(a.xs + start * a.D, 1, a.D, nullptr, 1, a.dys + start * a.F, a.F, 1, a.dw + (i64)e * a.D * a.F,
                                    a.F, a.D, a.F, rows, (i64)blockIdx.y * BM, (i64)blockIdx.x * BN);
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
