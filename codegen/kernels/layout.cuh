// Kernel library, part 5: data movement. One strided copy serves reshape,
// transpose, broadcast (stride 0), slice, pad (into a zeroed output) and
// concat (one copy per input); embedding gathers rows, and its backward sums
// them per id in a fixed order (no atomics, so it is deterministic).
R"MOEJIT_CUDA(
// dst[dst_offset + dims_offset(dst_dims, i)] = src[src_offset + dims_offset(src_dims, i)]
// for i over the region (src_dims.size == dst_dims.size). E is a plain
// integer type of the element's size.
template <class E> __device__ void copy_impl(const E* src, E* dst, Dims src_dims, Dims dst_dims, i64 src_offset, i64 dst_offset,
                                             i64 n) {
  MOEJIT_FOR_EACH(i, n) dst[dst_offset + dims_offset(dst_dims, i)] = src[src_offset + dims_offset(src_dims, i)];
}

// mj.embedding: table [V, D], ids [n] -> out [n, D]; an id outside 0..V-1
// gives a row of zeros (the CPU backend reports it as an error).
template <class T> __device__ void embedding_impl(const T* table, const int* ids, T* out, i64 n, i64 V, i64 D) {
  MOEJIT_FOR_EACH(i, n * D) {
    i64 row = i / D, col = i % D;
    int id = ids[row];
    out[i] = (id >= 0 && id < V) ? table[(i64)id * D + col] : st<T>(typename acc_of<T>::type(0));
  }
}

// mj.embedding_grad: ids [n], dy [n, D] -> dtable [V, D]; one thread per
// (v, column) sums the rows with id v in order.
template <class T> __device__ void embedding_grad_impl(const int* ids, const T* dy, T* dtable, i64 n, i64 V, i64 D) {
  typedef typename acc_of<T>::type A;
  MOEJIT_FOR_EACH(i, V * D) {
    i64 v = i / D, col = i % D;
    A sum = A(0);
    for (i64 r = 0; r < n; ++r)
      if (ids[r] == v) sum += ld(dy[r * D + col]);
    dtable[i] = st<T>(sum);
  }
}
)MOEJIT_CUDA"
