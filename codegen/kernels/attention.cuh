// Kernel family "attention": flash attention (causal), forward and backward,
// on the tensor cores, for bf16 and f16 operands with f32 softmax statistics.
// The T x T score matrix is never stored: every kernel walks tiles of 64
// keys (or 64 queries) and keeps its tile of scores in registers.
//
// Design (FlashAttention-2, with mma.sync so that one family serves sm_80
// to sm_90):
//   - a block is 4 warps; a warp owns 16 rows of the block's 64-row tile,
//     and every product is mma.sync.m16n8k16 (bf16/f16 in, f32 out);
//   - operands sit in shared memory as rows of DP + 8 elements (DP: the
//     head dim rounded up to 32, zero-filled beyond Dh): the 16-byte pad
//     puts the 8 rows an ldmatrix reads in 8 different bank groups, so no
//     swizzle is needed; ldmatrix (.trans for row-major B operands) feeds
//     the MMAs;
//   - the tiles the block walks are double-buffered with cp.async (16-byte
//     copies, zero-filled outside the tensor) when Dh is a multiple of 8,
//     else loaded element by element;
//   - a score tile's accumulators become the next product's A operand in
//     registers (the m16n8 C layout of two neighbouring n-tiles is the
//     m16k16 A layout), so P and dS never touch shared memory;
//   - softmax in base 2: scores are scaled by scale * log2(e) once.
//
// Kernels:
//   flash_attention_fwd_kernel: one block per (batch*head, 64- or 128-query
//     tile), the heaviest tiles (last queries) of all heads first; walks key tiles 0..diagonal
//     with the online softmax; writes out and lse[t] = ln sum_s
//     exp(scale q_t . k_s) (f32).
//   flash_attention_bwd_dq_kernel: one block per query tile; computes
//     delta[t] = dout_t . out_t (f32, written to scratch for the next
//     kernel), then walks key tiles: P = exp(scale S - lse),
//     dS = P (dout V^T - delta), dq = scale dS K.
//   flash_attention_bwd_dkdv_kernel: one block per key tile (the first key
//     tiles of all heads, which see the most queries, first); walks query tiles from the
//     diagonal: with S^T = K Q^T computed directly (a warp owns 16 keys),
//     dv += P^T dout, dS^T = P^T (V dout^T - delta), dk = scale dS^T Q.
//   dq and dk/dv are separate kernels, so every gradient is a fixed-order
//   sum (deterministic, no atomics) at the price of recomputing S and dP
//   once more.
//
// Head layouts (mj.attention's attribute "layout", and the packed
// mj.attention_qkv; ir/attention_layout.h): every kernel reads and writes
// the rows of (batch, head) bh from head_base(strides, H, bh) =
// (bh / H) batch + (bh % H) head, `row` elements apart, with HeadStrides
// `qkv` for q, k, v, dq, dk, dv and `o` for out and dout: [B, H, T, Dh] is
// head T Dh, row Dh; [B, T, H, Dh] is head Dh, row H Dh (the heads of a
// [B T, H Dh] projection, read in place); packed q, k, v (and dq, dk, dv)
// are three pointers H Dh apart into one [B, T, 3, H, Dh] tensor, row 3 H
// Dh, batch T 3 H Dh. lse and delta are [BH, T] in all.
//
// Limits (checked on the host): Dh <= 128, T < 2^31 rows per head.
#pragma once
#include "codegen/kernels/common.cuh"

namespace mj {

// mj.attention (bf16/f16): q, k, v, out BH heads of [T, Dh] rows (the
// layout: H, qkv, o, above); lse [BH, T] f32.
template <class T> struct FlashAttentionFwdArgs {
  const T *q, *k, *v;
  T* out;
  float* lse;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// mj.attention_grad (bf16/f16), kernel 1: dq, and delta [BH, T] f32 (scratch).
template <class T> struct FlashAttentionBwdDqArgs {
  const T *q, *k, *v, *out, *dout;
  const float* lse;
  float* delta;
  T* dq;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// mj.attention_grad (bf16/f16), kernel 2: dk, dv from lse and delta.
template <class T> struct FlashAttentionBwdDkdvArgs {
  const T *q, *k, *v, *dout;
  const float *lse, *delta;
  T *dk, *dv;
  i64 BH, Tn, Dh;
  float scale;
  i64 H;
  HeadStrides qkv, o;
};

// Tile shape of the family (host and device): 64 x 64 tiles, 4 warps.
struct FlashTile {
  static constexpr int kRows = 64;      // queries (or keys) per block
  static constexpr int kCols = 64;      // keys (or queries) per step
  static constexpr int kThreads = 128;  // 4 warps x 16 rows
  static constexpr int padded_dim(long long head_dim) { return head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : head_dim <= 96 ? 96 : 128; }
  // Dynamic shared memory of each kernel for a padded head dim.
  static constexpr int row_bytes(int dp) { return (dp + 8) * 2; }
  static constexpr int fwd_smem(int dp, int mf) { return (kRows * mf + 4 * kCols) * row_bytes(dp); }
  // Row fragments per warp of the forward (queries per block / 64): 2 for
  // head dims <= 64 and T >= 512 (K/V operands read once for twice the
  // MMAs), else 1: wider heads would not fit the registers, and short
  // sequences need the blocks (H200, D64, 2026-12-02 evening: T256 31.9 us
  // with 1 vs 35.5 with 2; T1024 80.5 vs 75.4; T4096 144.6 vs 128.4;
  // docs/perf.md).
  static constexpr int fwd_fragments(int dp, long long tokens) { return dp <= 64 && tokens >= 512 ? 2 : 1; }
  // The dq kernel's fragments per warp: 2 for head dims <= 64 from T 1024
  // (H200, 2026-12-02 evening, before its dP went fragment by fragment:
  // 1 vs 2 at T256 47.5 vs 50.5 us, T1024 106.5 vs 99.7, T4096 182.4 vs
  // 164.6).
  static constexpr int dq_fragments(int dp, long long tokens) { return dp <= 64 && tokens >= 1024 ? 2 : 1; }
  static constexpr int bwd_dq_smem(int dp, int mf) { return (2 * kRows * mf + 4 * kCols) * row_bytes(dp) + 2 * kRows * mf * 4; }
  // Queries per step of the dk/dv kernel: 64 (H200: T1024 D64 124.5 us
  // against 132.0 with 32, D128 223.1 against 228.3, T4096 220.3 against
  // 263.7, T256 equal; docs/perf.md). 32 (the
  // tuning space's other value) halves the score tiles' registers (D64:
  // 156 against 230, 3 blocks an SM instead of 2) for twice the steps.
  static constexpr int dkdv_queries(int) { return 64; }
  static constexpr int bwd_dkdv_smem(int dp, int qt) { return (2 * kRows + 4 * qt) * row_bytes(dp) + 4 * qt * 4; }
};

}  // namespace mj

#if MOEJIT_DEVICE_CODE
namespace mj {
namespace flash {

extern __shared__ __align__(16) unsigned char flash_smem[];

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
// 4 bytes global -> shared, asynchronously; src_bytes 0 writes zeros.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The 16-bit operand types: the MMA's type name and the f32 -> pair packing
// (round to nearest even, as the host converts).
template <class T> struct Mma;
template <> struct Mma<bf16_t> {
  __device__ __forceinline__ static void run(float* d, const unsigned* a, const unsigned* b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  __device__ __forceinline__ static unsigned pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  __device__ __forceinline__ static float to_float(unsigned short bits) { return __uint_as_float(((unsigned)bits) << 16); }
};
template <> struct Mma<f16_t> {
  __device__ __forceinline__ static void run(float* d, const unsigned* a, const unsigned* b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  __device__ __forceinline__ static unsigned pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  __device__ __forceinline__ static float to_float(unsigned short bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
  }
};

// Rows [row0, row0 + ROWS) of a Tn x Dh matrix whose rows are ld elements
// apart into shared memory rows of DP + 8 elements; rows >= Tn and columns
// >= Dh (up to DP) become zero. Asynchronous (cp.async, the caller commits
// and waits) when Dh % 8 == 0 (then ld, a multiple of Dh, is one of 8 too).
// The tile's first row is addressed in 64 bits once, the rest in 32 (r * ld
// + col < 128 * 2^24: the host checks ld < 2^24), so no 64-bit stride stays
// live across the main loops (it cost the dk/dv kernel a register spill).
template <int ROWS, int DP, class T>
__device__ __forceinline__ void load_tile(unsigned short* dst, const T* src, int row0, int Tn, int Dh, int ld) {
  constexpr int LD = DP + 8, CHUNKS = DP / 8;
  const unsigned short* s = (const unsigned short*)src + (i64)row0 * ld;
  const int rows = Tn - row0;
  if ((Dh & 7) == 0) {
#pragma unroll
    for (int i = 0; i < (ROWS * CHUNKS + FlashTile::kThreads - 1) / FlashTile::kThreads; ++i) {
      const int c = threadIdx.x + i * FlashTile::kThreads;
      if (ROWS * CHUNKS % FlashTile::kThreads != 0 && c >= ROWS * CHUNKS) break;
      const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
      const bool inside = r < rows && col < Dh;
      cp_async16(smem_addr(dst + r * LD + col), inside ? (const void*)(s + r * ld + col) : (const void*)src, inside ? 16 : 0);
    }
  } else {
    for (int e = threadIdx.x; e < ROWS * DP; e += FlashTile::kThreads) {
      const int r = e / DP, col = e % DP;
      dst[r * LD + col] = r < rows && col < Dh ? s[r * ld + col] : (unsigned short)0;
    }
  }
}

// A operand (16 x 16 at rows r0, cols c0) of a row-major shared tile.
template <int LD> __device__ __forceinline__ void load_a(unsigned* a, const unsigned short* tile, int r0, int c0) {
  int lane = threadIdx.x & 31;
  ldmatrix_x4(a, smem_addr(tile + (r0 + (lane & 15)) * LD + c0 + (lane >> 4) * 8));
}
// B operands of two n-tiles (n0..n0+15) x k (k0..k0+15) from a tile stored
// [n][k] (B^T row-major, e.g. K for S = Q K^T): b[0..1] n-tile 0, b[2..3] n-tile 1.
template <int LD> __device__ __forceinline__ void load_b_nk(unsigned* b, const unsigned short* tile, int n0, int k0) {
  int lane = threadIdx.x & 31;
  ldmatrix_x4(b, smem_addr(tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + ((lane >> 3) & 1) * 8));
}
// The same from a tile stored [k][n] (B row-major, e.g. V for O = P V).
template <int LD> __device__ __forceinline__ void load_b_kn(unsigned* b, const unsigned short* tile, int k0, int n0) {
  int lane = threadIdx.x & 31;
  ldmatrix_x4_trans(b, smem_addr(tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8));
}

// acc[f][NC/8][4] (+)= A_f B^T for the warp's MF fragments: A_f the 16 rows
// a_row + 16 f of `a_tile` (all DP columns), B^T the [NC][DP] tile `b_tile`
// stored [n][k]: MF 16 x NC products over k = 0..DP-1, each B operand read
// from shared memory once.
template <class T, int DP, int MF, int NC = FlashTile::kCols>
__device__ __forceinline__ void mma_rows_times_tile_t(float (*acc)[NC / 8][4], const unsigned short* a_tile, int a_row,
                                                      const unsigned short* b_tile) {
  constexpr int LD = DP + 8;
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    unsigned a[MF][4];
#pragma unroll
    for (int f = 0; f < MF; ++f) load_a<LD>(a[f], a_tile, a_row + 16 * f, kk * 16);
#pragma unroll
    for (int np = 0; np < NC / 16; ++np) {
      unsigned b[4];
      load_b_nk<LD>(b, b_tile, np * 16, kk * 16);
#pragma unroll
      for (int f = 0; f < MF; ++f) {
        Mma<T>::run(acc[f][2 * np], a[f], b);
        Mma<T>::run(acc[f][2 * np + 1], a[f], b + 2);
      }
    }
  }
}

// acc[f][DP/8][4] += P_f B for the warp's MF fragments: P_f (16 x KC, the
// f32 tile p[f] as A operands), B the [KC][DP] tile `b_tile` stored [k][n].
template <class T, int DP, int MF, int KC = FlashTile::kCols>
__device__ __forceinline__ void mma_regs_times_tile(float (*acc)[DP / 8][4], const float (*p)[KC / 8][4], const unsigned short* b_tile) {
  constexpr int LD = DP + 8;
#pragma unroll
  for (int kk = 0; kk < KC / 16; ++kk) {
    unsigned a[MF][4];
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      a[f][0] = Mma<T>::pack(p[f][2 * kk][0], p[f][2 * kk][1]);
      a[f][1] = Mma<T>::pack(p[f][2 * kk][2], p[f][2 * kk][3]);
      a[f][2] = Mma<T>::pack(p[f][2 * kk + 1][0], p[f][2 * kk + 1][1]);
      a[f][3] = Mma<T>::pack(p[f][2 * kk + 1][2], p[f][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < DP / 16; ++dp) {
      unsigned b[4];
      load_b_kn<LD>(b, b_tile, kk * 16, dp * 16);
#pragma unroll
      for (int f = 0; f < MF; ++f) {
        Mma<T>::run(acc[f][2 * dp], a[f], b);
        Mma<T>::run(acc[f][2 * dp + 1], a[f], b + 2);
      }
    }
  }
}

template <int N> __device__ __forceinline__ void zero(float (*acc)[4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// Stores a warp's 16 x DP f32 tile (accumulator layout) times `mul` as T
// rows [row0, row0 + 16) of a Tn x Dh matrix with rows ld elements apart,
// through the warp's 16 rows of the shared tile `stage` (16-byte stores when
// Dh % 8 == 0).
template <class T, int DP>
__device__ __forceinline__ void store_rows(T* dst, const float (*acc)[4], float mul_lo, float mul_hi, unsigned short* stage, int row0, int Tn,
                                           int Dh, int ld) {
  constexpr int LD = DP + 8;
  int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < DP / 8; ++nt) {
    *(unsigned*)(stage + g * LD + nt * 8 + 2 * t) = Mma<T>::pack(acc[nt][0] * mul_lo, acc[nt][1] * mul_lo);
    *(unsigned*)(stage + (g + 8) * LD + nt * 8 + 2 * t) = Mma<T>::pack(acc[nt][2] * mul_hi, acc[nt][3] * mul_hi);
  }
  __syncwarp();
  unsigned short* d = (unsigned short*)dst + (i64)row0 * ld;
  const int rows = Tn - row0;
  if ((Dh & 7) == 0) {
    for (int c = lane; c < 16 * (DP / 8); c += 32) {
      int r = c / (DP / 8), col = (c % (DP / 8)) * 8;
      if (r < rows && col < Dh) *(uint4*)(d + r * ld + col) = *(const uint4*)(stage + r * LD + col);
    }
  } else {
    for (int e = lane; e < 16 * DP; e += 32) {
      int r = e / DP, col = e % DP;
      if (r < rows && col < Dh) d[r * ld + col] = stage[r * LD + col];
    }
  }
  __syncwarp();
}

// 2^x by the MUFU unit alone (ex2.approx.ftz: 2 ulp; exp2f adds a
// denormal-range fix-up around it); 2^-inf = 0, as masking needs.
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace flash

// ---- forward ----
// MF: 16-row fragments per warp (a block covers 64 * MF queries); MF = 2
// reads each K/V operand from shared memory once for twice the MMAs.
template <class T, int DP, int MF>
__global__ void __launch_bounds__(128) flash_attention_fwd_kernel(const FlashAttentionFwdArgs<T> a) {
  using namespace flash;
  constexpr int BM = FlashTile::kRows * MF, BN = FlashTile::kCols, LD = DP + 8, NT = BN / 8, DT = DP / 8;
  // Rows, columns and strides in 32 bits (the host checks T < 2^31 and
  // row strides < 2^24); only the head's base offset needs 64.
  const int Tn = (int)a.Tn, Dh = (int)a.Dh;
  // Grid (BH, tiles), x fastest: blocks start in order of work, the
  // heaviest tiles (last queries) of every head first, so the last wave
  // holds the lightest (a head-major order left whole heads' heaviest
  // tiles for the end).
  const int tile = gridDim.y - 1 - blockIdx.y;
  const int bh = blockIdx.x, m0 = tile * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warp_row = warp * 16 * MF;  // the warp's first row in the tile
  const i64 base = head_base(a.qkv, a.H, bh), obase = head_base(a.o, a.H, bh);
  const int ld = (int)a.qkv.row, old = (int)a.o.row;
  const T* q = a.q + base;
  const T* k = a.k + base;
  const T* v = a.v + base;
  unsigned short* qs = (unsigned short*)flash_smem;
  unsigned short* ks = qs + BM * LD;  // [2][BN][LD]
  unsigned short* vs = ks + 2 * BN * LD;
  const float scale_log2 = a.scale * 1.4426950408889634f;

  load_tile<BM, DP>(qs, q, m0, Tn, Dh, ld);
  load_tile<BN, DP>(ks, k, 0, Tn, Dh, ld);
  load_tile<BN, DP>(vs, v, 0, Tn, Dh, ld);
  cp_async_commit();

  float o[MF][DT][4];
  unsigned qf[MF][DP / 16][4];
  float row_max[MF][2], row_sum[MF][2];
#pragma unroll
  for (int f = 0; f < MF; ++f) {
    zero<DT>(o[f]);
    row_max[f][0] = row_max[f][1] = -__int_as_float(0x7f800000);
    row_sum[f][0] = row_sum[f][1] = 0.f;
  }
  // Key tiles 0 .. the last one holding a key <= the tile's last query.
  const int n_tiles = (int)((m0 + BM - 1) / BN) + 1;
  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_tile<BN, DP>(ks + (buf ^ 1) * BN * LD, k, (j + 1) * BN, Tn, Dh, ld);
      load_tile<BN, DP>(vs + (buf ^ 1) * BN * LD, v, (j + 1) * BN, Tn, Dh, ld);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int f = 0; f < MF; ++f)
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) load_a<LD>(qf[f][kk], qs, warp_row + f * 16, kk * 16);
    }
    const unsigned short* kt = ks + buf * BN * LD;
    float s[MF][NT][4];
#pragma unroll
    for (int f = 0; f < MF; ++f) zero<NT>(s[f]);
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        unsigned b[4];
        load_b_nk<LD>(b, kt, np * 16, kk * 16);
#pragma unroll
        for (int f = 0; f < MF; ++f) {
          Mma<T>::run(s[f][2 * np], qf[f][kk], b);
          Mma<T>::run(s[f][2 * np + 1], qf[f][kk], b + 2);
        }
      }
    }
    // Keys after the query exist only in tiles reaching past the block's first row.
    const bool diagonal = (j + 1) * BN > m0;
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      const int row_lo = m0 + warp_row + f * 16 + g;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[f][nt][e] *= scale_log2;
          if (diagonal) {
            const int col = j * BN + nt * 8 + 2 * t + (e & 1), row = row_lo + (e >> 1) * 8;
            if (col > row) s[f][nt][e] = -__int_as_float(0x7f800000);
          }
        }
      // Online softmax (each thread holds two rows of the fragment: g and g + 8).
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = row_max[f][h];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[f][nt][2 * h], s[f][nt][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row whose keys in this tile are all masked keeps max -inf only
        // if it had none before either: impossible, key 0 precedes every
        // query, and tile 0 comes first. So mx is finite here.
        const float alpha = exp2_fast(row_max[f][h] - mx);
        row_max[f][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          s[f][nt][2 * h] = exp2_fast(s[f][nt][2 * h] - mx);
          s[f][nt][2 * h + 1] = exp2_fast(s[f][nt][2 * h + 1] - mx);
          sum += s[f][nt][2 * h] + s[f][nt][2 * h + 1];
        }
        row_sum[f][h] = row_sum[f][h] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          o[f][dt][2 * h] *= alpha;
          o[f][dt][2 * h + 1] *= alpha;
        }
      }
    }
    // O += P V: each V operand read once for the MF fragments.
    const unsigned short* vt = vs + buf * BN * LD;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      unsigned pa[MF][4];
#pragma unroll
      for (int f = 0; f < MF; ++f) {
        pa[f][0] = Mma<T>::pack(s[f][2 * kk][0], s[f][2 * kk][1]);
        pa[f][1] = Mma<T>::pack(s[f][2 * kk][2], s[f][2 * kk][3]);
        pa[f][2] = Mma<T>::pack(s[f][2 * kk + 1][0], s[f][2 * kk + 1][1]);
        pa[f][3] = Mma<T>::pack(s[f][2 * kk + 1][2], s[f][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DP / 16; ++dp) {
        unsigned b[4];
        load_b_kn<LD>(b, vt, kk * 16, dp * 16);
#pragma unroll
        for (int f = 0; f < MF; ++f) {
          Mma<T>::run(o[f][2 * dp], pa[f], b);
          Mma<T>::run(o[f][2 * dp + 1], pa[f], b + 2);
        }
      }
    }
    __syncthreads();  // the next iteration's copies overwrite this buffer
  }
#pragma unroll
  for (int f = 0; f < MF; ++f) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[f][h] += __shfl_xor_sync(0xffffffffu, row_sum[f][h], 1);
      row_sum[f][h] += __shfl_xor_sync(0xffffffffu, row_sum[f][h], 2);
    }
    const int row_lo = m0 + warp_row + f * 16 + g;
    if (t == 0) {
      // lse in natural-log units of the scaled scores: (max + log2 sum) * ln 2.
      if (row_lo < Tn) a.lse[(i64)bh * Tn + row_lo] = (row_max[f][0] + log2f(row_sum[f][0])) * 0.6931471805599453f;
      if (row_lo + 8 < Tn) a.lse[(i64)bh * Tn + row_lo + 8] = (row_max[f][1] + log2f(row_sum[f][1])) * 0.6931471805599453f;
    }
    // The warp's own Q rows are no longer read: stage the store through them.
    store_rows<T, DP>(a.out + obase, o[f], 1.f / row_sum[f][0], 1.f / row_sum[f][1], qs + (warp_row + f * 16) * LD,
                      m0 + warp_row + f * 16, Tn, Dh, old);
  }
}

// ---- backward: dq (and delta) ----
// MF as in the forward: 16-row fragments per warp, 64 * MF queries a block.
template <class T, int DP, int MF>
__global__ void __launch_bounds__(128) flash_attention_bwd_dq_kernel(const FlashAttentionBwdDqArgs<T> a) {
  using namespace flash;
  constexpr int BM = FlashTile::kRows * MF, BN = FlashTile::kCols, LD = DP + 8, NT = BN / 8, DT = DP / 8;
  const int Tn = (int)a.Tn, Dh = (int)a.Dh;  // 32 bits, as in the forward
  const int tile = gridDim.y - 1 - blockIdx.y;  // heaviest first over all heads, as in the forward
  const int bh = blockIdx.x, m0 = tile * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warp_row = warp * 16 * MF;
  const i64 base = head_base(a.qkv, a.H, bh), obase = head_base(a.o, a.H, bh);
  const int ld = (int)a.qkv.row, old = (int)a.o.row;
  const T* k = a.k + base;
  const T* v = a.v + base;
  unsigned short* qs = (unsigned short*)flash_smem;
  unsigned short* dos = qs + BM * LD;
  unsigned short* ks = dos + BM * LD;  // [2][BN][LD]
  unsigned short* vs = ks + 2 * BN * LD;
  float* lse_s = (float*)(vs + 2 * BN * LD);  // [BM], base-2 units
  float* delta_s = lse_s + BM;                // [BM]
  const float scale_log2 = a.scale * 1.4426950408889634f;

  load_tile<BM, DP>(qs, a.q + base, m0, Tn, Dh, ld);
  load_tile<BM, DP>(dos, a.dout + obase, m0, Tn, Dh, old);
  load_tile<BN, DP>(ks, k, 0, Tn, Dh, ld);
  load_tile<BN, DP>(vs, v, 0, Tn, Dh, ld);
  cp_async_commit();
  // delta[t] = dout_t . out_t (f32 sums of the stored values) and lse in
  // base-2 units for the block's rows: THREADS / BM threads a row, each
  // summing its share of the row's 16-byte chunks (independent loads).
  {
    constexpr int TPR = FlashTile::kThreads / BM;  // threads per row: 2 or 1
    const int r = threadIdx.x / TPR, part = threadIdx.x % TPR;
    const int row = m0 + r;
    float sum = 0.f;
    if (row < Tn) {
      const unsigned short* od = (const unsigned short*)(a.out + obase + (i64)row * old);
      const unsigned short* dd = (const unsigned short*)(a.dout + obase + (i64)row * old);
      if ((Dh & 7) == 0) {
#pragma unroll 4
        for (int c = part * 8; c < Dh; c += 8 * TPR) {
          const uint4 o4 = *(const uint4*)(od + c), d4 = *(const uint4*)(dd + c);
          const unsigned ow[4] = {o4.x, o4.y, o4.z, o4.w}, dw[4] = {d4.x, d4.y, d4.z, d4.w};
#pragma unroll
          for (int w = 0; w < 4; ++w)
            sum += Mma<T>::to_float((unsigned short)(ow[w] & 0xFFFFu)) * Mma<T>::to_float((unsigned short)(dw[w] & 0xFFFFu)) +
                   Mma<T>::to_float((unsigned short)(ow[w] >> 16)) * Mma<T>::to_float((unsigned short)(dw[w] >> 16));
        }
      } else {
        for (int d = part; d < Dh; d += TPR) sum += Mma<T>::to_float(od[d]) * Mma<T>::to_float(dd[d]);
      }
    }
    if (TPR == 2) sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (part == 0) {
      delta_s[r] = sum;
      lse_s[r] = row < Tn ? a.lse[(i64)bh * Tn + row] * 1.4426950408889634f : 0.f;
      if (row < Tn) a.delta[(i64)bh * Tn + row] = sum;
    }
  }
  __syncthreads();
  float lse_row[MF][2], delta_row[MF][2];
#pragma unroll
  for (int f = 0; f < MF; ++f)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      lse_row[f][h] = lse_s[warp_row + 16 * f + 8 * h + g];
      delta_row[f][h] = delta_s[warp_row + 16 * f + 8 * h + g];
    }

  float dq[MF][DT][4];
#pragma unroll
  for (int f = 0; f < MF; ++f) zero<DT>(dq[f]);
  const int n_tiles = (int)((m0 + BM - 1) / BN) + 1;
  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_tile<BN, DP>(ks + (buf ^ 1) * BN * LD, k, (j + 1) * BN, Tn, Dh, ld);
      load_tile<BN, DP>(vs + (buf ^ 1) * BN * LD, v, (j + 1) * BN, Tn, Dh, ld);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const unsigned short* kt = ks + buf * BN * LD;
    // S for the MF fragments together (each K operand read once for all);
    // dP = dout V^T one fragment at a time, so only one fragment's dP is
    // live beside S and dq (MF 2 held both and spilled).
    float s[MF][NT][4];
#pragma unroll
    for (int f = 0; f < MF; ++f) zero<NT>(s[f]);
    mma_rows_times_tile_t<T, DP, MF>(s, qs, warp_row, kt);
    const bool diagonal = (j + 1) * BN > m0;
#pragma unroll
    for (int f = 0; f < MF; ++f) {
      float dp[NT][4];
      zero<NT>(dp);
      mma_rows_times_tile_t<T, DP, 1>(&dp, dos, warp_row + 16 * f, vs + buf * BN * LD);
      const int row_lo = m0 + warp_row + 16 * f + g;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float p = exp2_fast(s[f][nt][e] * scale_log2 - lse_row[f][e >> 1]);
          if (diagonal) {
            const int col = j * BN + nt * 8 + 2 * t + (e & 1), row = row_lo + (e >> 1) * 8;
            if (col > row) p = 0.f;
          }
          s[f][nt][e] = p * (dp[nt][e] - delta_row[f][e >> 1]);  // dS
        }
    }
    mma_regs_times_tile<T, DP, MF>(dq, s, kt);
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < MF; ++f)
    store_rows<T, DP>(a.dq + base, dq[f], a.scale, a.scale, qs + (warp_row + 16 * f) * LD, m0 + warp_row + 16 * f, Tn, Dh, ld);
}

// ---- backward: dk, dv ----
// QT: queries per step (64 or 32: FlashTile::dkdv_queries).
template <class T, int DP, int QT>
__global__ void __launch_bounds__(128) flash_attention_bwd_dkdv_kernel(const FlashAttentionBwdDkdvArgs<T> a) {
  using namespace flash;
  constexpr int BM = QT, BN = FlashTile::kRows, LD = DP + 8, MT = BM / 8, DT = DP / 8;
  const int Tn = (int)a.Tn, Dh = (int)a.Dh;  // 32 bits, as in the forward
  const int tile = blockIdx.y;  // key tile; the first ones see the most queries: heaviest first over all heads
  const int bh = blockIdx.x, n0 = tile * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const i64 base = head_base(a.qkv, a.H, bh);
  const int ld = (int)a.qkv.row, old = (int)a.o.row;
  const T* q = a.q + base;
  const T* dout = a.dout + head_base(a.o, a.H, bh);
  unsigned short* ks = (unsigned short*)flash_smem;
  unsigned short* vs = ks + BN * LD;
  unsigned short* qs = vs + BN * LD;    // [2][BM][LD]
  unsigned short* dos = qs + 2 * BM * LD;  // [2][BM][LD]
  float* lse_s = (float*)(dos + 2 * BM * LD);  // [2][BM]
  float* delta_s = lse_s + 2 * BM;             // [2][BM]
  const float scale_log2 = a.scale * 1.4426950408889634f;
  const int q_tiles = (Tn + BM - 1) / BM;
  const int first = n0 / BM;  // the first query tile holding a query >= the block's first key

  // lse (natural units) and delta of query tile i into buffer b: cp.async
  // into the group of the tile's Q and dout copies (zeros beyond T).
  static_assert(FlashTile::kThreads >= 2 * BM, "one thread per statistic");
  auto load_stats = [&](int i, int b) {
    if (threadIdx.x >= 2 * BM) return;
    const int r = threadIdx.x % BM;
    const int row = i * BM + r;
    const float* src = (threadIdx.x < BM ? a.lse : a.delta) + (i64)bh * Tn;
    float* dst = (threadIdx.x < BM ? lse_s : delta_s) + b * BM + r;
    cp_async4(smem_addr(dst), row < Tn ? (const void*)(src + row) : (const void*)src, row < Tn ? 4 : 0);
  };
  load_tile<BN, DP>(ks, a.k + base, n0, Tn, Dh, ld);
  load_tile<BN, DP>(vs, a.v + base, n0, Tn, Dh, ld);
  load_tile<BM, DP>(qs, q, first * BM, Tn, Dh, ld);
  load_tile<BM, DP>(dos, dout, first * BM, Tn, Dh, old);
  load_stats(first, 0);
  cp_async_commit();

  float dk[DT][4], dv[DT][4];
  zero<DT>(dk);
  zero<DT>(dv);
  for (int i = first; i < q_tiles; ++i) {
    const int buf = (i - first) & 1;
    if (i + 1 < q_tiles) {
      load_tile<BM, DP>(qs + (buf ^ 1) * BM * LD, q, (i + 1) * BM, Tn, Dh, ld);
      load_tile<BM, DP>(dos + (buf ^ 1) * BM * LD, dout, (i + 1) * BM, Tn, Dh, old);
      load_stats(i + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const unsigned short* qt = qs + buf * BM * LD;
    const unsigned short* dot = dos + buf * BM * LD;
    const float* lse_t = lse_s + buf * BM;
    const float* delta_t = delta_s + buf * BM;
    // S^T = K Q^T and dP^T = V dout^T: rows = the warp's 16 keys, columns =
    // the BM queries; both before the softmax, so their MMAs interleave.
    float st[MT][4], dpt[MT][4];
    zero<MT>(st);
    zero<MT>(dpt);
    mma_rows_times_tile_t<T, DP, 1, BM>(&st, ks, warp * 16, qt);
    mma_rows_times_tile_t<T, DP, 1, BM>(&dpt, vs, warp * 16, dot);
    const int key_lo = n0 + warp * 16 + g, m0 = i * BM;
    const bool edge = m0 < n0 + BN || m0 + BM > Tn;  // keys after some query, or queries beyond T
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const float2 lse_pair = *(const float2*)(lse_t + mt * 8 + 2 * t);  // columns 2t, 2t + 1
      const float2 delta_pair = *(const float2*)(delta_t + mt * 8 + 2 * t);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = mt * 8 + 2 * t + (e & 1);
        float p = exp2_fast(st[mt][e] * scale_log2 - ((e & 1) ? lse_pair.y : lse_pair.x) * 1.4426950408889634f);
        if (edge) {
          const int query = m0 + c, key = key_lo + (e >> 1) * 8;
          if (key > query || query >= Tn) p = 0.f;
        }
        st[mt][e] = p;
        dpt[mt][e] = p * (dpt[mt][e] - ((e & 1) ? delta_pair.y : delta_pair.x));  // dS^T = P^T (dP^T - delta)
      }
    }
    mma_regs_times_tile<T, DP, 1, BM>(&dv, &st, dot);
    mma_regs_times_tile<T, DP, 1, BM>(&dk, &dpt, qt);
    __syncthreads();
  }
  // K's and V's tiles are no longer read: stage the stores through them.
  store_rows<T, DP>(a.dk + base, dk, a.scale, a.scale, ks + warp * 16 * LD, n0 + warp * 16, Tn, Dh, ld);
  store_rows<T, DP>(a.dv + base, dv, 1.f, 1.f, vs + warp * 16 * LD, n0 + warp * 16, Tn, Dh, ld);
}

}  // namespace mj
#endif  // MOEJIT_DEVICE_CODE
