// The flash attention family's tile choice (see attention_select.h).
#include "codegen/attention_select.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/kernels/attention.cuh"
#include "ir/attention_layout.h"

namespace moejit::codegen {

std::optional<AttentionProblem> attention_problem_of(const Graph& graph, const Op& op) {
  const bool packed = op.kind == OpKind::AttentionQkv || op.kind == OpKind::AttentionQkvGrad;
  if (!packed && op.kind != OpKind::Attention && op.kind != OpKind::AttentionGrad) return std::nullopt;
  const TensorType& first = graph.type(op.operands.at(0));
  const AttentionGeometry g = packed ? packed_attention_geometry(first) : attention_geometry(first, head_layout(op.attrs));
  AttentionProblem p;
  p.dtype = first.dtype;
  p.layout = packed ? "qkv" : std::string(head_layout_name(head_layout(op.attrs)));
  p.batch = g.batch;
  p.heads = g.heads;
  p.tokens = g.tokens;
  p.head_dim = g.head_dim;
  return p;
}

namespace {
// The widest row stride of the problem's tensors (q, k, v rows; out rows).
std::int64_t widest_row(const AttentionProblem& p) {
  if (p.layout == "qkv") return 3 * p.heads * p.head_dim;
  if (p.layout == "bthd") return p.heads * p.head_dim;
  return p.head_dim;
}
// The shared memory of the three kernels under a choice.
int most_smem(const AttentionProblem& p, const FlashChoice& c) {
  const int dp = mj::FlashTile::padded_dim(p.head_dim);
  return std::max({mj::FlashTile::fwd_smem(dp, c.fwd_fragments), mj::FlashTile::bwd_dq_smem(dp, c.dq_fragments),
                   mj::FlashTile::bwd_dkdv_smem(dp, c.dkdv_queries)});
}
}  // namespace

bool flash_attention_serves(const AttentionProblem& p, const Target& target) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16) return false;
  if (p.head_dim > 128 || target.sm() < 80) return false;
  // The kernels address rows in 32 bits: T < 2^31, and a tile's row r < 128
  // at r * row stride + column.
  if (p.tokens >= (std::int64_t{1} << 31) || widest_row(p) >= (std::int64_t{1} << 24)) return false;
  if (p.batch * p.heads >= (std::int64_t{1} << 31)) return false;  // the grid's x
  return most_smem(p, flash_heuristic(p)) <= target.shared_memory_per_block_optin;
}

TuningKey attention_tuning_key(const AttentionProblem& p) {
  return TuningKey{"attention", std::string(dtype_name(p.dtype)), p.layout, bucket_log2(p.batch * p.heads), bucket_log2(p.tokens),
                   bucket_log2(p.head_dim)};
}

FlashChoice flash_heuristic(const AttentionProblem& p) {
  const int dp = mj::FlashTile::padded_dim(p.head_dim);
  FlashChoice c;
  c.fwd_fragments = mj::FlashTile::fwd_fragments(dp, p.tokens);
  c.dq_fragments = mj::FlashTile::dq_fragments(dp, p.tokens);
  c.dkdv_queries = mj::FlashTile::dkdv_queries(dp);
  return c;
}

TunedFields flash_fields(const FlashChoice& c) {
  return TunedFields{.tile_m = mj::FlashTile::kRows * c.fwd_fragments, .tile_n = c.dkdv_queries, .tile_k = mj::FlashTile::kRows * c.dq_fragments};
}

bool flash_fields_valid(const TunedFields& f, const AttentionProblem& p, const Target& target, std::string* why) {
  auto no = [&](std::string text) {
    if (why) *why = std::move(text);
    return false;
  };
  const int dp = mj::FlashTile::padded_dim(p.head_dim);
  if (f.stages || f.threads || f.split_k) return no("sets a field the attention family has not (only tile_m, tile_n, tile_k)");
  auto query_tile = [&](int tile, const char* name, const char* what) {
    if (tile == 64 || (tile == 128 && dp <= 64)) return std::string();
    return fmt::format("{} {}: {} is 64{}", name, tile, what, dp <= 64 ? " or 128" : " for head dims > 64");
  };
  if (std::string bad = query_tile(f.tile_m, "tile_m", "the forward's query tile"); !bad.empty()) return no(bad);
  if (std::string bad = query_tile(f.tile_k, "tile_k", "the dq kernel's query tile"); !bad.empty()) return no(bad);
  if (f.tile_n != 32 && f.tile_n != 64) return no(fmt::format("tile_n {}: the dk/dv kernel's query step is 32 or 64", f.tile_n));
  const int smem = most_smem(p, FlashChoice{f.tile_m / mj::FlashTile::kRows, f.tile_k / mj::FlashTile::kRows, f.tile_n});
  if (smem > target.shared_memory_per_block_optin)
    return no(fmt::format("needs {} bytes of shared memory, the target has {}", smem, target.shared_memory_per_block_optin));
  return true;
}

FlashChoice choose_flash(const AttentionProblem& p, const Target& target) {
  FlashChoice c = flash_heuristic(p);
  const TuningDb* db = tuning_db_for(target);
  if (!db) return c;
  const std::optional<TunedLookup> entry = lookup_tuned(*db, attention_tuning_key(p));
  if (!entry) return c;
  std::string why;
  if (!flash_fields_valid(entry->fields, p, target, &why)) {
    c.note = fmt::format("tuning database entry ignored: {}", why);
    return c;
  }
  c.fwd_fragments = entry->fields.tile_m / mj::FlashTile::kRows;
  c.dq_fragments = entry->fields.tile_k / mj::FlashTile::kRows;
  c.dkdv_queries = entry->fields.tile_n;
  c.source = TileConfig::Source::tuned;
  c.note = entry->exact ? "database, exact bucket"
                        : fmt::format("nearest tuned bucket m 2^{} n 2^{} k 2^{}", entry->bucket.m_log2, entry->bucket.n_log2, entry->bucket.k_log2);
  return c;
}

}  // namespace moejit::codegen
