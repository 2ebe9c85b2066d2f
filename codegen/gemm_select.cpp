// The GEMM family and TileConfig of every matrix product (see gemm_select.h).
//
// SIMT family (codegen/kernels/matmul.cuh), constraints of its thread grid:
// tile_m and tile_n powers of two in [8, 128], tile_k a power of two in
// [4, 64], at most 64 x 64 outputs per block (a larger tile halves its
// larger side: 16 outputs per thread, the registers and the blocks per
// expert of the 64 x 64 tile), threads = clamp(tile_m * tile_n / 16, 32,
// 256), and the two staged slices, tile_k x (tile + 1) values of the
// arithmetic type each, within 48 KiB of static shared memory (tile_k is
// halved until they fit). The config's note says what was adjusted.
// split_k (mj.matmul only, any source): with fewer output tiles than SMs and
// K >= 1024, K is cut into split_k slices (simt_split_k below); the emitter
// (codegen/simt_matmul.cpp) then writes f32 partials and adds them in a
// fixed order, so the result is deterministic (N <= 32 with A's M
// contiguous: its narrow kernel, which picks its own split).
//   attribute: tile_m/n/k from the op (moe-tiling sets them on the expert matmuls);
//   heuristic: 64 x 64 x 16, 256 threads; for mj.matmul with N <= 32
//          that splits K, 128 x N (N rounded up to a power of two from 8);
//   tuned: where the op has no tile attributes, the tuning database's
//          tile_m/n/k for family "matmul_simt" (codegen/tuning_db.h) when
//          they pass the attribute path's checks, else the heuristic with a note.
//   For 16-bit operands moe-tiling writes tensor-core shapes (tile_m 128,
//   tile_k 64, tile_n up to 256); where the SIMT family serves such an op
//   (no sm_90a), tile_n and tile_m are clamped to 128 and tile_k to 64, with
//   a note.
//
// sm90 family (codegen/kernels/gemm_sm90.cuh), for bf16 on sm_90a when
// every operand's rows are 16-byte multiples (the copy engine's rule): a
// 128 x tile_n x 64 tile, 384 threads (a producer and two consumer
// warpgroups), one block per SM over a persistent grid.
//   attribute: tile_n from the op when tile_m = 128, tile_k = 64 and tile_n
//              is 64, 128 or 256 (other attributes: the SIMT family);
//   heuristic: tile_n 256 or 128, whichever pads N less (256 on a tie: it
//              reuses A twice as much);
//   stages: as many as fit (at most 6), after the C staging boxes;
//   tuned: instead of the heuristic (not of attributes), the database's
//          tile_n and stages for family "gemm_sm90" when tile_n is 64, 128 or
//          256 and the stages (2 to 6) fit, else the heuristic with a note.
//   split_k (mj.matmul in the weight-gradient layout, A and B both
//          token-row-major, any source): with few output tiles over a long
//          K, K is cut into slices that run as a batched product into f32
//          partials, added in order by a second kernel (weight_gradient_split_k below).
//
// sm80 family (codegen/kernels/gemm_sm80.cuh), for bf16 and f16 on sm_80 ..
// sm_90 where the sm90 family does not take the product (f16, a plain sm_90
// target, rows TMA cannot address), any row alignment (rows that are no
// 16-byte multiple are loaded element by element), except moe.route (its
// emitter runs the router product on the SIMT tile) and products of N <= 16
// (SIMT's narrow tile and split K): a 128 x 128 x 32 tile,
// 128 threads (4 warps of 64 x 64), two blocks per SM over a persistent grid.
//   attribute: tensor-core tile attributes (moe-tiling's 128 x n x 64) run
//              as 128 x 128 x 32 with a note; others ask for SIMT, as on sm90;
//   heuristic: 4 stages, fewer (down to 2) where the target's shared memory
//              is smaller (48 KiB of a generic named target: 3);
//   tuned: instead of the heuristic (and of moe-tiling's tiles), the
//          database's stages for family "gemm_sm80" when they are 2 to 6 and
//          fit, else the heuristic with a note.
#include "codegen/gemm_select.h"

#include "codegen/cuda_codegen.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <variant>

#include "codegen/kernels/gemm_sm80.cuh"
#include "codegen/kernels/gemm_sm90.cuh"
#include "codegen/kernels/gemm_sm90_streamk.cuh"
#include "codegen/tuning_db.h"
#include "ir/error.h"
#include "ir/printer.h"

namespace moejit::codegen {

namespace {

bool power_of_two_in(std::int64_t v, std::int64_t lo, std::int64_t hi) { return v >= lo && v <= hi && (v & (v - 1)) == 0; }

[[noreturn]] void fail(const Graph& graph, const Op& op, const std::string& message) {
  throw Error(fmt::format("{} = \"{}\": the CUDA backend {}", value_ref(graph, op.results.empty() ? kNoValue : op.results[0]),
                          op_name(op.kind), message));
}

void add_note(TileConfig& c, const std::string& note) { c.note += (c.note.empty() ? "" : "; ") + note; }

bool simt_tile_valid(int tile_m, int tile_n, int tile_k) {
  return power_of_two_in(tile_m, 8, 128) && power_of_two_in(tile_n, 8, 128) && power_of_two_in(tile_k, 4, 64);
}

// The tuning database's entry for the problem in `family`, if the target has
// a database and it holds one (exact bucket, else the nearest).
std::optional<TunedLookup> tuned_entry(const char* family, const GemmProblem& problem, const Target& target) {
  const TuningDb* db = tuning_db_for(target);
  if (!db) return std::nullopt;
  return lookup_tuned(*db, gemm_tuning_key(family, problem));
}

std::string bucket_note(const TunedLookup& t) {
  return t.exact ? "database, exact bucket"
                 : fmt::format("nearest tuned bucket m 2^{} n 2^{} k 2^{}", t.bucket.m_log2, t.bucket.n_log2, t.bucket.k_log2);
}

// Whether the op's tile attributes are moe-tiling's heuristic (which a
// database entry replaces) rather than a user's choice (which wins).
bool tiled_by_heuristic(const Op& op) {
  const AttrValue* by = op.attrs.find(kTiledByAttr);
  return by && std::holds_alternative<std::string>(*by) && std::get<std::string>(*by) == "moe-tiling";
}

// An entry sets only the fields it names; the others keep their defaults.
void apply_tuned(TileConfig& c, const TunedFields& f) {
  if (f.tile_m) c.tile_m = f.tile_m;
  if (f.tile_n) c.tile_n = f.tile_n;
  if (f.tile_k) c.tile_k = f.tile_k;
  if (f.stages) c.stages = f.stages;
}

std::int64_t output_tiles(const TileConfig& c, const GemmProblem& p) {
  return (p.m + c.tile_m - 1) / c.tile_m * ((p.n + c.tile_n - 1) / c.tile_n) * std::max<std::int64_t>(p.batch, 1);
}

// Split-K for a SIMT matmul with fewer output tiles than SMs and a long K
// (a router's weight gradient x^T dlogits: D x E outputs over K = T tokens):
// enough K slices of at least 256 for about two blocks per SM, at most 64,
// the f32 partials within 256 MiB. 1: no split.
std::int64_t simt_split_k(const TileConfig& c, const GemmProblem& p, const Target& target) {
  const std::int64_t tiles = output_tiles(c, p), batch = std::max<std::int64_t>(p.batch, 1);
  if (tiles >= target.sm_count || p.k < 1024) return 1;
  const std::int64_t acc_bytes = p.dtype == DType::f64 ? 8 : 4;
  std::int64_t split = std::min<std::int64_t>({(2 * target.sm_count + tiles - 1) / tiles, p.k / 256, 64, 65535 / batch});
  while (split > 1 && split * batch * p.m * p.n * acc_bytes > (256ll << 20)) split /= 2;
  return std::max<std::int64_t>(split, 1);
}

TileConfig simt_config(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  const AttrValue* m = op.attrs.find("tile_m");
  bool use_attributes = m && problem.kind == GemmProblem::Kind::grouped;
  std::optional<TunedLookup> tuned;
  if (!use_attributes || tiled_by_heuristic(op)) tuned = tuned_entry("matmul_simt", problem, target);
  if (use_attributes && tuned && tiled_by_heuristic(op)) {
    // moe-tiling's tile is a heuristic: a valid database entry replaces it (below).
    TileConfig t;
    t.tile_m = t.tile_n = t.tile_k = 0;
    apply_tuned(t, tuned->fields);
    if (simt_tile_valid(t.tile_m, t.tile_n, t.tile_k) && t.stages == 1 && tuned->fields.threads == 0 && tuned->fields.split_k == 0)
      use_attributes = false;
  }
  if (!use_attributes) m = nullptr;
  if (use_attributes) {
    c.tile_m = static_cast<int>(op.attrs.get_int("tile_m"));
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.tile_k = static_cast<int>(op.attrs.get_int("tile_k"));
    if (dtype_size(problem.dtype) == 2 && (c.tile_m > 128 || c.tile_n > 128 || c.tile_k > 64)) {
      add_note(c, fmt::format("tensor-core tile {}x{}x{} clamped for the SIMT family", c.tile_m, c.tile_n, c.tile_k));
      c.tile_m = std::min(c.tile_m, 128);
      c.tile_n = std::min(c.tile_n, 128);
      c.tile_k = std::min(c.tile_k, 64);
    }
    if (!simt_tile_valid(c.tile_m, c.tile_n, c.tile_k))
      fail(graph, op,
           fmt::format("(SIMT matmul) takes tile_m and tile_n powers of two in [8, 128] and tile_k a power of two in [4, 64], "
                       "found tile_m = {}, tile_n = {}, tile_k = {}",
                       c.tile_m, c.tile_n, c.tile_k));
    c.source = TileConfig::Source::attribute;
  } else {
    c.tile_m = 64;
    c.tile_n = 64;
    c.tile_k = 16;
    c.source = TileConfig::Source::heuristic;
    if (tuned) {
      // The SIMT kernel has one stage and derives its threads: the entry sets the tile.
      TileConfig t = c;
      apply_tuned(t, tuned->fields);
      if (simt_tile_valid(t.tile_m, t.tile_n, t.tile_k) && t.stages == 1 && tuned->fields.threads == 0 &&
          tuned->fields.split_k == 0) {
        c.tile_m = t.tile_m;
        c.tile_n = t.tile_n;
        c.tile_k = t.tile_k;
        c.source = TileConfig::Source::tuned;
        add_note(c, bucket_note(*tuned));
      } else {
        add_note(c, fmt::format("tuned tile {}x{}x{} stages {} ignored: the SIMT family takes tile_m and tile_n powers of two "
                                "in [8, 128], tile_k in [4, 64], one stage",
                                t.tile_m, t.tile_n, t.tile_k, t.stages));
      }
    }
  }
  // A narrow product (N <= 32: a router's E columns) on the heuristic tile,
  // when it splits K: a 128-row tile just N wide (rounded up to a power of
  // two from 8), not a 64-wide one that is mostly padding. Every output
  // still sums its K terms in order, so the tile shape does not change the
  // result.
  const bool narrow = problem.kind == GemmProblem::Kind::matmul && c.source == TileConfig::Source::heuristic && problem.n <= 32;
  const std::string before_narrow = c.note;
  if (narrow) {
    c.tile_n = 8;
    while (c.tile_n < problem.n) c.tile_n *= 2;
    c.tile_m = 128;
    add_note(c, fmt::format("narrow N {}: tile {}x{}", problem.n, c.tile_m, c.tile_n));
  }
  // At most 64 x 64 outputs per block (16 per thread at 256 threads): a
  // larger tile (sized for tensor cores) halves its larger side, so the
  // registers per thread and the blocks per expert stay those of 64 x 64.
  const int requested_m = c.tile_m, requested_n = c.tile_n;
  while (c.tile_m * c.tile_n > 64 * 64) (c.tile_n > c.tile_m ? c.tile_n : c.tile_m) /= 2;
  if (c.tile_m != requested_m || c.tile_n != requested_n)
    add_note(c, fmt::format("tile {}x{} -> {}x{}: at most 16 outputs per thread", requested_m, requested_n, c.tile_m, c.tile_n));
  c.threads = std::clamp(c.tile_m * c.tile_n / 16, 32, 256);
  const int acc_bytes = problem.dtype == DType::f64 ? 8 : 4;
  const int requested_k = c.tile_k;
  while (c.tile_k > 4 && c.tile_k * (c.tile_m + 1 + c.tile_n + 1) * acc_bytes > 48 * 1024) c.tile_k /= 2;
  if (c.tile_k != requested_k) add_note(c, fmt::format("tile_k {} -> {} to fit 48 KiB of shared memory", requested_k, c.tile_k));
  if (problem.kind == GemmProblem::Kind::matmul) c.split_k = static_cast<int>(simt_split_k(c, problem, target));
  // The narrow tile has half the blocks of 64 x 64 (a quarter of the
  // threads): it pays only where split-K makes the blocks (measured on the
  // H200: an unsplit T4096 x 8 x 512 router product ran slower with it).
  if (narrow && c.split_k == 1) {
    c.tile_m = 64;
    c.tile_n = 64;
    c.threads = 256;
    c.note = before_narrow;
  }
  if (c.split_k > 1) add_note(c, fmt::format("split_k {}: {} output tiles over K {}", c.split_k, output_tiles(c, problem), problem.k));
  return c;
}

bool rows_addressable(std::int64_t elements) { return elements % 8 == 0; }  // 16-byte rows of bf16

// Few output tiles over a long K leave most SMs idle: config B's dense
// weight gradients (x^T dy, 384 x 1152 over K = 16384) are 27 tiles of
// 128 x 128 on 132 SMs, each looping over 256 k-tiles, and its LM head's
// (65 x 384 over 16384, on the sm80 family) 3 tiles. The split is a power of
// two that keeps tiles x split within one wave of `wave` blocks, every
// slice a whole number of 64-deep k-tiles and at least 512 deep (shorter
// slices spend more on the epilogue and the partials than they save). Only
// for the layout whose slices are plain strided views (A stored [K, M], B
// stored [K, N]: a slice is K / split rows further on), unbatched.
std::int64_t weight_gradient_split_k(const GemmProblem& p, int tile_m, int tile_n, std::int64_t wave) {
  if (p.kind != GemmProblem::Kind::matmul || p.batch != 1 || p.a_k_major || p.b_k_major) return 1;
  const std::int64_t tiles = (p.m + tile_m - 1) / tile_m * ((p.n + tile_n - 1) / tile_n);
  std::int64_t split = 1;
  while (tiles * split * 2 <= wave && p.k % (split * 2 * 64) == 0 && p.k / (split * 2) >= 512) split *= 2;
  return split;
}

// Whether the sm90 family can run the problem: the target, the dtype, and
// TMA's rule that every row stride is a multiple of 16 bytes.
bool sm90_fits(const GemmProblem& p, const Target& target) {
  if (target.sm() != 90 || target.arch.empty() || target.arch.back() != 'a' || p.dtype != DType::bf16) return false;
  if (p.m <= 0 || p.n <= 0 || p.k < 0 || p.m >= (1ll << 31) || p.n >= (1ll << 31) || p.k >= (1ll << 31)) return false;
  switch (p.kind) {
    case GemmProblem::Kind::matmul:  // A [M, K] or [K, M]; B [K, N] or [N, K]
      return rows_addressable(p.a_k_major ? p.k : p.m) && rows_addressable(p.b_k_major ? p.k : p.n);
    case GemmProblem::Kind::grouped:  // xs [rows, K]; w[e] [K, N] or [N, K]
      return p.a_k_major && rows_addressable(p.k) && rows_addressable(p.b_k_major ? p.k : p.n) && p.batch < 100000;
    case GemmProblem::Kind::wgrad:  // xs [rows, M], dys [rows, N]
      return rows_addressable(p.m) && rows_addressable(p.n);
  }
  return false;
}

// The tile shapes the sm90 family instantiates: 128 x (64, 128 or 256) x 64.
bool sm90_tile(std::int64_t m, std::int64_t n, std::int64_t k) { return m == 128 && k == 64 && (n == 64 || n == 128 || n == 256); }

// Whether the op carries tile attributes, and they are an sm90 shape.
bool has_tile_attributes(const Op& op) { return op.attrs.find("tile_m") != nullptr; }
bool sm90_tile_attributes(const Op& op) {
  return has_tile_attributes(op) && sm90_tile(op.attrs.get_int("tile_m"), op.attrs.get_int("tile_n"), op.attrs.get_int("tile_k"));
}

// Whether a weight gradient takes the stream-K schedule: fewer output tiles
// than two waves of blocks (beyond that the ragged last wave is a small share,
// and the schedule's single data-parallel wave would give up the lockstep
// locality of the others: D1536 E128's 1536 tiles ran 1.9x slower with it,
// H200), and a unit count (tiles x max(1, k-tiles) summed over the groups,
// at most tiles x (2 groups + K / 64)) within its 32-bit prefix.
// MOEJIT_SM90_STREAM_K_WAVES=w (1..16, default 2) moves that bound to w waves.
bool stream_k_pays(const TileConfig& c, const GemmProblem& p, const Target& target) {
  int waves = 2;
  if (const char* v = std::getenv("MOEJIT_SM90_STREAM_K_WAVES")) {
    char* end = nullptr;
    const long w = std::strtol(v, &end, 10);
    if (end == v || *end != '\0' || w < 1 || w > 16)
      throw Error(fmt::format("MOEJIT_SM90_STREAM_K_WAVES: expected a whole number of waves from 1 to 16, found '{}'", v));
    waves = static_cast<int>(w);
  }
  const std::int64_t per_group = (p.m + c.tile_m - 1) / c.tile_m * ((p.n + c.tile_n - 1) / c.tile_n);
  return per_group * p.batch < waves * target.sm_count && per_group * (2 * p.batch + p.k / 64) < (1ll << 31);
}

TileConfig sm90_config(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  c.tile_m = 128;
  c.tile_k = 64;
  c.threads = 384;
  c.consumers = 2;
  if (sm90_tile_attributes(op)) {
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.source = TileConfig::Source::attribute;
    if (tiled_by_heuristic(op)) add_note(c, "moe-tiling's heuristic");
  } else {
    auto padded = [&](std::int64_t bn) { return (problem.n + bn - 1) / bn * bn; };
    c.tile_n = problem.n <= 64 ? 64 : padded(256) <= padded(128) ? 256 : 128;
    c.source = TileConfig::Source::heuristic;
  }
  const std::int64_t groups = problem.kind == GemmProblem::Kind::matmul ? 1 : problem.batch;
  const auto fits = [&](int tile_n, int stages) {
    return sm90::smem_bytes(c.tile_m, tile_n, c.tile_k, stages, groups) <= target.shared_memory_per_block_optin;
  };
  c.stages = 6;
  while (c.stages > 2 && !fits(c.tile_n, c.stages)) --c.stages;
  // moe-tiling's tiles are a heuristic too: the database replaces them (a user's attributes win).
  if (c.source == TileConfig::Source::heuristic || tiled_by_heuristic(op)) {
    if (std::optional<TunedLookup> tuned = tuned_entry("gemm_sm90", problem, target)) {
      // The entry may set tile_n and stages; tile_m, tile_k and the threads are the family's.
      TileConfig t = c;
      apply_tuned(t, tuned->fields);
      const bool valid = sm90_tile(t.tile_m, t.tile_n, t.tile_k) && t.stages >= 2 && t.stages <= 6 && fits(t.tile_n, t.stages) && tuned->fields.threads == 0 &&
                         tuned->fields.split_k == 0;
      if (valid) {
        c.tile_n = t.tile_n;
        c.stages = t.stages;
        c.source = TileConfig::Source::tuned;
        c.note.clear();
        add_note(c, bucket_note(*tuned));
      } else {
        add_note(c, fmt::format("tuned tile {}x{}x{} stages {} ignored: the sm90 family takes tile 128 x (64, 128 or 256) x 64, "
                                "2 to 6 stages within {} bytes of shared memory",
                                t.tile_m, t.tile_n, t.tile_k, t.stages, target.shared_memory_per_block_optin));
      }
    }
  }
  // Weight gradients (varlen K) with few output tiles run the stream-K
  // schedule: few tiles over unequal K leave SMs idle under one tile per block (docs/perf.md).
  // MOEJIT_SM90_STREAM_K=0 turns it off (to measure against it).
  c.stream_k = problem.kind == GemmProblem::Kind::wgrad && env_flag("MOEJIT_SM90_STREAM_K", true) && stream_k_pays(c, problem, target);
  if (c.stream_k) {
    add_note(c, "stream-k");
    while (c.stages > 2 && sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, sm90::streamk_smem_groups(groups, target.sm_count)) >
                               target.shared_memory_per_block_optin)
      --c.stages;  // its schedule's tables take more of the shared memory
  }
  c.split_k = static_cast<int>(weight_gradient_split_k(problem, c.tile_m, c.tile_n, target.sm_count));
  if (c.split_k > 1) {
    add_note(c, fmt::format("split_k {}: {} output tiles over K {}", c.split_k, output_tiles(c, problem), problem.k));
    // The slices are groups of a batched product: one more prefix entry each.
    while (c.stages > 2 && sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, c.split_k) > target.shared_memory_per_block_optin) --c.stages;
  }
  // MOEJIT_SM90_OVERLAP=1: the overlapped epilogue (two accumulator sets per
  // consumer), a 256-column tile halved for it.
  if (env_flag("MOEJIT_SM90_OVERLAP", false) && !c.stream_k && c.split_k == 1) {
    if (c.tile_n == 256) {
      c.tile_n = 128;
      c.stages = 6;
      while (c.stages > 2 && !fits(c.tile_n, c.stages)) --c.stages;
      add_note(c, "tile_n 256 -> 128 for the overlapped epilogue");
    }
    c.overlap = true;
  }
  const std::int64_t table_groups = c.stream_k ? sm90::streamk_smem_groups(groups, target.sm_count) : std::max<std::int64_t>(groups, c.split_k);
  if (sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, table_groups) > target.shared_memory_per_block_optin)
    fail(graph, op, fmt::format("(sm90 GEMM) needs {} bytes of shared memory for {} groups; the target {} allows {}",
                                sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, groups), groups, target.arch,
                                target.shared_memory_per_block_optin));
  return c;
}

// Whether the sm80 family can run the problem (mma.sync runs on sm_80 and
// later; sm_90 takes it where the sm90 family does not).
bool sm80_fits(const Op& op, const GemmProblem& p, const Target& target) {
  if (target.sm() < 80 || target.sm() > 90 || (p.dtype != DType::bf16 && p.dtype != DType::f16) || op.kind == OpKind::Route) return false;
  if (p.m <= 0 || p.n <= 0 || p.k < 0 || p.m >= (1ll << 31) || p.n >= (1ll << 31) || p.k >= (1ll << 31)) return false;
  // Skinny products (N of a few experts: the router's and its weight
  // gradient) waste most of a 128-column tile; the SIMT family's narrow
  // tile and split K serve them.
  if (p.n <= 16) return false;
  const bool grouped = p.kind == GemmProblem::Kind::grouped;
  return sm80::smem_bytes(128, 128, 32, 2, p.batch, grouped) <= target.shared_memory_per_block_optin;
}

TileConfig sm80_config(const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  c.tile_m = 128;
  c.tile_n = 128;
  c.tile_k = 32;
  c.threads = sm80::threads_for(c.tile_m, c.tile_n);
  c.source = TileConfig::Source::heuristic;
  if (problem.kind == GemmProblem::Kind::grouped && sm90_tile_attributes(op)) {
    c.source = TileConfig::Source::attribute;
    add_note(c, fmt::format("tensor-core tile {}x{}x{} as 128x128x32 for the sm80 family", op.attrs.get_int("tile_m"),
                            op.attrs.get_int("tile_n"), op.attrs.get_int("tile_k")));
  }
  const bool grouped = problem.kind == GemmProblem::Kind::grouped;
  c.split_k = static_cast<int>(weight_gradient_split_k(problem, c.tile_m, c.tile_n, 2 * target.sm_count));  // two blocks per SM
  const std::int64_t groups = std::max<std::int64_t>(problem.batch, c.split_k);
  const auto fits = [&](int stages) {
    return sm80::smem_bytes(c.tile_m, c.tile_n, c.tile_k, stages, groups, grouped) <= target.shared_memory_per_block_optin;
  };
  c.stages = 4;
  while (c.stages > 2 && !fits(c.stages)) --c.stages;
  // The database replaces the heuristic and moe-tiling's tiles (which this family runs as its own tile anyway).
  if (c.source == TileConfig::Source::heuristic || tiled_by_heuristic(op)) {
    if (std::optional<TunedLookup> tuned = tuned_entry("gemm_sm80", problem, target)) {
      // The entry may set the stages; the tile is the family's one (an entry may repeat it).
      TileConfig t = c;
      apply_tuned(t, tuned->fields);
      const bool valid = sm80::tile_supported(t.tile_m, t.tile_n, t.tile_k) && t.stages >= 2 && t.stages <= 6 && fits(t.stages) &&
                         tuned->fields.threads == 0 && tuned->fields.split_k == 0;
      if (valid) {
        c.stages = t.stages;
        c.source = TileConfig::Source::tuned;
        c.note.clear();
        add_note(c, bucket_note(*tuned));
      } else {
        add_note(c, fmt::format("tuned tile {}x{}x{} stages {} ignored: the sm80 family takes tile 128 x 128 x 32, 2 to 6 stages "
                                "within {} bytes of shared memory",
                                t.tile_m, t.tile_n, t.tile_k, t.stages, target.shared_memory_per_block_optin));
      }
    }
  }
  if (c.split_k > 1) add_note(c, fmt::format("split_k {}: {} output tiles over K {}", c.split_k, output_tiles(c, problem), problem.k));
  return c;
}

}  // namespace

const char* gemm_kind_name(GemmProblem::Kind kind) {
  switch (kind) {
    case GemmProblem::Kind::matmul: return "matmul";
    case GemmProblem::Kind::grouped: return "grouped";
    case GemmProblem::Kind::wgrad: return "wgrad";
  }
  return "?";
}

const char* gemm_family_name(GemmFamily family) {
  switch (family) {
    case GemmFamily::sm90: return "gemm_sm90";
    case GemmFamily::sm80: return "gemm_sm80";
    case GemmFamily::simt: return "matmul_simt";
  }
  return "?";
}

TuningKey gemm_tuning_key(const char* family, const GemmProblem& problem) {
  // The layout is part of the kind: a transposed operand changes which config is fastest.
  std::string kind = gemm_kind_name(problem.kind);
  if (problem.kind == GemmProblem::Kind::matmul) {
    if (!problem.a_k_major) kind += "_at";
    if (problem.b_k_major) kind += "_bt";
  } else if (problem.kind == GemmProblem::Kind::grouped && problem.b_k_major) {
    kind += "_wt";
  }
  return {family, std::string(dtype_name(problem.dtype)), kind, bucket_log2(problem.m), bucket_log2(problem.n), bucket_log2(problem.k)};
}

std::optional<GemmProblem> gemm_problem_of(const Graph& graph, const Op& op) {
  auto in = [&](std::size_t i) -> const TensorType& { return graph.type(op.operands[i]); };
  using Kind = GemmProblem::Kind;
  switch (op.kind) {
    case OpKind::Matmul: {  // a [..., M, K] (or [..., K, M]), b [K, N] (or [N, K]) or [..., K, N]
      const TensorType& a = in(0);
      const TensorType& b = in(1);
      const bool ta = op.attrs.get_bool("transpose_a"), tb = op.attrs.get_bool("transpose_b");
      std::int64_t batch = 1;
      for (std::size_t i = 0; i + 2 < a.shape.size(); ++i) batch *= a.shape[i];
      return GemmProblem{Kind::matmul, a.dtype, ta ? a.dim(-1) : a.dim(-2), tb ? b.dim(-2) : b.dim(-1), ta ? a.dim(-2) : a.dim(-1),
                         batch, !ta, tb};
    }
    case OpKind::Route:  // the router product x [T, D] w_router [D, E]
      return GemmProblem{Kind::matmul, in(0).dtype, in(0).dim(0), in(1).dim(1), in(0).dim(1), 1, true, false};
    case OpKind::GroupedMatmul:
    case OpKind::GatherMatmul:
    case OpKind::MatmulCombine: {  // rows [N, D] x w [E, D, F] (or [E, F, D] with transpose_w)
      const TensorType& w = in(1);
      const bool transpose_w = op.kind == OpKind::GroupedMatmul && op.attrs.get_bool("transpose_w");
      const std::int64_t rows = op.kind == OpKind::MatmulCombine ? in(0).dim(0) : graph.type(op.results[0]).dim(0);
      return GemmProblem{Kind::grouped, w.dtype, rows, transpose_w ? w.dim(1) : w.dim(2), transpose_w ? w.dim(2) : w.dim(1), w.dim(0),
                         true, transpose_w, op.kind == OpKind::GatherMatmul};
    }
    case OpKind::GroupedMatmulWgrad:  // xs [N, D], dys [N, F] -> dw [E, D, F]
      return GemmProblem{Kind::wgrad, in(0).dtype, in(0).dim(1), in(1).dim(1), in(0).dim(0), graph.type(op.results[0]).dim(0), false,
                         false};
    default:
      return std::nullopt;
  }
}

bool gemm_has_epilogue(const Graph& graph, const Op& gemm, const Target& target, GemmEpilogue::Kind kind, bool aux) {
  const bool widen = kind == GemmEpilogue::Kind::widen;
  if (gemm.kind != OpKind::Matmul && gemm.kind != OpKind::GroupedMatmul && gemm.kind != OpKind::GatherMatmul &&
      !(widen && gemm.kind == OpKind::GroupedMatmulWgrad))
    return false;
  const DType dtype = graph.type(gemm.results[0]).dtype;
  if (dtype != DType::bf16 && dtype != DType::f16) return false;
  const std::optional<GemmProblem> problem = gemm_problem_of(graph, gemm);
  if (!problem) return false;
  const GemmChoice choice = choose_gemm(graph, gemm, *problem, target);
  if (choice.family != GemmFamily::sm90 && choice.family != GemmFamily::sm80) return false;
  // Split-K products write f32 partials, which a finish kernel adds: only
  // the widening there (the finish stores f32 of the rounded sum), and only
  // when the 16-bit product itself is not needed.
  return choice.config.split_k <= 1 || (widen && !aux);
}

const Op* sm90_wgrad_gathered_permute(const Graph& graph, const Op& wgrad, const Target& target) {
  if (wgrad.kind != OpKind::GroupedMatmulWgrad) return nullptr;
  int from = -1;
  for (std::size_t i = 0; i < graph.ops().size() && from < 0; ++i)
    for (ValueId r : graph.ops()[i].results)
      if (r == wgrad.operands[0]) from = static_cast<int>(i);
  if (from < 0) return nullptr;
  const Op& permute = graph.ops()[static_cast<std::size_t>(from)];
  if (permute.kind != OpKind::Permute || graph.type(permute.operands[0]).dtype != DType::bf16) return nullptr;
  const std::optional<GemmProblem> problem = gemm_problem_of(graph, wgrad);
  if (!problem || problem->m % 8 != 0) return nullptr;
  const GemmChoice choice = choose_gemm(graph, wgrad, *problem, target);
  if (choice.family != GemmFamily::sm90 || choice.config.stream_k || choice.config.split_k > 1) return nullptr;
  if (!sm90_gathers_rows((problem->n + choice.config.tile_n - 1) / choice.config.tile_n)) return nullptr;
  return &permute;
}

bool sm90_permute_elided(const Graph& graph, const Op& permute, const Target& target) {
  if (permute.kind != OpKind::Permute) return false;
  const ValueId rows = permute.results[0];
  for (const auto& out : graph.outputs())
    if (out.value == rows) return false;
  bool read = false;
  for (const Op& op : graph.ops())
    for (ValueId v : op.operands)
      if (v == rows) {
        const Op* gathered = sm90_wgrad_gathered_permute(graph, op, target);
        if (!gathered || gathered->results[0] != rows) return false;
        read = true;
      }
  return read;
}

bool sm90_gathers_rows(std::int64_t column_tiles) {
  const char* v = std::getenv("MOEJIT_SM90_GATHER");
  if (!v) return column_tiles <= 2;
  return env_flag("MOEJIT_SM90_GATHER", true);
}

GemmChoice choose_gemm(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  GemmChoice choice;
  // Tile attributes of another shape ask for the SIMT family (which checks them).
  const bool simt_attributes = problem.kind == GemmProblem::Kind::grouped && has_tile_attributes(op) && !sm90_tile_attributes(op);
  if (sm90_fits(problem, target) && !simt_attributes) {
    choice.family = GemmFamily::sm90;
    choice.config = sm90_config(graph, op, problem, target);
  } else if (sm80_fits(op, problem, target) && !simt_attributes) {
    choice.family = GemmFamily::sm80;
    choice.config = sm80_config(op, problem, target);
  } else {
    choice.family = GemmFamily::simt;
    choice.config = simt_config(graph, op, problem, target);
  }
  return choice;
}

}  // namespace moejit::codegen
