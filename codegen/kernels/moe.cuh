// Kernel family "moe": the MoE ops, following runtime/cpu/cpu_moe.cpp
// (the specification) rule for rule: gate (top-k by score, ties to the lower
// expert, NaN ranks last), its backward, dispatch (histogram, prefix sum
// with capacity and block padding, stable scatter in slot order), permute,
// combine and the auxiliary losses. Index tensors are i32.
// Routing is built for latency: the gate and its backward give each token
// four lanes (f32 logits, up to 256 experts) or a warp, and dispatch is multi-block launches (per-tile histograms, one scan,
// a stable per-tile scatter; the scan and scatter one launch at few tiles)
// instead of one serial block. moe.route fuses the router product, the gate
// (a thread per token up to 32 experts) and the per-tile histograms into one
// kernel (route_kernel), then runs dispatch's scan and scatter.
// The argument structs (host and device) come first; each kernel's comment
// below says what it computes.
#pragma once
#include "codegen/kernels/common.cuh"
#include "codegen/kernels/reduce.cuh"

namespace mj {

template <class T> struct GateArgs {
  const T* logits;
  const T* bias;
  T* weights;
  int* experts;
  i64 tokens;
  int E;
  int K;
  int softmax_score;
  int score_first;
  int normalize;
};

template <class T> struct GateGradArgs {
  const T* logits;
  const int* experts;
  const T* dweights;
  T* dlogits;
  i64 tokens;
  int E;
  int K;
  int softmax_score;
  int score_first;
  int normalize;
};

// moe.route's fused router (route_kernel below): logits, gate and the
// per-tile expert counts of dispatch in one launch.
template <class T> struct RouteArgs {
  const T* x;     // [tokens, D]
  const T* w;     // [D, E]
  const T* bias;  // [E] or null
  T* logits;      // [tokens, E]
  T* weights;     // [tokens, K]
  int* experts;   // [tokens, K]
  int* ranks;     // [E, tiles]: the count of each block's slots per expert
  int* slots;     // [rows]: all set to -1 (the scatter fills the kept rows)
  i64 tokens, D, rows, tiles;
  int E, K, softmax_score, score_first, normalize;
};

// route_kernel's configuration (its template arguments but the type) and
// what follows from it, for the host (the emitter, the tuner's candidates)
// and the kernel alike: tokens per block, the staged row stride, and the
// static shared memory, which must stay within 48 KiB.
#if MOEJIT_DEVICE_CODE
#define MOEJIT_ROUTE_HD __host__ __device__
#else
#define MOEJIT_ROUTE_HD
#endif
// dispatch_count_kernel and dispatch_scatter_kernel keep a warp's counts in
// shared memory up to this many experts (8 warps x E ints within 48 KiB).
constexpr int kDispatchSharedExperts = 1536;

// gate_rows_kernel and gate_grad_rows_kernel (below): 256 threads a block,
// kGateRowsLanes a token; a staged row's stride in floats, 16 mod 32 (their
// comment).
constexpr int kGateRowsThreads = 256;
// Four: eight measured slower at E 128, K 8 on the H200 (gate 25.9 against
// 23.3 us, gate_grad 22.5 against 19.5; their longer shuffle rounds cost
// more than the shorter walks save: docs/perf.md).
constexpr int kGateRowsLanes = 4;
MOEJIT_ROUTE_HD constexpr int gate_rows_tokens(int lanes) { return kGateRowsThreads / lanes; }
MOEJIT_ROUTE_HD constexpr int gate_rows_stride(int E) { return E + (48 - E % 32) % 32; }

struct RouteLayout {
  int ep, tn, tm, threads, bk, stages, elem;  // elem: sizeof(T)
  MOEJIT_ROUTE_HD constexpr int te() const { return ep / tn; }
  MOEJIT_ROUTE_HD constexpr int block_tokens() const { return threads / te() * tm; }
  MOEJIT_ROUTE_HD constexpr int x_stride() const { return bk + 16 / elem; }  // elements per staged row
  MOEJIT_ROUTE_HD constexpr int ring_bytes() const { return stages * block_tokens() * x_stride() * elem; }
  MOEJIT_ROUTE_HD constexpr int w_bytes() const { return 2 * bk * ep * 4; }
  MOEJIT_ROUTE_HD constexpr int tile_bytes() const { return block_tokens() * (ep + 1) * 4; }
  // The ring and W's two buffers while multiplying, then the logits tile in
  // the same bytes; and the histogram.
  MOEJIT_ROUTE_HD constexpr int product_bytes() const { return ring_bytes() + w_bytes(); }
  MOEJIT_ROUTE_HD constexpr int smem_bytes() const {
    return (product_bytes() > tile_bytes() ? product_bytes() : tile_bytes()) + ep * 4;
  }
};

struct DispatchCountArgs {
  const int* experts;
  int* ranks;
  int* slots;
  i64 num_slots;
  int E;
  i64 rows;
  i64 tile;
  i64 tiles;
};

struct DispatchScanArgs {
  int* ranks;
  int* offsets;
  int* counts;
  int E;
  i64 tiles;
  i64 capacity;
  i64 block;
};

struct DispatchScatterArgs {
  const int* experts;
  int* ranks;
  const int* offsets;
  int* slots;
  int* positions;
  i64 num_slots;
  int E;
  i64 capacity;
  i64 tile;
  i64 tiles;
};

// dispatch_scan and dispatch_scatter in one launch (dispatch_scan_scatter_kernel).
struct DispatchScanScatterArgs {
  const int* experts;
  const int* ranks;  // [E, tiles]: per-tile counts (read only)
  int* offsets;
  int* counts;
  int* slots;
  int* positions;
  i64 num_slots;
  int E;
  i64 capacity;
  i64 block;
  i64 tile;
  i64 tiles;
};

template <class T> struct PermuteArgs {
  const T* x;
  const int* slots;
  T* xs;
  i64 rows;
  i64 D;
  int top_k;
};

template <class T> struct CombineArgs {
  const T* ys;
  const T* weights;
  const int* positions;
  const T* addend;  // null: none; else out[t] = addend[t] + (the sum rounded to T), as mj.add after the op
  T* out;
  i64 tokens;
  int K;
  i64 D;
};

template <class T> struct CombineGradArgs {
  const T* ys;
  const T* weights;
  const int* positions;
  const T* dout;
  T* dys;
  T* dweights;
  i64 slots;
  int K;
  i64 D;
};

// The statistics in two launches, deterministic: part 1 (one block per
// chunk of `chunk` tokens) writes each expert's sum of probs and count of
// slots over the chunk to partials[(c * E + e) * 2 + {0, 1}]; part 2 (one
// block per expert) adds the chunks' partials in a fixed order.
template <class T> struct ExpertStatsArgs {
  const T* probs;
  const int* experts;
  double* stats;
  double* partials;
  i64 tokens, chunk, chunks;
  int E;
  int K;
};

template <class T> struct ExpertLossArgs {
  const double* stats;
  T* out;
  int E;
  double coeff;
  int kind;
};

template <class T> struct ExpertLossGradArgs {
  const double* stats;
  const T* dloss;
  T* dprobs;
  i64 tokens;
  int E;
  double coeff;
  int kind;
};

template <class T> struct ZLossRowsArgs {
  const T* logits;
  double* row_values;
  i64 tokens;
  i64 E;
};

template <class T> struct ZLossGradArgs {
  const T* logits;
  const T* dloss;
  T* dlogits;
  i64 tokens;
  i64 E;
  double coeff;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// a ranks before b: higher, and NaN ranks below every number.
__device__ __forceinline__ bool ranks_before(float a, float b) { return a > b || (b != b && a == a); }
__device__ __forceinline__ float gate_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The selection key of expert e with logit x: the score (score first) or
// the logit, plus the bias.
template <class T> __device__ __forceinline__ float gate_key_of(float x, const T* bias, int e, int softmax_score, int score_first, float max,
                                                              float sum) {
  float key = !score_first ? x : (softmax_score ? expf(x - max) / sum : gate_sigmoid(x));
  if (bias) key += ld(bias[e]);
  return key;
}
template <class R, class T> __device__ __forceinline__ float gate_key(const R* row, const T* bias, int e, int softmax_score, int score_first,
                                                                    float max, float sum) {
  return gate_key_of((float)ld(row[e]), bias, e, softmax_score, score_first, max, sum);
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

// ---- gate: one warp per token ----
// Lane l holds experts l, l + 32, ... of its token. The row max and softmax
// sum are warp reductions (f32). Top-k is K rounds of a warp arg-best over
// (key, expert) pairs, ordered by key (ranks_before) then by the lower
// expert; round k keeps only the pairs that rank after round k-1's pick,
// which excludes exactly the experts already taken (the order is strict).

// (key a, expert ea) ranks before (key b, expert eb); an expert < 0 is "none".
__device__ __forceinline__ bool pick_before(float a, int ea, float b, int eb) {
  if (eb < 0) return ea >= 0;
  if (ea < 0) return false;
  return ranks_before(a, b) || (!ranks_before(b, a) && ea < eb);
}

template <class T> __device__ __forceinline__ void warp_row_max_sum(const T* row, int E, int lane, float& max, float& sum) {
  max = lowest_value<float>();
  for (int e = lane; e < E; e += 32) max = MaxOp()(max, (float)ld(row[e]));
  max = warp_reduce(max, MaxOp());
  sum = 0.0f;
  for (int e = lane; e < E; e += 32) sum += expf(ld(row[e]) - max);
  sum = warp_reduce(sum, SumOp());
}

// Grid-stride loop of whole warps over tokens: every lane of a warp has the same t.
#define MOEJIT_FOR_EACH_WARP(t, n)                                                               \
  for (i64 t = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; t < (n); t += ((i64)gridDim.x * blockDim.x) >> 5)

// The rank order of gate keys as unsigned integers, so a warp finds its
// best key in one instruction (redux.sync): a larger value ranks before.
// Numbers keep their order (-0 is +0: they tie, as a > b says), NaN ranks
// below every number, and 0 is "no candidate".
__device__ __forceinline__ unsigned gate_rank_bits(float key, bool valid) {
  if (!valid) return 0u;
  if (key != key) return 1u;
  const unsigned bits = __float_as_uint(key == 0.0f ? 0.0f : key);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // never 0 or 1 for a number
}
// The warp's maximum (MAX) or minimum of v: one redux.sync from sm_80 on.
template <bool MAX> __device__ __forceinline__ unsigned warp_extreme_u32(unsigned v) {
#if __CUDA_ARCH__ >= 800
  return MAX ? __reduce_max_sync(0xffffffffu, v) : __reduce_min_sync(0xffffffffu, v);
#else
  for (int d = 16; d > 0; d >>= 1) {
    const unsigned other = __shfl_xor_sync(0xffffffffu, v, d);
    v = MAX ? max(v, other) : min(v, other);
  }
  return v;
#endif
}

// gate_token for E <= 32 * KEYS and K <= 32, everything in registers: each
// lane sorts its KEYS candidates (rank order; experts lane, lane + 32, ...
// so a tie keeps the lower expert first); a round is the warp's maximum of
// the lanes' first candidates, then the lowest expert among those that tie
// with it, whose lane (expert % 32) drops it and passes its logit on; lane k
// keeps pick k. The picks and the weights are gate_token's, bit for bit
// (the same keys and order; the same formulas on the same logits, the warp
// reductions over the same per-lane terms).
template <int KEYS, class R, class T>
__device__ __forceinline__ void gate_token_registers(const R* row, const T* bias, int E, int K, int softmax_score, int score_first,
                                                     int normalize, int* chosen, T* weights, int* hist) {
  const int lane = threadIdx.x & 31;
  float max, sum;
  warp_row_max_sum(row, E, lane, max, sum);
  unsigned rank[KEYS];
  int expert[KEYS];
  float logit[KEYS];
#pragma unroll
  for (int j = 0; j < KEYS; ++j) {
    const int e = lane + 32 * j;
    const bool valid = e < E;
    logit[j] = valid ? (float)ld(row[e]) : 0.0f;
    rank[j] = gate_rank_bits(valid ? gate_key_of(logit[j], bias, e, softmax_score, score_first, max, sum) : 0.0f, valid);
    expert[j] = e;
  }
#pragma unroll
  for (int i = 1; i < KEYS; ++i)  // insertion sort, strictly greater moves up: stable
#pragma unroll
    for (int j = i; j > 0; --j)
      if (rank[j] > rank[j - 1]) {
        const unsigned r = rank[j]; rank[j] = rank[j - 1]; rank[j - 1] = r;
        const int e = expert[j]; expert[j] = expert[j - 1]; expert[j - 1] = e;
        const float x = logit[j]; logit[j] = logit[j - 1]; logit[j - 1] = x;
      }
  int mine = -1;  // lane k: pick k
  float mine_logit = 0.0f;
  for (int k = 0; k < K; ++k) {
    const unsigned best = warp_extreme_u32<true>(rank[0]);
    const unsigned picked = best == 0u ? 0xffffffffu : warp_extreme_u32<false>(rank[0] == best ? (unsigned)expert[0] : 0xffffffffu);
    const int pick = picked == 0xffffffffu ? -1 : (int)picked;
    const int owner = pick < 0 ? 0 : pick & 31;
    const float x = __shfl_sync(0xffffffffu, logit[0], owner);
    if (pick >= 0 && lane == owner) {  // its first candidate is taken: the next one moves up
#pragma unroll
      for (int j = 0; j + 1 < KEYS; ++j) rank[j] = rank[j + 1], expert[j] = expert[j + 1], logit[j] = logit[j + 1];
      rank[KEYS - 1] = 0u;
    }
    if (lane == k) mine = pick, mine_logit = x;
  }
  const bool holds = lane < K;
  if (holds) {
    chosen[lane] = mine;
    if (hist && mine >= 0) atomicAdd(&hist[mine], 1);
  }
  float top_max = lowest_value<float>(), top_sum = 0.0f;
  if (softmax_score && !score_first) {  // softmax over the K chosen logits
    if (holds) top_max = MaxOp()(top_max, mine_logit);
    top_max = warp_reduce(top_max, MaxOp());
    if (holds) top_sum += expf(mine_logit - top_max);
    top_sum = warp_reduce(top_sum, SumOp());
  }
  float raw = 0.0f;
  if (holds) raw = !softmax_score ? gate_sigmoid(mine_logit) : score_first ? expf(mine_logit - max) / sum : expf(mine_logit - top_max) / top_sum;
  float total = 0.0f;
  if (holds) total += raw;
  total = warp_reduce(total, SumOp());
  if (holds) weights[lane] = st<T>(normalize ? raw / total : raw);
  __syncwarp();
}

// Gates one token with a whole warp (every lane passes the same row, the
// token's E logits): experts chosen[0..K) in rank order and their weights;
// with `hist` (shared memory) each pick adds 1 to its expert's count.
// KEYS > 0: the keys are computed once into KEYS registers per lane
// (E <= 32 * KEYS); KEYS = 0: any E, each round recomputes them. The picks
// do not depend on KEYS. The weights are computed by lanes over the K picks
// (the softmax-over-the-chosen statistics and the normalizing sum are warp
// reductions).
// REGISTERS (MOEJIT_WARP_KERNELS=1): gate_token_registers where it applies.
template <int KEYS, bool REGISTERS = false, class R, class T>
__device__ __forceinline__ void gate_token(const R* row, const T* bias, int E, int K, int softmax_score, int score_first, int normalize,
                                           int* chosen, T* weights, int* hist) {
  if constexpr (REGISTERS && KEYS > 0) {
    if (K <= 32) {
      gate_token_registers<KEYS>(row, bias, E, K, softmax_score, score_first, normalize, chosen, weights, hist);
      return;
    }
  }
  const int lane = threadIdx.x & 31;
  float max, sum;
  warp_row_max_sum(row, E, lane, max, sum);
  float keys[KEYS > 0 ? KEYS : 1];
  if constexpr (KEYS > 0) {
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      int e = lane + 32 * j;
      keys[j] = e < E ? gate_key(row, bias, e, softmax_score, score_first, max, sum) : 0.0f;
    }
  }
  float last_key = 0.0f;
  int last = -1;  // the previous round's pick; none before round 0
  for (int k = 0; k < K; ++k) {
    float best_key = 0.0f;
    int best = -1;
    auto consider = [&](float key, int e) {
      if (last >= 0 && !pick_before(last_key, last, key, e)) return;  // taken in an earlier round
      if (pick_before(key, e, best_key, best)) {
        best = e;
        best_key = key;
      }
    };
    if constexpr (KEYS > 0) {
#pragma unroll
      for (int j = 0; j < KEYS; ++j)
        if (lane + 32 * j < E) consider(keys[j], lane + 32 * j);
    } else {
      for (int e = lane; e < E; e += 32) consider(gate_key(row, bias, e, softmax_score, score_first, max, sum), e);
    }
    for (int delta = 16; delta > 0; delta >>= 1) {
      float other_key = __shfl_xor_sync(0xffffffffu, best_key, delta);
      int other = __shfl_xor_sync(0xffffffffu, best, delta);
      if (pick_before(other_key, other, best_key, best)) {
        best = other;
        best_key = other_key;
      }
    }
    last = best;
    last_key = best_key;
    if (lane == 0) {
      chosen[k] = best;
      if (hist && best >= 0) atomicAdd(&hist[best], 1);
    }
  }
  __syncwarp();  // chosen[] is read by every lane below
  float top_max = lowest_value<float>(), top_sum = 0.0f;
  if (softmax_score && !score_first) {  // softmax over the K chosen logits
    for (int k = lane; k < K; k += 32) top_max = MaxOp()(top_max, (float)ld(row[chosen[k]]));
    top_max = warp_reduce(top_max, MaxOp());
    for (int k = lane; k < K; k += 32) top_sum += expf(ld(row[chosen[k]]) - top_max);
    top_sum = warp_reduce(top_sum, SumOp());
  }
  auto raw = [&](int k) {
    float x = ld(row[chosen[k]]);
    if (!softmax_score) return gate_sigmoid(x);
    return score_first ? expf(x - max) / sum : expf(x - top_max) / top_sum;
  };
  float total = 0.0f;
  for (int k = lane; k < K; k += 32) total += raw(k);
  total = warp_reduce(total, SumOp());
  for (int k = lane; k < K; k += 32) weights[k] = st<T>(normalize ? raw(k) / total : raw(k));
  __syncwarp();
}

// moe.gate. logits [T, E], bias [E] or null -> weights [T, K], experts [T, K];
// KEYS as gate_token's (the emitter passes ceil(E / 32) up to 256 experts).
template <class T, int KEYS, int THREADS, bool REGISTERS = false>
__global__ void __launch_bounds__(THREADS) gate_kernel(const GateArgs<T> a) {
  MOEJIT_FOR_EACH_WARP(t, a.tokens) {
    gate_token<KEYS, REGISTERS>(a.logits + t * a.E, a.bias, a.E, a.K, a.softmax_score, a.score_first, a.normalize, a.experts + t * a.K,
                     a.weights + t * a.K, (int*)nullptr);
  }
}

// moe.gate_grad: one warp per token (lanes over experts); the chosen experts
// are held fixed. Lane k < K loads pick k (its expert, its weight's
// gradient and its logit) once, so the token's loads are two dependent
// steps, not a chain over K; the sums over the picks are warp reductions
// and each expert's share of them comes from the picks' lanes by shuffle.
// K > 32: the picks in a loop (gate_grad_token_loop).
template <class T>
__device__ __forceinline__ void gate_grad_token_loop(const GateGradArgs<T>& a, const T* row, const int* chosen, const T* dw, T* dl,
                                                     int lane, float max, float sum) {
  float total = 0.0f, dot = 0.0f;
  for (int k = 0; k < a.K; ++k) {
    float r = gate_raw(row, chosen, k, a.K, a.softmax_score, a.score_first, max, sum);
    total += r;
    dot += ld(dw[k]) * r;
  }
  dot /= total;
#define MOEJIT_DRAW(k) (a.normalize ? (ld(dw[k]) - dot) / total : (float)ld(dw[k]))
  if (!a.softmax_score) {
    for (int e = lane; e < a.E; e += 32) {
      float g = 0.0f;
      for (int k = 0; k < a.K; ++k)
        if (chosen[k] == e) {
          float s = gate_sigmoid(ld(row[e]));
          g += MOEJIT_DRAW(k) * s * (1.0f - s);
        }
      dl[e] = st<T>(g);
    }
  } else if (a.score_first) {  // softmax over all E, then picked
    float pd = 0.0f;
    for (int k = 0; k < a.K; ++k) pd += expf(ld(row[chosen[k]]) - max) / sum * MOEJIT_DRAW(k);
    for (int e = lane; e < a.E; e += 32) {
      float dprob = 0.0f;
      for (int k = 0; k < a.K; ++k)
        if (chosen[k] == e) dprob += MOEJIT_DRAW(k);
      float prob = expf(ld(row[e]) - max) / sum;
      dl[e] = st<T>(prob * (dprob - pd));
    }
  } else {  // softmax over the K chosen logits
    float rd = 0.0f;
    for (int k = 0; k < a.K; ++k) rd += gate_raw(row, chosen, k, a.K, 1, 0, max, sum) * MOEJIT_DRAW(k);
    for (int e = lane; e < a.E; e += 32) {
      float g = 0.0f;
      for (int k = 0; k < a.K; ++k)
        if (chosen[k] == e) g += gate_raw(row, chosen, k, a.K, 1, 0, max, sum) * (MOEJIT_DRAW(k) - rd);
      dl[e] = st<T>(g);
    }
  }
#undef MOEJIT_DRAW
}

// LANES (MOEJIT_WARP_KERNELS=1): the picks in lanes where K <= 32.
template <class T, int THREADS, bool LANES = false>
__global__ void __launch_bounds__(THREADS) gate_grad_kernel(const GateGradArgs<T> a) {
  const int lane = threadIdx.x & 31;
  MOEJIT_FOR_EACH_WARP(t, a.tokens) {
    const T* row = a.logits + t * a.E;
    const int* chosen = a.experts + t * a.K;
    const T* dw = a.dweights + t * a.K;
    T* dl = a.dlogits + t * a.E;
    float max, sum;
    warp_row_max_sum(row, a.E, lane, max, sum);
    if (!LANES || a.K > 32) {
      gate_grad_token_loop(a, row, chosen, dw, dl, lane, max, sum);
      continue;
    }
    // Lane k < K: pick k.
    const bool holds = lane < a.K;
    const int e_k = holds ? chosen[lane] : -1;
    const float dw_k = holds ? (float)ld(dw[lane]) : 0.0f;
    const float x_k = holds ? (float)ld(row[e_k]) : 0.0f;
    float top_max = lowest_value<float>(), top_sum = 0.0f;
    if (a.softmax_score && !a.score_first) {  // the softmax over the K chosen logits
      if (holds) top_max = MaxOp()(top_max, x_k);
      top_max = warp_reduce(top_max, MaxOp());
      if (holds) top_sum += expf(x_k - top_max);
      top_sum = warp_reduce(top_sum, SumOp());
    }
    float r_k = 0.0f;  // the raw weight of pick k
    if (holds) r_k = !a.softmax_score ? gate_sigmoid(x_k) : a.score_first ? expf(x_k - max) / sum : expf(x_k - top_max) / top_sum;
    const float total = warp_reduce(holds ? r_k : 0.0f, SumOp());
    const float dot = warp_reduce(holds ? dw_k * r_k : 0.0f, SumOp()) / total;
    // Through the renormalization w_k = r_k / S: draw_k = (dw_k - sum_j dw_j r_j / S) / S.
    const float draw_k = a.normalize ? (dw_k - dot) / total : dw_k;
    float pd = 0.0f;  // score first: sum_k prob_k draw_k; over the chosen: sum_k r_k draw_k
    if (a.softmax_score) pd = warp_reduce(holds ? r_k * draw_k : 0.0f, SumOp());
    for (int e0 = 0; e0 < a.E; e0 += 32) {  // every lane in every pass: the shuffles need the whole warp
      const int e = e0 + lane;
      // This expert's share of the picks.
      float g = 0.0f;
      for (int k = 0; k < a.K; ++k) {
        const int e_j = __shfl_sync(0xffffffffu, e_k, k);
        const float draw_j = __shfl_sync(0xffffffffu, draw_k, k), r_j = __shfl_sync(0xffffffffu, r_k, k);
        if (e_j != e) continue;  // e_j < E: a lane past the row matches none
        if (!a.softmax_score) {
          const float s = gate_sigmoid(ld(row[e]));
          g += draw_j * s * (1.0f - s);
        } else if (a.score_first) {
          g += draw_j;
        } else {
          g += r_j * (draw_j - pd);
        }
      }
      if (e >= a.E) continue;
      if (a.softmax_score && a.score_first) g = (expf(ld(row[e]) - max) / sum) * (g - pd);
      dl[e] = st<T>(g);
    }
  }
}

// ---- moe.dispatch: three launches over "tiles" ----
// The S = T*K slots are cut into `tiles` contiguous tiles of `tile` slots
// (a multiple of 32); one warp owns one tile. `ranks` [E, tiles] (scratch,
// expert-major) holds per-tile counts, then each tile's first rank in its
// expert's segment.
//   1. dispatch_count: each warp counts its tile's slots per expert, 32 slots
//      at a time (__match_any_sync groups the lanes of one expert, the
//      lowest lane adds the group's size); every block also sets slots = -1.
//   2. dispatch_scan_rows (a block per expert): an exclusive scan of its row
//      of tile counts in tile order -> ranks, counts; then dispatch_offsets
//      (one warp): offsets = exclusive scan of min(count, capacity) padded
//      to `block`.
//   3. dispatch_scatter: each warp walks its tile in slot order again; a
//      slot's rank = its tile's running rank + the lanes of its group before
//      it. rank < capacity: row = offsets[e] + rank, slots[row] = s,
//      positions[s] = row; otherwise positions[s] = -1 (dropped).
// Ranks follow slot order (tiles in order, lanes in order within a step), so
// the result is the CPU's sequential walk exactly. Expert ids outside [0, E)
// are neither counted nor placed.
__device__ __forceinline__ unsigned lanes_below(int lane) { return (1u << lane) - 1u; }

// SHARED (E <= kDispatchSharedExperts, above; the emitter passes THREADS / 32 x E
// ints of dynamic shared memory): a warp keeps its tile's counts (and the
// scatter its running ranks) in a row of shared memory and touches its
// column of `ranks` once, instead of a read-modify-write of global memory a
// step (the chains of those made both kernels latency-bound: 12 and 11 us
// for 196608 slots on the H200). The integers are the same either way.
template <int THREADS, bool SHARED = false> __global__ void __launch_bounds__(THREADS) dispatch_count_kernel(const DispatchCountArgs a) {
  extern __shared__ int dispatch_warp_rows[];
  MOEJIT_FOR_EACH(i, a.rows) a.slots[i] = -1;
  int lane = threadIdx.x & 31;
  int* own = dispatch_warp_rows + (threadIdx.x >> 5) * a.E;
  MOEJIT_FOR_EACH_WARP(w, a.tiles) {
    auto count = [&](int e) -> int& { return SHARED ? own[e] : a.ranks[(i64)e * a.tiles + w]; };
    for (int e = lane; e < a.E; e += 32) count(e) = 0;
    __syncwarp();
    for (i64 base = w * a.tile; base < (w + 1) * a.tile && base < a.num_slots; base += 32) {
      i64 s = base + lane;
      int e = s < a.num_slots ? a.experts[s] : -1;
      bool valid = e >= 0 && e < a.E;
      unsigned group = __match_any_sync(0xffffffffu, valid ? e : -1);
      if (valid && (group & lanes_below(lane)) == 0) count(e) += __popc(group);
      __syncwarp();
    }
    if constexpr (SHARED) {
      for (int e = lane; e < a.E; e += 32) a.ranks[(i64)e * a.tiles + w] = own[e];
      __syncwarp();
    }
  }
}

// One 32-wide chunk of a running exclusive prefix sum, across a full warp:
// returns *carry + (sum of v over the lanes below this one), and adds the
// chunk's total to *carry (every lane keeps the same carry).
__device__ int warp_exclusive_scan(int v, int lane, int* carry) {
  int inclusive = v;
  for (int delta = 1; delta < 32; delta <<= 1) {
    int up = __shfl_up_sync(0xffffffffu, inclusive, delta);
    if (lane >= delta) inclusive += up;
  }
  int before = *carry + inclusive - v;
  *carry += __shfl_sync(0xffffffffu, inclusive, 31);
  return before;
}

// 2a. One block per expert: the exclusive scan of its row of tile counts,
// in tile order, THREADS tiles a pass (warp scans, then the warps' totals
// from shared memory), and its count. (One block over every expert's row
// took 28 us for 128 experts x 1024 tiles on an H200: docs/perf.md.)
template <int THREADS> __global__ void __launch_bounds__(THREADS) dispatch_scan_rows_kernel(const DispatchScanArgs a) {
  constexpr int WARPS = THREADS / 32;
  static_assert(THREADS % 32 == 0 && WARPS <= 32, "whole warps, at most 32");
  __shared__ int warp_total[WARPS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = blockIdx.x;
  int* row = a.ranks + (i64)e * a.tiles;
  int carry = 0;  // the same in every thread
  for (i64 base = 0; base < a.tiles; base += THREADS) {
    const i64 i = base + threadIdx.x;
    const int v = i < a.tiles ? row[i] : 0;
    int inclusive = v;
    for (int delta = 1; delta < 32; delta <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, delta);
      if (lane >= delta) inclusive += up;
    }
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    int before = 0, chunk = 0;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const int t = warp_total[w];
      before += w < warp ? t : 0;
      chunk += t;
    }
    if (i < a.tiles) row[i] = carry + before + inclusive - v;
    carry += chunk;
    __syncthreads();  // every warp has read warp_total before the next pass writes it
  }
  if (threadIdx.x == 0) a.counts[e] = carry;
}

// 2b. One warp: offsets = exclusive scan of min(count, capacity) padded to `block`.
template <int THREADS> __global__ void __launch_bounds__(THREADS) dispatch_offsets_kernel(const DispatchScanArgs a) {
  static_assert(THREADS == 32, "one warp");
  const int lane = threadIdx.x;
  int carry = 0;
  for (int base = 0; base < a.E; base += 32) {
    int v = 0;
    if (base + lane < a.E) {
      const i64 kept = a.counts[base + lane] < a.capacity ? a.counts[base + lane] : a.capacity;
      v = (int)((kept + a.block - 1) / a.block * a.block);
    }
    const int before = warp_exclusive_scan(v, lane, &carry);
    if (base + lane < a.E) a.offsets[base + lane] = before;
  }
  if (lane == 0) a.offsets[a.E] = carry;
}

template <int THREADS, bool SHARED = false> __global__ void __launch_bounds__(THREADS) dispatch_scatter_kernel(const DispatchScatterArgs a) {
  extern __shared__ int dispatch_warp_rows[];
  int lane = threadIdx.x & 31;
  int* own = dispatch_warp_rows + (threadIdx.x >> 5) * a.E;
  MOEJIT_FOR_EACH_WARP(w, a.tiles) {
    auto running = [&](int e) -> int& { return SHARED ? own[e] : a.ranks[(i64)e * a.tiles + w]; };
    if constexpr (SHARED) {
      for (int e = lane; e < a.E; e += 32) own[e] = a.ranks[(i64)e * a.tiles + w];
      __syncwarp();
    }
    for (i64 base = w * a.tile; base < (w + 1) * a.tile && base < a.num_slots; base += 32) {
      i64 s = base + lane;
      int e = s < a.num_slots ? a.experts[s] : -1;
      bool valid = e >= 0 && e < a.E;
      unsigned group = __match_any_sync(0xffffffffu, valid ? e : -1);
      int leader = __ffs(group) - 1;
      int first = valid && lane == leader ? running(e) : 0;
      first = __shfl_sync(0xffffffffu, first, leader);
      i64 rank = first + __popc(group & lanes_below(lane));
      if (valid && lane == leader) running(e) = first + __popc(group);
      __syncwarp();
      if (s >= a.num_slots) continue;
      if (valid && rank < a.capacity) {
        int row = a.offsets[e] + (int)rank;
        a.slots[row] = (int)s;
        a.positions[s] = row;
      } else {
        a.positions[s] = -1;
      }
    }
  }
}

// dispatch_scan + dispatch_scatter as one launch, for E <= 256 and few
// tiles (the emitter's limit on E * tiles: every block reads all counts).
// Warp w of block b owns tile t = b * WARPS + w. Each block computes from
// the counts, independently of the others: per expert the count of the
// tiles before its first (each expert a warp, lanes over tiles), the
// running rank of each of its tiles (a scan over its WARPS tiles), the
// total, and from the totals the offsets (block 0 stores offsets and
// counts). Then each warp walks its tile as dispatch_scatter does, its
// running ranks in shared memory. Integer sums: the result is exactly the
// two launches' (and the CPU's sequential walk).
template <int THREADS> __global__ void __launch_bounds__(THREADS) dispatch_scan_scatter_kernel(const DispatchScanScatterArgs a) {
  constexpr int WARPS = THREADS / 32, EMAX = 256;
  static_assert(THREADS % 32 == 0 && WARPS <= 32, "dispatch_scan_scatter: 1 to 32 warps");
  __shared__ int base[WARPS][EMAX];
  __shared__ int total[EMAX];
  __shared__ int offs[EMAX + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 first = (i64)blockIdx.x * WARPS;
  for (int e = warp; e < a.E; e += WARPS) {
    const int* row = a.ranks + (i64)e * a.tiles;
    int before = 0, all = 0;
    constexpr int U = 4;  // loads in flight per lane
    for (i64 j0 = lane; j0 < a.tiles; j0 += 32 * U) {
      int c[U];
#pragma unroll
      for (int u = 0; u < U; ++u) c[u] = j0 + 32 * u < a.tiles ? row[j0 + 32 * u] : 0;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        all += c[u];
        if (j0 + 32 * u < first) before += c[u];
      }
    }
    all = warp_reduce(all, SumOp());
    int carry = warp_reduce(before, SumOp());
    const int mine = lane < WARPS && first + lane < a.tiles ? row[first + lane] : 0;
    const int start = warp_exclusive_scan(mine, lane, &carry);
    if (lane < WARPS) base[lane][e] = start;
    if (lane == 0) total[e] = all;
  }
  __syncthreads();
  if (warp == 0) {
    int carry = 0;
    for (int e0 = 0; e0 < a.E; e0 += 32) {
      const int e = e0 + lane;
      const i64 kept = e < a.E ? (total[e] < a.capacity ? total[e] : a.capacity) : 0;
      const int padded = (int)((kept + a.block - 1) / a.block * a.block);
      const int before = warp_exclusive_scan(padded, lane, &carry);
      if (e < a.E) offs[e] = before;
    }
    if (lane == 0) offs[a.E] = carry;
    if (blockIdx.x == 0)
      for (int e = lane; e <= a.E; e += 32) {
        a.offsets[e] = offs[e];
        if (e < a.E) a.counts[e] = total[e];
      }
  }
  __syncthreads();
  const i64 w = first + warp;
  if (w >= a.tiles) return;
  int* running = base[warp];
  for (i64 s0 = w * a.tile; s0 < (w + 1) * a.tile && s0 < a.num_slots; s0 += 32) {
    const i64 s = s0 + lane;
    const int e = s < a.num_slots ? a.experts[s] : -1;
    const bool valid = e >= 0 && e < a.E;
    const unsigned group = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int leader = __ffs(group) - 1;
    int start = valid && lane == leader ? running[e] : 0;
    start = __shfl_sync(0xffffffffu, start, leader);
    const i64 rank = start + __popc(group & lanes_below(lane));
    if (valid && lane == leader) running[e] = start + __popc(group);
    __syncwarp();
    if (s >= a.num_slots) continue;
    if (valid && rank < a.capacity) {
      const int row = offs[e] + (int)rank;
      a.slots[row] = (int)s;
      a.positions[s] = row;
    } else {
      a.positions[s] = -1;
    }
  }
}

// ---- moe.route: the fused router ----
// Block b owns the BM tokens m0 = b*BM .. m0+BM-1 (its slots are dispatch
// tile b, so tile = BM*K and `ranks` is laid out as dispatch_count's):
//   1. logits = x[m0.., :] W_r, f32 accumulation, each logit one thread's
//      sequential sum over k = 0..D-1 (the SIMT matmul's order, so the fused
//      and unfused routers agree bit for bit). The block steps through D in
//      slices of BK. x slices go straight from memory into a ring of STAGES
//      shared-memory buffers (cp.async, 16-byte pieces, STAGES-1 slices in
//      flight while one is multiplied; rows BM x BK elements of T, 16 bytes
//      of padding per row so that eight consecutive rows read as 16-byte
//      vectors hit distinct banks). W_r slices (BK x EP, from L2) are loaded
//      one slice ahead into registers and staged as f32 in two buffers.
//      Thread (te, tr) of a TE x TR grid owns tokens tr, tr + TR, ... (TM of
//      them) and experts te*TN .. te*TN+TN-1.
//   2. The logits, rounded to T, go to shared memory (the tile [BM, EP+1]
//      reuses the ring) and out to global memory, coalesced.
//   3. Gate. EP <= 32: a thread per token (gate_thread, all in registers:
//      no shuffles, no round trip through memory); else a warp per token
//      (gate_token, the keys held in registers across the K rounds). Both
//      compute exactly what gate_kernel computes from the same logits. Each
//      pick adds 1 to the block's shared histogram.
//   4. ranks[e, b] = the block's count of expert e; every block also sets a
//      stretch of slots to -1, as dispatch_count does.
// Dispatch's scan and scatter finish the dispatch from `ranks`.
// EP = E rounded up (8..256); experts e >= E are zero columns never read.
// The shared memory of a configuration (route_smem_bytes) must stay within
// the 48 KiB of static shared memory.
template <class T> __device__ __forceinline__ void load4_raw(const T* p, float4& v);
template <> __device__ __forceinline__ void load4_raw<float>(const float* p, float4& v) { v = *reinterpret_cast<const float4*>(p); }
template <class T> __device__ __forceinline__ void load4_half(const T* p, float4& v) {
  uint2 raw = *reinterpret_cast<const uint2*>(p);
  T h[4];
  h[0].bits = (unsigned short)(raw.x & 0xffffu);
  h[1].bits = (unsigned short)(raw.x >> 16);
  h[2].bits = (unsigned short)(raw.y & 0xffffu);
  h[3].bits = (unsigned short)(raw.y >> 16);
  v = make_float4(ld(h[0]), ld(h[1]), ld(h[2]), ld(h[3]));
}
template <> __device__ __forceinline__ void load4_raw<bf16_t>(const bf16_t* p, float4& v) { load4_half(p, v); }
template <> __device__ __forceinline__ void load4_raw<f16_t>(const f16_t* p, float4& v) { load4_half(p, v); }

__device__ __forceinline__ unsigned route_smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}
// 16 bytes global -> shared, asynchronous; the bytes past `src_bytes` (0 or 16) are zero.
__device__ __forceinline__ void route_cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(route_smem_addr(dst)), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void route_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void route_cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// The 16 bytes at p (shared, aligned) as V = 16 / sizeof(T) floats.
template <class T> __device__ __forceinline__ void route_chunk(const T* p, float (&v)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 4) {
    float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    uint4 q = *reinterpret_cast<const uint4*>(p);
    unsigned words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      T lo, hi;
      lo.bits = (unsigned short)(words[i] & 0xffffu);
      hi.bits = (unsigned short)(words[i] >> 16);
      v[2 * i] = ld(lo);
      v[2 * i + 1] = ld(hi);
    }
  }
}

// N consecutive floats of shared memory (16-byte aligned for N % 4 == 0, 8 for N == 2).
template <int N> __device__ __forceinline__ void shared_row(const float* p, float (&v)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      float4 q = *reinterpret_cast<const float4*>(p + i);
      v[i] = q.x;
      v[i + 1] = q.y;
      v[i + 2] = q.z;
      v[i + 3] = q.w;
    }
  } else if constexpr (N == 2) {
    float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x;
    v[1] = q.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = p[i];
  }
}

// Butterfly reduction of v[0..N) (N a power of two) in the pairing of
// warp_reduce over lanes 0..N-1: round d combines i and i + d. With the
// lanes past N holding the operation's identity, this is bit for bit what
// every lane of warp_reduce returns (the op is commutative, and adding the
// identity changes no bits for the values the gate reduces).
template <int N, class Op> __device__ __forceinline__ float tree_reduce(float (&v)[N], Op op) {
#pragma unroll
  for (int d = N / 2; d > 0; d >>= 1)
#pragma unroll
    for (int i = 0; i < d; ++i) v[i] = op(v[i], v[i + d]);
  return v[0];
}

// gate_token for one token by one thread, EP >= E values of `row` (shared
// memory) held in registers: the same max, sum, keys, picks and weights
// (the reductions in warp_reduce's tree, the picks under the same strict
// order). Writes experts / weights [K] and adds each pick to `hist`.
template <int EP, class T>
__device__ __forceinline__ void gate_thread(const float* row, const T* bias, int E, int K, int softmax_score, int score_first, int normalize,
                                            int* experts, T* weights, int* hist) {
  float x[EP], v[EP];
#pragma unroll
  for (int e = 0; e < EP; ++e) x[e] = e < E ? row[e] : 0.0f;
#pragma unroll
  for (int e = 0; e < EP; ++e) v[e] = e < E ? MaxOp()(lowest_value<float>(), x[e]) : lowest_value<float>();
  const float max = tree_reduce(v, MaxOp());
#pragma unroll
  for (int e = 0; e < EP; ++e) v[e] = e < E ? 0.0f + expf(x[e] - max) : 0.0f;
  const float sum = tree_reduce(v, SumOp());
  float keys[EP];
#pragma unroll
  for (int e = 0; e < EP; ++e) {
    float key = !score_first ? x[e] : (softmax_score ? expf(x[e] - max) / sum : gate_sigmoid(x[e]));
    if (bias && e < E) key += ld(bias[e]);
    keys[e] = key;
  }
  int pick[EP];
  float pick_x[EP];
  float last_key = 0.0f;
  int last = -1;
#pragma unroll
  for (int k = 0; k < EP; ++k) pick[k] = -1, pick_x[k] = 0.0f;
#pragma unroll
  for (int k = 0; k < EP; ++k) {
    if (k >= K) break;  // K rounds, not EP
    {
      float best_key = 0.0f, best_x = 0.0f;
      int best = -1;
#pragma unroll
      for (int e = 0; e < EP; ++e) {
        if (e >= E || (last >= 0 && !pick_before(last_key, last, keys[e], e))) continue;  // taken in an earlier round
        if (pick_before(keys[e], e, best_key, best)) {
          best = e;
          best_key = keys[e];
          best_x = x[e];
        }
      }
      last = best;
      last_key = best_key;
      pick[k] = best;
      pick_x[k] = best_x;
      experts[k] = best;
      if (best >= 0) atomicAdd(&hist[best], 1);
    }
  }
  float top_max = lowest_value<float>(), top_sum = 0.0f;
  if (softmax_score && !score_first) {  // softmax over the K chosen logits
#pragma unroll
    for (int k = 0; k < EP; ++k) v[k] = k < K ? MaxOp()(lowest_value<float>(), pick_x[k]) : lowest_value<float>();
    top_max = tree_reduce(v, MaxOp());
#pragma unroll
    for (int k = 0; k < EP; ++k) v[k] = k < K ? 0.0f + expf(pick_x[k] - top_max) : 0.0f;
    top_sum = tree_reduce(v, SumOp());
  }
  float raw[EP];
#pragma unroll
  for (int k = 0; k < EP; ++k) {
    const float xk = pick_x[k];
    raw[k] = !softmax_score ? gate_sigmoid(xk) : score_first ? expf(xk - max) / sum : expf(xk - top_max) / top_sum;
    v[k] = k < K ? 0.0f + raw[k] : 0.0f;
  }
  const float total = tree_reduce(v, SumOp());
#pragma unroll
  for (int k = 0; k < EP; ++k)
    if (k < K) weights[k] = st<T>(normalize ? raw[k] / total : raw[k]);
}

template <class T, int EP, int TN, int TM, int THREADS, int BK, int STAGES>
__global__ void __launch_bounds__(THREADS) route_kernel(const RouteArgs<T> a) {
  constexpr RouteLayout L{EP, TN, TM, THREADS, BK, STAGES, (int)sizeof(T)};
  constexpr int V = 16 / (int)sizeof(T);  // elements per 16-byte piece
  constexpr int TE = EP / TN, TR = THREADS / TE, BM = TR * TM;
  constexpr int XS = L.x_stride();           // row stride of a staged x slice, elements
  constexpr int SLICE = BM * XS;             // elements of one ring buffer
  constexpr int PIECES = BM * (BK / V);      // 16-byte pieces of x per slice
  constexpr int LS = EP + 1;                 // row stride of the logits tile
  constexpr int BYTES = L.product_bytes() > L.tile_bytes() ? L.product_bytes() : L.tile_bytes();
  constexpr int WLOADS = (BK * EP + THREADS - 1) / THREADS;
  static_assert(EP % TN == 0 && THREADS % TE == 0 && THREADS % 32 == 0 && BK % V == 0 && STAGES >= 2, "route tile does not fit its thread grid");
  static_assert(TN == 1 || TN == 2 || TN % 4 == 0, "experts per thread: 1, 2 or a multiple of 4");
  static_assert(BM % 32 == 0, "a block's slots are a dispatch tile, walked in whole warps");
  static_assert(L.smem_bytes() <= 48 * 1024, "route configuration exceeds 48 KiB of static shared memory");
  __shared__ __align__(16) unsigned char smem[BYTES];
  __shared__ int hist[EP];
  T* ring = reinterpret_cast<T*>(smem);                          // [STAGES][BM][XS]
  float* ws = reinterpret_cast<float*>(smem + L.ring_bytes());  // [2][BK * EP]
  float* ls = reinterpret_cast<float*>(smem);                    // [BM][LS] after the product
  const int tid = threadIdx.x, te = tid % TE, tr = tid / TE;
  MOEJIT_FOR_EACH(i, a.rows) a.slots[i] = -1;
  for (int e = tid; e < EP; e += THREADS) hist[e] = 0;
  const i64 m0 = (i64)blockIdx.x * BM;
  const int slices = (int)((a.D + BK - 1) / BK);
  // 16-byte pieces straight from memory when every row starts aligned; else element by element.
  const bool vec = (a.D * (i64)sizeof(T)) % 16 == 0 && ((unsigned long long)a.x % 16) == 0;

  // x slice s into ring buffer s % STAGES (asynchronous when vec).
  auto fetch_x = [&](int s) {
    T* buf = ring + (s % STAGES) * SLICE;
    const i64 k0 = (i64)s * BK;
    if (vec) {
#pragma unroll
      for (int i = 0; i < (PIECES + THREADS - 1) / THREADS; ++i) {
        const int g = tid + THREADS * i;
        if (PIECES % THREADS != 0 && g >= PIECES) break;
        const int r = g / (BK / V), c = (g % (BK / V)) * V;
        const i64 m = m0 + r, k = k0 + c;
        const bool inside = m < a.tokens && k < a.D;
        route_cp_async16(buf + r * XS + c, inside ? (const void*)(a.x + m * a.D + k) : (const void*)a.x, inside ? 16 : 0);
      }
    } else {
      for (int g = tid; g < BM * BK; g += THREADS) {
        const int r = g / BK, c = g % BK;
        const i64 m = m0 + r, k = k0 + c;
        buf[r * XS + c] = m < a.tokens && k < a.D ? a.x[m * a.D + k] : st<T>(0.0f);
      }
    }
  };
  float wr[WLOADS];
  auto load_w = [&](int s) {
    const i64 k0 = (i64)s * BK;
#pragma unroll
    for (int i = 0; i < WLOADS; ++i) {
      const int g = tid + THREADS * i, kk = g / EP, e = g % EP;
      const i64 k = k0 + kk;
      wr[i] = g < BK * EP && k < a.D && e < a.E ? (float)ld(a.w[k * a.E + e]) : 0.0f;
    }
  };
  auto store_w = [&](int s) {
#pragma unroll
    for (int i = 0; i < WLOADS; ++i) {
      const int g = tid + THREADS * i;
      if (g < BK * EP) ws[(s & 1) * BK * EP + g] = wr[i];
    }
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  // Prologue: slices 0 .. STAGES-2 in flight, W slice 0 staged.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < slices) fetch_x(s);
    route_cp_async_commit();
  }
  load_w(0);
  store_w(0);
  for (int s = 0; s < slices; ++s) {
    route_cp_async_wait<STAGES - 2>();
    __syncthreads();  // slice s of x and W is in place; buffers of slice s-1 are free
    if (s + STAGES - 1 < slices) fetch_x(s + STAGES - 1);
    route_cp_async_commit();
    if (s + 1 < slices) load_w(s + 1);
    const T* xb = ring + (s % STAGES) * SLICE;
    const float* wb = ws + (s & 1) * BK * EP;
#pragma unroll 2
    for (int c = 0; c < BK; c += V) {
      float xv[TM][V];
#pragma unroll
      for (int i = 0; i < TM; ++i) route_chunk<T>(xb + (tr + TR * i) * XS + c, xv[i]);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float wv[TN];
        shared_row<TN>(wb + (c + v) * EP + te * TN, wv);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += xv[i][v] * wv[j];
      }
    }
    if (s + 1 < slices) store_w(s + 1);  // W buffer (s+1)&1 was last read in slice s-1
  }
  route_cp_async_wait<0>();
  __syncthreads();  // every thread is done with the ring and W: they become the logits tile

  // The logits tile, rounded to T as the stored logits are (the gate reads those).
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) ls[(tr + TR * i) * LS + te * TN + j] = (float)ld(st<T>(acc[i][j]));
  __syncthreads();
  const int valid = a.tokens - m0 < BM ? (int)(a.tokens - m0) : BM;
  for (int i = tid; i < valid * a.E; i += THREADS) a.logits[m0 * a.E + i] = st<T>(ls[(i / a.E) * LS + i % a.E]);

  if constexpr (EP <= 32) {
    for (int r = tid; r < valid; r += THREADS) {
      const i64 t = m0 + r;
      gate_thread<EP>(ls + r * LS, a.bias, a.E, a.K, a.softmax_score, a.score_first, a.normalize, a.experts + t * a.K, a.weights + t * a.K,
                      hist);
    }
  } else {
    constexpr int KPL = (EP + 31) / 32;  // experts per lane in the gate
    for (int r = tid >> 5; r < valid; r += THREADS / 32) {
      const i64 t = m0 + r;
      gate_token<KPL>(ls + r * LS, a.bias, a.E, a.K, a.softmax_score, a.score_first, a.normalize, a.experts + t * a.K, a.weights + t * a.K,
                      hist);
    }
  }
  __syncthreads();
  for (int e = tid; e < a.E; e += THREADS) a.ranks[(i64)e * a.tiles + blockIdx.x] = hist[e];
}

// ---- gate and gate_grad for many experts: a few lanes per token ----
// A warp per token spends its time in warp-wide rounds, a redux per pick
// (moe.gate 33 us and gate_grad 37 us for 24576 tokens x 128 experts, K 8,
// on the H200, against ~6 us of memory); a thread per token measured no
// better (36 and 29 us: 768 warps, too few to hide each thread's long
// dependent chain). Here LANES lanes take a token (kGateRowsLanes, four:
// 23 and 20 us, issue-bound by the sorted-list inserts): a block copies its
// 256 / LANES rows of f32 logits into shared memory (cp.async, 16 bytes a
// piece), lane q of a token walks the 16-byte chunks q, q + LANES, ... of
// its row (experts 4c .. 4c + 3), and the token's lanes combine by
// shuffles. The row stride is 16 mod 32 floats, so the eight lanes of a
// 16-byte read phase (two tokens' four chunks, or one token's eight) hit
// eight different bank quads. For f32 logits, E % 4 == 0, E <= 256 and
// K <= 8 (the emitter's gate_rows_apply); else the warp kernels above.

__device__ __forceinline__ void stage_gate_rows(const float* src, i64 t0, int n, int E, float* rows) {
  const int chunks = E / 4, warp = threadIdx.x / 32, lane = threadIdx.x % 32, S = gate_rows_stride(E);
  if (reinterpret_cast<unsigned long long>(src) % 16 == 0) {
    for (int r = warp; r < n; r += kGateRowsThreads / 32)
      for (int c = lane; c < chunks; c += 32) route_cp_async16(rows + r * S + 4 * c, src + (t0 + r) * E + 4 * c, 16);
    route_cp_async_commit();
    route_cp_async_wait<0>();
  } else {  // a view that starts inside a 16-byte piece
    for (int r = warp; r < n; r += kGateRowsThreads / 32)
      for (int e = lane; e < E; e += 32) rows[r * S + e] = src[(t0 + r) * E + e];
  }
  __syncthreads();
}

// The block's tokens t0 .. t0 + n - 1 (gate_rows_tokens(LANES) a block),
// their rows staged at `rows`; returns n.
template <int LANES> __device__ __forceinline__ int stage_block_gate_rows(const float* logits, i64 tokens, int E, float* rows, i64& t0) {
  constexpr int TOKENS = gate_rows_tokens(LANES);
  t0 = (i64)blockIdx.x * TOKENS;
  const int n = (int)(tokens - t0 < TOKENS ? tokens - t0 : TOKENS);
  stage_gate_rows(logits, t0, n, E, rows);
  return n;
}

// The row max and softmax sum, each lane over its chunks, then across the
// token's lanes (the same values in all of them).
template <int LANES> __device__ __forceinline__ void gate_lanes_max_sum(const float* row, int E, int q, float& max, float& sum) {
  max = lowest_value<float>();
  for (int c = q; c < E / 4; c += LANES) {
    const float4 v = *reinterpret_cast<const float4*>(row + 4 * c);
    max = MaxOp()(MaxOp()(max, v.x), MaxOp()(MaxOp()(v.y, v.z), v.w));
  }
#pragma unroll
  for (int d = 1; d < LANES; d *= 2) max = MaxOp()(max, __shfl_xor_sync(0xffffffffu, max, d));
  sum = 0.0f;
  for (int c = q; c < E / 4; c += LANES) {
    const float4 v = *reinterpret_cast<const float4*>(row + 4 * c);
    sum += expf(v.x - max) + expf(v.y - max) + expf(v.z - max) + expf(v.w - max);
  }
#pragma unroll
  for (int d = 1; d < LANES; d *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, d);
}

// The raw weights of K picks from their logits x, gate_token's formulas (the
// sigmoid, the score-first softmax's max and sum, or a softmax over the
// picks); returns their sum, taken in pick order.
template <int K>
__device__ __forceinline__ float gate_picks_raw(const float (&x)[K], int softmax_score, int score_first, float max, float sum,
                                                float (&raw)[K]) {
  float top_max = lowest_value<float>(), top_sum = 0.0f;
  if (softmax_score && !score_first) {
#pragma unroll
    for (int k = 0; k < K; ++k) top_max = MaxOp()(top_max, x[k]);
#pragma unroll
    for (int k = 0; k < K; ++k) top_sum += expf(x[k] - top_max);
  }
  float total = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    raw[k] = !softmax_score ? gate_sigmoid(x[k]) : score_first ? expf(x[k] - max) / sum : expf(x[k] - top_max) / top_sum;
    total += raw[k];
  }
  return total;
}

// moe.gate: each lane keeps the K best keys of its experts in a sorted list
// (gate_rank_bits; strictly greater moves up, so a tie keeps the lower
// expert first), then K rounds take the token's best head (higher rank, on a
// tie the lower expert: the picks of gate_token) and its lane drops it. The
// weights from the picks' logits as gate_token computes them; the sums run
// in lane and pick order, not the warp's tree order, so a weight may differ
// from the warp kernel's in the last bit.
template <int K, int LANES> __global__ void __launch_bounds__(kGateRowsThreads) gate_rows_kernel(const GateArgs<float> a) {
  extern __shared__ float4 gate_rows_smem[];
  float* rows = reinterpret_cast<float*>(gate_rows_smem);
  i64 t0;
  const int n = stage_block_gate_rows<LANES>(a.logits, a.tokens, a.E, rows, t0);
  const int slot = threadIdx.x / LANES, q = threadIdx.x % LANES;
  const bool valid = slot < n;  // every lane takes part in the shuffles; a token past n reads row 0 and writes nothing
  const float* row = rows + (valid ? slot : 0) * gate_rows_stride(a.E);
  float max = 0.0f, sum = 1.0f;
  if (a.softmax_score && a.score_first) gate_lanes_max_sum<LANES>(row, a.E, q, max, sum);
  unsigned rank[K];
  int pick[K];
#pragma unroll
  for (int j = 0; j < K; ++j) rank[j] = 0u, pick[j] = -1;
  for (int c = q; c < a.E / 4; c += LANES) {
    const float4 v = *reinterpret_cast<const float4*>(row + 4 * c);
    const float x[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = 4 * c + i;
      const unsigned r = gate_rank_bits(gate_key_of(x[i], a.bias, e, a.softmax_score, a.score_first, max, sum), true);
#pragma unroll
      for (int j = K - 1; j >= 0; --j) {  // bottom up: slot j - 1 is read before it moves
        if (j > 0 && r > rank[j - 1]) rank[j] = rank[j - 1], pick[j] = pick[j - 1];
        else if (r > rank[j]) rank[j] = r, pick[j] = e;
      }
    }
  }
  int best[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    unsigned r = rank[0];
    int e = pick[0];
#pragma unroll
    for (int d = 1; d < LANES; d *= 2) {
      const unsigned r2 = __shfl_xor_sync(0xffffffffu, r, d);
      const int e2 = __shfl_xor_sync(0xffffffffu, e, d);
      if (r2 > r || (r2 == r && (unsigned)e2 < (unsigned)e)) r = r2, e = e2;
    }
    best[k] = r == 0u ? -1 : e;
    if (r != 0u && pick[0] == e) {  // this lane's head was taken: the next one moves up
#pragma unroll
      for (int j = 0; j + 1 < K; ++j) rank[j] = rank[j + 1], pick[j] = pick[j + 1];
      rank[K - 1] = 0u;
      pick[K - 1] = -1;
    }
  }
  float xk[K];
#pragma unroll
  for (int k = 0; k < K; ++k) xk[k] = best[k] >= 0 ? row[best[k]] : 0.0f;
  float raw[K];
  const float total = gate_picks_raw(xk, a.softmax_score, a.score_first, max, sum, raw);
  if (!valid) return;
  const i64 t = t0 + slot;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k % LANES == q) {
      a.experts[t * K + k] = best[k];
      a.weights[t * K + k] = a.normalize ? raw[k] / total : raw[k];
    }
}

// moe.gate_grad, the picks held fixed: each token's row of logit gradients
// is built in place over its staged logits (each lane its chunks: every
// expert's share of the score-first softmax, then the picks' entries, by
// the lane that holds them; the formulas and orders of gate_grad_kernel's
// lanes form), then the block's rows are copied out.
template <int K, int LANES> __global__ void __launch_bounds__(kGateRowsThreads) gate_grad_rows_kernel(const GateGradArgs<float> a) {
  extern __shared__ float4 gate_rows_smem[];
  float* rows = reinterpret_cast<float*>(gate_rows_smem);
  i64 t0;
  const int n = stage_block_gate_rows<LANES>(a.logits, a.tokens, a.E, rows, t0);
  const int S = gate_rows_stride(a.E);
  const int slot = threadIdx.x / LANES, q = threadIdx.x % LANES;
  const bool valid = slot < n;
  float* row = rows + (valid ? slot : 0) * S;
  float max = 0.0f, sum = 1.0f;
  if (a.softmax_score && a.score_first) gate_lanes_max_sum<LANES>(row, a.E, q, max, sum);
  if (valid) {
    const i64 t = t0 + slot;
    int e_k[K];
    float dw_k[K], x_k[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      e_k[k] = a.experts[t * K + k];
      dw_k[k] = a.dweights[t * K + k];
      x_k[k] = e_k[k] >= 0 && e_k[k] < a.E ? row[e_k[k]] : 0.0f;
    }
    float r_k[K], dot = 0.0f;
    const float total = gate_picks_raw(x_k, a.softmax_score, a.score_first, max, sum, r_k);
#pragma unroll
    for (int k = 0; k < K; ++k) dot += dw_k[k] * r_k[k];
    dot /= total;
    float draw_k[K], pd = 0.0f;  // through the renormalization w_k = r_k / S: draw_k = (dw_k - sum_j dw_j r_j / S) / S
#pragma unroll
    for (int k = 0; k < K; ++k) {
      draw_k[k] = a.normalize ? (dw_k[k] - dot) / total : dw_k[k];
      if (a.softmax_score) pd += r_k[k] * draw_k[k];
    }
    const bool dense = a.softmax_score && a.score_first;  // every expert's logit moves the chosen probabilities
    for (int c = q; c < a.E / 4; c += LANES) {
      float4 v = *reinterpret_cast<const float4*>(row + 4 * c);
      v.x = dense ? (expf(v.x - max) / sum) * (0.0f - pd) : 0.0f;
      v.y = dense ? (expf(v.y - max) / sum) * (0.0f - pd) : 0.0f;
      v.z = dense ? (expf(v.z - max) / sum) * (0.0f - pd) : 0.0f;
      v.w = dense ? (expf(v.w - max) / sum) * (0.0f - pd) : 0.0f;
      *reinterpret_cast<float4*>(row + 4 * c) = v;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {  // each chosen expert once, by the lane holding it, its share of the picks summed in pick order
      bool first = e_k[k] >= 0 && e_k[k] < a.E && (e_k[k] / 4) % LANES == q;
#pragma unroll
      for (int j = 0; j < k; ++j) first = first && e_k[j] != e_k[k];
      if (!first) continue;
      float g = 0.0f;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        if (e_k[j] != e_k[k]) continue;
        if (!a.softmax_score) {
          const float s = gate_sigmoid(x_k[k]);
          g += draw_k[j] * s * (1.0f - s);
        } else if (a.score_first) {
          g += draw_k[j];
        } else {
          g += r_k[j] * (draw_k[j] - pd);
        }
      }
      if (dense) g = (expf(x_k[k] - max) / sum) * (g - pd);
      row[e_k[k]] = g;
    }
  }
  __syncthreads();
  const int chunks = a.E / 4, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool aligned = reinterpret_cast<unsigned long long>(a.dlogits) % 16 == 0;
  for (int r = warp; r < n; r += kGateRowsThreads / 32) {
    const float* from = rows + r * S;
    float* to = a.dlogits + (t0 + r) * a.E;
    if (aligned)
      for (int c = lane; c < chunks; c += 32) *reinterpret_cast<float4*>(to + 4 * c) = *reinterpret_cast<const float4*>(from + 4 * c);
    else
      for (int e = lane; e < a.E; e += 32) to[e] = from[e];
  }
}

// The row kernels below (permute, combine, combine_grad) give each row a
// warp (WarpRows): lane l moves the row's 16-byte packs l, l + 32, ... when
// the row length D is a multiple of a pack and the pointers are aligned,
// else its elements l, l + 32, ...; both orders compute the same values.

// moe.permute: xs[i] = x[slots[i] / top_k], zero where slots[i] < 0. x [T, D] -> xs [N, D].
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) permute_kernel(const PermuteArgs<T> a) {
  constexpr int V = pack16<T>::n;
  typedef Pack<T, V> P;
  const WarpRows w;
  const bool packed = a.D % V == 0 && aligned16(a.x) && aligned16(a.xs);
  for (i64 r = w.warp; r < a.rows; r += w.warps) {
    const int s = a.slots[r];
    const T* src = s >= 0 ? a.x + (i64)(s / a.top_k) * a.D : nullptr;
    T* dst = a.xs + r * a.D;
    if (packed) {
      P zero;
#pragma unroll
      for (int j = 0; j < V; ++j) zero.v[j] = st<T>(typename acc_of<T>::type(0));
      // Four packs per lane in flight before the first store (a row of D
      // 1536 bf16 is 6 packs per lane): one load at a time per warp left the
      // copy at 2.5 TB/s at D1536 E128 K8 (docs/perf.md).
      constexpr int U = 4;
      const i64 packs = a.D / V;
      for (i64 p0 = w.lane; p0 < packs; p0 += 32 * U) {
        P v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const i64 p = p0 + 32 * u;
          v[u] = src && p < packs ? reinterpret_cast<const P*>(src)[p] : zero;
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (p0 + 32 * u < packs) reinterpret_cast<P*>(dst)[p0 + 32 * u] = v[u];
      }
    } else {
      for (i64 d = w.lane; d < a.D; d += 32) dst[d] = src ? src[d] : st<T>(typename acc_of<T>::type(0));
    }
  }
}

// moe.combine (weights given) and moe.permute_grad (weights null = all ones):
// out[t] = sum_k w[t,k] ys[positions[t,k]] in the order k = 0..K-1, dropped
// slots add nothing. -> [T, D]. With an addend (an mj.add of the result and
// another [T, D] tensor, codegen/op_groups.cpp's combine_add), the sum is
// rounded to T and added to the addend's element, then rounded again: the
// two ops' values bit for bit, without the sum's round trip to memory.
// Pack p of a combined row: the sum rounded to T, or with an addend (op
// group combine_add) that added to the addend's element and rounded again.
template <class T, class A, int V> __device__ __forceinline__ void store_combined(T* out, const T* addend, i64 p, const A (&acc)[V]) {
  typedef Pack<T, V> P;
  P o;
  if (addend) {
    const P e = reinterpret_cast<const P*>(addend)[p];
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = st<T>(ld(e.v[j]) + ld(st<T>(acc[j])));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = st<T>(acc[j]);
  }
  reinterpret_cast<P*>(out)[p] = o;
}

// One token's packed row with K (a compile-time count) slots: its rows and
// weights in registers, all K rows' packs loaded before the first is
// added, the same sums in the same order as the loop below (which, a load
// behind each slot's branch, keeps one pack per lane in flight).
template <class T, int K> __device__ __forceinline__ void combine_row_k(const CombineArgs<T>& a, i64 t, int lane) {
  typedef typename acc_of<T>::type A;
  constexpr int V = pack16<T>::n;
  typedef Pack<T, V> P;
  int rows[K];
  A weights[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    rows[k] = a.positions[t * K + k];
    weights[k] = rows[k] >= 0 && a.weights ? ld(a.weights[t * K + k]) : A(1);
  }
  P zero;
#pragma unroll
  for (int j = 0; j < V; ++j) zero.v[j] = st<T>(A(0));
  T* out = a.out + t * a.D;
  const T* addend = a.addend ? a.addend + t * a.D : nullptr;
  for (i64 p = lane; p < a.D / V; p += 32) {
    P y[K];
#pragma unroll
    for (int k = 0; k < K; ++k) y[k] = rows[k] >= 0 ? reinterpret_cast<const P*>(a.ys + (i64)rows[k] * a.D)[p] : zero;
    A acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (rows[k] >= 0) {
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += weights[k] * ld(y[k].v[j]);
      }
    store_combined(out, addend, p, acc);
  }
}

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) combine_kernel(const CombineArgs<T> a) {
  typedef typename acc_of<T>::type A;
  constexpr int V = pack16<T>::n;
  typedef Pack<T, V> P;
  const WarpRows w;
  const bool packed = a.D % V == 0 && aligned16(a.ys) && aligned16(a.out) && (!a.addend || aligned16(a.addend));
  for (i64 t = w.warp; t < a.tokens; t += w.warps) {
    T* out = a.out + t * a.D;
    const T* addend = a.addend ? a.addend + t * a.D : nullptr;
    if (packed && (a.K == 1 || a.K == 2 || a.K == 4 || a.K == 8)) {  // the top-k of the benchmarked models; a.K is uniform
      if (a.K == 1) combine_row_k<T, 1>(a, t, w.lane);
      else if (a.K == 2) combine_row_k<T, 2>(a, t, w.lane);
      else if (a.K == 4) combine_row_k<T, 4>(a, t, w.lane);
      else combine_row_k<T, 8>(a, t, w.lane);
    } else if (packed) {
      for (i64 p = w.lane; p < a.D / V; p += 32) {
        A acc[V];
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = A(0);
        for (int k = 0; k < a.K; ++k) {
          const int row = a.positions[t * a.K + k];
          if (row < 0) continue;
          const A weight = a.weights ? ld(a.weights[t * a.K + k]) : A(1);
          const P y = reinterpret_cast<const P*>(a.ys + (i64)row * a.D)[p];
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j] += weight * ld(y.v[j]);
        }
        store_combined(out, addend, p, acc);
      }
    } else {
      for (i64 d = w.lane; d < a.D; d += 32) {
        A acc = A(0);
        for (int k = 0; k < a.K; ++k) {
          const int row = a.positions[t * a.K + k];
          if (row < 0) continue;
          const A weight = a.weights ? ld(a.weights[t * a.K + k]) : A(1);
          acc += weight * ld(a.ys[(i64)row * a.D + d]);
        }
        out[d] = addend ? st<T>(ld(addend[d]) + ld(st<T>(acc))) : st<T>(acc);
      }
    }
  }
}

// moe.combine_grad, one warp per slot s = (t, k) with row = positions[s]:
// dys[row] = weights[s] dout[t], and dweights[s] = dout[t] . ys[row] (each
// lane sums its elements in order, then a fixed butterfly over the lanes;
// 0 when the slot was dropped). Rows no slot names are zeroed before.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) combine_grad_kernel(const CombineGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  constexpr int V = pack16<T>::n;
  typedef Pack<T, V> P;
  const WarpRows w;
  const bool packed = a.D % V == 0 && aligned16(a.ys) && aligned16(a.dout) && aligned16(a.dys);
  for (i64 s = w.warp; s < a.slots; s += w.warps) {
    const int row = a.positions[s];
    A dot = A(0);
    if (row >= 0) {
      const A weight = ld(a.weights[s]);
      const T* dout = a.dout + (s / a.K) * a.D;
      const T* ys = a.ys + (i64)row * a.D;
      T* dys = a.dys + (i64)row * a.D;
      if (packed) {
        for (i64 p = w.lane; p < a.D / V; p += 32) {
          const P g = reinterpret_cast<const P*>(dout)[p], y = reinterpret_cast<const P*>(ys)[p];
          P dy;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            dy.v[j] = st<T>(weight * ld(g.v[j]));
            dot += ld(g.v[j]) * ld(y.v[j]);
          }
          reinterpret_cast<P*>(dys)[p] = dy;
        }
      } else {
        for (i64 d = w.lane; d < a.D; d += 32) {
          dys[d] = st<T>(weight * ld(dout[d]));
          dot += ld(dout[d]) * ld(ys[d]);
        }
      }
    }
    dot = warp_reduce(dot, SumOp());
    if (w.lane == 0) a.dweights[s] = st<T>(dot);
  }
}

// Per-expert statistics for the auxiliary losses, in chunks of tokens (a
// block per chunk, a thread per expert summing the chunk's tokens in order),
// then expert_stats_finish: stats[e] = share of the T*K slots routed to e
// (when experts != null), stats[E + e] = mean over tokens of probs[:, e].
// A chunk's slots are counted into a shared histogram (E ints of dynamic
// shared memory; exact integers, so the order of the adds does not matter).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) expert_stats_parts_kernel(const ExpertStatsArgs<T> a) {
  extern __shared__ int expert_stats_hist[];
  for (i64 c = blockIdx.x; c < a.chunks; c += gridDim.x) {
    const i64 first = c * a.chunk, last = first + a.chunk < a.tokens ? first + a.chunk : a.tokens;
    if (a.experts) {
      for (int e = threadIdx.x; e < a.E; e += THREADS) expert_stats_hist[e] = 0;
      __syncthreads();
      for (i64 s = first * a.K + threadIdx.x; s < last * a.K; s += THREADS) {
        const int e = a.experts[s];
        if (e >= 0 && e < a.E) atomicAdd(&expert_stats_hist[e], 1);
      }
      __syncthreads();
    }
    for (int e = threadIdx.x; e < a.E; e += THREADS) {
      double sum = 0.0;
      for (i64 t = first; t < last; ++t) sum += (double)ld(a.probs[t * a.E + e]);
      a.partials[(c * a.E + e) * 2] = sum;
      a.partials[(c * a.E + e) * 2 + 1] = a.experts ? (double)expert_stats_hist[e] : 0.0;
    }
    __syncthreads();  // the histogram is read before the next chunk clears it
  }
}

template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) expert_stats_finish_kernel(const ExpertStatsArgs<T> a) {
  __shared__ double scratch[33];
  for (int e = blockIdx.x; e < a.E; e += gridDim.x) {
    double sum = 0.0, count = 0.0;
    for (i64 c = threadIdx.x; c < a.chunks; c += blockDim.x) {
      sum += a.partials[(c * a.E + e) * 2];
      count += a.partials[(c * a.E + e) * 2 + 1];
    }
    sum = block_reduce(sum, SumOp(), scratch);
    __syncthreads();
    count = block_reduce(count, SumOp(), scratch);
    if (threadIdx.x == 0) {
      a.stats[a.E + e] = sum / (double)a.tokens;
      if (a.experts) a.stats[e] = count / (double)(a.tokens * a.K);
    }
    __syncthreads();
  }
}

// moe.load_balance_loss (kind 0): coeff * E * sum_e f_e P_e;
// moe.entropy_reg (kind 1): coeff * sum_e p_e log max(p_e, 1e-20). One thread.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) expert_loss_kernel(const ExpertLossArgs<T> a) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double sum = 0.0;
  for (int e = 0; e < a.E; ++e) {
    double p = a.stats[a.E + e];
    sum += a.kind == 0 ? a.stats[e] * p : p * log(p > 1e-20 ? p : 1e-20);
  }
  a.out[0] = from_double<T>(a.kind == 0 ? a.coeff * (double)a.E * sum : a.coeff * sum);
}

// Their gradients: dprobs[t, e] = dloss * coeff * E * f_e / T (kind 0), or
// dloss * coeff * (log max(p_e, 1e-20) + 1) / T (kind 1).
// A block takes THREADS / E rows at a time (a row a pass when E >= THREADS),
// each thread one expert of them, so a thread computes its expert's value
// once (an index mod E an element made the kernel compute-bound: 18 us for
// 24576 x 128 on the H200).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) expert_loss_grad_kernel(const ExpertLossGradArgs<T> a) {
  const double scale = (double)ld(a.dloss[0]) * a.coeff / (double)a.tokens;
  auto grad = [&](int e) {
    const double p = a.stats[a.E + e];
    return from_double<T>(a.kind == 0 ? scale * (double)a.E * a.stats[e] : scale * (log(p > 1e-20 ? p : 1e-20) + 1.0));
  };
  if (a.E < THREADS) {
    const int per = THREADS / a.E, sub = (int)threadIdx.x / a.E, e = (int)threadIdx.x % a.E;
    if (sub >= per) return;
    const T g = grad(e);
    for (i64 r = (i64)blockIdx.x * per + sub; r < a.tokens; r += (i64)gridDim.x * per) a.dprobs[r * a.E + e] = g;
  } else {
    for (i64 r = blockIdx.x; r < a.tokens; r += gridDim.x)
      for (int e = threadIdx.x; e < a.E; e += THREADS) a.dprobs[r * a.E + e] = grad(e);
  }
}

// moe.z_loss, pass 1: row_values[t] = logsumexp(logits[t])^2 (then mean_of_values).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) z_loss_rows_kernel(const ZLossRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  for (i64 t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    A lse = row_logsumexp<T, A>(a.logits + t * a.E, a.E, scratch);
    if (threadIdx.x == 0) a.row_values[t] = (double)lse * (double)lse;
  }
}

// moe.z_loss_grad: dlogits[t, e] = dloss * coeff * 2 * lse_t * softmax(logits[t])_e / T.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) z_loss_grad_kernel(const ZLossGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A scratch[33];
  A scale = A((double)ld(a.dloss[0]) * a.coeff * 2.0 / (double)a.tokens);
  for (i64 t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    const T* row = a.logits + t * a.E;
    A lse = row_logsumexp<T, A>(row, a.E, scratch);
    for (i64 e = threadIdx.x; e < a.E; e += blockDim.x) a.dlogits[t * a.E + e] = st<T>(scale * lse * m_exp(ld(row[e]) - lse));
  }
}

// The same two kernels for rows of E <= EMAX <= 32 values (a router's
// experts): one thread per token, the row in registers, the logsumexp of
// row_logsumexp computed in order (a block per 8-value row spent its time
// in block reductions). Grid-stride over tokens.
template <class T, int EMAX, class A> __device__ __forceinline__ A thread_row_logsumexp(const T* row, int E, A (&x)[EMAX]) {
  A max = lowest_value<A>();
#pragma unroll
  for (int e = 0; e < EMAX; ++e) {
    x[e] = e < E ? ld(row[e]) : A(0);
    if (e < E) max = MaxOp()(max, x[e]);
  }
  A sum = A(0);
#pragma unroll
  for (int e = 0; e < EMAX; ++e)
    if (e < E) sum += m_exp(x[e] - max);
  return max + m_log(sum);
}

template <class T, int EMAX, int THREADS> __global__ void __launch_bounds__(THREADS) z_loss_rows_thread_kernel(const ZLossRowsArgs<T> a) {
  typedef typename acc_of<T>::type A;
  MOEJIT_FOR_EACH(t, a.tokens) {
    A x[EMAX];
    const A lse = thread_row_logsumexp<T, EMAX, A>(a.logits + t * a.E, (int)a.E, x);
    a.row_values[t] = (double)lse * (double)lse;
  }
}

template <class T, int EMAX, int THREADS> __global__ void __launch_bounds__(THREADS) z_loss_grad_thread_kernel(const ZLossGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  const A scale = A((double)ld(a.dloss[0]) * a.coeff * 2.0 / (double)a.tokens);
  MOEJIT_FOR_EACH(t, a.tokens) {
    A x[EMAX];
    const A lse = thread_row_logsumexp<T, EMAX, A>(a.logits + t * a.E, (int)a.E, x);
#pragma unroll
    for (int e = 0; e < EMAX; ++e)
      if (e < a.E) a.dlogits[t * a.E + e] = st<T>(scale * lse * m_exp(x[e] - lse));
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
