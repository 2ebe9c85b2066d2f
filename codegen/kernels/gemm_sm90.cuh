// Hopper (sm_90a) tensor-core GEMM family: C = epilogue(A * B), bf16
// operands, f32 accumulation, for dense, batched and grouped (MoE expert)
// matrix products.
//
// Design (one kernel template, every layout the forward and backward passes
// need):
//   - a persistent grid (one block per SM) walks the output tiles of every
//     group in an L2-friendly order (8 row tiles x all column tiles);
//   - warpgroup 0 is the producer: one thread issues TMA loads
//     (cp.async.bulk.tensor, 128-byte swizzle) of A and B tiles into a ring
//     of STAGES shared-memory stages, each guarded by two mbarriers: `full`
//     (the copy engine counts the bytes in) and `empty` (both consumers are
//     done reading);
//   - warpgroups 1 and 2 are consumers: each owns 64 rows of the BM = 128
//     row tile and issues wgmma m64nBNk16 from shared memory, with the
//     previous stage released as soon as the MMAs reading it retire, so the
//     tensor cores see a continuous stream; `setmaxnreg` moves registers from
//     the producer to the consumers (BN/2 f32 accumulators each);
//   - the epilogue is a functor applied to pairs of adjacent columns straight
//     from the accumulator registers (bounds-checked, so any M and N work);
//   - OVERLAP (opt-in, MOEJIT_SM90_OVERLAP=1; tile_n <= 128): each consumer
//     keeps two accumulator sets, so a tile's epilogue runs while the next
//     tile's MMAs are in flight (measured slower on the H200: docs/perf.md).
// A is K-major ([rows, K], row-major) or M-major ([K, rows], i.e. a
// transposed operand); B is K-major ([N, K]) or N-major ([K, N], the usual
// row-major weight). The wgmma transpose bits read both from shared memory
// as laid out by TMA, so no operand is ever transposed in memory.
//
// Groups: with `group_offsets` (grouped mode, moe.grouped_matmul) group g
// owns the rows group_offsets[g] .. group_offsets[g+1]-1 of A and C and
// multiplies them by B[g]; offsets are read on the device, so the launch
// does not depend on the routing. With `varlen_k` as well (the weight
// gradient, moe.grouped_matmul_wgrad) group g instead owns that range of
// K: C[g] = A[:, range] * B[range, :], with A M-major and B N-major (both
// are token-row-major activations); the K rows of a last partial tile that
// belong to the next group are zeroed in shared memory before the MMAs read
// them, and an empty group gives C[g] = 0. Without offsets (batched mode)
// there are `groups` products of `m` rows each (groups = 1: a plain GEMM).
//
// Gathered A (GATHER_A): row r of A, or in the weight gradient's M-major A
// K-row r, is row slots[r] / top_k of `gather_src` (zeros where slots[r] <
// 0): moe.gather_matmul's up projection and the weight gradient of its
// moe.permute'd rows read x itself, so the T*K*D copy of the gathered rows
// is never stored. The copy engine
// cannot gather rows on Hopper, so the whole producer warpgroup loads A
// with 16-byte cp.async, eight threads a 128-byte line, into the same
// 128-byte-swizzled place TMA would write; each thread arrives on the stage's
// `full` barrier once its copies have landed (cp.async.wait_group, kept
// kGatherLag stages behind so several stages are in flight) and been made
// visible to the tensor cores (fence.proxy.async); thread 0 still loads B
// through TMA. `full` then counts 1 + 128 arrivals.
//
// Requirements (checked on the host by the emitter): bf16 operands, every
// row stride a multiple of 8 elements and 16-byte aligned bases (TMA), BK
// = 64 (one 128-byte swizzle row), BM = 128, BN in {64, 128, 256}; an
// M-major A only in batched or varlen-K mode (its TMA boxes must start on
// 64-row boundaries: a grouped segment may start on any row, which the
// copy engine rejects as an illegal instruction, seen on an H200).
//
// The host compiler sees GemmArgs and SmemLayout (the emitter fills one and
// sizes shared memory with the other, codegen/gemm_select.cpp); the device
// code sits inside `#if MOEJIT_DEVICE_CODE` (codegen/kernels/common.cuh).
#pragma once

#include "codegen/kernels/common.cuh"

namespace moejit::sm90 {

using TmaDescriptor = mj::TmaDescriptor;  // a CUtensorMap the executor encodes

// Everything a launch of the family needs, built once on the host.
struct GemmArgs {
  TmaDescriptor a;  // 3-D map {inner, outer, batch} of A, box {64, BM or BK, 1}
  TmaDescriptor b;  // 3-D map of B, box {64, BN or BK, 1}
  TmaDescriptor c_map;  // epilogues that store through TMA: 3-D map {N, rows, groups} of c, bf16 box {64, 64, 1}, f32 {32, 64, 1}
  TmaDescriptor aux_map;  // StoreGeluBf16<true> and StoreWidenF32<true> with aux: the bf16 map of aux
  void* c;          // output, row-major with row stride ldc
  void* aux;        // like c: StoreGeluBf16's second output (the pre-activation; null: not stored), StoreWidenF32's (the bf16 product),
                    // StoreGeluGradBf16's second input (the pre-activation x of gelu_grad(x, acc))
  const int* group_offsets;  // grouped mode: groups + 1 row offsets; null: batched mode
  long long m, n, k;         // rows per group (batched mode), columns, depth
  long long ldc;             // elements between rows of c (and aux)
  long long c_group_stride;  // batched mode: elements between the groups of c
  int groups;                // number of groups (experts, or batch entries)
  int varlen_k;              // with group_offsets: the groups split K, not the rows (weight gradients)
  int a_batched;             // batched mode: A's third coordinate is the group (else 0)
  int b_batched;             // B's third coordinate is the group (else 0: one shared B)
  // GATHER_A: A's rows (M-major: K-rows) through slots: row r is row
  // slots[r] / gather_top_k of gather_src, row-major [*, k] (M-major: [*,
  // m]); zeros where slots[r] < 0.
  const void* gather_src;
  const int* gather_slots;
  int gather_top_k;
};

// Shared memory of one block: the stages, the C staging boxes, the
// barriers and (grouped mode) the first tile of each group.
template <int BM, int BN, int BK, int STAGES> struct SmemLayout;
// The dynamic shared memory a launch asks for (what SmemLayout<...>::bytes says).
constexpr long long smem_bytes(int bm, int bn, int bk, int stages, long long groups) {
  return 1024 + stages * (bm + bn) * bk * 2ll + 2 * (bn >= 128 ? 2 : 1) * 8192ll + 16ll * stages + 4 * (groups + 1);
}
template <int BM, int BN, int BK, int STAGES> struct SmemLayout {
  static constexpr int kATile = BM * BK * 2, kBTile = BN * BK * 2;
  static constexpr int kStage = kATile + kBTile;
  // TMA-store epilogues stage up to two 64 x 64 bf16 boxes per consumer.
  static constexpr int kCBoxes = BN >= 128 ? 2 : 1;
  static constexpr int kCStage = STAGES * kStage;
  static constexpr int kBarriers = kCStage + 2 * kCBoxes * 8192;  // full[STAGES], empty[STAGES]
  static constexpr int kPrefix = kBarriers + 16 * STAGES;
  // bytes to request: the stages, barriers and tile prefix, plus 1024 for aligning the base
  static constexpr long long bytes(long long groups) { return 1024 + kPrefix + 4ll * (groups + 1); }
  static_assert(bytes(7) == smem_bytes(BM, BN, BK, STAGES, 7), "one formula for the host and the kernel");
};

}  // namespace moejit::sm90

#if MOEJIT_DEVICE_CODE
#include "codegen/kernels/gemm_epilogue.cuh"
#include "codegen/kernels/wgmma_ops.cuh"

namespace moejit::sm90 {

// ---- PTX wrappers ----
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  unsigned r;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "waiting:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra waiting;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// One TMA tile load into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_3d(unsigned dst, const TmaDescriptor* map, unsigned bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// One TMA tile store from shared memory (bulk group of the issuing thread).
__device__ __forceinline__ void tma_store_3d(const TmaDescriptor* map, unsigned src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];" ::"l"(map), "r"(src), "r"(c0),
               "r"(c1), "r"(c2)
               : "memory");
}
// 16 bytes global -> shared (through L2 only), zero-filled when !valid
// (src-size 0: nothing is read).
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until the issuing thread's stores have read their shared memory.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
template <int R> __device__ __forceinline__ void regs_down() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R)); }
template <int R> __device__ __forceinline__ void regs_up() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R)); }

// Where a block's time goes (a diagnostic for bench/gemm_sm90_probe.cu, built
// with -DMOEJIT_SM90_TIMING; else every call compiles to nothing): clock64
// intervals summed by the first thread of consumer 0 and of the producer,
// added over blocks into sm90_timing at the end. [0] consumer waiting for
// full stages, [1] consumer epilogues, [2] consumer total, [3] producer
// waiting for empty stages, [4] producer total.
#ifdef MOEJIT_SM90_TIMING
__device__ unsigned long long sm90_timing[5];
struct Sm90Timer {
  long long sum = 0, t0 = 0;
  __device__ __forceinline__ void start() { t0 = clock64(); }
  __device__ __forceinline__ void stop() { sum += clock64() - t0; }
  __device__ __forceinline__ void add_to(int slot) const { atomicAdd(&sm90_timing[slot], (unsigned long long)sum); }
};
#else
struct Sm90Timer {
  __device__ __forceinline__ void start() {}
  __device__ __forceinline__ void stop() {}
  __device__ __forceinline__ void add_to(int) const {}
};
#endif

// A shared-memory matrix descriptor for a 128-byte-swizzled operand.
// K-major tiles: rows of 64 elements (128 bytes), 8-row groups 1024 bytes
// apart (SBO); LBO is unused (the PTX ISA says to encode 1, i.e. 16 bytes).
// MN-major tiles: 64-element chunks of M or N `lbo` bytes apart, each chunk
// 8 K-rows per 1024 bytes (SBO).
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr, unsigned lbo) {
  unsigned long long d = 0;
  d |= (unsigned long long)((addr & 0x3FFFF) >> 4);
  d |= (unsigned long long)((lbo & 0x3FFFF) >> 4) << 16;
  d |= (unsigned long long)(1024 >> 4) << 32;
  d |= 1ull << 62;  // 128-byte swizzle
  return d;
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned short to_bf16(float v) { return (unsigned short)(pack_bf16x2(v, 0.0f) & 0xFFFFu); }

// ---- epilogues: called for (row, col) and (row, col + 1); `pair` is false
// when col + 1 is past the last column. `at` = row * ldc + col (+ group offset).
//   apply: the store from registers (every element when kTmaStore is
//          false, and the partial 64-row blocks of f32 outputs);
//   kTmaStore: the output is bf16 and the kernel routes 64-row blocks
//          through shared memory, whole ones to the copy engine (c_map),
//          partial ones to 16-byte stores by the threads (staged_store_rows),
//          so it is written in whole 128-byte lines; it then stores what
//          `value` makes of each pair of accumulators and of what `load`
//          read for it (at `at`, even and in bounds with its neighbour: all
//          loads of a pass are issued before its first use, so their
//          latencies overlap);
//   kStoresAux: before that, the rounded accumulators themselves go to aux
//          through aux_map (when aux is set): the pre-activation a backward
//          reads.
struct StoreF32 {
  static constexpr bool kTmaStore = false, kStoresAux = false;
  __device__ __forceinline__ static unsigned load(const GemmArgs&, long long) { return 0; }
  __device__ __forceinline__ static void value(unsigned, float&, float&) {}
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    float* c = static_cast<float*>(args.c) + at;
    if (pair && ((at & 1) == 0)) {
      *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
    } else {
      c[0] = v0;
      if (pair) c[1] = v1;
    }
  }
};
struct StoreBf16 {
  static constexpr bool kTmaStore = true, kStoresAux = false;
  __device__ __forceinline__ static unsigned load(const GemmArgs&, long long) { return 0; }
  __device__ __forceinline__ static void value(unsigned, float&, float&) {}
  __device__ __forceinline__ static void store(void* out, long long at, float v0, float v1, bool pair) {
    unsigned short* c = static_cast<unsigned short*>(out) + at;
    if (pair && ((at & 1) == 0)) {
      *reinterpret_cast<unsigned*>(c) = pack_bf16x2(v0, v1);
    } else {
      c[0] = to_bf16(v0);
      if (pair) c[1] = to_bf16(v1);
    }
  }
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    store(args.c, at, v0, v1, pair);
  }
};
// The same store from registers only, for outputs the copy engine cannot
// address (a row stride that is no multiple of 8 elements).
struct StoreBf16Direct : StoreBf16 {
  static constexpr bool kTmaStore = false;
};
// c = gelu(acc) (mj.gelu of the rounded product), aux = acc when aux is set
// (the pre-activation the backward reads), both bf16: the up-projection and
// its activation in one pass (passes/fuse_gemm_epilogue.cpp). TMA: whether
// c's rows are 16-byte multiples (the TMA-store path), as StoreBf16 /
// StoreBf16Direct.
template <bool TMA> struct StoreGeluBf16 {
  static constexpr bool kTmaStore = TMA, kStoresAux = true;
  __device__ __forceinline__ static unsigned load(const GemmArgs&, long long) { return 0; }
  __device__ __forceinline__ static void value(unsigned, float& v0, float& v1) {
    v0 = epilogue::gelu(epilogue::round_bf16(v0));
    v1 = epilogue::gelu(epilogue::round_bf16(v1));
  }
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    if (args.aux) StoreBf16::store(args.aux, at, v0, v1, pair);
    value(0, v0, v1);
    StoreBf16::store(args.c, at, v0, v1, pair);
  }
};
// c = gelu_grad(x, acc) = acc * gelu'(x), x = aux at the same place (the
// forward's pre-activation), bf16: the input gradient of a down-projection
// and GELU's backward in one pass (dh itself is never stored).
template <bool TMA> struct StoreGeluGradBf16 {
  static constexpr bool kTmaStore = TMA, kStoresAux = false;
  __device__ __forceinline__ static unsigned load(const GemmArgs& args, long long at) {
    return __ldg(reinterpret_cast<const unsigned*>(static_cast<const unsigned short*>(args.aux) + at));
  }
  __device__ __forceinline__ static void value(unsigned x2, float& v0, float& v1) {
    v0 = epilogue::gelu_grad(epilogue::bf16_lo(x2), epilogue::round_bf16(v0));
    v1 = epilogue::gelu_grad(epilogue::bf16_hi(x2), epilogue::round_bf16(v1));
  }
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    if (pair && ((at & 1) == 0)) {
      value(load(args, at), v0, v1);
    } else {
      const unsigned short* x = static_cast<const unsigned short*>(args.aux) + at;
      v0 = epilogue::gelu_grad(__uint_as_float((unsigned)x[0] << 16), epilogue::round_bf16(v0));
      if (pair) v1 = epilogue::gelu_grad(__uint_as_float((unsigned)x[1] << 16), epilogue::round_bf16(v1));
    }
    StoreBf16::store(args.c, at, v0, v1, pair);
  }
};

// c = the accumulators rounded to bf16 and widened to f32 (an mj.cast to
// f32 of the product, folded: passes/fuse_gemm_epilogue.cpp), aux = the
// bf16 product itself when aux is set. TMA: c (f32, kWideC: boxes of 32
// columns) and aux go through shared memory and the copy engine, as the
// bf16 stores do; else register stores (rows that are no multiple of 8).
template <bool TMA> struct StoreWidenF32 {
  static constexpr bool kTmaStore = TMA, kStoresAux = true, kWideC = true;
  __device__ __forceinline__ static unsigned load(const GemmArgs&, long long) { return 0; }
  __device__ __forceinline__ static void value(unsigned, float& v0, float& v1) {
    v0 = epilogue::round_bf16(v0);
    v1 = epilogue::round_bf16(v1);
  }
  __device__ __forceinline__ static void apply(const GemmArgs& args, long long at, float v0, float v1, bool pair) {
    if (args.aux) StoreBf16::store(args.aux, at, v0, v1, pair);
    StoreF32::apply(args, at, epilogue::round_bf16(v0), epilogue::round_bf16(v1), pair);
  }
};
// Whether an epilogue's c is f32 (4-byte elements in the TMA-store path):
// its kWideC, false where it has none (C++17: NVRTC's dialect here).
template <class E, class = void> struct WideC {
  static constexpr bool value = false;
};
template <class E> struct WideC<E, decltype(void(E::kWideC))> {
  static constexpr bool value = E::kWideC;
};

// ---- the tile walk shared by producer and consumers ----
template <int BM, int BN> struct TileWalk {
  static constexpr int kRasterRows = 8;  // row tiles per L2 panel
  const GemmArgs& args;
  const int* tile_prefix;  // grouped mode: first tile index of each group (groups + 1 entries, in shared memory)
  long long tiles_n;

  __device__ long long total() const {
    if (args.group_offsets && !args.varlen_k) return tile_prefix[args.groups];
    return (long long)args.groups * ((args.m + BM - 1) / BM) * tiles_n;
  }
  // Tile t -> group, first row (in A's and C's row space), row end, first
  // column, and the group's K range [k_begin, k_begin + k_count).
  __device__ void decode(long long t, int& group, long long& row0, long long& row_end, long long& col0, long long& k_begin,
                         long long& k_count) const {
    long long tiles_m, u;
    k_begin = 0;
    k_count = args.k;
    if (args.group_offsets && !args.varlen_k) {
      int lo = 0, hi = args.groups - 1;  // last group whose first tile <= t
      while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (tile_prefix[mid] <= t) lo = mid;
        else hi = mid - 1;
      }
      group = lo;
      long long start = args.group_offsets[group], end = args.group_offsets[group + 1];
      tiles_m = (end - start + BM - 1) / BM;
      u = t - tile_prefix[group];
      row0 = start;
      row_end = end;
    } else {
      tiles_m = (args.m + BM - 1) / BM;
      long long per_group = tiles_m * tiles_n;
      group = (int)(t / per_group);
      u = t % per_group;
      row0 = 0;
      row_end = args.m;
      if (args.varlen_k) {
        k_begin = args.group_offsets[group];
        k_count = args.group_offsets[group + 1] - k_begin;
      }
    }
    long long panel = u / (kRasterRows * tiles_n), first_m = panel * kRasterRows;
    long long rows_in_panel = tiles_m - first_m < kRasterRows ? tiles_m - first_m : kRasterRows;
    long long in_panel = u % (kRasterRows * tiles_n);
    long long tile_m = first_m + in_panel % rows_in_panel, tile_n = in_panel / rows_in_panel;
    row0 += tile_m * BM;
    col0 = tile_n * BN;
  }
};


// The 128-byte-swizzled place of a bf16 pair in a C staging box of 64 rows
// x 128 bytes (16-byte chunk c of row r at chunk c ^ (r % 8): the 8 rows a
// warp writes at once hit 8 different bank groups): row r, byte `byte` of
// its 128.
__device__ __forceinline__ unsigned box_address(unsigned box, int r, int byte) {
  return box + r * 128 + (((byte / 16) ^ (r % 8)) * 16) + byte % 16;
}

// One pass of a 64-row block's bf16 output (kBoxes boxes of 64 columns from
// col0), packed: what Epilogue::value makes of each accumulator pair (RAW:
// the rounded accumulators), packed[2 * jj + h] for fragment jj of the pass
// and row half h. Everything the epilogue reads for the pass (rows before
// row_end) is loaded before the first use, so the loads' latencies overlap
// (N % 8 == 0 here, so col + 1 < N with col).
template <class Epilogue, bool RAW, int kBoxes, int N>
__device__ __forceinline__ void pack_pass(const GemmArgs& args, const float (&acc)[N], int pass, long long c_base, long long col0,
                                          long long my_row0, long long row_end, int warp, int lane, unsigned (&packed)[kBoxes * 16]) {
  constexpr int kFrags = 8;  // 8-column accumulator fragments per box
  const long long r_top = my_row0 + warp * 16 + lane / 4;
  unsigned loaded[kBoxes * kFrags][2];
#pragma unroll
  for (int jj = 0; jj < kBoxes * kFrags; ++jj) {
    const long long col = col0 + 8 * (pass * kBoxes * kFrags + jj) + 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h)
      loaded[jj][h] = !RAW && col < args.n && r_top + 8 * h < row_end ? Epilogue::load(args, c_base + (r_top + 8 * h) * args.ldc + col) : 0u;
  }
#pragma unroll
  for (int jj = 0; jj < kBoxes * kFrags; ++jj) {
    const int j = pass * kBoxes * kFrags + jj;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
      if (!RAW) Epilogue::value(loaded[jj][h], v0, v1);
      packed[2 * jj + h] = pack_bf16x2(v0, v1);
    }
  }
}

// Writes one packed pass (pack_pass) into the consumer's boxes at stage_c,
// once the copy engine has read what the boxes held before.
template <int kBoxes>
__device__ __forceinline__ void stage_packed_pass(const unsigned (&packed)[kBoxes * 16], unsigned stage_c, int consumer, int thread,
                                                  int warp, int lane) {
  if (thread == 0) bulk_wait_read();  // the boxes' previous contents have left shared memory
  asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
#pragma unroll
  for (int jj = 0; jj < kBoxes * 8; ++jj) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const unsigned at = box_address(stage_c + (jj / 8) * 8192, warp * 16 + lane / 4 + 8 * h, (jj % 8) * 16 + (lane % 4) * 4);
      asm volatile("st.shared.u32 [%0], %1;" ::"r"(at), "r"(packed[2 * jj + h]) : "memory");
    }
  }
}

// Stages one packed pass and stores it through `map` (columns col_first..,
// rows my_row0..; the copy engine clips columns past N).
template <int kBoxes>
__device__ __forceinline__ void store_packed_pass(const GemmArgs& args, const unsigned (&packed)[kBoxes * 16], const TmaDescriptor* map,
                                                  unsigned stage_c, int c_z, long long col_first, long long my_row0, int consumer,
                                                  int thread, int warp, int lane) {
  stage_packed_pass<kBoxes>(packed, stage_c, consumer, thread, warp, lane);
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
  if (thread == 0) {
    for (int box = 0; box < kBoxes; ++box) {
      const long long col = col_first + box * 64;
      if (col < args.n) tma_store_3d(map, stage_c + box * 8192, (int)col, (int)my_row0, c_z);
    }
    bulk_commit();
  }
}

// One output of a whole 64-row block through shared memory and the copy
// engine: RAW, the rounded accumulators to aux (bf16); else what
// Epilogue::value makes of them to c, bf16 (pack_pass, store_packed_pass)
// or (WIDE) f32, in boxes of 64 rows x 128 bytes (32 f32 columns).
template <int BM, int BN, int BK, int STAGES, class Epilogue, bool RAW, bool WIDE, int N>
__device__ __forceinline__ void tma_store_output(const GemmArgs& args, const float (&acc)[N], const TmaDescriptor* map, unsigned stage_c,
                                                 int c_z, long long c_base, long long col0, long long my_row0, int consumer,
                                                 int thread, int warp, int lane) {
  constexpr int kBoxes = SmemLayout<BM, BN, BK, STAGES>::kCBoxes;
  if constexpr (!WIDE) {
#pragma unroll
    for (int pass = 0; pass < BN / 64 / kBoxes; ++pass) {
      unsigned packed[kBoxes * 16];
      pack_pass<Epilogue, RAW, kBoxes>(args, acc, pass, c_base, col0, my_row0, my_row0 + 64, warp, lane, packed);
      store_packed_pass<kBoxes>(args, packed, map, stage_c, c_z, col0 + pass * kBoxes * 64, my_row0, consumer, thread, warp, lane);
    }
  } else {
    constexpr int kFrags = 4;  // 8-column fragments per 32-column box
    const long long r_top = my_row0 + warp * 16 + lane / 4;
#pragma unroll
    for (int pass = 0; pass < BN / 32 / kBoxes; ++pass) {
      unsigned loaded[kBoxes * kFrags][2];
#pragma unroll
      for (int jj = 0; jj < kBoxes * kFrags; ++jj) {
        const long long col = col0 + 8 * (pass * kBoxes * kFrags + jj) + 2 * (lane % 4);
#pragma unroll
        for (int h = 0; h < 2; ++h) loaded[jj][h] = col < args.n ? Epilogue::load(args, c_base + (r_top + 8 * h) * args.ldc + col) : 0u;
      }
      if (thread == 0) bulk_wait_read();  // the previous pass's boxes have left shared memory
      asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
#pragma unroll
      for (int jj = 0; jj < kBoxes * kFrags; ++jj) {
        const int j = pass * kBoxes * kFrags + jj, box = jj / kFrags, frag = jj % kFrags;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
          Epilogue::value(loaded[jj][h], v0, v1);
          const unsigned at = box_address(stage_c + box * 8192, warp * 16 + lane / 4 + 8 * h, frag * 32 + (lane % 4) * 8);
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(at), "f"(v0), "f"(v1) : "memory");
        }
      }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
      if (thread == 0) {
        for (int box = 0; box < kBoxes; ++box) {
          const long long col = col0 + (pass * kBoxes + box) * 32;
          if (col < args.n) tma_store_3d(map, stage_c + box * 8192, (int)col, (int)my_row0, c_z);
        }
        bulk_commit();
      }
    }
  }
}

// One bf16 output of a partial 64-row block (rows my_row0 .. row_end - 1,
// fewer than 64; the last block of a group, or of M in the batched and
// stream-K modes): in grouped mode a whole box would overwrite the next
// group's first rows, so each pass is staged in the boxes as for the copy
// engine and then copied out by the consumer's threads, a 16-byte chunk
// each, whole 128-byte row segments per 8 threads, rows before row_end
// only. (From registers each
// store would write 4 bytes of 8 rows at once: a grouped product whose
// groups all end in a partial tile measured 15% slower than one whose groups
// are whole tiles, docs/perf.md.) RAW: the rounded accumulators to aux.
template <int BM, int BN, int BK, int STAGES, class Epilogue, bool RAW, int N>
__device__ __forceinline__ void staged_store_rows(const GemmArgs& args, const float (&acc)[N], void* out, unsigned stage_c, long long c_base,
                                                  long long col0, long long my_row0, long long row_end, int consumer, int thread,
                                                  int warp, int lane) {
  constexpr int kBoxes = SmemLayout<BM, BN, BK, STAGES>::kCBoxes;
  const int rows = (int)(row_end - my_row0);
#pragma unroll
  for (int pass = 0; pass < BN / 64 / kBoxes; ++pass) {
    unsigned packed[kBoxes * 16];
    pack_pass<Epilogue, RAW, kBoxes>(args, acc, pass, c_base, col0, my_row0, row_end, warp, lane, packed);
    stage_packed_pass<kBoxes>(packed, stage_c, consumer, thread, warp, lane);
    asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
    for (int i = thread; i < kBoxes * 64 * 8; i += 128) {
      const int box = i / 512, r = (i / 8) % 64, chunk = i % 8;
      const long long col = col0 + (pass * kBoxes + box) * 64 + chunk * 8;
      if (r >= rows || col >= args.n) continue;  // N % 8 == 0 here: a chunk is inside or past N whole
      uint4 v;
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                   : "r"(stage_c + box * 8192 + r * 128 + ((chunk ^ (r % 8)) * 16)));
      *reinterpret_cast<uint4*>(static_cast<unsigned short*>(out) + c_base + (my_row0 + r) * args.ldc + col) = v;
    }
    asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");  // the boxes are read before anything overwrites them
  }
}

// The epilogue of one consumer's 64 x BN block of accumulators (rows
// my_row0 .. my_row0 + 63 of the tile at column col0): thread (warp, lane)
// holds rows warp*16 + lane/4 (+8) and columns 8j + 2*(lane%4) (+1).
// Whole 64-row blocks of a kTmaStore epilogue go through the copy engine
// (aux first when the epilogue stores it), partial ones of a bf16 output
// through staged_store_rows, the rest (f32 partial blocks, epilogues without
// kTmaStore) from registers.
template <int BM, int BN, int BK, int STAGES, class Epilogue, int N>
__device__ __forceinline__ void store_block(const GemmArgs& args, const float (&acc)[N], unsigned base, int group, long long col0,
                                            long long row_end, long long my_row0, int consumer, int thread, int warp, int lane) {
  using Layout = SmemLayout<BM, BN, BK, STAGES>;
  const long long c_base = args.group_offsets && !args.varlen_k ? 0 : (long long)group * args.c_group_stride;
  const unsigned stage_c = base + Layout::kCStage + consumer * Layout::kCBoxes * 8192;
  // (Two-output epilogues keep the register path: four staged passes per
  // partial block measured slower than registers for GELU + its
  // pre-activation, 0.344 ms against 0.307 at the D1536 layer's up
  // projection with A contiguous: docs/perf.md.)
  if constexpr (Epilogue::kTmaStore && !WideC<Epilogue>::value && !Epilogue::kStoresAux) {
    if (my_row0 < row_end && my_row0 + 64 > row_end) {  // a partial block: staged, then copied out row by row
      staged_store_rows<BM, BN, BK, STAGES, Epilogue, false>(args, acc, args.c, stage_c, c_base, col0, my_row0, row_end, consumer,
                                                             thread, warp, lane);
      return;
    }
  }
  if (Epilogue::kTmaStore && my_row0 + 64 <= row_end) {
    const int c_z = args.group_offsets && !args.varlen_k ? 0 : group;
    if (Epilogue::kStoresAux && args.aux)
      tma_store_output<BM, BN, BK, STAGES, Epilogue, true, false>(args, acc, &args.aux_map, stage_c, c_z, c_base, col0, my_row0,
                                                                  consumer, thread, warp, lane);
    tma_store_output<BM, BN, BK, STAGES, Epilogue, false, WideC<Epilogue>::value>(args, acc, &args.c_map, stage_c, c_z, c_base, col0,
                                                                             my_row0, consumer, thread, warp, lane);
  } else {
    const long long r_top = my_row0 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const long long col = col0 + 8 * j + 2 * (lane % 4);
      if (col >= args.n) continue;
      const bool pair = col + 1 < args.n;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long long row = r_top + 8 * h;
        if (row < row_end) Epilogue::apply(args, c_base + row * args.ldc + col, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], pair);
      }
    }
  }
}

// The MMAs of one stage (k-tile kt of a tile with k_count K rows) into
// `acc`, committed as one group: the cooperative and overlapped consumers'
// shared step. The stage is full (its barrier waited) when it is called.
template <int BM, int BN, int BK, int STAGES, bool A_K_MAJOR, bool B_K_MAJOR, int N>
__device__ __forceinline__ void mma_stage(const GemmArgs& args, float (&acc)[N], unsigned char* smem, unsigned base, int s, int kt,
                                          long long k_count, int consumer, int thread) {
  using Layout = SmemLayout<BM, BN, BK, STAGES>;
  using Mma = Wgmma<BN, A_K_MAJOR ? 0 : 1, B_K_MAJOR ? 0 : 1>;
  const unsigned a_tile = base + s * Layout::kStage, b_tile = a_tile + Layout::kATile;
  if constexpr (!A_K_MAJOR) {
    // varlen K: K-rows of the last tile past the group's end belong to
    // the next group; zero them in this consumer's A chunk (whole
    // 128-byte rows, so the swizzle does not matter).
    const int valid = (int)(k_count - (long long)kt * BK);
    if (args.varlen_k && valid < BK && !args.gather_slots) {  // (a gathering producer wrote zeros there)
      uint4* rows = reinterpret_cast<uint4*>(smem + s * Layout::kStage + consumer * 64 * BK * 2);
      for (int i = valid * 8 + thread; i < BK * 8; i += 128) rows[i] = make_uint4(0, 0, 0, 0);
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
    }
  }
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BK / 16; ++kk) {
    // K-major: the next 16 elements are 32 bytes along the swizzled row;
    // MN-major: 16 more K-rows of 128 bytes.
    const unsigned a_addr = A_K_MAJOR ? a_tile + consumer * 64 * 128 + kk * 32 : a_tile + consumer * 64 * BK * 2 + kk * 2048;
    const unsigned b_addr = B_K_MAJOR ? b_tile + kk * 32 : b_tile + kk * 2048;
    Mma::run(acc, smem_desc(a_addr, A_K_MAJOR ? 16 : 64 * BK * 2), smem_desc(b_addr, B_K_MAJOR ? 16 : 64 * BK * 2),
             (kt > 0 || kk > 0) ? 1 : 0);
  }
  wgmma_commit();
}

// A tile the overlapped consumers have multiplied and not yet stored.
struct PendingTile {
  bool valid, empty;  // empty: no K (an empty group of a weight gradient): its output is zeros
  int group;
  long long row0, row_end, col0;
};

// Keeps the compiler from moving reads of wgmma accumulators above the wait
// for them (they are plain registers to it); emits no instruction.
template <int N> __device__ __forceinline__ void fence_accumulators(float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}

// The overlapped consumers' epilogue of the pending tile from `acc`.
template <int BM, int BN, int BK, int STAGES, class Epilogue, int N>
__device__ __forceinline__ void store_pending(const GemmArgs& args, const PendingTile& p, const float (&acc)[N], unsigned base, int consumer,
                                              int thread, int warp, int lane) {
  if (!p.valid) return;
  if (p.empty) {
    // Zeros from their own array: writing zeros into an accumulator set
    // while the other's MMAs are in flight makes ptxas serialize every
    // wgmma of the kernel (C7515).
    const float zeros[N] = {};
    store_block<BM, BN, BK, STAGES, Epilogue>(args, zeros, base, p.group, p.col0, p.row_end, p.row0 + consumer * 64, consumer, thread,
                                              warp, lane);
  } else {
    store_block<BM, BN, BK, STAGES, Epilogue>(args, acc, base, p.group, p.col0, p.row_end, p.row0 + consumer * 64, consumer, thread,
                                              warp, lane);
  }
}

// One tile of the overlapped consumers (OVERLAP): the MMAs of tile t into
// `cur` and, once the first min(k-tiles, STAGES - 1) stages of them are
// issued (asynchronous: the tensor cores work on them meanwhile), the
// epilogue of the previous tile from `old`. The stages issued before the
// epilogue are held until it ends, at most STAGES - 1, so the producer can
// always fill the next one. `it` counts the stages consumed, as in the
// cooperative loop. The loop is split at the epilogue rather than calling
// it under `kt == ...`: an epilogue in a branch of the MMA loop makes
// ptxas serialize the wgmmas (C7518; ptxas -v reports it, and
// tests/cuda/compile_test.cpp fails on it).
template <int BM, int BN, int BK, int STAGES, bool A_K_MAJOR, bool B_K_MAJOR, class Epilogue, int N>
__device__ __forceinline__ void overlapped_tile(const GemmArgs& args, const TileWalk<BM, BN>& walk, long long t, float (&cur)[N],
                                                const float (&old)[N], PendingTile& pending, int& it, unsigned char* smem,
                                                unsigned base, unsigned full_bar, unsigned empty_bar, int consumer, int thread, int warp,
                                                int lane) {
  int group;
  long long row0, row_end, col0, k_begin, k_count;
  walk.decode(t, group, row0, row_end, col0, k_begin, k_count);
  const int k_tiles = (int)((k_count + BK - 1) / BK);
  const int ahead = k_tiles < STAGES - 1 ? k_tiles : STAGES - 1;  // stages issued before the epilogue
  auto issue = [&](int kt) {
    const int s = it % STAGES;
    mbar_wait(full_bar + 8 * s, (it / STAGES) & 1);
    mma_stage<BM, BN, BK, STAGES, A_K_MAJOR, B_K_MAJOR>(args, cur, smem, base, s, kt, k_count, consumer, thread);
    ++it;
  };

  int released = it;  // the first stage not yet handed back to the producer
  auto release_all_but_last = [&] {
    wgmma_wait<1>();
    for (; released < it - 1; ++released)
      if (thread == 0) mbar_arrive(empty_bar + 8 * (released % STAGES));
  };
  if (k_tiles > 0) {
    issue(0);
    // Returns at once (one group in flight is allowed), but without a wait
    // between the first wgmma and the epilogue ptxas serializes (C7518).
    wgmma_wait<1>();
  }
  for (int kt = 1; kt < ahead; ++kt) issue(kt);
  store_pending<BM, BN, BK, STAGES, Epilogue>(args, pending, old, base, consumer, thread, warp, lane);
  if (ahead > 0) release_all_but_last();
  for (int kt = ahead; kt < k_tiles; ++kt) {
    issue(kt);
    release_all_but_last();
  }
  wgmma_wait<0>();
  fence_accumulators(cur);
  for (; released < it; ++released)
    if (thread == 0) mbar_arrive(empty_bar + 8 * (released % STAGES));
  pending = {true, k_tiles == 0, group, row0, row_end, col0};
}

// B's tile of one stage through TMA (the producer's thread 0).
template <int BN, int BK, bool B_K_MAJOR>
__device__ __forceinline__ void load_b_tile(const GemmArgs& args, unsigned b_dst, unsigned bar, int k0, long long col0, int b_z) {
  if (B_K_MAJOR) {
    tma_load_3d(b_dst, &args.b, bar, k0, (int)col0, b_z);
  } else {
    for (int j = 0; j < BN / 64; ++j) tma_load_3d(b_dst + j * 64 * BK * 2, &args.b, bar, (int)col0 + 64 * j, k0, b_z);
  }
}

// Stages a gathering producer thread keeps in flight before it waits for
// the oldest (at most STAGES - 1: a stage it has not yet marked full must
// not be one the consumers need before the producer can refill a stage).
template <int STAGES> constexpr int kGatherLag = STAGES - 2 > 1 ? STAGES - 2 : 1;

// The producer warpgroup of a GATHER_A launch: the 128 threads load an A
// tile's 128 lines (128 bytes each, line L at L * 128 of the tile, its
// 16-byte chunks 128-byte swizzled), thread 0 also B.
// K-major A (grouped mode): line L is the tile's row L, one slot per row for
// the whole tile. Each warp instruction copies four whole lines, eight
// threads a line: thread (warp w, lane l) copies chunk l % 8 of lines
// 4w + l / 8 + 16p, p = 0 .. 7. (A thread per line, each instruction 16
// bytes of 32 different rows, measured 449 us for the D1536 E128 layer's up
// projection against 378: docs/perf.md.)
// M-major A (the weight gradient, varlen K): line L is K-row L % 64 of the
// tile's 64-column chunk L / 64, one slot per stage; thread i copies line i;
// K-rows past the group's end are zeros (so the consumers need not zero
// them). (The K-major layout measured slower here, 688 us against 408 for
// that layer's weight gradient; not explained.)
template <int BM, int BN, int BK, int STAGES, bool A_K_MAJOR, bool B_K_MAJOR>
__device__ __forceinline__ void gather_producer(const GemmArgs& args, const TileWalk<BM, BN>& walk, long long total, unsigned base,
                                                unsigned full_bar, unsigned empty_bar) {
  using Layout = SmemLayout<BM, BN, BK, STAGES>;
  static_assert(BM == 128 && BK == 64, "128 lines of 64 elements per A tile");
  constexpr int kLag = kGatherLag<STAGES>;
  constexpr int kLines = A_K_MAJOR ? 8 : 1;  // lines per thread
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // K-major: chunk l % 8 of lines line0 + 16p; (line0 + 16p) % 8 == line0 %
  // 8, so every pass has the same swizzled chunk offset. M-major: line i.
  const int line0 = A_K_MAJOR ? warp * 4 + lane / 8 : (int)threadIdx.x, chunk = lane % 8;
  const unsigned short* src_base = static_cast<const unsigned short*>(args.gather_src);
  const long long row_len = A_K_MAJOR ? args.k : args.m;  // elements in a row of gather_src
  int it = 0;
  for (long long t = blockIdx.x; t < total; t += gridDim.x) {
    int group;
    long long row0, row_end, col0, k_begin, k_count;
    walk.decode(t, group, row0, row_end, col0, k_begin, k_count);
    const int k_tiles = (int)((k_count + BK - 1) / BK);
    int src_row[kLines];  // the row of gather_src each of this thread's lines copies (-1: a zero line)
    if (A_K_MAJOR) {
#pragma unroll
      for (int p = 0; p < kLines; ++p) {
        const long long r = row0 + line0 + 16 * p;
        const int slot = r < row_end ? __ldg(args.gather_slots + r) : -1;
        src_row[p] = slot >= 0 ? slot / args.gather_top_k : -1;
      }
    }
    const int b_z = args.b_batched && !args.varlen_k ? group : 0;
    for (int kt = 0; kt < k_tiles; ++kt, ++it) {
      if (!A_K_MAJOR) {
        const long long kk = (long long)kt * BK + line0 % 64;
        const int slot = kk < k_count ? __ldg(args.gather_slots + k_begin + kk) : -1;
        src_row[0] = slot >= 0 ? slot / args.gather_top_k : -1;
      }
      const int s = it % STAGES;
      mbar_wait(empty_bar + 8 * s, ((it / STAGES) & 1) ^ 1);
      const unsigned bar = full_bar + 8 * s;
      const unsigned a_dst = base + s * Layout::kStage, b_dst = a_dst + Layout::kATile;
      if (threadIdx.x == 0) {
        mbar_expect_tx(bar, Layout::kBTile);
        load_b_tile<BN, BK, B_K_MAJOR>(args, b_dst, bar, (int)(k_begin + kt * BK), col0, b_z);
      }
      if (A_K_MAJOR) {
        // The chunk's first element in its row; it exists when it starts
        // before the row's end (rows are whole 16-byte chunks).
        const long long first = k_begin + (long long)kt * BK + 8 * chunk;
        const unsigned dst = a_dst + line0 * 128 + ((chunk ^ (line0 % 8)) * 16);
#pragma unroll
        for (int p = 0; p < kLines; ++p) {
          const bool valid = src_row[p] >= 0 && first < row_len;
          // (An invalid chunk is zero-filled and reads nothing.)
          cp_async_16(dst + 16 * 128 * p, src_base + (valid ? (long long)src_row[p] * row_len + first : 0), valid);
        }
      } else {
        const long long first = row0 + 64 * (line0 / 64);  // the line's first element
        const unsigned short* src = src_base + (src_row[0] >= 0 ? (long long)src_row[0] * row_len + first : 0);
        const int room = src_row[0] >= 0 ? (int)(row_len - first < 64 ? row_len - first : 64) : 0;
#pragma unroll
        for (int c = 0; c < 8; ++c) cp_async_16(a_dst + line0 * 128 + ((c ^ (line0 % 8)) * 16), src + 8 * c, 8 * c < room);
      }
      cp_async_commit();
      if (it >= kLag) {
        cp_async_wait<kLag>();  // the copies of stage it - kLag have landed
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        mbar_arrive(full_bar + 8 * ((it - kLag) % STAGES));
      }
    }
  }
  cp_async_wait<0>();
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  for (int j = it - kLag > 0 ? it - kLag : 0; j < it; ++j) mbar_arrive(full_bar + 8 * (j % STAGES));
}

template <int BM, int BN, int BK, int STAGES, bool A_K_MAJOR, bool B_K_MAJOR, class Epilogue, bool OVERLAP = false, bool GATHER_A = false>
__global__ void __launch_bounds__(384, 1) gemm_sm90_kernel(const __grid_constant__ GemmArgs args) {
  static_assert(BM == 128 && BK == 64 && (BN == 64 || BN == 128 || BN == 256), "tile shape");
  static_assert(!OVERLAP || BN <= 128, "overlapped epilogue: a consumer holds two 64 x BN accumulator sets");
  // Registers per thread after setmaxnreg: 128 x producer + 256 x consumer
  // within the 384 x 168 of the launch. The gathering producer's address
  // arithmetic spills at 40.
  constexpr int kProducerRegs = GATHER_A ? 56 : 40, kConsumerRegs = GATHER_A ? 224 : 232;
  using Layout = SmemLayout<BM, BN, BK, STAGES>;
  using Mma = Wgmma<BN, A_K_MAJOR ? 0 : 1, B_K_MAJOR ? 0 : 1>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = (unsigned char*)(((unsigned long long)smem_raw + 1023) & ~1023ull);
  const unsigned base = smem_u32(smem);
  const unsigned full_bar = base + Layout::kBarriers, empty_bar = full_bar + 8 * STAGES;
  int* tile_prefix = reinterpret_cast<int*>(smem + Layout::kPrefix);
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_bar + 8 * s, GATHER_A ? 1 + 128 : 1);  // gathered A: every producer thread arrives too
      mbar_init(empty_bar + 8 * s, 2);  // the consumers reading a stage
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  const long long tiles_n = (args.n + BN - 1) / BN;
  if (args.group_offsets && !args.varlen_k && threadIdx.x < 32) {
    // tile_prefix[g] = sum over groups before g of row tiles * column tiles (a warp scan)
    int lane = threadIdx.x, carry = 0;
    for (int g0 = 0; g0 <= args.groups; g0 += 32) {
      int g = g0 + lane, count = 0;
      if (g < args.groups) count = (int)(((args.group_offsets[g + 1] - args.group_offsets[g]) + BM - 1) / BM * tiles_n);
      int inclusive = count;
      for (int d = 1; d < 32; d *= 2) {
        int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      if (g <= args.groups) tile_prefix[g] = carry + inclusive - count;
      carry += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  TileWalk<BM, BN> walk{args, tile_prefix, tiles_n};
  const long long total = walk.total();

  if (warpgroup == 0) {
    regs_down<kProducerRegs>();
    if constexpr (GATHER_A) {
      gather_producer<BM, BN, BK, STAGES, A_K_MAJOR, B_K_MAJOR>(args, walk, total, base, full_bar, empty_bar);
    } else if (threadIdx.x == 0) {
      Sm90Timer waiting, all;
      all.start();
      int it = 0;
      for (long long t = blockIdx.x; t < total; t += gridDim.x) {
        int group;
        long long row0, row_end, col0, k_begin, k_count;
        walk.decode(t, group, row0, row_end, col0, k_begin, k_count);
        const int k_tiles = (int)((k_count + BK - 1) / BK);
        const int a_z = args.group_offsets ? 0 : (args.a_batched ? group : 0);
        const int b_z = args.b_batched && !args.varlen_k ? group : 0;
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
          const int s = it % STAGES;
          const unsigned parity = (it / STAGES) & 1;
          waiting.start();
          mbar_wait(empty_bar + 8 * s, parity ^ 1);
          waiting.stop();
          const unsigned bar = full_bar + 8 * s;
          mbar_expect_tx(bar, Layout::kStage);
          const unsigned a_dst = base + s * Layout::kStage, b_dst = a_dst + Layout::kATile;
          const int k0 = (int)(k_begin + kt * BK);
          if (A_K_MAJOR) {
            tma_load_3d(a_dst, &args.a, bar, k0, (int)row0, a_z);
          } else {
            for (int j = 0; j < BM / 64; ++j) tma_load_3d(a_dst + j * 64 * BK * 2, &args.a, bar, (int)row0 + 64 * j, k0, a_z);
          }
          load_b_tile<BN, BK, B_K_MAJOR>(args, b_dst, bar, k0, col0, b_z);
        }
      }
      all.stop();
      waiting.add_to(3);
      all.add_to(4);
    }
  } else if constexpr (OVERLAP) {
    // Overlapped epilogue (MOEJIT_SM90_OVERLAP=1; tile_n <= 128): the
    // cooperative split of each tile into the consumers' 64-row halves, with
    // two accumulator sets per consumer, so a tile's epilogue runs while the
    // next tile's MMAs are in flight on the tensor cores (overlapped_tile).
    regs_up<kConsumerRegs>();
    const int consumer = warpgroup - 1;
    const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
    float acc0[Mma::kAccumulators], acc1[Mma::kAccumulators];
    PendingTile pending{false, false, 0, 0, 0, 0};
    int it = 0;
    for (long long t = blockIdx.x;; t += 2ll * gridDim.x) {
      if (t >= total) {  // the last tile went into acc1 (or there was none)
        store_pending<BM, BN, BK, STAGES, Epilogue>(args, pending, acc1, base, consumer, thread, warp, lane);
        break;
      }
      overlapped_tile<BM, BN, BK, STAGES, A_K_MAJOR, B_K_MAJOR, Epilogue>(args, walk, t, acc0, acc1, pending, it, smem, base, full_bar,
                                                                         empty_bar, consumer, thread, warp, lane);
      if (t + gridDim.x >= total) {
        store_pending<BM, BN, BK, STAGES, Epilogue>(args, pending, acc0, base, consumer, thread, warp, lane);
        break;
      }
      overlapped_tile<BM, BN, BK, STAGES, A_K_MAJOR, B_K_MAJOR, Epilogue>(args, walk, t + gridDim.x, acc1, acc0, pending, it, smem, base,
                                                                         full_bar, empty_bar, consumer, thread, warp, lane);
    }
    if (Epilogue::kTmaStore && thread == 0) bulk_wait_all();
  } else {
    regs_up<kConsumerRegs>();
    const int consumer = warpgroup - 1;
    const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
    float acc[Mma::kAccumulators];
    Sm90Timer waiting, epilogue, all;
    all.start();
    int it = 0;
    for (long long t = blockIdx.x; t < total; t += gridDim.x) {
      int group;
      long long row0, row_end, col0, k_begin, k_count;
      walk.decode(t, group, row0, row_end, col0, k_begin, k_count);
      const int k_tiles = (int)((k_count + BK - 1) / BK);
      if (k_tiles == 0) {
#pragma unroll
        for (int i = 0; i < Mma::kAccumulators; ++i) acc[i] = 0.0f;
      }
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int s = it % STAGES;
        waiting.start();
        mbar_wait(full_bar + 8 * s, (it / STAGES) & 1);
        waiting.stop();
        mma_stage<BM, BN, BK, STAGES, A_K_MAJOR, B_K_MAJOR>(args, acc, smem, base, s, kt, k_count, consumer, thread);
        wgmma_wait<1>();  // the MMAs of the previous stage have retired: release it
        if (kt > 0 && thread == 0) mbar_arrive(empty_bar + 8 * ((it - 1) % STAGES));
      }
      wgmma_wait<0>();
      if (k_tiles > 0 && thread == 0) mbar_arrive(empty_bar + 8 * ((it - 1) % STAGES));

      epilogue.start();
      store_block<BM, BN, BK, STAGES, Epilogue>(args, acc, base, group, col0, row_end, row0 + consumer * 64, consumer, thread, warp, lane);
      epilogue.stop();
    }
    if (Epilogue::kTmaStore && thread == 0) bulk_wait_all();  // stores done before the block's shared memory goes away
    all.stop();
    if (consumer == 0 && thread == 0) {
      waiting.add_to(0);
      epilogue.add_to(1);
      all.add_to(2);
    }
  }
}

}  // namespace moejit::sm90
#endif  // MOEJIT_DEVICE_CODE
