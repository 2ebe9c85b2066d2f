// Kernel library, part 7: the MoE ops, following runtime/cpu/cpu_moe.cpp
// (the specification) rule for rule: gate (top-k by score, ties to the lower
// expert, NaN ranks last), its backward, dispatch (histogram, prefix sum
// with capacity and block padding, stable scatter in slot order), permute,
// combine and the auxiliary losses. Index tensors are i32.
R"MOEJIT_CUDA(
// a ranks before b: higher, and NaN ranks below every number.
__device__ __forceinline__ bool ranks_before(float a, float b) { return a > b || (b != b && a == a); }
__device__ __forceinline__ float gate_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The selection key of expert e: the score (score first) or the logit, plus the bias.
template <class T> __device__ __forceinline__ float gate_key(const T* row, const T* bias, int e, int softmax_score, int score_first,
                                                           float max, float sum) {
  float x = ld(row[e]);
  float key = !score_first ? x : (softmax_score ? expf(x - max) / sum : gate_sigmoid(x));
  if (bias) key += ld(bias[e]);
  return key;
}

// Raw weight of choice k (before normalization); chosen = experts[t, 0..K).
template <class T> __device__ __forceinline__ float gate_raw(const T* row, const int* chosen, int k, int K, int softmax_score,
                                                           int score_first, float max, float sum) {
  float x = ld(row[chosen[k]]);
  if (!softmax_score) return gate_sigmoid(x);
  if (score_first) return expf(x - max) / sum;
  float top_max = lowest_value<float>();
  for (int j = 0; j < K; ++j) top_max = MaxOp()(top_max, (float)ld(row[chosen[j]]));
  float top_sum = 0.0f;
  for (int j = 0; j < K; ++j) top_sum += expf(ld(row[chosen[j]]) - top_max);
  return expf(x - top_max) / top_sum;
}

template <class T> __device__ __forceinline__ void row_max_sum(const T* row, int E, float& max, float& sum) {
  max = lowest_value<float>();
  for (int e = 0; e < E; ++e) max = MaxOp()(max, (float)ld(row[e]));
  sum = 0.0f;
  for (int e = 0; e < E; ++e) sum += expf(ld(row[e]) - max);
}

// moe.gate: one thread per token. logits [T, E], bias [E] or null -> weights [T, K], experts [T, K].
template <class T> __device__ void gate_impl(const T* logits, const T* bias, T* weights, int* experts, i64 tokens, int E, int K,
                                             int softmax_score, int score_first, int normalize) {
  MOEJIT_FOR_EACH(t, tokens) {
    const T* row = logits + t * E;
    int* chosen = experts + t * K;
    float max, sum;
    row_max_sum(row, E, max, sum);
    for (int k = 0; k < K; ++k) {
      int best = -1;
      float best_key = 0.0f;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int j = 0; j < k; ++j) taken |= chosen[j] == e;
        if (taken) continue;
        float key = gate_key(row, bias, e, softmax_score, score_first, max, sum);
        if (best < 0 || ranks_before(key, best_key)) {
          best = e;
          best_key = key;
        }
      }
      chosen[k] = best;
    }
    float total = 0.0f;
    for (int k = 0; k < K; ++k) total += gate_raw(row, chosen, k, K, softmax_score, score_first, max, sum);
    for (int k = 0; k < K; ++k) {
      float w = gate_raw(row, chosen, k, K, softmax_score, score_first, max, sum);
      weights[t * K + k] = st<T>(normalize ? w / total : w);
    }
  }
}

// moe.gate_grad: one thread per token; the chosen experts are held fixed.
template <class T> __device__ void gate_grad_impl(const T* logits, const int* experts, const T* dweights, T* dlogits, i64 tokens,
                                                  int E, int K, int softmax_score, int score_first, int normalize) {
  MOEJIT_FOR_EACH(t, tokens) {
    const T* row = logits + t * E;
    const int* chosen = experts + t * K;
    const T* dw = dweights + t * K;
    T* dl = dlogits + t * E;
    float max, sum;
    row_max_sum(row, E, max, sum);
    // Through the renormalization w_k = r_k / S: draw_k = (dw_k - sum_j dw_j r_j / S) / S.
    float total = 0.0f, dot = 0.0f;
    for (int k = 0; k < K; ++k) {
      float r = gate_raw(row, chosen, k, K, softmax_score, score_first, max, sum);
      total += r;
      dot += ld(dw[k]) * r;
    }
    dot /= total;
#define MOEJIT_DRAW(k) (normalize ? (ld(dw[k]) - dot) / total : (float)ld(dw[k]))
    if (!softmax_score) {
      for (int e = 0; e < E; ++e) {
        float g = 0.0f;
        for (int k = 0; k < K; ++k)
          if (chosen[k] == e) {
            float s = gate_sigmoid(ld(row[e]));
            g += MOEJIT_DRAW(k) * s * (1.0f - s);
          }
        dl[e] = st<T>(g);
      }
    } else if (score_first) {  // softmax over all E, then picked
      float pd = 0.0f;
      for (int k = 0; k < K; ++k) pd += expf(ld(row[chosen[k]]) - max) / sum * MOEJIT_DRAW(k);
      for (int e = 0; e < E; ++e) {
        float dprob = 0.0f;
        for (int k = 0; k < K; ++k)
          if (chosen[k] == e) dprob += MOEJIT_DRAW(k);
        float prob = expf(ld(row[e]) - max) / sum;
        dl[e] = st<T>(prob * (dprob - pd));
      }
    } else {  // softmax over the K chosen logits
      float rd = 0.0f;
      for (int k = 0; k < K; ++k) rd += gate_raw(row, chosen, k, K, 1, 0, max, sum) * MOEJIT_DRAW(k);
      for (int e = 0; e < E; ++e) {
        float g = 0.0f;
        for (int k = 0; k < K; ++k)
          if (chosen[k] == e) g += gate_raw(row, chosen, k, K, 1, 0, max, sum) * (MOEJIT_DRAW(k) - rd);
        dl[e] = st<T>(g);
      }
    }
#undef MOEJIT_DRAW
  }
}

// moe.dispatch, one block (correct for any number of slots; E <= 4096):
//   1. histogram of the expert ids (shared-memory counts),
//   2. offsets: prefix sum of min(count, capacity) padded to `block`,
//   3. slots = -1, positions = -1,
//   4. stable scatter: the thread of expert e walks the slots in order
//      (staged through shared memory in chunks) and keeps the first `capacity`.
#define MOEJIT_DISPATCH_CHUNK 2048
__device__ void dispatch_impl(const int* experts, int* slots, int* offsets, int* positions, int* counts, i64 num_slots, int E,
                              i64 rows, i64 capacity, i64 block) {
  __shared__ int count_of[4096];
  __shared__ int offset_of[4097];
  __shared__ int chunk[MOEJIT_DISPATCH_CHUNK];
  for (int e = threadIdx.x; e < E; e += blockDim.x) count_of[e] = 0;
  __syncthreads();
  for (i64 s = threadIdx.x; s < num_slots; s += blockDim.x) {
    int e = experts[s];
    if (e >= 0 && e < E) atomicAdd(&count_of[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    i64 offset = 0;
    for (int e = 0; e < E; ++e) {
      offset_of[e] = (int)offset;
      i64 kept = count_of[e] < capacity ? count_of[e] : capacity;
      offset += (kept + block - 1) / block * block;
    }
    offset_of[E] = (int)offset;
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) {
    offsets[e] = offset_of[e];
    if (e < E) counts[e] = count_of[e];
  }
  for (i64 i = threadIdx.x; i < rows; i += blockDim.x) slots[i] = -1;
  for (i64 s = threadIdx.x; s < num_slots; s += blockDim.x) positions[s] = -1;
  __syncthreads();
  // Expert e's thread: filled = how many of its slots it has placed so far.
  int filled[4];  // experts threadIdx.x + j * blockDim.x, j < 4 (E <= 4 * blockDim.x)
  for (int j = 0; j < 4; ++j) filled[j] = 0;
  for (i64 base = 0; base < num_slots; base += MOEJIT_DISPATCH_CHUNK) {
    i64 size = num_slots - base < MOEJIT_DISPATCH_CHUNK ? num_slots - base : MOEJIT_DISPATCH_CHUNK;
    for (i64 i = threadIdx.x; i < size; i += blockDim.x) chunk[i] = experts[base + i];
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int e = threadIdx.x + j * blockDim.x;
      if (e >= E) continue;
      for (i64 i = 0; i < size; ++i) {
        if (chunk[i] != e) continue;
        if (filled[j] < capacity) {
          int row = offset_of[e] + filled[j];
          slots[row] = (int)(base + i);
          positions[base + i] = row;
        }
        ++filled[j];
      }
    }
    __syncthreads();
  }
}

// moe.permute: xs[i] = x[slots[i] / top_k], zero where slots[i] < 0. x [T, D] -> xs [N, D].
template <class T> __device__ void permute_impl(const T* x, const int* slots, T* xs, i64 rows, i64 D, int top_k) {
  MOEJIT_FOR_EACH(i, rows * D) {
    int s = slots[i / D];
    xs[i] = s >= 0 ? x[(i64)(s / top_k) * D + i % D] : st<T>(typename acc_of<T>::type(0));
  }
}

// moe.combine (weights given) and moe.permute_grad (weights null = all ones):
// out[t] = sum_k w[t,k] ys[positions[t,k]], dropped slots add nothing. -> [T, D].
template <class T> __device__ void combine_impl(const T* ys, const T* weights, const int* positions, T* out, i64 tokens, int K, i64 D) {
  typedef typename acc_of<T>::type A;
  MOEJIT_FOR_EACH(i, tokens * D) {
    i64 t = i / D, d = i % D;
    A acc = A(0);
    for (int k = 0; k < K; ++k) {
      int row = positions[t * K + k];
      if (row < 0) continue;
      A w = weights ? ld(weights[t * K + k]) : A(1);
      acc += w * ld(ys[(i64)row * D + d]);
    }
    out[i] = st<T>(acc);
  }
}

// moe.combine_grad: dys[positions[t,k]] = weights[t,k] dout[t] (dys zeroed
// before; each row belongs to at most one slot), and one block per slot:
// dweights[t,k] = dout[t] . ys[positions[t,k]] (0 when dropped).
template <class T> __device__ void combine_grad_rows_impl(const T* weights, const int* positions, const T* dout, T* dys, i64 tokens,
                                                          int K, i64 D) {
  MOEJIT_FOR_EACH(i, tokens * K * D) {
    i64 slot = i / D, d = i % D;
    int row = positions[slot];
    if (row >= 0) dys[(i64)row * D + d] = st<T>(ld(weights[slot]) * ld(dout[(slot / K) * D + d]));
  }
}
template <class T> __device__ void combine_grad_weights_impl(const T* ys, const int* positions, const T* dout, T* dweights, i64 slots,
                                                             int K, i64 D) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 slot = blockIdx.x; slot < slots; slot += gridDim.x) {
    int row = positions[slot];
    A acc = A(0);
    if (row >= 0)
      for (i64 d = threadIdx.x; d < D; d += blockDim.x) acc += ld(dout[(slot / K) * D + d]) * ld(ys[(i64)row * D + d]);
    acc = block_reduce(acc, SumOp(), scratch);
    if (threadIdx.x == 0) dweights[slot] = st<T>(acc);
  }
}

// Per-expert statistics for the auxiliary losses (one block, thread per expert,
// tokens summed in order): stats[e] = share of the T*K slots routed to e
// (when experts != null), stats[E + e] = mean over tokens of probs[:, e].
template <class T> __device__ void expert_stats_impl(const T* probs, const int* experts, double* stats, i64 tokens, int E, int K) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    double mean = 0.0;
    for (i64 t = 0; t < tokens; ++t) mean += (double)ld(probs[t * E + e]);
    stats[E + e] = mean / (double)tokens;
    if (experts) {
      i64 count = 0;
      for (i64 s = 0; s < tokens * K; ++s) count += experts[s] == e;
      stats[e] = (double)count / (double)(tokens * K);
    }
  }
}

// moe.load_balance_loss (kind 0): coeff * E * sum_e f_e P_e;
// moe.entropy_reg (kind 1): coeff * sum_e p_e log max(p_e, 1e-20). One thread.
template <class T> __device__ void expert_loss_impl(const double* stats, T* out, int E, double coeff, int kind) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double sum = 0.0;
  for (int e = 0; e < E; ++e) {
    double p = stats[E + e];
    sum += kind == 0 ? stats[e] * p : p * log(p > 1e-20 ? p : 1e-20);
  }
  out[0] = from_double<T>(kind == 0 ? coeff * (double)E * sum : coeff * sum);
}

// Their gradients: dprobs[t, e] = dloss * coeff * E * f_e / T (kind 0), or
// dloss * coeff * (log max(p_e, 1e-20) + 1) / T (kind 1).
template <class T> __device__ void expert_loss_grad_impl(const double* stats, const T* dloss, T* dprobs, i64 tokens, int E,
                                                         double coeff, int kind) {
  double scale = (double)ld(dloss[0]) * coeff / (double)tokens;
  MOEJIT_FOR_EACH(i, tokens * E) {
    int e = (int)(i % E);
    double p = stats[E + e];
    double g = kind == 0 ? scale * (double)E * stats[e] : scale * (log(p > 1e-20 ? p : 1e-20) + 1.0);
    dprobs[i] = from_double<T>(g);
  }
}

// moe.z_loss, pass 1: row_values[t] = logsumexp(logits[t])^2 (then mean_of_values).
template <class T> __device__ void z_loss_rows_impl(const T* logits, double* row_values, i64 tokens, i64 E) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
    A lse = row_logsumexp<T, A>(logits + t * E, E, scratch);
    if (threadIdx.x == 0) row_values[t] = (double)lse * (double)lse;
  }
}

// moe.z_loss_grad: dlogits[t, e] = dloss * coeff * 2 * lse_t * softmax(logits[t])_e / T.
template <class T> __device__ void z_loss_grad_impl(const T* logits, const T* dloss, T* dlogits, i64 tokens, i64 E, double coeff) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  A scale = A((double)ld(dloss[0]) * coeff * 2.0 / (double)tokens);
  for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
    const T* row = logits + t * E;
    A lse = row_logsumexp<T, A>(row, E, scratch);
    for (i64 e = threadIdx.x; e < E; e += blockDim.x) dlogits[t * E + e] = st<T>(scale * lse * m_exp(ld(row[e]) - lse));
  }
}
)MOEJIT_CUDA"
