// Kernel family "moeut": expert-choice routing (moe.expert_choice),
// following runtime/cpu/cpu_moeut.cpp (the specification) exactly.
//
// Design: the rank of token t in expert e's column is the number of tokens
// that rank before it (higher score, NaN last, ties to the lower token), so
// a token is chosen iff its rank < C and its row is e*C + rank: no sort, no
// scan, and no two threads write the same row (ranks are distinct). A block
// of THREADS threads owns THREADS tokens of one expert (grid.y = expert) and
// streams the expert's column through shared memory in tiles of THREADS, so
// the work is O(T^2) comparisons per expert spread over T/THREADS blocks.
// That is fine for the tokens an expert-choice layer sees per batch (up to
// ~16k); a sorting network would be the next step past that.
#pragma once
#include "codegen/kernels/common.cuh"

namespace mj {

template <class T> struct ExpertChoiceArgs {
  const T* scores;  // [T, E]
  int* slots;       // [E*C]
  int* offsets;     // [E+1]
  int* positions;   // [T, E]
  int* counts;      // [E]
  i64 tokens;
  i64 E;
  i64 capacity;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// Token a (score sa) ranks before token b (score sb) in one expert's column.
template <class A> __device__ __forceinline__ bool expert_choice_ranks_before(A sa, i64 a, A sb, i64 b) {
  const bool a_nan = sa != sa, b_nan = sb != sb;
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && sa != sb) return sa > sb;
  return a < b;
}

// moe.expert_choice. scores [T, E] -> slots [E*C], offsets [E+1], positions [T, E], counts [E].
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) expert_choice_kernel(const ExpertChoiceArgs<T> a) {
  typedef typename acc_of<T>::type A;
  __shared__ A column[THREADS];
  const i64 e = blockIdx.y;
  const i64 t = (i64)blockIdx.x * THREADS + threadIdx.x;
  const A mine = t < a.tokens ? (A)ld(a.scores[t * a.E + e]) : (A)0;
  i64 rank = 0;
  for (i64 base = 0; base < a.tokens; base += THREADS) {
    const i64 other = base + threadIdx.x;
    if (other < a.tokens) column[threadIdx.x] = (A)ld(a.scores[other * a.E + e]);
    __syncthreads();
    const i64 n = a.tokens - base < (i64)THREADS ? a.tokens - base : (i64)THREADS;
    if (t < a.tokens)
      for (i64 j = 0; j < n; ++j) rank += expert_choice_ranks_before(column[j], base + j, mine, t) ? 1 : 0;
    __syncthreads();
  }
  if (t < a.tokens) {
    if (rank < a.capacity) {
      a.slots[e * a.capacity + rank] = (int)(t * a.E + e);
      a.positions[t * a.E + e] = (int)(e * a.capacity + rank);
    } else {
      a.positions[t * a.E + e] = -1;
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    a.offsets[e] = (int)(e * a.capacity);
    a.counts[e] = (int)a.capacity;
    if (e == a.E - 1) a.offsets[a.E] = (int)(a.E * a.capacity);
  }
}

}  // namespace mj
#endif
