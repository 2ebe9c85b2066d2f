// Hopper GEMM, data-parallel + stream-K schedule for weight gradients
// (moe.grouped_matmul_wgrad, the varlen-K mode of codegen/kernels/gemm_sm90.cuh):
// C[g] = A[:, seg g] * B[seg g, :] for every group g (expert) of token rows.
//
// Why a second schedule: a weight gradient has few output tiles (config B:
// 8 experts x 18 tiles of 128 x 256 = 144 tiles on 132 SMs) over long and
// unequal K (each expert's routed rows). One tile per block leaves a ragged
// second wave, and the routing's imbalance makes the longest expert's tiles
// the critical path (160 us a launch against a 60 us floor, H200). Pure
// stream-K (every block an equal run of (tile, k-tile) units) balances the
// MMAs but measured no faster: the blocks sharing an expert's operand panels
// then sit at different K offsets, so the panels are read from DRAM once per
// tile instead of once per wave (450 MB instead of 125 MB at config B).
//
// So the work is split in two (a tile is max(1, its group's k-tiles) units):
//   - data-parallel (DP) tiles first: up to one per block, whole tiles of
//     groups at most 25% longer than an even split of all units over the
//     blocks, in group order, so the blocks of one expert start together and
//     walk K in step (its panels are read once);
//   - then every other tile's units, stream-K: block b takes the next
//     (target - its DP tile's units) of them, in tile order, where the
//     target is the longest DP tile or the even split if longer. A tile may be
//     cut across consecutive blocks: the block that holds its first k-tile
//     owns it, adds the others' partial sums in block order (the same bits
//     every run) and applies the epilogue; a block whose stream-K run starts
//     inside a tile (only ever its first segment) stores that segment's f32
//     accumulators in its partial slot and raises its flag (one per consumer
//     warpgroup). Owners work at the end of their runs and helpers at the
//     start of theirs, so an owner finds its partials done.
// Every block must be resident at once (one block per SM, grid = SMs): a
// block waits only for higher-numbered blocks' first segments, which wait
// for nobody. The flags are zeroed before each launch (a memset the emitter
// adds). The tile shape, stages, producer, MMAs and epilogues are gemm_sm90.cuh's.
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
// The `groups` argument of smem_bytes for a launch of `groups` groups on
// `blocks` blocks: the schedule keeps four tables of groups + 1 entries, its
// target and each block's first stream-K unit where the family keeps one table.
constexpr long long streamk_smem_groups(long long groups, long long blocks) { return 4 * groups + 5 + blocks; }

}  // namespace moejit::sm90

#if MOEJIT_DEVICE_CODE
namespace moejit::sm90 {

// The schedule (see above), from four tables in shared memory of groups + 1
// entries each: units[g], the units of each of group g's tiles;
// sk_prefix[g], the first stream-K unit of group g's stream-K tiles;
// dp_prefix[g], the first block of its DP tiles; dp_work[g], the units of
// the DP tiles before its. All 32-bit (the host keeps the unit count below
// 2^31), no 64-bit division: it runs beside 128 live accumulators.
template <int BM, int BN> struct WgradSchedule {
  static constexpr int kRasterRows = 8;  // row tiles per L2 panel, as TileWalk
  const GemmArgs& args;
  const int* tables;  // units, sk_prefix, dp_prefix, dp_work: groups + 1 entries each (one pointer: registers are scarce)
  int target;         // units per block

  __device__ const int* table(int i) const { return tables + i * (args.groups + 1); }
  __device__ int units_per_tile(int g) const { return tables[g]; }  // units[g]: of each tile of group g
  __device__ int sk_prefix(int g) const { return table(1)[g]; }
  __device__ int dp_prefix(int g) const { return table(2)[g]; }
  __device__ int dp_work(int g) const { return table(3)[g]; }
  // The last group whose table entry is <= v: the group holding item v
  // (groups with no items have the same entry as the next).
  __device__ int group_of(const int* table, int v) const {
    int lo = 0, hi = args.groups - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (table[mid] <= v) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
  // The first stream-K unit of block b (b = blocks: the end).
  __device__ int sk_first(int b) const {
    const int groups = args.groups;
    int dp = dp_work(groups);  // units of the DP tiles of the blocks before b
    if (b < dp_prefix(groups)) {
      const int g = group_of(table(2), b);
      dp = dp_work(g) + (b - dp_prefix(g)) * units_per_tile(g);
    }
    const int first = b * target - dp;
    return first < sk_prefix(groups) ? first : sk_prefix(groups);
  }

  struct Segment {
    int group, row0, col0;  // the tile
    int kt0, kt1;           // its k-tiles [kt0, kt1) in this segment
    int tile_end;           // stream-K: the unit after the tile's last
  };
  // Tile t of group g, in panels of kRasterRows row tiles x all column tiles.
  __device__ void place(Segment& s, int t) const {
    const int tiles_m = (int)((args.m + BM - 1) / BM), tiles_n = (int)((args.n + BN - 1) / BN);  // from the parameters: no registers held
    const int panel = t / (kRasterRows * tiles_n), first_m = panel * kRasterRows;
    const int rows_in_panel = tiles_m - first_m < kRasterRows ? tiles_m - first_m : kRasterRows;
    const int in_panel = t - panel * kRasterRows * tiles_n;
    s.row0 = (first_m + in_panel % rows_in_panel) * BM;
    s.col0 = in_panel / rows_in_panel * BN;
  }
  // Block b's DP tile (b < dp_prefix[groups]): whole, owned.
  __device__ Segment dp_tile(int b) const {
    Segment s;
    s.group = group_of(table(2), b);
    s.kt0 = 0;
    s.kt1 = units_per_tile(s.group);
    s.tile_end = 0;
    place(s, b - dp_prefix(s.group));
    return s;
  }
  // The stream-K segment starting at unit u of a run ending by `end`.
  __device__ Segment sk_segment(int u, int end) const {
    Segment s;
    s.group = group_of(table(1), u);
    const int per = units_per_tile(s.group), in_group = u - sk_prefix(s.group);
    const int t = in_group / per;
    s.kt0 = in_group - t * per;
    s.tile_end = sk_prefix(s.group) + (t + 1) * per;
    s.kt1 = s.kt0 + ((s.tile_end < end ? s.tile_end : end) - u);
    place(s, dp_prefix(s.group + 1) - dp_prefix(s.group) + t);  // after the group's DP tiles
    return s;
  }
};

// Warp 0's exclusive scan of value(g) over the groups into table[0 .. groups]
// (table[groups] = the sum).
template <class Value> __device__ void scan_groups(int groups, int* table, Value value) {
  const int lane = threadIdx.x;
  int carry = 0;
  for (int g0 = 0; g0 <= groups; g0 += 32) {
    const int g = g0 + lane, v = g < groups ? value(g) : 0;
    int inclusive = v;
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += up;
    }
    if (g <= groups) table[g] = carry + inclusive - v;
    carry += __shfl_sync(0xffffffffu, inclusive, 31);
  }
}

// blockIdx.x, read where it is used: the compiler cannot hoist the
// partial-slot addresses derived from it out of the k-loop, where they would
// hold registers the accumulators need (they spilled).
__device__ __forceinline__ int block_id() {
  int b;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(b));
  return b;
}
// The schedule's tables in shared memory (after the family's stages and
// barriers), their address computed where they are read for the same reason.
template <class Layout> __device__ __forceinline__ int* schedule_tables() {
  extern __shared__ unsigned char smem_raw[];
  unsigned long long p = (unsigned long long)smem_raw;
  asm volatile("" : "+l"(p));
  return reinterpret_cast<int*>(((p + 1023) & ~1023ull) + Layout::kPrefix);
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
  const int groups = args.groups, warpgroup = threadIdx.x / 128;
  int* units = reinterpret_cast<int*>(smem + Layout::kPrefix);
  int *sk_prefix = units + (groups + 1), *dp_prefix = sk_prefix + (groups + 1), *dp_work = dp_prefix + (groups + 1);
  int* target = dp_work + (groups + 1);
  const int tiles_m = (int)((args.m + BM - 1) / BM), tiles_n = (int)((args.n + BN - 1) / BN), tiles_per_group = tiles_m * tiles_n;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, 2);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    const int k_tiles = (args.group_offsets[g + 1] - args.group_offsets[g] + BK - 1) / BK;
    units[g] = k_tiles > 0 ? k_tiles : 1;  // an empty group's tiles: one unit that stores zeros
  }
  __syncthreads();
  if (threadIdx.x < 32) {  // the schedule's tables (warp 0; sk_prefix and dp_work hold scratch sums first)
    const int blocks = gridDim.x;
    scan_groups(groups, sk_prefix, [&](int g) { return tiles_per_group * units[g]; });
    __syncwarp();
    const int even = (sk_prefix[groups] + blocks - 1) / blocks;  // the units per block of a perfect split
    // DP tiles: those of groups up to a quarter longer than that, in group
    // order, one per block while blocks last. The slack keeps a mildly
    // heavy expert's tiles in the lockstep wave (at most 25% over the even
    // split) rather than cutting them at scattered K offsets.
    const int longest_dp = even + even / 4;
    scan_groups(groups, dp_work, [&](int g) { return units[g] <= longest_dp ? tiles_per_group : 0; });
    __syncwarp();
    scan_groups(groups, dp_prefix, [&](int g) {
      const int eligible = dp_work[g + 1] - dp_work[g], room = blocks - dp_work[g];
      return room <= 0 ? 0 : eligible < room ? eligible : room;
    });
    __syncwarp();
    // Every block's share: the longest DP tile, or the even split if longer.
    int per_block = even;
    for (int g = threadIdx.x; g < groups; g += 32)
      if (dp_prefix[g + 1] > dp_prefix[g] && units[g] > per_block) per_block = units[g];
    for (int d = 16; d > 0; d /= 2) per_block = max(per_block, __shfl_xor_sync(0xffffffffu, per_block, d));
    scan_groups(groups, dp_work, [&](int g) { return (dp_prefix[g + 1] - dp_prefix[g]) * units[g]; });
    scan_groups(groups, sk_prefix, [&](int g) { return (tiles_per_group - (dp_prefix[g + 1] - dp_prefix[g])) * units[g]; });
    if (threadIdx.x == 0) *target = per_block;
  }
  __syncthreads();
  const WgradSchedule<BM, BN> sched{args, units, *target};
  int* run_first = target + 1;  // [blocks + 1]: each block's first stream-K unit (the owners' fix-up reads them)
  const int kRuns = 4 * (groups + 1) + 1;  // run_first's offset in the tables
  for (int b = threadIdx.x; b <= (int)gridDim.x; b += blockDim.x) run_first[b] = sched.sk_first(b);
  __syncthreads();
  // This block's items: its DP tile (u = -1) if it has one, then its stream-K run [sk_begin, sk_end).
  const int sk_begin = run_first[blockIdx.x], sk_end = run_first[blockIdx.x + 1];
  const int first_item = (int)blockIdx.x < sched.dp_prefix(groups) ? -1 : sk_begin;

  if (warpgroup == 0) {
    regs_down<40>();
    if (threadIdx.x == 0) {
      int it = 0;
      for (int u = first_item; u < sk_end;) {
        const auto seg = u < 0 ? sched.dp_tile(blockIdx.x) : sched.sk_segment(u, sk_end);
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
        u = u < 0 ? sk_begin : u + (seg.kt1 - seg.kt0);
      }
    }
  } else {
    regs_up<232>();
    const int consumer = warpgroup - 1;
    const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
    float acc[Mma::kAccumulators];
    int it = 0;
    // The end of this block's run, re-read from shared memory where needed (not kept in a register).
    const auto run_end = [&] { return schedule_tables<Layout>()[kRuns + block_id() + 1]; };
    for (int u = first_item; u < run_end();) {
      const int sk_end = run_end();
      // Only the segment's k-tiles and the group's K rows left stay live
      // through the MMAs; the segment is decoded again after them (kept
      // across the loop, its fields pushed the accumulators into local memory).
      int kt0, kt1, k_left;  // k_left: the group's K rows from k-tile kt0 on
      {
        const auto seg = u < 0 ? sched.dp_tile(blockIdx.x) : sched.sk_segment(u, sk_end);
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
          const unsigned rows = a_tile + consumer * 64 * BK * 2;  // a shared-space address: no 64-bit pointer kept live
          for (int i = valid * 8 + thread; i < BK * 8; i += 128)
            asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(rows + 16 * i), "r"(0) : "memory");
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
      wgmma_wait<0>();  // unconditional: under `if (k_left > 0)` ptxas serializes every wgmma (C7518)
      if (k_left > 0 && thread == 0) mbar_arrive(empty_bar + 8 * ((it - 1) % STAGES));
      asm volatile("" : "+r"(u));  // decode again, not from values kept through the loop
      const WgradSchedule<BM, BN> after{args, schedule_tables<Layout>(), 0};
      const int* runs = after.tables + kRuns;
      const auto seg = u < 0 ? after.dp_tile(block_id()) : after.sk_segment(u, runs[block_id() + 1]);
      u = u < 0 ? runs[block_id()] : u + (seg.kt1 - seg.kt0);

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
      // The owner: the later blocks whose runs start inside this tile hold its
      // other k-tiles (none for a DP tile, whose tile_end is 0).
      for (int b = block_id() + 1; b < (int)gridDim.x && runs[b] < seg.tile_end; ++b) {
        if (runs[b] == runs[b + 1]) continue;  // an empty run: no segment
        if (thread == 0) flag_acquire(sk.flags + 2 * b + consumer);
        asm volatile("bar.sync %0, 128;" ::"r"(1 + consumer) : "memory");
        const float4* slot = reinterpret_cast<const float4*>(sk.partials) + ((long long)b * 2 + consumer) * kQuads * 128 + thread;
        // Four float4 loads in flight at a time, beside the accumulators.
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
