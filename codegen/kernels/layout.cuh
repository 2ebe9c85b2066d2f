// Kernel family "layout": data movement. One strided copy serves reshape,
// transpose, broadcast (stride 0), slice, pad (into a zeroed output) and
// concat (one copy per input); embedding gathers rows, and its backward sums
// them per id in a fixed order (no atomics, so it is deterministic).
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

// mj.embedding_grad: ids [n], dy [n, D] -> dtable [V, D].
template <class T> struct EmbeddingGradArgs {
  const int* ids;
  const T* dy;
  T* dtable;
  i64 n, V, D;
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

// An id outside 0..V-1 gives a row of zeros (the CPU backend reports it as an error).
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_kernel(const EmbeddingArgs<T> a) {
  MOEJIT_FOR_EACH(i, a.n * a.D) {
    i64 row = i / a.D, col = i % a.D;
    int id = a.ids[row];
    a.out[i] = (id >= 0 && id < a.V) ? a.table[(i64)id * a.D + col] : st<T>(typename acc_of<T>::type(0));
  }
}

// One thread per (v, column) sums the rows with id v in order.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) embedding_grad_kernel(const EmbeddingGradArgs<T> a) {
  typedef typename acc_of<T>::type A;
  MOEJIT_FOR_EACH(i, a.V * a.D) {
    i64 v = i / a.D, col = i % a.D;
    A sum = A(0);
    for (i64 r = 0; r < a.n; ++r)
      if (a.ids[r] == v) sum += ld(a.dy[r * a.D + col]);
    a.dtable[i] = st<T>(sum);
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
