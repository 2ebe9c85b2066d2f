// Kernel library, part 4: one tiled matrix-product block and the ops built
// on it: batched matmul (with transposes), the expert matmuls (grouped,
// gathered through slots, and the weight gradient).
//
// Each 256-thread block computes a 64x64 tile of C, stepping through K in
// slices of 16 staged in shared memory as f32; each thread owns a 4x4
// sub-tile spread at stride 16 (rows ty + 16 i, columns tx + 16 j).
// Operands are read through (row, column) strides, so transposes cost no
// copy. f32 accumulation whatever the element type. (No tensor cores yet:
// docs/perf.md.)
R"MOEJIT_CUDA(
#define MOEJIT_TILE_M 64
#define MOEJIT_TILE_N 64
#define MOEJIT_TILE_K 16

// C(m, n) = sum_k A(m, k) B(k, n) for the tile (m0, n0), with
//   A(m, k) = a[row(m) * a_sm + k * a_sk], row(m) = m, or, with a_rows,
//             a_rows[m] / a_row_div (a row of zeros where a_rows[m] < 0);
//   B(k, n) = b[k * b_sk + n * b_sn];   C(m, n) at c[m * c_sm + n].
template <class T> __device__ void gemm_tile(const T* a, i64 a_sm, i64 a_sk, const int* a_rows, int a_row_div, const T* b,
                                             i64 b_sk, i64 b_sn, T* c, i64 c_sm, i64 M, i64 N, i64 K, i64 m0, i64 n0) {
  typedef typename acc_of<T>::type A;  // f32 (f64 for f64 tensors)
  __shared__ A As[MOEJIT_TILE_K][MOEJIT_TILE_M + 1];
  __shared__ A Bs[MOEJIT_TILE_K][MOEJIT_TILE_N + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  A acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
  for (i64 k0 = 0; k0 < K; k0 += MOEJIT_TILE_K) {
#pragma unroll
    for (int e = tid; e < MOEJIT_TILE_M * MOEJIT_TILE_K; e += 256) {
      int mm = e / MOEJIT_TILE_K, kk = e % MOEJIT_TILE_K;
      i64 m = m0 + mm, k = k0 + kk;
      A v = A(0);
      if (m < M && k < K) {
        i64 row = a_rows ? (a_rows[m] < 0 ? -1 : a_rows[m] / a_row_div) : m;
        if (row >= 0) v = ld(a[row * a_sm + k * a_sk]);
      }
      As[kk][mm] = v;
    }
#pragma unroll
    for (int e = tid; e < MOEJIT_TILE_K * MOEJIT_TILE_N; e += 256) {
      int kk = e / MOEJIT_TILE_N, nn = e % MOEJIT_TILE_N;
      i64 k = k0 + kk, n = n0 + nn;
      Bs[kk][nn] = (k < K && n < N) ? ld(b[k * b_sk + n * b_sn]) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < MOEJIT_TILE_K; ++kk) {
      A av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      i64 m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) c[m * c_sm + n] = st<T>(acc[i][j]);
    }
}

// mj.matmul: batch z = blockIdx.z; each operand advances by its batch stride
// (0 for a rank-2 b shared by every batch).
template <class T> __device__ void matmul_impl(const T* a, const T* b, T* c, i64 M, i64 N, i64 K, i64 a_sm, i64 a_sk,
                                               i64 b_sk, i64 b_sn, i64 a_batch, i64 b_batch) {
  i64 z = blockIdx.z;
  gemm_tile<T>(a + z * a_batch, a_sm, a_sk, nullptr, 1, b + z * b_batch, b_sk, b_sn, c + z * M * N, N, M, N, K,
               (i64)blockIdx.y * MOEJIT_TILE_M, (i64)blockIdx.x * MOEJIT_TILE_N);
}

// moe.grouped_matmul / moe.gather_matmul: expert e = blockIdx.z multiplies
// the rows offsets[e] .. offsets[e+1]-1 by w[e] ([D, F], or [F, D] when
// transpose_w). With slots (gather), row i reads x[slots[i] / top_k].
// Rows outside every segment are zeroed by a memset launched before.
template <class T> __device__ void grouped_matmul_impl(const T* x, const T* w, const int* offsets, const int* slots, int top_k,
                                                       T* out, i64 D, i64 F, int transpose_w) {
  int e = blockIdx.z;
  i64 start = offsets[e], rows = (i64)offsets[e + 1] - start;
  i64 m0 = (i64)blockIdx.y * MOEJIT_TILE_M;
  if (m0 >= rows) return;
  const T* we = w + (i64)e * D * F;
  const T* a = slots ? x : x + start * D;
  const int* a_rows = slots ? slots + start : nullptr;
  gemm_tile<T>(a, D, 1, a_rows, top_k, we, transpose_w ? 1 : F, transpose_w ? D : 1, out + start * F, F, rows, F, D, m0,
               (i64)blockIdx.x * MOEJIT_TILE_N);
}

// moe.grouped_matmul_wgrad: dw[e] = xs[seg e]^T dys[seg e]; an empty segment
// gives zeros. Tiles: blockIdx.y over D, blockIdx.x over F, blockIdx.z = e.
template <class T> __device__ void grouped_wgrad_impl(const T* xs, const T* dys, const int* offsets, T* dw, i64 D, i64 F) {
  int e = blockIdx.z;
  i64 start = offsets[e], rows = (i64)offsets[e + 1] - start;
  gemm_tile<T>(xs + start * D, 1, D, nullptr, 1, dys + start * F, F, 1, dw + (i64)e * D * F, F, D, F, rows,
               (i64)blockIdx.y * MOEJIT_TILE_M, (i64)blockIdx.x * MOEJIT_TILE_N);
}
)MOEJIT_CUDA"
