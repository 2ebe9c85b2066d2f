// The small MoE model that checks expert + data parallelism against the
// unsharded model: shared by the CPU proof (tests/scale/shard_experts_test.cpp,
// N ranks as threads) and the multi-GPU check (examples/shard_check, N
// processes over NCCL), so both check the same thing.
//
// A one-layer MoE language-model head: x [T, D] -> tanh(x w_in) = h -> MoE
// (top-2 of E experts, dropless, gelu) added to h -> logits [T, V] -> cross
// entropy plus the load-balance loss. Dense params: w_in, w_router, w_out;
// expert params: w_up [E, D, F], w_down [E, F, D]. Rank r is fed batch r; the
// global loss is the mean of the ranks' losses, so every gradient is the
// mean over batches of the unsharded model's gradients (rank r holds experts
// r*E/N .. (r+1)*E/N - 1 of the expert ones).
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ir/builder.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"

namespace moejit::shard_model {

struct Sizes {
  std::int64_t tokens = 12, d_model = 6, hidden = 5, vocab = 7, experts = 4, top_k = 2;
};

inline Graph build(const Sizes& s) {
  Graph graph("moe_model");
  Builder b(graph);
  Tensor x = b.input("x", {s.tokens, s.d_model});
  Tensor targets = b.input("targets", {s.tokens}, DType::i32);
  Tensor w_in = b.param("w_in", {s.d_model, s.d_model});
  Tensor w_router = b.param("w_router", {s.d_model, s.experts});
  Tensor w_up = b.param("w_up", {s.experts, s.d_model, s.hidden});
  Tensor w_down = b.param("w_down", {s.experts, s.hidden, s.d_model});
  Tensor w_out = b.param("w_out", {s.d_model, s.vocab});
  Tensor h = b.tanh(b.matmul(x, w_in));
  Tensor logits = b.matmul(h, w_router);
  auto [weights, chosen] = b.moe_gate(logits, {.top_k = s.top_k, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = s.experts});
  Tensor xs = b.moe_permute(h, slots, s.top_k);
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);
  Tensor z = b.add(h, b.moe_combine(ys, weights, positions));
  Tensor loss = b.add(b.cross_entropy(b.matmul(z, w_out), targets),
                      b.moe_load_balance_loss(b.softmax(logits), chosen, 0.01));
  b.output(loss, "loss");
  b.output(chosen, "experts");
  return graph;
}

inline const std::vector<std::string>& param_names() {
  static const std::vector<std::string> names = {"w_in", "w_router", "w_up", "w_down", "w_out"};
  return names;
}
inline bool is_expert(const std::string& name) { return name == "w_up" || name == "w_down"; }

// The pipeline that makes rank r's training graph from the model.
inline std::string sharded_pipeline(int rank, int world_size, int bucket_mib = 25) {
  return fmt::format(
      "shard-experts{{rank={} world_size={}}},autodiff{{loss=loss}},all-reduce-grads{{world_size={} bucket_mib={}}}", rank,
      world_size, world_size, bucket_mib);
}

struct Batch {
  HostTensor x, targets;
};

// The same parameters and batches on every rank (seeded).
struct Problem {
  Sizes sizes;
  int world_size = 1;
  Graph model;
  std::map<std::string, HostTensor> params;
  std::vector<Batch> batches;  // one per rank
};

inline HostTensor random_normal(TensorType type, std::mt19937& rng, double scale) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> values(static_cast<std::size_t>(type.numel()));
  for (auto& v : values) v = dist(rng);
  return HostTensor::from_doubles(std::move(type), values);
}

inline Problem make_problem(const Sizes& sizes, int world_size, unsigned seed) {
  Problem p{sizes, world_size, build(sizes), {}, {}};
  std::mt19937 rng(seed);
  for (const std::string& name : param_names())
    p.params.emplace(name, random_normal(p.model.type(p.model.find_arg(name)), rng, name == "w_router" ? 1.0 : 0.5));
  std::uniform_int_distribution<int> token(0, static_cast<int>(sizes.vocab) - 1);
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(sizes.tokens));
    for (auto& id : ids) id = token(rng);
    p.batches.push_back({random_normal(TensorType{DType::f32, {sizes.tokens, sizes.d_model}}, rng, 1.0),
                         HostTensor::from_ints({sizes.tokens}, ids)});
  }
  return p;
}

// Rows first .. first + n - 1 of a [E, ...] tensor.
inline HostTensor rows(const HostTensor& t, std::int64_t first, std::int64_t n) {
  Shape shape = t.shape();
  const std::size_t row_bytes = t.bytes() / static_cast<std::size_t>(shape[0]);
  shape[0] = n;
  HostTensor out(TensorType{t.dtype(), shape});
  std::memcpy(out.raw(), t.raw() + static_cast<std::size_t>(first) * row_bytes, static_cast<std::size_t>(n) * row_bytes);
  return out;
}

// Binds rank r's parameters (its slice of the experts) and batch.
inline void bind_rank(Executable& exe, const Problem& p, int rank) {
  const std::int64_t local = p.sizes.experts / p.world_size;
  for (const auto& [name, value] : p.params) exe.set(name, is_expert(name) ? rows(value, rank * local, local) : value);
  exe.set("x", p.batches[static_cast<std::size_t>(rank)].x);
  exe.set("targets", p.batches[static_cast<std::size_t>(rank)].targets);
}

// The unsharded model's global loss and gradients (means over the batches),
// and how many routed rows go to an expert of another rank than their own.
struct Reference {
  double loss = 0.0;
  std::map<std::string, HostTensor> grads;  // full, [E, ...] for the experts
  std::int64_t rows_to_other_ranks = 0;
};

inline Reference compute_reference(const Problem& p, Backend& backend) {
  Graph graph = p.model;
  run_pipeline(graph, "autodiff{loss=loss}");
  auto exe = backend.compile(graph);
  for (const auto& [name, value] : p.params) exe->set(name, value);
  Reference ref;
  std::map<std::string, std::vector<double>> sums;
  const std::int64_t local = p.sizes.experts / p.world_size;
  for (int r = 0; r < p.world_size; ++r) {
    exe->set("x", p.batches[static_cast<std::size_t>(r)].x);
    exe->set("targets", p.batches[static_cast<std::size_t>(r)].targets);
    exe->run();
    ref.loss += exe->get("loss").get(0) / p.world_size;
    for (const std::string& name : param_names()) {
      HostTensor g = exe->get("grad." + name);
      auto& sum = sums[name];
      sum.resize(static_cast<std::size_t>(g.numel()), 0.0);
      for (std::int64_t i = 0; i < g.numel(); ++i) sum[static_cast<std::size_t>(i)] += g.get(i) / p.world_size;
    }
    HostTensor chosen = exe->get("experts");
    for (std::int64_t i = 0; i < chosen.numel(); ++i)
      ref.rows_to_other_ranks += static_cast<std::int64_t>(chosen.get(i)) / local != r;
  }
  for (const std::string& name : param_names())
    ref.grads.emplace(name, HostTensor::from_doubles(p.model.type(p.model.find_arg(name)), sums[name]));
  return ref;
}

// The largest |got - want| / (floor + |want|) over the elements (shapes must match).
inline double worst_relative_difference(const HostTensor& got, const HostTensor& want, double floor = 1e-6) {
  double worst = 0.0;
  for (std::int64_t i = 0; i < want.numel(); ++i)
    worst = std::max(worst, std::abs(got.get(i) - want.get(i)) / (floor + std::abs(want.get(i))));
  return worst;
}

}  // namespace moejit::shard_model
