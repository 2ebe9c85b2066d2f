// moe-tiling: chooses the tile shape of every expert matmul
// (moe.grouped_matmul, moe.gather_matmul, moe.matmul_combine) and, where the
// graph allows, pads the dispatch so that no M tile straddles two experts.
//
// Why: a grouped matmul runs one tile grid over all experts' rows. If each
// expert's segment starts on a multiple of tile_m (the dispatch's `block`),
// every M tile belongs to exactly one expert and the kernel needs no
// per-row expert lookup or masking between segments. The tile sizes
// themselves trade wasted work on small segments against reuse on large
// ones. The tiles written here are the analytic heuristic; the op is marked
// {mj.tiled_by = "moe-tiling"} so that the CUDA backend's GEMM choice
// (codegen/gemm_select.cpp) knows them for a heuristic and takes the per-GPU
// tuning database's entry for the problem instead where there is one (the
// exact bucket, else the nearest; `moejit tune` writes it, docs/tuning.md).
// Tile attributes without the mark (a user's) win over the database.
//
// Heuristic (rows per expert m, reduction width d, output width f):
//   m      = kept rows / E: the dispatch's rows without padding
//            (min(T*K, E*capacity)) / E, or N / E when the offsets do not
//            come from a moe.dispatch / moe.route;
//   tile_m = the dispatch's block when it is > 1 (segments are aligned to it);
//            else next_pow2(ceil(m)) clamped to [16, 128] (16: the smallest
//            tensor-core M; 128: the largest useful with one warpgroup);
//   tile_n = next_pow2(f) clamped to [16, 128];
//   tile_k = next_pow2(d) clamped to [16, 64].
// 16-bit expert weights (bf16, f16) get tensor-core shapes instead, what
// the sm90 GEMM family runs (codegen/gemm_select.cpp): tile_m = 128,
// tile_k = 64, tile_n = 64 for f <= 64, else 256 or 128, whichever pads f
// less (256 on a tie). That family handles segments that start anywhere, so
// graphs with 16-bit expert matmuls keep their dispatch unpadded (padding
// would only add rows, and zeroing of the rows past the last segment).
//
// Dispatch block (option pad-dispatch, default true): a moe.dispatch or
// moe.route with block = 1 gets block = its tile_m when the row layout does
// not escape the graph: no output may be, or be computed from, the slots,
// offsets, positions or any [N, ...] row tensor except through ops that undo
// the layout (combine, permute_grad, grouped_matmul_wgrad, matmul_combine's
// combined out, combine_grad's dweights). Padding changes N, so the graph is rebuilt with
// every type re-inferred; outputs keep their types and values. A dispatch
// whose block the user set (> 1) is never changed.
//
// Ops that already carry all three tile attributes are left as they are.
//
// Statistics: matmuls-tiled, already-tiled, dispatch-blocks-set,
// dispatch-layout-is-output.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>

#include "ir/error.h"
#include "ir/moe_shapes.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

// The mark of tiles chosen here (codegen/gemm_select.h: kTiledByAttr).
constexpr const char* kTiledBy = "mj.tiled_by";

std::int64_t next_pow2_clamped(std::int64_t v, std::int64_t lo, std::int64_t hi) {
  std::int64_t p = 1;
  while (p < v) p *= 2;
  return std::clamp(p, lo, hi);
}

// The routing sizes of a moe.dispatch or moe.route op.
struct RoutingSizes {
  std::int64_t tokens, top_k, num_experts;
  double capacity_factor;
  std::int64_t block;

  double kept_rows_per_expert() const {
    return static_cast<double>(dispatch_rows(tokens, top_k, num_experts, capacity_factor, 1)) / static_cast<double>(num_experts);
  }
};

std::optional<RoutingSizes> routing_sizes(const Graph& graph, const Op& op) {
  if (op.kind == OpKind::Dispatch) {
    const auto& experts = graph.type(op.operands[0]);
    return RoutingSizes{experts.dim(0), experts.dim(1), op.attrs.get_int("num_experts"), op.attrs.get_float("capacity_factor"),
                        op.attrs.get_int("block")};
  }
  if (op.kind == OpKind::Route)
    return RoutingSizes{graph.type(op.operands[0]).dim(0), op.attrs.get_int("top_k"), op.attrs.get_int("num_experts"),
                        op.attrs.get_float("capacity_factor"), op.attrs.get_int("block")};
  return std::nullopt;
}

std::int64_t heuristic_tile_m(double rows_per_expert) {
  return next_pow2_clamped(static_cast<std::int64_t>(std::ceil(rows_per_expert)), 16, 128);
}

// Whether a graph output depends on the row layout made by the dispatch/route op `op_index`.
bool layout_reaches_outputs(const Graph& graph, int op_index) {
  std::vector<bool> layout(static_cast<std::size_t>(graph.num_values()), false);
  const Op& routing = graph.ops()[static_cast<std::size_t>(op_index)];
  if (routing.kind == OpKind::Dispatch)
    for (int r : {0, 1, 2}) layout[idx(routing.results[static_cast<std::size_t>(r)])] = true;
  else
    for (int r : {3, 4, 5, 7}) layout[idx(routing.results[static_cast<std::size_t>(r)])] = true;
  for (std::size_t i = static_cast<std::size_t>(op_index) + 1; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    if (!std::any_of(op.operands.begin(), op.operands.end(), [&](ValueId v) { return layout[idx(v)]; })) continue;
    switch (op.kind) {
      case OpKind::Combine:
      case OpKind::PermuteGrad:
      case OpKind::GroupedMatmulWgrad:
        break;  // these undo the layout
      case OpKind::MatmulCombine:
        layout[idx(op.results[1])] = true;  // ys is in row layout, the combined out is not
        break;
      case OpKind::CombineGrad:
        layout[idx(op.results[0])] = true;  // dys is in row layout, dweights is not
        break;
      default:
        for (auto r : op.results) layout[idx(r)] = true;
    }
  }
  return std::any_of(graph.outputs().begin(), graph.outputs().end(), [&](const Output& o) { return layout[idx(o.value)]; });
}

// The graph with op `op_index`'s block set and every type re-inferred.
Graph rebuild_with_block(const Graph& graph, int op_index, std::int64_t block) {
  Graph out(graph.name());
  std::vector<ValueId> map(static_cast<std::size_t>(graph.num_values()), kNoValue);
  for (const auto& arg : graph.args())
    map[idx(arg.value)] = out.add_arg(graph.value(arg.value).name, graph.type(arg.value), arg.role);
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    AttrList attrs = op.attrs;
    if (static_cast<int>(i) == op_index) attrs.set("block", block);
    std::vector<ValueId> operands;
    std::vector<TensorType> types;
    for (auto v : op.operands) {
      MOEJIT_ASSERT(map[idx(v)] != kNoValue, "moe-tiling: operand used before its definition");
      operands.push_back(map[idx(v)]);
      types.push_back(out.type(map[idx(v)]));
    }
    std::string error;
    auto results = infer_op(op.kind, types, attrs, &error);
    if (!results)
      throw Error(fmt::format("moe-tiling: padding the dispatch to block {} makes \"{}\" invalid: {}", block, op_name(op.kind), error));
    auto ids = out.add_op(op.kind, std::move(operands), std::move(attrs), std::move(*results));
    for (std::size_t r = 0; r < ids.size(); ++r) map[idx(op.results[r])] = ids[r];
  }
  for (const auto& o : graph.outputs()) {
    MOEJIT_ASSERT(out.type(map[idx(o.value)]) == graph.type(o.value), "moe-tiling: padding changed an output's type");
    out.add_output(map[idx(o.value)], o.name, o.updates);
  }
  return out;
}

bool is_expert_matmul(OpKind kind) {
  return kind == OpKind::GroupedMatmul || kind == OpKind::GatherMatmul || kind == OpKind::MatmulCombine;
}

bool has_16bit_expert_matmuls(const Graph& graph) {
  for (const Op& op : graph.ops())
    if (is_expert_matmul(op.kind) && dtype_size(graph.type(op.operands[1]).dtype) == 2) return true;
  return false;
}

class MoeTilingPass final : public Pass {
 public:
  explicit MoeTilingPass(bool pad_dispatch) : pad_dispatch_(pad_dispatch) {}
  std::string_view name() const override { return "moe-tiling"; }

  void run(Graph& graph) override {
    reset_statistics();
    if (pad_dispatch_ && !has_16bit_expert_matmuls(graph)) pad_dispatches(graph);
    tile_matmuls(graph);
  }

 private:
  bool pad_dispatch_;

  void pad_dispatches(Graph& graph) {
    std::int64_t set = 0, kept = 0;
    for (std::size_t i = 0; i < graph.ops().size(); ++i) {
      auto sizes = routing_sizes(graph, graph.ops()[i]);
      if (!sizes || sizes->block != 1) continue;
      if (layout_reaches_outputs(graph, static_cast<int>(i))) {
        ++kept;
        continue;
      }
      std::int64_t block = heuristic_tile_m(sizes->kept_rows_per_expert());
      graph = rebuild_with_block(graph, static_cast<int>(i), block);
      ++set;
    }
    count("dispatch-blocks-set", set);
    count("dispatch-layout-is-output", kept);
  }

  void tile_matmuls(Graph& graph) {
    std::vector<int> producer = graph.producers();
    std::int64_t tiled = 0, already = 0;
    for (auto& op : graph.mutable_ops()) {
      std::int64_t d = 0, f = 0;
      ValueId offsets = kNoValue, rows_value = op.operands.empty() ? kNoValue : op.operands[0];
      const TensorType* w = op.operands.size() > 1 ? &graph.type(op.operands[1]) : nullptr;
      switch (op.kind) {
        case OpKind::GroupedMatmul: {
          bool t = op.attrs.get_bool("transpose_w");
          d = t ? w->dim(2) : w->dim(1);
          f = t ? w->dim(1) : w->dim(2);
          offsets = op.operands[2];
          break;
        }
        case OpKind::GatherMatmul:
          d = w->dim(1), f = w->dim(2), offsets = op.operands[3], rows_value = op.operands[2];  // N = slots
          break;
        case OpKind::MatmulCombine:
          d = w->dim(1), f = w->dim(2), offsets = op.operands[2];
          break;
        default:
          continue;
      }
      if (op.attrs.has("tile_m") && op.attrs.has("tile_n") && op.attrs.has("tile_k")) {
        ++already;
        continue;
      }
      std::int64_t num_experts = w->dim(0);
      double rows_per_expert = static_cast<double>(graph.type(rows_value).dim(0)) / static_cast<double>(num_experts);
      std::int64_t block = 1;
      if (int p = producer[idx(offsets)]; p >= 0)
        if (auto sizes = routing_sizes(graph, graph.ops()[static_cast<std::size_t>(p)])) {
          rows_per_expert = sizes->kept_rows_per_expert();
          block = sizes->block;
        }
      if (dtype_size(w->dtype) == 2) {
        auto padded = [&](std::int64_t tile) { return (f + tile - 1) / tile * tile; };
        op.attrs.set("tile_m", std::int64_t{128});
        op.attrs.set("tile_n", std::int64_t{f <= 64 ? 64 : padded(256) <= padded(128) ? 256 : 128});
        op.attrs.set("tile_k", std::int64_t{64});
        op.attrs.set(kTiledBy, std::string("moe-tiling"));
        ++tiled;
        continue;
      }
      op.attrs.set("tile_m", block > 1 ? block : heuristic_tile_m(rows_per_expert));
      op.attrs.set("tile_n", next_pow2_clamped(f, 16, 128));
      op.attrs.set("tile_k", next_pow2_clamped(d, 16, 64));
      op.attrs.set(kTiledBy, std::string("moe-tiling"));
      ++tiled;
    }
    count("matmuls-tiled", tiled);
    count("already-tiled", already);
  }
};

}  // namespace

std::unique_ptr<Pass> create_moe_tiling_pass(const PassOptions& options) {
  bool pad = true;
  if (auto it = options.find("pad-dispatch"); it != options.end()) {
    if (it->second == "true" || it->second == "1") pad = true;
    else if (it->second == "false" || it->second == "0") pad = false;
    else throw Error(fmt::format("moe-tiling: option pad-dispatch: expected true or false, found '{}'", it->second));
  }
  return std::make_unique<MoeTilingPass>(pad);
}

}  // namespace moejit
