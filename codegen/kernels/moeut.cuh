// Kernel library, part 8: expert-choice routing (moe.expert_choice),
// following runtime/cpu/cpu_moeut.cpp (the specification) exactly.
//
// Design: the rank of token t in expert e's column is the number of tokens
// that rank before it (higher score, NaN last, ties to the lower token), so
// a token is chosen iff its rank < C and its row is e*C + rank: no sort, no
// scan, and no two threads write the same row (ranks are distinct). A block
// of 256 threads owns 256 tokens of one expert (grid.y = expert) and streams
// the expert's column through shared memory in tiles of 256, so the work is
// O(T^2) comparisons per expert spread over T/256 blocks. That is fine for
// the sizes an expert-choice layer sees per batch (T up to ~16k); a sorting
// network would be the next step past that.
R"MOEJIT_CUDA(
template <class A> __device__ __forceinline__ bool expert_choice_ranks_before(A sa, i64 a, A sb, i64 b) {
  const bool a_nan = sa != sa, b_nan = sb != sb;
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && sa != sb) return sa > sb;
  return a < b;
}

// scores [T, E] -> slots [E*C], offsets [E+1], positions [T, E], counts [E]; blockDim.x = 256.
template <class T>
__device__ void expert_choice_impl(const T* scores, int* slots, int* offsets, int* positions, int* counts, i64 tokens, i64 E,
                                   i64 capacity) {
  typedef typename acc_of<T>::type A;
  __shared__ A column[256];
  const i64 e = blockIdx.y;
  const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const A mine = t < tokens ? (A)ld(scores[t * E + e]) : (A)0;
  i64 rank = 0;
  for (i64 base = 0; base < tokens; base += blockDim.x) {
    const i64 other = base + threadIdx.x;
    if (other < tokens) column[threadIdx.x] = (A)ld(scores[other * E + e]);
    __syncthreads();
    const i64 n = tokens - base < (i64)blockDim.x ? tokens - base : (i64)blockDim.x;
    if (t < tokens)
      for (i64 j = 0; j < n; ++j) rank += expert_choice_ranks_before(column[j], base + j, mine, t) ? 1 : 0;
    __syncthreads();
  }
  if (t < tokens) {
    if (rank < capacity) {
      slots[e * capacity + rank] = (int)(t * E + e);
      positions[t * E + e] = (int)(e * capacity + rank);
    } else {
      positions[t * E + e] = -1;
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    offsets[e] = (int)(e * capacity);
    counts[e] = (int)capacity;
    if (e == E - 1) offsets[E] = (int)(E * capacity);
  }
}
)MOEJIT_CUDA"
