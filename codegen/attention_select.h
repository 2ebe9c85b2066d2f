// Which tile shapes the flash attention family (codegen/kernels/attention.cuh)
// runs an attention with: the one place that decides it, from the problem,
// the target and the tuning database. The emitters (emit_dense.cpp) and
// `moejit tune` (tuning_space.cpp, family "attention") both call it, so what
// is tuned is exactly what codegen launches.
//
// The choice covers the forward and both backward kernels of one attention
// (mj.attention + mj.attention_grad, or the packed mj.attention_qkv pair):
//   fwd_fragments   16-row fragments per warp of the forward (1: 64-query
//                   blocks, 2: 128; 2 only for head dims <= 64);
//   dq_fragments    the same for the dq kernel;
//   dkdv_queries    queries per step of the dk/dv kernel (32 or 64).
// A database entry of family "attention" sets them as tile_m = 64 *
// fwd_fragments, tile_k = 64 * dq_fragments (the dq kernel's query tile)
// and tile_n = dkdv_queries; its key: the dtype, the layout as kind
// ("bhtd", "bthd", "qkv"), and the buckets of B * H (m), T (n), Dh (k).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "codegen/target.h"
#include "codegen/tile_config.h"
#include "codegen/tuning_db.h"
#include "ir/graph.h"

namespace moejit::codegen {

struct AttentionProblem {
  DType dtype = DType::bf16;
  std::string layout;  // "bhtd", "bthd", or "qkv" (mj.attention_qkv's packed [B, T, 3, H, Dh])
  std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
};

// The problem of mj.attention, mj.attention_grad, mj.attention_qkv or
// mj.attention_qkv_grad (any dtype: whether the flash family serves it is
// flash_attention_serves); nullopt for every other op.
std::optional<AttentionProblem> attention_problem_of(const Graph& graph, const Op& op);

// Whether the flash family runs the problem on the target (bf16/f16, Dh <=
// 128, sm_80+, 32-bit row addressing, shared memory); else the row kernels.
bool flash_attention_serves(const AttentionProblem& problem, const Target& target);

TuningKey attention_tuning_key(const AttentionProblem& problem);

struct FlashChoice {
  int fwd_fragments = 1;
  int dq_fragments = 1;
  int dkdv_queries = 64;
  TileConfig::Source source = TileConfig::Source::heuristic;
  std::string note;  // where a tuned choice came from, or why an entry was ignored
};

// The heuristic's choice (what measured fastest on the H200; docs/perf.md).
FlashChoice flash_heuristic(const AttentionProblem& problem);
// The database's entry for the problem when the target has one that is
// valid (flash_fields_valid), else the heuristic (with a note when an entry
// was ignored).
FlashChoice choose_flash(const AttentionProblem& problem, const Target& target);
// Whether an entry's fields name tile shapes the family instantiates for
// the problem and whose shared memory fits the target; `why` says what not.
bool flash_fields_valid(const TunedFields& fields, const AttentionProblem& problem, const Target& target, std::string* why = nullptr);
TunedFields flash_fields(const FlashChoice& choice);

}  // namespace moejit::codegen
