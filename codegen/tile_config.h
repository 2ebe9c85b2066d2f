// TileConfig: the compile-time shape of one kernel launch. One object sets
// a launch's template arguments, grid, block (= __launch_bounds__), dynamic
// shared memory and cluster dimensions, so a tile size is written once.
// It is filled per launch from the op's attributes (moe-tiling sets tile_m,
// tile_n, tile_k on the expert matmuls), else by a heuristic
// (codegen/gemm_select.cpp for the GEMM families); a tuning database will
// be a third source. MOEJIT_DEBUG=1 prints each kernel's config and source.
#pragma once
#include <string>

namespace moejit::codegen {

struct TileConfig {
  enum class Source {
    fixed,      // the family has one shape (row kernels, copies): only `threads` matters
    attribute,  // from the op's attributes (tile_m / tile_n / tile_k)
    heuristic,  // chosen from the problem and the target
    tuned,      // from a tuning database (not yet)
  };
  int tile_m = 0, tile_n = 0, tile_k = 0;  // 0: not a tiled kernel
  int stages = 1;                           // shared-memory pipeline depth
  int threads = 256;                        // per block; the kernel's __launch_bounds__
  int cluster_m = 1, cluster_n = 1;         // thread-block cluster (cuLaunchKernelEx)
  int split_k = 1;                          // K slices into f32 partials + an in-order finish (SIMT mj.matmul: codegen/simt_matmul.cpp)
  // Family-specific: consumer warpgroups of a warp-specialized GEMM (sm90).
  int consumers = 0;
  // sm90: each consumer keeps two accumulator sets, so a tile's epilogue
  // runs while the next tile's MMAs are in flight (tile_n <= 128).
  bool overlap = false;
  // sm90 weight gradients (varlen K): the k-tiles of all tiles split evenly
  // over the blocks, partial tiles summed by their owner
  // (codegen/kernels/gemm_sm90_streamk.cuh), instead of one tile per block.
  bool stream_k = false;
  Source source = Source::fixed;
  std::string note;  // how the source's values were adjusted, if they were ("tile_k 64 -> 32: shared memory")

  static TileConfig fixed_threads(int threads) {
    TileConfig c;
    c.threads = threads;
    return c;
  }
  // "tile 64x64x16 stages 1 threads 256 (heuristic)"; only the fields that apply.
  std::string str() const;
};

const char* source_name(TileConfig::Source source);

}  // namespace moejit::codegen
