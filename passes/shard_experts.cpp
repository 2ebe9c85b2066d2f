// shard-experts{rank=r world_size=N}: expert parallelism. Each of N ranks
// keeps E/N of every MoE layer's experts and exchanges the routed rows with
// the others (Megatron's expert_model_parallel_size = N). Rank r keeps
// experts r*E/N .. (r+1)*E/N - 1; the graph is the same text on every rank
// (the comm ops carry world_size only: the rank is the process's, its
// communicator's), and the rank option is checked and counted only. Whoever
// binds the weights (the launcher, the tests) binds rank r's slice.
//
// For each moe.dispatch with num_experts E (E % N == 0, El = E/N):
//
//   counts [E] -> per_rank [N, El] (f32)        row d: the counts of rank d's experts
//   send_counts [N] = sum(per_rank, 1)           rows for each destination rank
//   recv_expert_counts [N, El] = all_to_all(per_rank, ones [N])
//                                                row s: what rank s sends to each local expert
//   offsets' [E+1] = 0, prefix sums of recv_expert_counts read as [N*El]
//   recv_xs [N*C, D], recv_rows [N] = all_to_all(xs [C, D], send_counts) {recv_rows = N*C}
//   every expert op between moe.permute and moe.combine reads recv_xs and
//   offsets'; an expert weight [E, ...] becomes the parameter [El, ...], read
//   through w' = concat(w, ..., w) (N times) [E, ...]
//   ys' [N*C, D] -> all_to_all(ys', recv_rows) {recv_rows = C} [C, D] -> moe.combine
//
// Why the received rows need no reordering: rank s sends its rows for rank
// r's experts grouped by expert, so the rows received are grouped by
// (source rank, local expert); reading them as N*El groups, group s*El + e
// multiplied by local expert e (w' repeats the local weights N times), the
// grouped GEMMs run on the rows as they arrive. The gradient of the concat
// sums the N groups' weight gradients into each local expert. (w' costs the
// memory of all E experts; a grouped GEMM that maps group g to weight
// g % El would remove it.)
//
// Capacity: each rank sends at most C rows (the dispatch's static capacity),
// so N*C rows always hold what a rank receives, whatever the routing: no row
// is dropped beyond what moe.dispatch drops on its own rank.
//
// The backward needs nothing new: autodiff turns each all_to_all into the
// reverse one (passes/grad_comm.cpp). Run it on the forward graph, before
// autodiff and before the MoE fusions (it rewrites the unfused chain
// moe.dispatch -> moe.permute -> moe.grouped_matmul... -> moe.combine), then
// all-reduce-grads after autodiff for the data-parallel dense gradients.
//
// At world_size 1 the pass changes nothing.
//
// Statistics: moe-layers-sharded, expert-weights-sharded, experts-per-rank,
// first-local-expert.
#include <fmt/format.h>

#include <map>
#include <set>

#include "ir/builder.h"
#include "ir/error.h"
#include "passes/passes.h"

namespace moejit {

namespace {

std::size_t idx(ValueId v) { return static_cast<std::size_t>(v); }

// What the rewrite made for one moe.dispatch.
struct ShardedDispatch {
  Tensor send_counts;   // [N] i32, rows for each destination rank
  Tensor offsets;       // [E+1] i32, groups (source rank, local expert) of the received rows
  Tensor recv_rows;     // [N] i32, rows received from each rank (set at its moe.permute)
  std::int64_t capacity = 0;  // C, the rows of the dispatch's own xs
  bool permuted = false;
};

class ShardExpertsPass final : public Pass {
 public:
  ShardExpertsPass(std::int64_t rank, std::int64_t world_size) : rank_(rank), world_size_(world_size) {}
  std::string_view name() const override { return "shard-experts"; }
  void run(Graph& graph) override;

 private:
  std::int64_t rank_, world_size_;
};

void ShardExpertsPass::run(Graph& graph) {
  if (world_size_ < 1 || rank_ < 0 || rank_ >= world_size_)
    throw Error(fmt::format("shard-experts: expected 0 <= rank < world_size and world_size >= 1, found rank {} and "
                            "world_size {}",
                            rank_, world_size_));
  if (world_size_ == 1) return;
  const std::int64_t N = world_size_;
  const auto& ops = graph.ops();
  std::vector<int> producer = graph.producers();
  auto defined_by = [&](ValueId v, OpKind kind) {
    int p = producer[idx(v)];
    return p >= 0 && ops[static_cast<std::size_t>(p)].kind == kind ? p : -1;
  };

  // Refuse graphs this rewrite does not understand, naming why.
  for (const Output& out : graph.outputs())
    if (out.name.rfind("grad.", 0) == 0)
      throw Error(fmt::format("shard-experts: expected a forward graph (run it before autodiff), found output '{}'",
                              out.name));
  for (const Op& op : ops)
    if (op.kind == OpKind::Route || op.kind == OpKind::GatherMatmul || op.kind == OpKind::MatmulCombine ||
        op.kind == OpKind::ExpertChoice)
      throw Error(fmt::format("shard-experts: expected the unfused chain moe.dispatch -> moe.permute -> "
                              "moe.grouped_matmul -> moe.combine (run it before the MoE fusions; expert-choice "
                              "routing is not sharded), found \"{}\"",
                              op_name(op.kind)));

  // The expert weights: parameters [E, ...] read by a grouped matmul through a dispatch's offsets.
  std::map<ValueId, std::int64_t> expert_weights;  // param -> E
  for (const Op& op : ops) {
    if (op.kind != OpKind::GroupedMatmul) continue;
    int d = defined_by(op.operands[2], OpKind::Dispatch);
    if (d < 0) continue;
    const std::int64_t E = ops[static_cast<std::size_t>(d)].attrs.get_int("num_experts");
    const Arg* arg = graph.arg_of(op.operands[1]);
    if (!arg || arg->role != ArgRole::param)
      throw Error(fmt::format("shard-experts: expected the expert weight of moe.grouped_matmul to be a parameter "
                              "[{}, ...], found a computed value {}",
                              E, graph.type(op.operands[1]).str()));
    if (E % N != 0)
      throw Error(fmt::format("shard-experts: expected num_experts a multiple of world_size {}, found {} experts", N, E));
    expert_weights[op.operands[1]] = E;
  }

  Graph sharded(graph.name());
  Builder b(sharded);
  std::vector<Tensor> map(static_cast<std::size_t>(graph.num_values()));
  auto mapped = [&](ValueId v) {
    MOEJIT_ASSERT(map[idx(v)].graph, "shard-experts: an operand used before its definition");
    return map[idx(v)];
  };
  for (const Arg& arg : graph.args()) {
    TensorType type = graph.type(arg.value);
    if (auto it = expert_weights.find(arg.value); it != expert_weights.end()) {
      type.shape[0] = it->second / N;
      count("expert-weights-sharded");
    }
    map[idx(arg.value)] = Tensor{&sharded, sharded.add_arg(graph.value(arg.value).name, type, arg.role)};
  }

  std::map<int, ShardedDispatch> dispatches;  // by op index in the old graph
  std::map<ValueId, Tensor> replicated;       // expert weight -> its N copies [E, ...]
  auto dispatch_of = [&](ValueId v) -> ShardedDispatch* {
    int d = defined_by(v, OpKind::Dispatch);
    return d >= 0 ? &dispatches.at(d) : nullptr;
  };
  const AttrList world{{"world_size", N}};
  auto with_recv_rows = [&](std::int64_t rows) { return AttrList{{"recv_rows", rows}, {"world_size", N}}; };

  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    std::vector<Tensor> operands;
    for (ValueId v : op.operands) operands.push_back(mapped(v));

    if (op.kind == OpKind::GroupedMatmul && expert_weights.count(op.operands[1])) {
      auto [it, fresh] = replicated.try_emplace(op.operands[1]);
      if (fresh) it->second = b.concat(std::vector<Tensor>(static_cast<std::size_t>(N), operands[1]), 0);
      operands[1] = it->second;
    }
    if (op.kind == OpKind::Combine) {
      if (ShardedDispatch* sd = dispatch_of(op.operands[2])) {
        if (!sd->permuted)
          throw Error("shard-experts: expected the dispatch's rows gathered by moe.permute before moe.combine");
        // The expert outputs go back to the ranks the rows came from, in the order they were sent.
        operands[0] = b.op(OpKind::AllToAll, {operands[0], sd->recv_rows}, with_recv_rows(sd->capacity))[0];
      }
    }

    std::vector<Tensor> results = b.op(op.kind, operands, op.attrs);
    for (std::size_t r = 0; r < results.size(); ++r) map[idx(op.results[r])] = results[r];

    if (op.kind == OpKind::Dispatch) {
      const std::int64_t E = op.attrs.get_int("num_experts");
      if (E % N != 0)
        throw Error(fmt::format("shard-experts: expected num_experts a multiple of world_size {}, found {} experts", N, E));
      const std::int64_t local = E / N;
      ShardedDispatch sd;
      sd.capacity = results[0].dim(0);
      // Counts travel as f32 (exact below 2^24 rows) because the comm ops move float rows.
      Tensor per_rank = b.reshape(b.cast(results[3], DType::f32), {N, local});
      sd.send_counts = b.cast(b.sum(per_rank, {1}), DType::i32);
      Tensor recv_counts = b.op(OpKind::AllToAll, {per_rank, b.constant(1.0, {N}, DType::i32)}, world)[0];
      Tensor flat = b.reshape(recv_counts, {E});
      std::vector<Tensor> prefix{b.constant(0.0, {1})};
      for (std::int64_t e = 0; e < E; ++e) prefix.push_back(b.add(prefix.back(), b.slice(flat, {e}, {e + 1})));
      sd.offsets = b.cast(b.concat(prefix, 0), DType::i32);
      map[idx(op.results[1])] = sd.offsets;
      dispatches[static_cast<int>(i)] = sd;
      if (dispatches.size() == 1) {  // the same for every layer of equal E; reported once
        count("experts-per-rank", local);
        count("first-local-expert", rank_ * local);
      }
      count("moe-layers-sharded");
    } else if (op.kind == OpKind::Permute) {
      if (ShardedDispatch* sd = dispatch_of(op.operands[1])) {
        if (sd->permuted) throw Error("shard-experts: expected one moe.permute per moe.dispatch, found a second");
        std::vector<Tensor> exchanged = b.op(OpKind::AllToAll, {results[0], sd->send_counts}, with_recv_rows(N * sd->capacity));
        sd->recv_rows = exchanged[1];
        sd->permuted = true;
        map[idx(op.results[0])] = exchanged[0];
      }
    }
  }
  for (const Output& out : graph.outputs()) b.output(mapped(out.value), out.name, out.updates);
  graph = std::move(sharded);
}

}  // namespace

std::unique_ptr<Pass> create_shard_experts_pass(const PassOptions& options) {
  return std::make_unique<ShardExpertsPass>(option_int("shard-experts", options, "rank", 0),
                                            option_int("shard-experts", options, "world_size", 1));
}

}  // namespace moejit
