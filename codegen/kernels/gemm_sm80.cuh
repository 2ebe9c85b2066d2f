// Ampere / Ada (sm_80 .. sm_89) tensor-core GEMM family: C = epilogue(A * B),
// bf16 or f16 operands, f32 accumulation, for dense, batched and grouped
// (MoE expert) matrix products; also what serves 16-bit products on sm_90
// that the Hopper family (gemm_sm90.cuh) cannot take (f16, a plain sm_90
// target, rows the copy engine cannot address).
//
// Design (one kernel template, every layout the forward and backward passes
// need):
//   - a block of (BM / 64) x (BN / 64) warps computes a BM x BN tile of C,
//     each warp a 64 x 64 piece: 4 x 8 mma.sync.m16n8k16 per 16 of K, 128
//     f32 accumulators per thread;
//   - K advances in slices of BK = 32 through a ring of STAGES shared-memory
//     stages filled by cp.async (16-byte copies, zero-filled past the
//     bounds), STAGES - 1 slices in flight while one is multiplied;
//   - operands sit in shared memory as they sit in global memory (stored
//     rows of 16-byte chunks, XOR-swizzled so that the eight rows one
//     ldmatrix phase reads fall in eight different bank groups), and
//     ldmatrix (with .trans for an M-major A or an N-major B) produces the
//     mma fragments, so no operand is ever transposed in memory;
//   - a persistent grid walks the output tiles of every group (a grid
//     stride), in panels of 8 row tiles x all column tiles for L2 reuse;
//   - the epilogue is a functor applied to pairs of adjacent columns straight
//     from the accumulators (bounds-checked: any M and N): an f32 store, a
//     16-bit store, GELU with the pre-activation kept, or GELU's backward
//     reading the pre-activation (codegen/kernels/gemm_epilogue.cuh).
// A is K-major ([rows, K]) or M-major ([K, rows]); B is K-major ([N, K]) or
// N-major ([K, N], the usual row-major weight).
//
// Groups: with `group_offsets` (grouped mode: moe.grouped_matmul,
// moe.gather_matmul, moe.matmul_combine and the input gradients) group g
// owns rows group_offsets[g] .. group_offsets[g+1]-1 of A and C and
// multiplies them by B[g]; with `a_rows` as well, row i of A is row
// a_rows[i] / a_row_div of `a` (a row of zeros where a_rows[i] < 0): the
// gather of moe.gather_matmul happens in the cp.async of A. With `varlen_k`
// (moe.grouped_matmul_wgrad) group g instead owns that range of K:
// C[g] = A[:, range] B[range, :], A M-major and B N-major; an empty group
// gives C[g] = 0. Offsets are read on the device, so the launch does not
// depend on the routing. Without offsets (batched mode) there are `groups`
// products of `m` rows each, A / B / C `*_group_stride` elements apart
// (0: one operand shared by every group).
//
// Alignment: with VEC16 every stored row of A and B starts on 16 bytes (row
// strides multiples of 8 elements, 16-byte aligned bases) and chunks are
// copied by cp.async; without it (an odd K, say) each chunk is gathered
// element by element with bounds checks and stored to shared memory by the
// threads, the same tile and the same MMAs (slower loads, still correct).
//
// The host compiler sees GemmArgs and smem_bytes (the emitter fills one and
// sizes shared memory with the other, codegen/gemm_sm80_launch.cpp); the
// device code sits inside `#if MOEJIT_DEVICE_CODE` (kernels/common.cuh).
#pragma once

#include "codegen/kernels/common.cuh"

// The shape rules below are used by the host emitter and by the kernel.
#if MOEJIT_DEVICE_CODE
#define MOEJIT_SM80_HOST_DEVICE __host__ __device__
#else
#define MOEJIT_SM80_HOST_DEVICE
#endif

namespace moejit::sm80 {

// Everything a launch of the family needs, built once on the host. Element
// (i, j) of a stored operand is at base[i * ld + j]: A K-major stores
// (m, k), M-major (k, m); B K-major stores (n, k), N-major (k, n).
struct GemmArgs {
  const void* a;
  const void* b;
  void* c;                   // output, row-major with row stride ldc
  void* aux;                 // like c: StoreGelu16's pre-activation output (null: not stored), StoreGeluGrad16's x input
  const int* group_offsets;  // grouped / wgrad mode: groups + 1 offsets; null: batched mode
  const int* a_rows;         // grouped mode: A's rows through these slots (moe.gather_matmul), or null
  long long m, n, k;         // batched: rows per group; grouped: all rows; wgrad: k = all rows
  long long lda, ldb, ldc;
  long long a_group_stride, b_group_stride, c_group_stride;  // elements between groups' operands (0: shared)
  int groups;
  int varlen_k;   // with group_offsets: the groups split K, not the rows (weight gradients)
  int a_row_div;  // with a_rows: the slot's row of `a` is a_rows[i] / a_row_div (top_k)
};

// The tile shapes the family instantiates (checked on the host by gemm_select.cpp).
MOEJIT_SM80_HOST_DEVICE constexpr bool tile_supported(int bm, int bn, int bk) { return bm == 128 && bn == 128 && bk == 32; }
MOEJIT_SM80_HOST_DEVICE constexpr int threads_for(int bm, int bn) { return (bm / 64) * (bn / 64) * 32; }
// The dynamic shared memory a launch asks for: the stages, then (grouped
// mode) the first tile index of each group.
MOEJIT_SM80_HOST_DEVICE constexpr long long smem_bytes(int bm, int bn, int bk, int stages, long long groups, bool grouped) {
  return stages * (bm + bn) * bk * 2ll + (grouped ? 4 * (groups + 1) : 0);
}

}  // namespace moejit::sm80

#if MOEJIT_DEVICE_CODE
#include "codegen/kernels/gemm_epilogue.cuh"

namespace moejit::sm80 {

// ---- PTX wrappers ----
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  unsigned r;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}
// 16 bytes from global to shared; only the first `src_bytes` are read, the
// rest of the 16 are zero-filled (src_bytes 0: a chunk of zeros).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a b for one m16n8k16 (a: 4 registers of the 16 x 16 A fragment, b: 2
// of the 16 x 8 B fragment, d: 4 f32 of the 16 x 8 C fragment).
template <class T> struct Mma;
template <> struct Mma<mj::bf16_t> {
  __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<mj::f16_t> {
  __device__ __forceinline__ static void run(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Byte offset of 16-byte chunk `c` of stored row `r` in a tile of W chunks
// per row. W >= 8: the chunk's low three bits are XORed with r % 8 (eight
// consecutive rows at one logical chunk land in eight bank groups). W = 4
// (a 64-byte row, two rows per 128-byte line): XOR with (r / 2) % 4, which
// gives the same property for the line pairs.
template <int W> __device__ __forceinline__ unsigned swizzled(int r, int c) {
  static_assert(W == 4 || (W >= 8 && W % 8 == 0), "rows of 4 or a multiple of 8 chunks");
  if constexpr (W == 4) return (unsigned)(r * 4 + (c ^ ((r >> 1) & 3))) * 16u;
  else return (unsigned)(r * W + (c ^ (r & 7))) * 16u;
}

// Copies chunk [inner, inner + 8) of a stored row (null: outside the
// operand) into shared memory at `dst`, zeros past `limit`.
template <bool VEC16>
__device__ __forceinline__ void copy_chunk(unsigned dst, const unsigned short* row, long long inner, long long limit, const void* any) {
  long long left = limit - inner;
  const int valid = row == nullptr || left <= 0 ? 0 : left >= 8 ? 8 : (int)left;
  if constexpr (VEC16) {
    cp_async16(dst, valid ? (const void*)(row + inner) : any, valid * 2);
  } else {
    unsigned short v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = e < valid ? row[inner + e] : (unsigned short)0;
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(dst), "r"(v[0] | ((unsigned)v[1] << 16)),
                 "r"(v[2] | ((unsigned)v[3] << 16)), "r"(v[4] | ((unsigned)v[5] << 16)), "r"(v[6] | ((unsigned)v[7] << 16))
                 : "memory");
  }
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// ---- epilogues: called for (row, col) and (row, col + 1); `pair` is false
// when col + 1 is past the last column. `at` = row * ldc + col (+ group offset).
struct StoreF32 {
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    float* c = static_cast<float*>(args.c) + at;
    if (pair && (at & 1) == 0) {
      *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
    } else {
      c[0] = v0;
      if (pair) c[1] = v1;
    }
  }
};
// A 16-bit result of the operands' type (round to nearest even).
template <class T> struct Pack2;
template <> struct Pack2<mj::bf16_t> {
  __device__ __forceinline__ static unsigned run(float lo, float hi) { return pack_bf16x2(lo, hi); }
};
template <> struct Pack2<mj::f16_t> {
  __device__ __forceinline__ static unsigned run(float lo, float hi) { return pack_f16x2(lo, hi); }
};
template <class T> struct Store16 {
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    unsigned short* c = static_cast<unsigned short*>(args.c) + at;
    const unsigned packed = Pack2<T>::run(v0, v1);
    if (pair && (at & 1) == 0) {
      *reinterpret_cast<unsigned*>(c) = packed;
    } else {
      c[0] = (unsigned short)(packed & 0xFFFFu);
      if (pair) c[1] = (unsigned short)(packed >> 16);
    }
  }
};

// The result type's rounding (what the unfused GEMM's store does) and back.
template <class T> struct Round16;
template <> struct Round16<mj::bf16_t> {
  __device__ __forceinline__ static float run(float v) { return epilogue::round_bf16(v); }
  __device__ __forceinline__ static float widen(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
};
template <> struct Round16<mj::f16_t> {
  __device__ __forceinline__ static float run(float v) { return epilogue::round_f16(v); }
  __device__ __forceinline__ static float widen(unsigned short b) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(b));
    return r;
  }
};

// c = gelu(acc) (mj.gelu of the rounded product), aux = acc when aux is set
// (the pre-activation a backward reads): an up-projection and its
// activation in one pass (passes/fuse_gemm_epilogue.cpp).
template <class T> struct StoreGelu16 {
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    if (args.aux) {
      GemmArgs pre = args;
      pre.c = args.aux;
      Store16<T>::apply(pre, at, v0, v1, pair);
    }
    Store16<T>::apply(args, at, epilogue::gelu(Round16<T>::run(v0)), epilogue::gelu(Round16<T>::run(v1)), pair);
  }
};
// c = gelu_grad(x, acc) = acc * gelu'(x), x = aux at the same place (the
// forward's pre-activation): a down-projection's input gradient and GELU's
// backward in one pass.
template <class T> struct StoreGeluGrad16 {
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    const unsigned short* x = static_cast<const unsigned short*>(args.aux) + at;
    v0 = epilogue::gelu_grad(Round16<T>::widen(x[0]), Round16<T>::run(v0));
    if (pair) v1 = epilogue::gelu_grad(Round16<T>::widen(x[1]), Round16<T>::run(v1));
    Store16<T>::apply(args, at, v0, v1, pair);
  }
};

// c (f32) = the accumulators rounded to T and widened (an mj.cast to f32 of
// the product, folded), aux = the 16-bit product itself when aux is set.
template <class T> struct StoreWiden16 {
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    if (args.aux) {
      GemmArgs product = args;
      product.c = args.aux;
      Store16<T>::apply(product, at, v0, v1, pair);
    }
    StoreF32::apply(args, at, Round16<T>::run(v0), Round16<T>::run(v1), pair);
  }
};

// ---- the tile walk ----
template <int BM, int BN> struct TileWalk {
  static constexpr int kPanelRows = 8;  // row tiles per L2 panel
  const GemmArgs& args;
  const int* tile_prefix;  // grouped mode: first tile index of each group (groups + 1, in shared memory)
  long long tiles_n;

  __device__ bool grouped_rows() const { return args.group_offsets && !args.varlen_k; }
  __device__ long long total() const {
    if (grouped_rows()) return tile_prefix[args.groups];
    return (long long)args.groups * ((args.m + BM - 1) / BM) * tiles_n;
  }
  // Tile t -> group, rows [row0, row0 + BM) clipped at row_end, first column,
  // and the group's K range [k_begin, k_end).
  __device__ void decode(long long t, int& group, long long& row0, long long& row_end, long long& col0, long long& k_begin,
                         long long& k_end) const {
    long long tiles_m, u;
    k_begin = 0;
    k_end = args.k;
    if (grouped_rows()) {
      int lo = 0, hi = args.groups - 1;  // the last group whose first tile is <= t
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (tile_prefix[mid] <= t) lo = mid;
        else hi = mid - 1;
      }
      group = lo;
      row0 = args.group_offsets[group];
      row_end = args.group_offsets[group + 1];
      tiles_m = (row_end - row0 + BM - 1) / BM;
      u = t - tile_prefix[group];
    } else {
      tiles_m = (args.m + BM - 1) / BM;
      const long long per_group = tiles_m * tiles_n;
      group = (int)(t / per_group);
      u = t % per_group;
      row0 = 0;
      row_end = args.m;
      if (args.varlen_k) {
        k_begin = args.group_offsets[group];
        k_end = args.group_offsets[group + 1];
      }
    }
    const long long first_m = u / (kPanelRows * tiles_n) * kPanelRows;
    const long long rows_in_panel = tiles_m - first_m < kPanelRows ? tiles_m - first_m : kPanelRows;
    const long long in_panel = u % (kPanelRows * tiles_n);
    row0 += (first_m + in_panel % rows_in_panel) * BM;
    col0 = in_panel / rows_in_panel * BN;
  }
};

template <class T, int BM, int BN, int BK, int STAGES, bool A_K_MAJOR, bool B_K_MAJOR, bool VEC16, class Epilogue>
__global__ void __launch_bounds__(threads_for(BM, BN)) gemm_sm80_kernel(const GemmArgs args) {
  static_assert(tile_supported(BM, BN, BK) && STAGES >= 2, "tile shape");
  constexpr int kThreads = threads_for(BM, BN), kWarpsN = BN / 64;
  constexpr int kATile = BM * BK * 2, kStage = (BM + BN) * BK * 2;
  // Stored tiles: K-major operands are (BM or BN) rows of BK / 8 chunks;
  // M/N-major ones BK rows of BM / 8 or BN / 8 chunks.
  constexpr int kAW = A_K_MAJOR ? BK / 8 : BM / 8, kBW = B_K_MAJOR ? BK / 8 : BN / 8;
  constexpr int kAChunks = BM * BK / 8 / kThreads, kBChunks = BN * BK / 8 / kThreads;  // per thread per stage
  static_assert(kAChunks * kThreads == BM * BK / 8 && kBChunks * kThreads == BN * BK / 8, "whole chunks per thread");
  extern __shared__ __align__(128) unsigned char smem[];
  const unsigned base = smem_u32(smem);
  int* tile_prefix = reinterpret_cast<int*>(smem + STAGES * kStage);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
  const long long tiles_n = (args.n + BN - 1) / BN;
  const unsigned short* a_all = static_cast<const unsigned short*>(args.a);
  const unsigned short* b_all = static_cast<const unsigned short*>(args.b);

  if (args.group_offsets && !args.varlen_k) {
    // tile_prefix[g] = sum over groups before g of row tiles * column tiles (a warp scan)
    if (tid < 32) {
      int carry = 0;
      for (int g0 = 0; g0 <= args.groups; g0 += 32) {
        const int g = g0 + lane;
        int count = 0;
        if (g < args.groups) count = (int)((args.group_offsets[g + 1] - args.group_offsets[g] + BM - 1) / BM * tiles_n);
        int inclusive = count;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
          const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
          if (lane >= d) inclusive += v;
        }
        if (g <= args.groups) tile_prefix[g] = carry + inclusive - count;
        carry += __shfl_sync(0xffffffffu, inclusive, 31);
      }
    }
    __syncthreads();
  }
  TileWalk<BM, BN> walk{args, tile_prefix, tiles_n};
  const long long total = walk.total();

  for (long long t = blockIdx.x; t < total; t += gridDim.x) {
    int group;
    long long row0, row_end, col0, k_begin, k_end;
    walk.decode(t, group, row0, row_end, col0, k_begin, k_end);
    const int k_tiles = (int)((k_end - k_begin + BK - 1) / BK);
    const bool grouped_rows = args.group_offsets && !args.varlen_k;
    const unsigned short* a_op = a_all + (grouped_rows ? 0 : group * args.a_group_stride);
    const unsigned short* b_op = b_all + group * args.b_group_stride;

    // The stored rows this thread copies for a K-major operand are the same
    // for every K slice: resolve them (and the gather) once per tile, as
    // row indices (-1: outside the operand, zeros).
    int a_row[A_K_MAJOR ? kAChunks : 1];
    int b_row[B_K_MAJOR ? kBChunks : 1];
    if constexpr (A_K_MAJOR) {
#pragma unroll
      for (int j = 0; j < kAChunks; ++j) {
        const long long r = row0 + (tid + j * kThreads) / (BK / 8);
        int index = -1;
        if (r < row_end) {
          if (args.a_rows) {
            const int slot = args.a_rows[r];
            index = slot >= 0 ? slot / args.a_row_div : -1;
          } else {
            index = (int)r;
          }
        }
        a_row[j] = index;
      }
    }
    if constexpr (B_K_MAJOR) {
#pragma unroll
      for (int j = 0; j < kBChunks; ++j) {
        const long long r = col0 + (tid + j * kThreads) / (BK / 8);
        b_row[j] = r < args.n ? (int)r : -1;
      }
    }
    // Slice kt of K into stage s.
    auto load_stage = [&](int kt, int s) {
      const unsigned a_dst = base + s * kStage, b_dst = a_dst + kATile;
      const long long k0 = k_begin + (long long)kt * BK;
#pragma unroll
      for (int j = 0; j < kAChunks; ++j) {
        const int i = tid + j * kThreads, r = i / kAW, c = i % kAW;
        if constexpr (A_K_MAJOR) {
          copy_chunk<VEC16>(a_dst + swizzled<kAW>(r, c), a_row[j] >= 0 ? a_op + a_row[j] * args.lda : nullptr, k0 + 8 * c, k_end, a_all);
        } else {
          const long long k = k0 + r;
          copy_chunk<VEC16>(a_dst + swizzled<kAW>(r, c), k < k_end ? a_op + k * args.lda : nullptr, row0 + 8 * c, row_end, a_all);
        }
      }
#pragma unroll
      for (int j = 0; j < kBChunks; ++j) {
        const int i = tid + j * kThreads, r = i / kBW, c = i % kBW;
        if constexpr (B_K_MAJOR) {
          copy_chunk<VEC16>(b_dst + swizzled<kBW>(r, c), b_row[j] >= 0 ? b_op + b_row[j] * args.ldb : nullptr, k0 + 8 * c, k_end, b_all);
        } else {
          const long long k = k0 + r;
          copy_chunk<VEC16>(b_dst + swizzled<kBW>(r, c), k < k_end ? b_op + k * args.ldb : nullptr, col0 + 8 * c, args.n, b_all);
        }
      }
    };

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // The previous tile's last reads of the ring are done before it is refilled.
    __syncthreads();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < k_tiles) load_stage(s, s);
      cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
      cp_async_wait<STAGES - 2>();  // slice kt has landed (this thread's copies) ...
      __syncthreads();              // ... everyone's; and stage (kt - 1) % STAGES is free
      if (kt + STAGES - 1 < k_tiles) load_stage(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
      cp_async_commit();
      const unsigned a_tile = base + (kt % STAGES) * kStage, b_tile = a_tile + kATile;
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        unsigned a_frag[4][4], b_frag[8][2];
        const int q = lane / 8, i8 = lane % 8;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int m = warp_m * 64 + i * 16;
          if constexpr (A_K_MAJOR) {
            // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
            ldmatrix_x4(a_frag[i], a_tile + swizzled<kAW>(m + i8 + 8 * (q % 2), kk * 2 + q / 2));
          } else {
            ldmatrix_x4_trans(a_frag[i], a_tile + swizzled<kAW>(kk * 16 + i8 + 8 * (q / 2), m / 8 + q % 2));
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int n = warp_n * 64 + j * 16;
          unsigned r[4];
          // matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
          if constexpr (B_K_MAJOR) ldmatrix_x4(r, b_tile + swizzled<kBW>(n + i8 + 8 * (q / 2), kk * 2 + q % 2));
          else ldmatrix_x4_trans(r, b_tile + swizzled<kBW>(kk * 16 + i8 + 8 * (q % 2), n / 8 + q / 2));
          b_frag[2 * j][0] = r[0];
          b_frag[2 * j][1] = r[1];
          b_frag[2 * j + 1][0] = r[2];
          b_frag[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) Mma<T>::run(acc[i][j], a_frag[i], b_frag[j][0], b_frag[j][1]);
      }
    }
    cp_async_wait<0>();

    // Epilogue: thread `lane` holds rows lane / 4 (+ 8) and columns
    // 2 * (lane % 4) (+ 1) of each 16 x 8 piece.
    const long long c_base = grouped_rows ? 0 : (long long)group * args.c_group_stride;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long long row = row0 + warp_m * 64 + i * 16 + lane / 4 + 8 * h;
        if (row >= row_end) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const long long col = col0 + warp_n * 64 + j * 8 + 2 * (lane % 4);
          if (col < args.n) Epilogue::apply(args, c_base + row * args.ldc + col, acc[i][j][2 * h], acc[i][j][2 * h + 1], col + 1 < args.n);
        }
      }
  }
}

}  // namespace moejit::sm80
#endif  // MOEJIT_DEVICE_CODE
