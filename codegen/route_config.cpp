// See codegen/route_config.h.
#include "codegen/route_config.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/kernels/moe.cuh"
#include "codegen/tuning_space.h"
#include "ir/error.h"

namespace moejit::codegen {

namespace {

// Elements of the dtype in one 16-byte piece (route_kernel's V).
int piece_elements(DType dtype) { return 16 / static_cast<int>(dtype_size(dtype)); }

constexpr int kStaticSharedBytes = 48 * 1024;

std::optional<TunedLookup> route_entry(const RouteProblem& p, const Target& target) {
  const TuningDb* db = tuning_db_for(target);
  if (!db) return std::nullopt;
  return lookup_tuned(*db, route_tuning_key(p));
}

}  // namespace

std::string RouteProblem::label() const {
  return fmt::format("{} route T {} D {} E {} K {}", dtype_name(dtype), tokens, d, experts, top_k);
}

int route_padded_experts(std::int64_t experts) {
  int ep = 8;
  while (ep < experts) ep *= 2;
  return ep;
}

std::optional<RouteProblem> route_problem_of(const Graph& graph, const Op& op) {
  if (op.kind != OpKind::Route) return std::nullopt;
  const TensorType& x = graph.type(op.operands[0]);
  const TensorType& w = graph.type(op.operands[1]);
  const bool bias_same = op.operands.size() < 3 || op.operands[2] == kNoValue || graph.type(op.operands[2]).dtype == x.dtype;
  if (w.dim(1) > 256 || x.dtype == DType::f64 || w.dtype != x.dtype || !bias_same) return std::nullopt;
  if (x.dtype != DType::f32 && x.dtype != DType::bf16 && x.dtype != DType::f16) return std::nullopt;
  return RouteProblem{x.dtype, x.dim(0), x.dim(1), w.dim(1), op.attrs.get_int("top_k")};
}

RouteConfig route_heuristic(const RouteProblem& p) {
  // Few experts: four threads per token, each holding a quarter of the EP
  // logits (the product reads W as broadcast rows; a thread per token gates
  // in registers), blocks of 32 tokens so that even 4096 tokens make 128
  // blocks, four slices of x in flight. The kernel is bound by each
  // thread's chain of dependent instructions at config B's few tokens per
  // SM, so more threads per token pay (on the H200, under ncu: one thread
  // per token 35.3 us, two 23.7, the kernel before 74: docs/perf.md). More experts: a 4-token x TN-expert register tile per thread
  // (the FMAs dominate), shallower slices so that W's two buffers fit.
  RouteConfig c;
  c.ep = route_padded_experts(p.experts);
  const int v = piece_elements(p.dtype);
  switch (c.ep) {
    case 8:
    case 16: c.tn = c.ep / 4, c.tm = 1, c.threads = 128, c.bk = 64, c.stages = 4; break;
    case 32: c.tn = 8, c.tm = 1, c.threads = 128, c.bk = 32, c.stages = 4; break;
    case 64: c.tn = 4, c.tm = 4, c.threads = 256, c.bk = 32, c.stages = 3; break;
    default: c.tn = 8, c.tm = 4, c.threads = 256, c.bk = 16, c.stages = 3; break;  // 128, 256
  }
  c.bk = std::max(c.bk, v);
  c.tile.source = TileConfig::Source::heuristic;
  c.tile.tile_m = c.block_tokens();
  c.tile.tile_n = c.tn;
  c.tile.tile_k = c.bk;
  c.tile.stages = c.stages;
  c.tile.threads = c.threads;
  MOEJIT_ASSERT(route_fields_error(p, route_fields(c)).empty(), "route_heuristic: an invalid configuration");
  return c;
}

TunedFields route_fields(const RouteConfig& c) {
  return TunedFields{.tile_m = c.block_tokens(), .tile_n = c.tn, .tile_k = c.bk, .stages = c.stages, .threads = c.threads};
}

std::string route_fields_error(const RouteProblem& p, const TunedFields& f) {
  const int ep = route_padded_experts(p.experts), v = piece_elements(p.dtype);
  if (f.split_k) return "the route family takes no split_k";
  if (f.threads != 32 && f.threads != 64 && f.threads != 128 && f.threads != 256 && f.threads != 512)
    return fmt::format("threads {}: expected 32, 64, 128, 256 or 512", f.threads);
  if (f.tile_n < 1 || f.tile_n > 32 || (f.tile_n & (f.tile_n - 1)) || f.tile_n > ep)
    return fmt::format("tile_n (experts per thread) {}: expected a power of two in [1, {}]", f.tile_n, std::min(ep, 32));
  const int te = ep / f.tile_n;
  if (te > f.threads) return fmt::format("{} experts per thread leave {} threads per token, more than the block's {}", f.tile_n, te, f.threads);
  const int rows = f.threads / te;  // token rows of the thread grid
  if (f.tile_m < rows || f.tile_m % rows || f.tile_m / rows > 8)
    return fmt::format("tile_m (tokens per block) {}: expected {} x 1..8 for {} threads of {} experts each", f.tile_m, rows, f.threads,
                       f.tile_n);
  // A block's slots are one dispatch tile, walked 32 slots at a time: whole warps' worth.
  if (f.tile_m % 32) return fmt::format("tile_m (tokens per block) {}: expected a multiple of 32", f.tile_m);
  const int tm = f.tile_m / rows;
  if (tm * f.tile_n > 64) return fmt::format("{} tokens x {} experts per thread: more than 64 accumulators", tm, f.tile_n);
  if (f.tile_k < v || f.tile_k > 256 || f.tile_k % v) return fmt::format("tile_k (slice depth) {}: expected a multiple of {} in [{}, 256]", f.tile_k, v, v);
  if (f.stages < 2 || f.stages > 8) return fmt::format("stages {}: expected 2 to 8", f.stages);
  const mj::RouteLayout l{ep, f.tile_n, tm, f.threads, f.tile_k, f.stages, static_cast<int>(dtype_size(p.dtype))};
  if (l.smem_bytes() > kStaticSharedBytes) return fmt::format("{} bytes of shared memory, more than 48 KiB", l.smem_bytes());
  return "";
}

RouteConfig route_config_from(const RouteProblem& p, const TunedFields& f) {
  RouteConfig c;
  c.ep = route_padded_experts(p.experts);
  c.tn = f.tile_n;
  c.threads = f.threads;
  c.tm = f.tile_m / (f.threads / (c.ep / c.tn));
  c.bk = f.tile_k;
  c.stages = f.stages;
  c.tile.tile_m = f.tile_m;
  c.tile.tile_n = c.tn;
  c.tile.tile_k = c.bk;
  c.tile.stages = c.stages;
  c.tile.threads = c.threads;
  return c;
}

RouteConfig choose_route(const RouteProblem& p, const Target& target) {
  RouteConfig c = route_heuristic(p);
  const std::optional<TunedLookup> tuned = route_entry(p, target);
  if (!tuned) return c;
  // Fields an entry leaves unset keep the heuristic's value.
  TunedFields f = route_fields(c);
  if (tuned->fields.tile_m) f.tile_m = tuned->fields.tile_m;
  if (tuned->fields.tile_n) f.tile_n = tuned->fields.tile_n;
  if (tuned->fields.tile_k) f.tile_k = tuned->fields.tile_k;
  if (tuned->fields.stages) f.stages = tuned->fields.stages;
  if (tuned->fields.threads) f.threads = tuned->fields.threads;
  f.split_k = tuned->fields.split_k;
  const std::string error = route_fields_error(p, f);
  if (!error.empty()) {
    c.tile.note = fmt::format("tuned {} ignored: {}", fields_str(tuned->fields), error);
    return c;
  }
  RouteConfig t = route_config_from(p, f);
  t.tile.source = TileConfig::Source::tuned;
  t.tile.note = tuned->exact ? "database, exact bucket"
                             : fmt::format("nearest tuned bucket m 2^{} n 2^{} k 2^{}", tuned->bucket.m_log2, tuned->bucket.n_log2,
                                           tuned->bucket.k_log2);
  return t;
}

TuningKey route_tuning_key(const RouteProblem& p) {
  return TuningKey{"route", std::string(dtype_name(p.dtype)), "route", bucket_log2(p.tokens), bucket_log2(p.experts), bucket_log2(p.d)};
}

std::vector<TunedFields> route_candidates(const RouteProblem& p, const Target& target) {
  const RouteConfig h = route_heuristic(p);
  const int ep = h.ep, elem = static_cast<int>(dtype_size(p.dtype));
  const std::int64_t heuristic_blocks = (p.tokens + h.block_tokens() - 1) / h.block_tokens();
  std::vector<TunedFields> out = {route_fields(h)};
  // Few experts (bound by reading x): small blocks, one or two threads per
  // token, deep or shallow rings. Many (bound by the FMAs): 2- or 4-token
  // register tiles of 4 or 8 experts, short slices (W's buffers are large).
  const bool few = ep <= 32;
  const std::vector<int> thread_counts = few ? std::vector<int>{32, 64, 128} : std::vector<int>{128, 256, 512};
  const int widest = std::min(ep, 32);
  const std::vector<int> tns = few ? std::vector<int>{widest, widest / 2, widest / 4} : std::vector<int>{4, 8, 16};
  const std::vector<int> tms = few ? std::vector<int>{1, 2} : std::vector<int>{2, 4};
  const std::vector<int> row_bytes = few ? std::vector<int>{128, 256} : std::vector<int>{64, 128};
  const std::vector<int> stage_counts = few ? std::vector<int>{2, 4} : std::vector<int>{2, 3};
  for (int threads : thread_counts)
    for (int tn : tns)
      for (int tm : tms)
        for (int bytes : row_bytes)
          for (int stages : stage_counts) {
            const int te = ep / tn, bk = bytes / elem;
            if (te > threads) continue;
            TunedFields f{.tile_m = threads / te * tm, .tile_n = tn, .tile_k = bk, .stages = stages, .threads = threads};
            if (!route_fields_error(p, f).empty() || f == out.front()) continue;
            // Fewer blocks than half the SMs leave the GPU idle (unless the heuristic already has that few).
            const std::int64_t blocks = (p.tokens + f.tile_m - 1) / f.tile_m;
            if (blocks * 2 < target.sm_count && blocks < heuristic_blocks) continue;
            out.push_back(f);
          }
  return out;
}

std::string route_limits() {
  // The shared memory of each configuration decides which exist; its formula is mj::RouteLayout.
  std::string text = " threads 32..512, tile_n pow2 <= min(EP, 32), tm 1..8, <= 64 accumulators, tile_k multiple of 16 bytes <= 256, stages 2..8,"
                     " 48 KiB static";
  for (int ep : {8, 64, 256})
    for (int elem : {2, 4})
      text += fmt::format(" smem ep{} e{} {}", ep, elem, mj::RouteLayout{ep, 8, 2, 64, 32, 3, elem}.smem_bytes());
  return text;
}

}  // namespace moejit::codegen
