// The device side of comm.all_to_all over NCCL (codegen/emit_comm.cpp). NCCL
// sends fixed sizes known on the host, and the per-peer counts live on the
// device, so the exchange goes through per-peer blocks of a static capacity
// C (the rows of x: enough when every row goes to one peer):
//   a2a_pack_kernel    x's packed rows (send_counts[d] for rank d, in rank
//                      order) -> blocks [N, C, D], block d = rank d's rows;
//                      counts_out = send_counts (the counts travel too)
//   (NCCL: block d and count d go to rank d, block s and count s come from s)
//   a2a_unpack_kernel  received blocks [N, C, D] + counts -> y's packed rows
//                      in source-rank order, zero past them; recv_counts
// All of it runs on the executor's stream, so a CUDA graph captures it.
#pragma once
#include "codegen/kernels/common.cuh"

namespace mj {

template <class T> struct A2aPackArgs {
  const T* x;
  const int* send_counts;  // [N]
  T* blocks;               // [N, C, D]
  int* counts_out;         // [N]
  i64 capacity;            // C
  i64 D;
  int world;               // N
};

template <class T> struct A2aUnpackArgs {
  const T* blocks;        // [N, C, D], block s from rank s
  const int* counts_in;   // [N], what each rank sent here
  T* y;                   // [rows, D]
  int* recv_counts;       // [N]
  i64 capacity;
  i64 rows;
  i64 D;
  int world;
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {

// One warp per row of the blocks; rows past a peer's count are zero.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) a2a_pack_kernel(const A2aPackArgs<T> a) {
  const WarpRows w;
  if (blockIdx.x == 0 && threadIdx.x < (unsigned)a.world) a.counts_out[threadIdx.x] = a.send_counts[threadIdx.x];
  for (i64 r = w.warp; r < (i64)a.world * a.capacity; r += w.warps) {
    const int d = (int)(r / a.capacity);
    const i64 j = r % a.capacity;
    i64 first = 0;
    for (int p = 0; p < d; ++p) first += a.send_counts[p];
    const T* src = j < a.send_counts[d] ? a.x + (first + j) * a.D : nullptr;
    T* dst = a.blocks + r * a.D;
    for (i64 c = w.lane; c < a.D; c += 32) dst[c] = src ? src[c] : st<T>(typename acc_of<T>::type(0));
  }
}

// One warp per row of y: row i comes from the rank s whose received rows
// cover it (counts in rank order), else zero.
template <class T, int THREADS> __global__ void __launch_bounds__(THREADS) a2a_unpack_kernel(const A2aUnpackArgs<T> a) {
  const WarpRows w;
  if (blockIdx.x == 0 && threadIdx.x < (unsigned)a.world) a.recv_counts[threadIdx.x] = a.counts_in[threadIdx.x];
  for (i64 r = w.warp; r < a.rows; r += w.warps) {
    const T* src = nullptr;
    i64 first = 0;
    for (int s = 0; s < a.world; ++s) {
      const i64 n = a.counts_in[s];
      if (r < first + n) {
        src = a.blocks + ((i64)s * a.capacity + (r - first)) * a.D;
        break;
      }
      first += n;
    }
    T* dst = a.y + r * a.D;
    for (i64 c = w.lane; c < a.D; c += 32) dst[c] = src ? src[c] : st<T>(typename acc_of<T>::type(0));
  }
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
