// Hopper GEMM, stream-K schedule for weight gradients (moe.grouped_matmul_wgrad,
// the varlen-K mode of codegen/kernels/gemm_sm90.cuh): C[g] = A[:, seg g] *
// B[seg g, :] for every group g (expert) of token rows.
//
// Why a second schedule: a weight gradient has few output tiles (config B:
// 8 experts x 18 tiles of 128 x 256 = 144 tiles on 132 SMs) over long and
// unequal K (each expert's routed rows). One tile per block leaves most SMs
// idle in a ragged second wave, and the routing's imbalance makes the longest
// expert's tiles the critical path (160 us per launch against a 60 us floor,
// H200). Stream-K splits the *k-tiles* evenly instead: the work is the
// sequence of units (tile, k-tile) in tile order (each tile max(1, its
// group's k-tiles) units), and each of the G blocks takes a run of W / G
// consecutive units (the first W % G blocks one more) of the W in all. So every block does the same number of MMAs
// whatever the routing, and a tile may be cut across consecutive blocks:
//   - the block that holds a tile's first k-tile owns the tile: it adds the
//     others' partial sums to its accumulators, in block order (the same
//     bits every run), and applies the epilogue;
//   - a block whose range starts inside a tile (only ever its first
//     segment) stores that segment's f32 accumulators in its partial slot
//     and raises its flag (one per consumer warpgroup).
// The owner works on the tile at the END of its range and the helpers at the
// START of theirs, so by the time an owner waits its partials are done: the
// fix-up costs one L2 read of each seam. Every block must be resident at
// once (one block per SM, grid = SMs): a waiting block waits only for
// higher-numbered blocks' first segments, which wait for nobody.
//
// The flags are zeroed before each launch (a memset the emitter adds). The
// tile shape, stages, producer, MMAs and epilogues are gemm_sm90.cuh's.
#pragma once

#include "codegen/kernels/gemm_sm90.cuh"

namespace moejit::sm90 {

struct StreamKArgs {
  GemmArgs gemm;    // varlen-K mode: group_offsets, A M-major, B N-major
  float* partials;  // [blocks][2 consumers][BN / 8 float4 per thread][128 threads]
  int* flags;       // [blocks][2]: 1 once that block's consumer stored its partial; zero at launch
};

// The f32 words of one block's partial slot (both consumers).
constexpr long long streamk_partial_floats(int bm, int bn) { return (long long)bm * bn; }

}  // namespace moejit::sm90

#if MOEJIT_DEVICE_CODE
namespace moejit::sm90 {

// The units of the stream-K split (see above), from the per-group prefix in
// shared memory: unit_prefix[g] = the first unit of group g's tiles. All
// 32-bit (the host keeps the unit count below 2^31) and without 64-bit
// divisions: it runs between the MMAs, beside 128 live accumulators.
template <int BM, int BN> struct StreamKWalk {
  static constexpr int kRasterRows = 8;  // row tiles per L2 panel, as TileWalk
  const GemmArgs& args;
  const int* unit_prefix;  // groups + 1 entries
  int tiles_m, tiles_n;
  int per_block = 0, extra = 0;  // units = per_block * blocks + extra: the first `extra` blocks take one more

  __device__ int units_per_tile(int g) const {
    const int k_tiles = (args.group_offsets[g + 1] - args.group_offsets[g] + 63) / 64;
    return k_tiles > 0 ? k_tiles : 1;
  }
  __device__ void split(int blocks) {
    const int total = unit_prefix[args.groups];
    per_block = total / blocks;
    extra = total - per_block * blocks;
  }
  // The first unit of block b's range.
  __device__ int first(int b) const { return b * per_block + (b < extra ? b : extra); }

  // The segment of a block's range that starts at unit u (and ends by `end`).
  struct Segment {
    int group, row0, col0;  // the tile
    int kt0, kt1;           // its k-tiles [kt0, kt1) in this segment
    int tile_end;           // the unit after the tile's last
  };
  __device__ Segment segment(int u, int end) const {
    Segment g;
    int lo = 0, hi = args.groups - 1;  // the last group whose first unit <= u
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (unit_prefix[mid] <= u) lo = mid;
      else hi = mid - 1;
    }
    g.group = lo;
    const int per = units_per_tile(lo), in_group = u - unit_prefix[lo];
    const int t = in_group / per;
    g.kt0 = in_group - t * per;
    g.tile_end = unit_prefix[lo] + (t + 1) * per;
    g.kt1 = g.kt0 + ((g.tile_end < end ? g.tile_end : end) - u);
    // Tile t of the group, in panels of kRasterRows row tiles x all column tiles.
    const int panel = t / (kRasterRows * tiles_n), first_m = panel * kRasterRows;
    const int rows_in_panel = tiles_m - first_m < kRasterRows ? tiles_m - first_m : kRasterRows;
    const int in_panel = t - panel * kRasterRows * tiles_n;
    g.row0 = (first_m + in_panel % rows_in_panel) * BM;
    g.col0 = in_panel / rows_in_panel * BN;
    return g;
  }
};

// blockIdx.x, read where it is used: the compiler cannot hoist the
// partial-slot addresses derived from it out of the k-loop, where they would
// hold registers the accumulators need (they spilled).
__device__ __forceinline__ int block_id() {
  int b;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(b));
  return b;
}
__device__ __forceinline__ void flag_release(int* flag) {
  asm volatile("fence.acq_rel.gpu;\n st.relaxed.gpu.global.b32 [%0], %1;" ::"l"(flag), "r"(1) : "memory");
}
__device__ __forceinline__ void flag_acquire(const int* flag) {
  int v = 0;
  do {
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
  } while (v == 0);
}

template <int BM, int BN, int BK, int STAGES, class Epilogue>
__global__ void __launch_bounds__(384, 1) gemm_sm90_streamk_kernel(const __grid_constant__ StreamKArgs sk) {
  static_assert(BM == 128 && BK == 64 && (BN == 64 || BN == 128 || BN == 256), "tile shape");
  const GemmArgs& args = sk.gemm;
  using Layout = SmemLayout<BM, BN, BK, STAGES>;
  using Mma = Wgmma<BN, 1, 1>;  // A M-major, B N-major
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = (unsigned char*)(((unsigned long long)smem_raw + 1023) & ~1023ull);
  const unsigned base = smem_u32(smem);
  const unsigned full_bar = base + Layout::kBarriers, empty_bar = full_bar + 8 * STAGES;
  int* unit_prefix = reinterpret_cast<int*>(smem + Layout::kPrefix);
  const int warpgroup = threadIdx.x / 128;
  const int tiles_m = (int)((args.m + BM - 1) / BM), tiles_n = (int)((args.n + BN - 1) / BN), tiles_per_group = tiles_m * tiles_n;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, 2);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if (threadIdx.x < 32) {  // unit_prefix[g] = sum over groups before g of tiles x max(1, k-tiles) (a warp scan)
    int lane = threadIdx.x, carry = 0;
    for (int g0 = 0; g0 <= args.groups; g0 += 32) {
      int g = g0 + lane, count = 0;
      if (g < args.groups) {
        long long k = (args.group_offsets[g + 1] - args.group_offsets[g] + BK - 1) / BK;
        count = (int)(tiles_per_group * (k > 0 ? k : 1));
      }
      int inclusive = count;
      for (int d = 1; d < 32; d *= 2) {
        int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      if (g <= args.groups) unit_prefix[g] = carry + inclusive - count;
      carry += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  StreamKWalk<BM, BN> units{args, unit_prefix, tiles_m, tiles_n};
  units.split(gridDim.x);
  const int begin = units.first(blockIdx.x), end = units.first(blockIdx.x + 1);

  if (warpgroup == 0) {
    regs_down<40>();
    if (threadIdx.x == 0) {
      int it = 0;
      for (int u = begin; u < end;) {
        const auto seg = units.segment(u, end);
        const int k_begin = args.group_offsets[seg.group], k_count = args.group_offsets[seg.group + 1] - k_begin;
        for (int kt = seg.kt0; k_count > 0 && kt < seg.kt1; ++kt, ++it) {
          const int s = it % STAGES;
          mbar_wait(empty_bar + 8 * s, ((it / STAGES) & 1) ^ 1);
          const unsigned bar = full_bar + 8 * s;
          mbar_expect_tx(bar, Layout::kStage);
          const unsigned a_dst = base + s * Layout::kStage, b_dst = a_dst + Layout::kATile;
          const int k0 = k_begin + kt * BK;
          for (int j = 0; j < BM / 64; ++j) tma_load_3d(a_dst + j * 64 * BK * 2, &args.a, bar, seg.row0 + 64 * j, k0, 0);
          for (int j = 0; j < BN / 64; ++j) tma_load_3d(b_dst + j * 64 * BK * 2, &args.b, bar, seg.col0 + 64 * j, k0, 0);
        }
        u += seg.kt1 - seg.kt0;
      }
    }
  } else {
    regs_up<232>();
    const int consumer = warpgroup - 1;
    const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
    float acc[Mma::kAccumulators];
    int it = 0;
    for (int u = begin; u < end;) {
      // Only the segment's k-tiles and the group's K rows left stay live
      // through the MMAs; the tile's coordinates are decoded again after them
      // (kept across the loop, they pushed the accumulators into local memory).
      int kt0, kt1, k_left;  // k_left: the group's K rows from k-tile kt0 on
      {
        const auto seg = units.segment(u, end);
        kt0 = seg.kt0;
        kt1 = seg.kt1;
        k_left = args.group_offsets[seg.group + 1] - args.group_offsets[seg.group] - kt0 * BK;
      }
      if (k_left <= 0) {  // an empty group: C[g] = 0
#pragma unroll
        for (int i = 0; i < Mma::kAccumulators; ++i) acc[i] = 0.0f;
      }
      for (int kt = kt0; k_left > 0 && kt < kt1; ++kt, ++it) {
        const int s = it % STAGES;
        mbar_wait(full_bar + 8 * s, (it / STAGES) & 1);
        const unsigned a_tile = base + s * Layout::kStage, b_tile = a_tile + Layout::kATile;
        // K-rows of the group's last tile past its end belong to the next
        // group: zeroed in this consumer's A chunk (as gemm_sm90_kernel does).
        const int valid = k_left - (kt - kt0) * BK;
        if (valid < BK) {
          uint4* rows = reinterpret_cast<uint4*>(smem + s * Layout::kStage + consumer * 64 * BK * 2);
          for (int i = valid * 8 + thread; i < BK * 8; i += 128) rows[i] = make_uint4(0, 0, 0, 0);
          asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
          asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const unsigned a_addr = a_tile + consumer * 64 * BK * 2 + kk * 2048, b_addr = b_tile + kk * 2048;
          Mma::run(acc, smem_desc(a_addr, 64 * BK * 2), smem_desc(b_addr, 64 * BK * 2), (kt > kt0 || kk > 0) ? 1 : 0);
        }
        wgmma_commit();
        wgmma_wait<1>();  // the previous stage's MMAs have retired: release it
        if (kt > kt0 && thread == 0) mbar_arrive(empty_bar + 8 * ((it - 1) % STAGES));
      }
      if (k_left > 0) {
        wgmma_wait<0>();
        if (thread == 0) mbar_arrive(empty_bar + 8 * ((it - 1) % STAGES));
      }
      asm volatile("" : "+r"(u));  // decode again, not from values kept through the loop
      const auto seg = units.segment(u, end);
      u += seg.kt1 - seg.kt0;

      // Partial slot of (block, consumer): float4 i of thread t at [i][t], so a warp's stores are contiguous.
      constexpr int kQuads = Mma::kAccumulators / 4;
      if (seg.kt0 > 0) {  // a helper's segment: hand the sums to the owner (an earlier block)
        float4* slot = reinterpret_cast<float4*>(sk.partials) + ((long long)block_id() * 2 + consumer) * kQuads * 128 + thread;
#pragma unroll
        for (int i = 0; i < kQuads; ++i) slot[i * 128] = make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
        asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
        if (thread == 0) flag_release(sk.flags + 2 * block_id() + consumer);
        continue;
      }
      // The owner: the later blocks whose ranges start inside this tile hold its other k-tiles.
      for (int b = block_id() + 1; b < (int)gridDim.x && units.first(b) < seg.tile_end; ++b) {
        if (units.first(b) == units.first(b + 1)) continue;  // an empty range: no segment
        if (thread == 0) flag_acquire(sk.flags + 2 * b + consumer);
        asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
        const float4* slot = reinterpret_cast<const float4*>(sk.partials) + ((long long)b * 2 + consumer) * kQuads * 128 + thread;
        // Four float4 loads in flight at a time: beside the 128 accumulators of
        // a 256-column tile, eight spilled and all of them at once would need
        // as many registers again.
#pragma unroll
        for (int i0 = 0; i0 < kQuads; i0 += 4) {
          float4 p[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) p[i] = __ldcg(slot + (i0 + i) * 128);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[4 * (i0 + i)] += p[i].x;
            acc[4 * (i0 + i) + 1] += p[i].y;
            acc[4 * (i0 + i) + 2] += p[i].z;
            acc[4 * (i0 + i) + 3] += p[i].w;
          }
          asm volatile("" ::: "memory");  // keeps the next four loads after these adds
        }
      }
      store_block<BM, BN, BK, STAGES, Epilogue>(args, acc, base, seg.group, seg.col0, args.m, seg.row0 + 64 * consumer, consumer, thread,
                                                warp, lane);
    }
    if (Epilogue::kTmaStore && thread == 0) bulk_wait_all();
  }
}

}  // namespace moejit::sm90
#endif  // MOEJIT_DEVICE_CODE
