// Kernel library, part 6: model-level ops. Causal attention (forward, and a
// backward in two passes: per query row for dq, per key row for dk and dv),
// cross entropy and its gradient, and the shared "mean of per-row values"
// finisher of the scalar losses. One block per row; scores live in dynamic
// shared memory (T values per row), so T is bounded by shared memory.
R"MOEJIT_CUDA(
extern __shared__ double moejit_dynamic_smem[];

// mj.attention: q, k, v, out [BH, T, Dh]; out[t] = softmax_{s<=t}(q_t . k_s * scale) v.
template <class T> __device__ void attention_impl(const T* q, const T* k, const T* v, T* out, i64 BH, i64 Tn, i64 Dh, float scale) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  A* scores = (A*)moejit_dynamic_smem;
  A* qrow = scores + Tn;
  for (i64 row = blockIdx.x; row < BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, t = row % Tn;
    const T* kb = k + bh * Tn * Dh;
    const T* vb = v + bh * Tn * Dh;
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) qrow[d] = ld(q[row * Dh + d]);
    __syncthreads();
    A max = lowest_value<A>();
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      A dot = A(0);
      for (i64 d = 0; d < Dh; ++d) dot += qrow[d] * ld(kb[s * Dh + d]);
      dot *= A(scale);
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
      for (i64 s = 0; s <= t; ++s) acc += scores[s] * ld(vb[s * Dh + d]);
      out[row * Dh + d] = st<T>(acc / sum);
    }
    __syncthreads();
  }
}

// mj.attention_grad, pass 1 (one block per query row t):
//   P = softmax row, dP_s = dout_t . v_s, D_t = sum_s P_s dP_s,
//   dS_s = P_s (dP_s - D_t), dq_t = scale sum_s dS_s k_s;
// stats[2 row] = logsumexp of the scaled scores, stats[2 row + 1] = D_t.
template <class T> __device__ void attention_grad_q_impl(const T* q, const T* k, const T* v, const T* dout, T* dq, double* stats,
                                                         i64 BH, i64 Tn, i64 Dh, float scale) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  A* p = (A*)moejit_dynamic_smem;
  A* dp = p + Tn;
  A* qrow = dp + Tn;
  A* dorow = qrow + Dh;
  for (i64 row = blockIdx.x; row < BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, t = row % Tn;
    const T* kb = k + bh * Tn * Dh;
    const T* vb = v + bh * Tn * Dh;
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      qrow[d] = ld(q[row * Dh + d]);
      dorow[d] = ld(dout[row * Dh + d]);
    }
    __syncthreads();
    A max = lowest_value<A>();
    for (i64 s = threadIdx.x; s <= t; s += blockDim.x) {
      A dot = A(0), dpv = A(0);
      for (i64 d = 0; d < Dh; ++d) {
        dot += qrow[d] * ld(kb[s * Dh + d]);
        dpv += dorow[d] * ld(vb[s * Dh + d]);
      }
      p[s] = dot * A(scale);
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
      for (i64 s = 0; s <= t; ++s) acc += p[s] * ld(kb[s * Dh + d]);
      dq[row * Dh + d] = st<T>(acc * A(scale));
    }
    if (threadIdx.x == 0) {
      stats[2 * row] = (double)(max + m_log(sum));
      stats[2 * row + 1] = (double)delta;
    }
    __syncthreads();
  }
}

// Pass 2 (one block per key row s): for t >= s, P_ts = exp(q_t . k_s scale - lse_t),
// dS_ts = P_ts (dout_t . v_s - D_t); dv_s = sum_t P_ts dout_t, dk_s = scale sum_t dS_ts q_t.
template <class T> __device__ void attention_grad_kv_impl(const T* q, const T* k, const T* v, const T* dout, const double* stats,
                                                          T* dk, T* dv, i64 BH, i64 Tn, i64 Dh, float scale) {
  typedef typename acc_of<T>::type A;
  A* p = (A*)moejit_dynamic_smem;
  A* ds = p + Tn;
  A* krow = ds + Tn;
  A* vrow = krow + Dh;
  for (i64 row = blockIdx.x; row < BH * Tn; row += gridDim.x) {
    i64 bh = row / Tn, s = row % Tn;
    const T* qb = q + bh * Tn * Dh;
    const T* db = dout + bh * Tn * Dh;
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      krow[d] = ld(k[row * Dh + d]);
      vrow[d] = ld(v[row * Dh + d]);
    }
    __syncthreads();
    for (i64 t = s + threadIdx.x; t < Tn; t += blockDim.x) {
      A dot = A(0), dpv = A(0);
      for (i64 d = 0; d < Dh; ++d) {
        dot += ld(qb[t * Dh + d]) * krow[d];
        dpv += ld(db[t * Dh + d]) * vrow[d];
      }
      i64 qrow_index = bh * Tn + t;
      A pv = m_exp(dot * A(scale) - A(stats[2 * qrow_index]));
      p[t - s] = pv;
      ds[t - s] = pv * (dpv - A(stats[2 * qrow_index + 1]));
    }
    __syncthreads();
    for (i64 d = threadIdx.x; d < Dh; d += blockDim.x) {
      A acc_v = A(0), acc_k = A(0);
      for (i64 t = s; t < Tn; ++t) {
        acc_v += p[t - s] * ld(db[t * Dh + d]);
        acc_k += ds[t - s] * ld(qb[t * Dh + d]);
      }
      dv[row * Dh + d] = st<T>(acc_v);
      dk[row * Dh + d] = st<T>(acc_k * A(scale));
    }
    __syncthreads();
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

// mj.cross_entropy, pass 1: row_loss[n] = logsumexp(logits[n]) - logits[n, targets[n]]
// (NaN for a target outside 0..V-1; the CPU backend reports it as an error).
template <class T> __device__ void cross_entropy_rows_impl(const T* logits, const int* targets, double* row_loss, i64 rows, i64 V) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = logits + row * V;
    A lse = row_logsumexp<T, A>(xr, V, scratch);
    if (threadIdx.x == 0) {
      int target = targets[row];
      row_loss[row] = (target >= 0 && target < V) ? (double)(lse - ld(xr[target])) : __longlong_as_double(0x7ff8000000000000ll);
    }
  }
}

// out = coeff * (sum of values[0..n)) / n, one block, summed in a fixed order.
template <class T> __device__ void mean_of_values_impl(const double* values, i64 n, double coeff, T* out) {
  __shared__ double scratch[33];
  double sum = 0.0;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) sum += values[i];
  sum = block_reduce(sum, SumOp(), scratch);
  if (threadIdx.x == 0) out[0] = from_double<T>(coeff * sum / (double)n);
}

// mj.cross_entropy_grad: dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dloss / rows.
template <class T> __device__ void cross_entropy_grad_impl(const T* logits, const int* targets, const T* dloss, T* dlogits,
                                                           i64 rows, i64 V) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  A scale = ld(dloss[0]) / A(rows);
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = logits + row * V;
    A lse = row_logsumexp<T, A>(xr, V, scratch);
    int target = targets[row];
    for (i64 i = threadIdx.x; i < V; i += blockDim.x) {
      A prob = m_exp(ld(xr[i]) - lse);
      dlogits[row * V + i] = st<T>((prob - (i == target ? A(1) : A(0))) * scale);
    }
  }
}
)MOEJIT_CUDA"
