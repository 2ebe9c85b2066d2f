// Shared helpers of the MoE tests: running a graph on the CPU backend and
// independent per-token reference implementations of the moe.* ops, written
// as plainly as possible (loops over tokens and their k experts; sorting
// instead of the kernels' selection scan) so that they share no code with
// runtime/cpu/cpu_moe.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "ir/builder.h"
#include "runtime/backend.h"
#include "runtime/gradcheck.h"

namespace moetest {

using namespace moejit;
using Values = std::map<std::string, HostTensor>;
using Ints = std::vector<std::int32_t>;
using Doubles = std::vector<double>;

// Compiles `graph` on the CPU backend, binds `inputs`, runs once and returns every output by name.
inline Values run_cpu(const Graph& graph, const Values& inputs) {
  auto backend = make_cpu_backend();
  auto exe = backend->compile(graph);
  for (const auto& [name, value] : inputs) exe->set(name, value);
  exe->run();
  Values out;
  for (const auto& o : graph.outputs()) out[o.name] = exe->get(o.name);
  return out;
}

inline Ints ints_of(const HostTensor& t) {
  auto v = t.values<std::int32_t>();
  return {v.begin(), v.end()};
}
inline HostTensor ints_tensor(Shape shape, const Ints& values) { return HostTensor::from_ints(std::move(shape), values); }
inline HostTensor doubles_tensor(Shape shape, const Doubles& values, DType dtype = DType::f64) {
  return HostTensor::from_doubles(TensorType{dtype, std::move(shape)}, values);
}

// Largest |a - b| / max(1, |b|) over elements.
inline double max_rel_diff(const Doubles& a, const Doubles& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
  return worst;
}

// ---- per-token references ----

inline double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline Doubles ref_softmax(const Doubles& v) {
  double m = *std::max_element(v.begin(), v.end());
  Doubles e(v.size());
  double s = 0.0;
  for (std::size_t i = 0; i < v.size(); ++i) s += e[i] = std::exp(v[i] - m);
  for (auto& x : e) x /= s;
  return e;
}
// tanh-approximated GELU, as mj.gelu.
inline double ref_gelu(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

struct RefGate {
  Ints experts;     // K, descending selection key, ties to the lower index
  Doubles weights;  // K
};

// One token's gate: `row` its E logits, `bias` empty or E values.
inline RefGate ref_gate(const Doubles& row, const Doubles& bias, int top_k, const std::string& score, const std::string& order,
                        bool normalize) {
  const int num_experts = static_cast<int>(row.size());
  bool score_first = order == "softmax_then_topk";
  Doubles scores(row);
  if (score_first) {
    if (score == "softmax") scores = ref_softmax(row);
    else for (auto& s : scores) s = ref_sigmoid(s);
  }
  Doubles key(scores);
  for (int e = 0; e < num_experts && !bias.empty(); ++e) key[static_cast<std::size_t>(e)] += bias[static_cast<std::size_t>(e)];
  Ints order_idx(static_cast<std::size_t>(num_experts));
  std::iota(order_idx.begin(), order_idx.end(), 0);
  std::stable_sort(order_idx.begin(), order_idx.end(), [&](int a, int b) { return key[static_cast<std::size_t>(a)] > key[static_cast<std::size_t>(b)]; });
  RefGate g;
  g.experts.assign(order_idx.begin(), order_idx.begin() + top_k);
  if (score_first) {
    for (int e : g.experts) g.weights.push_back(scores[static_cast<std::size_t>(e)]);
  } else {
    Doubles chosen;
    for (int e : g.experts) chosen.push_back(row[static_cast<std::size_t>(e)]);
    if (score == "softmax") g.weights = ref_softmax(chosen);
    else for (double l : chosen) g.weights.push_back(ref_sigmoid(l));
  }
  if (normalize) {
    double s = std::accumulate(g.weights.begin(), g.weights.end(), 0.0);
    for (auto& w : g.weights) w /= s;
  }
  return g;
}

struct RefDispatch {
  Ints slots, offsets, positions, counts;
};

// N as the shape rule should give it, from first principles: at most C slots
// per expert (C = ceil(cf * T*K / E), at least 1), then room for each
// segment's padding, rounded up to the block.
inline std::int64_t ref_rows(std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts, double capacity_factor,
                             std::int64_t block) {
  std::int64_t kept = tokens * top_k;
  if (capacity_factor > 0) {
    auto c = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(capacity_factor * static_cast<double>(tokens * top_k) /
                                                                           static_cast<double>(num_experts))));
    kept = std::min(kept, c * num_experts);
  }
  if (block == 1) return kept;
  std::int64_t bound = kept + num_experts * (block - 1);
  return (bound + block - 1) / block * block;
}

// Expert e's segment: its slots in slot order, the first C kept, -1 padding up to a multiple of block.
inline RefDispatch ref_dispatch(const Ints& experts, int top_k, int num_experts, double capacity_factor, int block) {
  const int slots_total = static_cast<int>(experts.size());
  const int tokens = slots_total / top_k;
  std::int64_t capacity = slots_total;
  if (capacity_factor > 0)
    capacity = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(capacity_factor * slots_total / num_experts)));
  RefDispatch r;
  r.positions.assign(static_cast<std::size_t>(slots_total), -1);
  r.offsets.push_back(0);
  for (int e = 0; e < num_experts; ++e) {
    Ints mine;
    for (int t = 0; t < tokens; ++t)
      for (int k = 0; k < top_k; ++k)
        if (experts[static_cast<std::size_t>(t * top_k + k)] == e) mine.push_back(t * top_k + k);
    r.counts.push_back(static_cast<std::int32_t>(mine.size()));
    if (static_cast<std::int64_t>(mine.size()) > capacity) mine.resize(static_cast<std::size_t>(capacity));
    for (int s : mine) {
      r.positions[static_cast<std::size_t>(s)] = static_cast<std::int32_t>(r.slots.size());
      r.slots.push_back(s);
    }
    while (r.slots.size() % static_cast<std::size_t>(block) != 0) r.slots.push_back(-1);
    r.offsets.push_back(static_cast<std::int32_t>(r.slots.size()));
  }
  auto rows = ref_rows(tokens, top_k, num_experts, capacity_factor, block);
  while (static_cast<std::int64_t>(r.slots.size()) < rows) r.slots.push_back(-1);
  return r;
}

// The expert of row i (by scanning the segments), -1 outside all of them.
inline int ref_row_expert(const Ints& offsets, int row) {
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e)
    if (row >= offsets[e] && row < offsets[e + 1]) return static_cast<int>(e);
  return -1;
}

}  // namespace moetest
