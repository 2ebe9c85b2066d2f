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
//   attribute: tile_m/n/k from the op (moe-tiling sets them on the expert matmuls);
//   heuristic: 64 x 64 x 16, 256 threads;
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
//
// sm80 family (codegen/kernels/gemm_sm80.cuh), for bf16 and f16 on sm_80 ..
// sm_90 where the sm90 family does not take the product (f16, a plain sm_90
// target, rows TMA cannot address), any row alignment (rows that are no
// 16-byte multiple are loaded element by element), except moe.route (its
// emitter runs the router product on the SIMT tile): a 128 x 128 x 32 tile,
// 128 threads (4 warps of 64 x 64), two blocks per SM over a persistent grid.
//   attribute: tensor-core tile attributes (moe-tiling's 128 x n x 64) run
//              as 128 x 128 x 32 with a note; others ask for SIMT, as on sm90;
//   heuristic: 4 stages, fewer (down to 2) where the target's shared memory
//              is smaller (48 KiB of a generic named target: 3).
#include "codegen/gemm_select.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "codegen/kernels/gemm_sm80.cuh"
#include "codegen/kernels/gemm_sm90.cuh"
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

const char* kind_name(GemmProblem::Kind kind) {
  switch (kind) {
    case GemmProblem::Kind::matmul: return "matmul";
    case GemmProblem::Kind::grouped: return "grouped";
    case GemmProblem::Kind::wgrad: return "wgrad";
  }
  return "?";
}

// The tuning database's entry for the problem in `family`, if the target has
// a database and it holds one (exact bucket, else the nearest).
std::optional<TunedLookup> tuned_entry(const char* family, const GemmProblem& problem, const Target& target) {
  const TuningDb* db = tuning_db_for(target);
  if (!db) return std::nullopt;
  return lookup_tuned(*db, {family, std::string(dtype_name(problem.dtype)), kind_name(problem.kind), bucket_log2(problem.m),
                            bucket_log2(problem.n), bucket_log2(problem.k)});
}

std::string bucket_note(const TunedLookup& t) {
  return t.exact ? std::string()
                 : fmt::format("nearest tuned bucket m 2^{} n 2^{} k 2^{}", t.bucket.m_log2, t.bucket.n_log2, t.bucket.k_log2);
}

// An entry sets only the fields it names; the others keep their defaults.
void apply_tuned(TileConfig& c, const TunedFields& f) {
  if (f.tile_m) c.tile_m = f.tile_m;
  if (f.tile_n) c.tile_n = f.tile_n;
  if (f.tile_k) c.tile_k = f.tile_k;
  if (f.stages) c.stages = f.stages;
}

TileConfig simt_config(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  const AttrValue* m = op.attrs.find("tile_m");
  std::optional<TunedLookup> tuned;
  if (!(m && problem.kind == GemmProblem::Kind::grouped)) tuned = tuned_entry("matmul_simt", problem, target);
  if (m && problem.kind == GemmProblem::Kind::grouped) {
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
        if (!tuned->exact) add_note(c, bucket_note(*tuned));
      } else {
        add_note(c, fmt::format("tuned tile {}x{}x{} stages {} ignored: the SIMT family takes tile_m and tile_n powers of two "
                                "in [8, 128], tile_k in [4, 64], one stage",
                                t.tile_m, t.tile_n, t.tile_k, t.stages));
      }
    }
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
  return c;
}

bool rows_addressable(std::int64_t elements) { return elements % 8 == 0; }  // 16-byte rows of bf16

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

TileConfig sm90_config(const Graph& graph, const Op& op, const GemmProblem& problem, const Target& target) {
  TileConfig c;
  c.tile_m = 128;
  c.tile_k = 64;
  c.threads = 384;
  c.consumers = 2;
  if (sm90_tile_attributes(op)) {
    c.tile_n = static_cast<int>(op.attrs.get_int("tile_n"));
    c.source = TileConfig::Source::attribute;
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
  if (c.source == TileConfig::Source::heuristic) {
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
        if (!tuned->exact) add_note(c, bucket_note(*tuned));
      } else {
        add_note(c, fmt::format("tuned tile {}x{}x{} stages {} ignored: the sm90 family takes tile 128 x (64, 128 or 256) x 64, "
                                "2 to 6 stages within {} bytes of shared memory",
                                t.tile_m, t.tile_n, t.tile_k, t.stages, target.shared_memory_per_block_optin));
      }
    }
  }
  if (sm90::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, groups) > target.shared_memory_per_block_optin)
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
  c.stages = 4;
  while (c.stages > 2 && sm80::smem_bytes(c.tile_m, c.tile_n, c.tile_k, c.stages, problem.batch, grouped) > target.shared_memory_per_block_optin)
    --c.stages;
  return c;
}

}  // namespace

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
