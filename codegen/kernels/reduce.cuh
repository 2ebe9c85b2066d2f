// Kernel library, part 3: reductions over axes, and the row-wise ops over
// the last axis (softmax, log_softmax, layer_norm, rms_norm and their
// backward). One block per output element or row, 256 threads, a fixed
// reduction tree, so results do not depend on timing. Float math accumulates
// in f32 (f64 for f64 tensors); integer sums wrap.
R"MOEJIT_CUDA(
#define MOEJIT_ROW_THREADS 256

template <class T> struct reduce_acc { typedef typename acc_of<T>::type type; };
template <> struct reduce_acc<int> { typedef i64 type; };

// y[o] = reduce over the reduced dims of x. `kept` walks the outputs (sizes
// of the kept dims, x's strides), `reduced` walks one output's inputs.
// kind: 0 sum, 1 mean, 2 max.
template <class T, int kind> __device__ void reduce_impl(const T* x, T* y, Dims kept, Dims reduced, i64 outputs, i64 count) {
  typedef typename reduce_acc<T>::type A;
  __shared__ A scratch[33];
  for (i64 o = blockIdx.x; o < outputs; o += gridDim.x) {
    const T* base = x + dims_offset(kept, o);
    A acc = kind == 2 ? lowest_value<A>() : A(0);
    for (i64 r = threadIdx.x; r < count; r += blockDim.x) {
      A v = (A)ld(base[dims_offset(reduced, r)]);
      acc = kind == 2 ? MaxOp()(acc, v) : acc + v;
    }
    if (kind == 2) acc = block_reduce(acc, MaxOp(), scratch);
    else acc = block_reduce(acc, SumOp(), scratch);
    if (threadIdx.x == 0) {
      if (kind == 1) acc = acc / (A)count;
      y[o] = st<T>((typename acc_of<T>::type)acc);
    }
  }
}

// softmax (log = 0) or log_softmax (log = 1) over rows of length c.
template <class T, int log_softmax> __device__ void softmax_impl(const T* x, T* y, i64 rows, i64 c) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * c;
    T* yr = y + row * c;
    A max = lowest_value<A>();
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) max = MaxOp()(max, ld(xr[i]));
    max = block_reduce(max, MaxOp(), scratch);
    A sum = A(0);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) sum += m_exp(ld(xr[i]) - max);
    sum = block_reduce(sum, SumOp(), scratch);
    A log_sum = m_log(sum);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A shifted = ld(xr[i]) - max;
      yr[i] = st<T>(log_softmax ? shifted - log_sum : m_exp(shifted) / sum);
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

// layer_norm (beta != null) or rms_norm (beta == null): y = (x - mean) * rstd * gamma (+ beta).
template <class T> __device__ void norm_impl(const T* x, const T* gamma, const T* beta, T* y, i64 rows, i64 c, double eps) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * c;
    A mean, rstd;
    row_moments(xr, c, A(eps), beta == nullptr, scratch, mean, rstd);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A v = (ld(xr[i]) - mean) * rstd * ld(gamma[i]);
      if (beta) v += ld(beta[i]);
      y[row * c + i] = st<T>(v);
    }
  }
}

// Backward of layer_norm / rms_norm, part 1 (one block per row):
//   layer_norm: xhat = (x - mean) rstd, g = dy gamma,
//               dx = rstd (g - mean(g) - xhat mean(g xhat))
//   rms_norm:   xhat = x rstd,          dx = rstd (g - xhat mean(g xhat))
// and the row's mean and rstd into stats[2 * row] for part 2.
template <class T> __device__ void norm_grad_rows_impl(const T* x, const T* gamma, const T* dy, T* dx, double* stats, i64 rows,
                                                       i64 c, double eps, int rms) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * c;
    const T* dyr = dy + row * c;
    A mean, rstd;
    row_moments(xr, c, A(eps), rms != 0, scratch, mean, rstd);
    A sum_g = A(0), sum_gx = A(0);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A g = ld(dyr[i]) * ld(gamma[i]);
      sum_g += g;
      sum_gx += g * (ld(xr[i]) - mean) * rstd;
    }
    A mean_g = rms ? A(0) : block_reduce(sum_g, SumOp(), scratch) / A(c);
    A mean_gx = block_reduce(sum_gx, SumOp(), scratch) / A(c);
    for (i64 i = threadIdx.x; i < c; i += blockDim.x) {
      A xhat = (ld(xr[i]) - mean) * rstd;
      A g = ld(dyr[i]) * ld(gamma[i]);
      dx[row * c + i] = st<T>(rstd * (g - mean_g - xhat * mean_gx));
    }
    if (threadIdx.x == 0) {
      stats[2 * row] = (double)mean;
      stats[2 * row + 1] = (double)rstd;
    }
  }
}

// Part 2 (one thread per column, rows in order): dgamma = sum dy xhat, dbeta = sum dy.
template <class T> __device__ void norm_grad_params_impl(const T* x, const T* dy, const double* stats, T* dgamma, T* dbeta,
                                                         i64 rows, i64 c) {
  typedef typename acc_of<T>::type A;
  MOEJIT_FOR_EACH(i, c) {
    A sum_gamma = A(0), sum_beta = A(0);
    for (i64 row = 0; row < rows; ++row) {
      A d = ld(dy[row * c + i]);
      sum_gamma += d * (ld(x[row * c + i]) - A(stats[2 * row])) * A(stats[2 * row + 1]);
      sum_beta += d;
    }
    dgamma[i] = st<T>(sum_gamma);
    if (dbeta) dbeta[i] = st<T>(sum_beta);
  }
}
)MOEJIT_CUDA"
