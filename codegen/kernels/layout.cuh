// Kernel family "layout": data movement. One strided copy serves reshape,
// transpose, broadcast (stride 0), slice, pad (into a zeroed output) and
// concat (one copy per input); embedding gathers rows, and its backward sorts
// the tokens by id (a counting sort) and sums each id's rows in token order
// (no float atomics, so it is deterministic).
#pragma once
#include "codegen/kernels/common.cuh"

namespace mj {

// dst[dst_offset + dims_offset(dst_dims, i)] = src[src_offset + dims_offset(src_dims, i)]
// for i over the region (src_dims.size == dst_dims.size). E is a plain
// unsigned integer type of the element's size.
template <class E> struct CopyArgs {
  const E* src;
  E* dst;
  Dims src_dims, dst_dims;
  i64 src_offset, dst_offset, n;
};

// mj.embedding: table [V, D], ids [n] -> out [n, D].
template <class T> struct EmbeddingArgs {
  const T* table;
  const int* ids;
  T* out;
  i64 n, V, D;
};

// mj.embedding_grad: ids [n], dy [n, D] -> dtable [V, D], in four launches
// (after a memset of chunk_counts) that sort the token positions by id, a
// deterministic counting sort, then sum each id's rows in token order:
//   1. count:  block b takes tokens [b * kEmbeddingChunk, ...): each token's
//              rank among the earlier tokens of its chunk with the same id
//              (rank[n]), and chunk_counts[id * chunks + b] = how many
//              tokens of the chunk have that id;
//   2. scan:   chunk_counts becomes its exclusive prefix sum in (id, chunk)
//              order, so entry (id, b) is where chunk b's tokens of id
//              start in the sorted order and entry (id, 0) where id's
//              segment starts; entry V * chunks is the number of valid ids;
//   3. place:  order[start(id, b) + rank] = token;
//   4. sum:    one block per (id, block of 32 kEmbeddingColumnsPerLane
//              columns): its warps take the rows order[segment of id] in
//              turn, then a fixed tree across the warps.
// Integer counts make 1-3 exact; 4 has a fixed order, so two runs agree bit
// for bit. An id outside 0..V-1 is skipped (the CPU backend reports it).
constexpr int kEmbeddingChunk = 256;             // tokens per block of passes 1 and 3
constexpr int kEmbeddingColumnsPerLane = 8;      // pass 4: columns lane + 32 j, j < 8
template <class T> struct EmbeddingGradArgs {
  const int* ids;
  const T* dy;
  T* dtable;
  int* rank;          // [n]
  int* chunk_counts;  // [V * chunks + 1], zeroed before pass 1
  int* order;         // [n]
  i64 n, V, D, chunks;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// When the innermost dimension has 32 elements or more, each warp copies
// whole runs of it (WarpRows: the offsets of a run's start computed once,
// then a stride per element; 16-byte packs where both sides are contiguous
// and aligned); else one thread per element, each offset from its index.
template <class E, int THREADS> __global__ void __launch_bounds__(THREADS) copy_kernel(const CopyArgs<E> a) {
  const int rank = a.dst_dims.rank;
  const i64 inner = rank > 0 ? a.dst_dims.size[rank - 1] : 1;
  if (rank == 0 || inner < 32) {
    MOEJIT_FOR_EACH(i, a.n) a.dst[a.dst_offset + dims_offset(a.dst_dims, i)] = a.src[a.src_offset + dims_offset(a.src_dims, i)];
    return;
  }
  constexpr int V = pack16<E>::n;
  typedef Pack<E, V> P;
  const i64 src_step = a.src_dims.stride[rank - 1], dst_step = a.dst_dims.stride[rank - 1];
  const WarpRows w;
  for (i64 run = w.warp; run < a.n / inner; run += w.warps) {
    const E* src = a.src + a.src_offset + dims_offset(a.src_dims, run * inner);
    E* dst = a.dst + a.dst_offset + dims_offset(a.dst_dims, run * inner);
    if (src_step == 1 && dst_step == 1 && inner % V == 0 && aligned16(src) && aligned16(dst)) {
      for (i64 p = w.lane; p < inner / V; p += 32) reinterpret_cast<P*>(dst)[p] = reinterpret_cast<const P*>(src)[p];
    } else {
      for (i64 j = w.lane; j < inner; j += 32) dst[j * dst_step] = src[j * src_step];
    }
  }
}

// One warp per token row: the id is read once, the lanes copy the columns.
// An id outside 0..V-1 gives a row of zeros (the CPU backend reports it as an error).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_kernel(const EmbeddingArgs<T> a) {
  const int lane = threadIdx.x & 31;
  for (i64 row = ((i64)blockIdx.x * THREADS + threadIdx.x) / 32; row < a.n; row += (i64)gridDim.x * THREADS / 32) {
    const int id = a.ids[row];
    const bool valid = id >= 0 && id < a.V;
    for (i64 col = lane; col < a.D; col += 32)
      a.out[row * a.D + col] = valid ? a.table[(i64)id * a.D + col] : st<T>(typename acc_of<T>::type(0));
  }
}

__device__ __forceinline__ bool embedding_id_valid(int id, i64 V) { return id >= 0 && id < V; }

// Pass 1 (one block of kEmbeddingChunk threads per chunk of tokens).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_grad_count_kernel(const EmbeddingGradArgs<T> a) {
  __shared__ int chunk_ids[kEmbeddingChunk];
  for (i64 chunk = blockIdx.x; chunk < a.chunks; chunk += gridDim.x) {
    const i64 first = chunk * kEmbeddingChunk;
    const int count = (int)(a.n - first < kEmbeddingChunk ? a.n - first : kEmbeddingChunk);
    __syncthreads();  // the previous chunk's ids are read no more
    for (int t = threadIdx.x; t < kEmbeddingChunk; t += THREADS) chunk_ids[t] = t < count ? a.ids[first + t] : -1;
    __syncthreads();
    for (int t = threadIdx.x; t < count; t += THREADS) {
      const int id = chunk_ids[t];
      if (!embedding_id_valid(id, a.V)) continue;
      int before = 0, same = 0;
      for (int u = 0; u < count; ++u) {
        const bool match = chunk_ids[u] == id;
        before += match && u < t;
        same += match;
      }
      a.rank[first + t] = before;
      if (before == 0) a.chunk_counts[(i64)id * a.chunks + chunk] = same;
    }
  }
}

// Pass 2 (one block): exclusive prefix sum of chunk_counts[0 .. V * chunks], in place.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_grad_scan_kernel(const EmbeddingGradArgs<T> a) {
  __shared__ i64 scratch[33];
  __shared__ i64 carry;
  const i64 total = a.V * a.chunks + 1;
  if (threadIdx.x == 0) carry = 0;
  for (i64 base = 0; base < total; base += THREADS) {
    const i64 i = base + threadIdx.x;
    const i64 value = i < total ? (i64)a.chunk_counts[i] : 0;
    // Inclusive scan inside the warp, then over the warps' totals.
    i64 inclusive = value;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int delta = 1; delta < 32; delta <<= 1) {
      const i64 up = __shfl_up_sync(0xffffffffu, inclusive, delta);
      if (lane >= delta) inclusive += up;
    }
    __syncthreads();  // carry and scratch of the previous tile are read
    if (lane == 31) scratch[warp] = inclusive;
    __syncthreads();
    i64 warp_offset = carry;
    for (int w = 0; w < warp; ++w) warp_offset += scratch[w];
    if (i < total) a.chunk_counts[i] = (int)(warp_offset + inclusive - value);
    __syncthreads();
    if (threadIdx.x == THREADS - 1) carry = warp_offset + inclusive;
  }
}

// Pass 3 (as pass 1).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_grad_place_kernel(const EmbeddingGradArgs<T> a) {
  MOEJIT_FOR_EACH(token, a.n) {
    const int id = a.ids[token];
    if (!embedding_id_valid(id, a.V)) continue;
    const i64 chunk = token / kEmbeddingChunk;
    a.order[a.chunk_counts[(i64)id * a.chunks + chunk] + a.rank[token]] = (int)token;
  }
}

// Pass 4: block b of the grid takes id b / column_blocks and the columns
// [(b % column_blocks) * 256, + 256) (lane + 32 j); its warp w adds the
// rows w, w + WARPS, ... of the id's segment in sorted order, four rows'
// loads at a time, and the warps' sums meet in a fixed tree through
// shared memory (a frequent id, a space in text, no longer walks its
// thousands of rows on one warp).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_grad_sum_kernel(const EmbeddingGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  constexpr int kColumns = 32 * kEmbeddingColumnsPerLane, WARPS = THREADS / 32, U = 4;
  static_assert(THREADS % 32 == 0 && (WARPS & (WARPS - 1)) == 0, "a power-of-two count of warps");
  __shared__ A slot[(WARPS > 1 ? WARPS / 2 : 1) * kColumns];
  const i64 column_blocks = (a.D + kColumns - 1) / kColumns;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (i64 w = blockIdx.x; w < a.V * column_blocks; w += gridDim.x) {
    const i64 id = w / column_blocks, column0 = (w % column_blocks) * kColumns + lane;
    const i64 begin = a.chunk_counts[id * a.chunks], end = a.chunk_counts[(id + 1) * a.chunks];
    A sum[kEmbeddingColumnsPerLane];
#pragma unroll
    for (int j = 0; j < kEmbeddingColumnsPerLane; ++j) sum[j] = A(0);
    for (i64 s0 = begin + warp; s0 < end; s0 += (i64)WARPS * U) {
      A v[U][kEmbeddingColumnsPerLane];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const i64 s = s0 + (i64)u * WARPS;
        const T* row = s < end ? a.dy + (i64)a.order[s] * a.D : nullptr;
#pragma unroll
        for (int j = 0; j < kEmbeddingColumnsPerLane; ++j) v[u][j] = row && column0 + 32 * j < a.D ? (A)ld(row[column0 + 32 * j]) : A(0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int j = 0; j < kEmbeddingColumnsPerLane; ++j) sum[j] += v[u][j];
    }
    for (int half = WARPS / 2; half >= 1; half /= 2) {
      if (warp >= half && warp < 2 * half) {
#pragma unroll
        for (int j = 0; j < kEmbeddingColumnsPerLane; ++j) slot[(warp - half) * kColumns + 32 * j + lane] = sum[j];
      }
      __syncthreads();
      if (warp < half) {
#pragma unroll
        for (int j = 0; j < kEmbeddingColumnsPerLane; ++j) sum[j] += slot[warp * kColumns + 32 * j + lane];
      }
      __syncthreads();
    }
    if (warp == 0) {
#pragma unroll
      for (int j = 0; j < kEmbeddingColumnsPerLane; ++j)
        if (column0 + 32 * j < a.D) a.dtable[id * a.D + column0 + 32 * j] = st<T>(sum[j]);
    }
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
