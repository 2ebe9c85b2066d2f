// CPU kernels of the MoE ops (moe.*): the executable specification of
// routing, dispatch, the grouped expert matmuls, combine, the auxiliary
// losses and the fused forms. docs/moe.md states every rule in prose; this
// file is the same rules as loops.
//
// Sizes: tokens T, experts E, top-k K, width D (model) or F (expert), routed
// rows N (a static upper bound, ir/moe_shapes.h). Routing, combine and the
// losses run in double whatever the tensor dtype (f32, f64, bf16, f16);
// results are rounded to their dtype once, when stored. The expert matmuls
// (grouped_matmul, its wgrad, and the fused gather_matmul / matmul_combine)
// hold most of the FLOPs: in f32 (and bf16/f16, through f32 copies) they run
// in f32 with f32 accumulation, laid out like the dense matmul
// (cpu_matmul.cpp: contiguous rows, four k steps per pass) and split over
// threads by rows, in a fixed order per element so the result does not
// depend on the thread count; in f64 (gradient checks) they stay in double.
// Index tensors are i32.
//
// Integer inputs come from data (expert ids, slots, positions, offsets), so a
// kernel checks them and throws moejit::Error naming the op and the element
// instead of reading out of bounds.
#include <algorithm>
#include <cmath>
#include <thread>

#include <fmt/format.h>

#include "ir/error.h"
#include "ir/moe_shapes.h"
#include "ir/verifier.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

using Index = std::int32_t;
using Doubles = std::vector<double>;
using Indices = std::vector<Index>;

// ---- plumbing ----

std::string label(const KernelArgs& args) {
  const auto& ops = args.graph.ops();
  if (!ops.empty() && &args.op >= ops.data() && &args.op < ops.data() + ops.size())
    return describe_op(args.graph, static_cast<int>(&args.op - ops.data()));
  return fmt::format("\"{}\"", op_name(args.op.kind));
}

[[noreturn]] void fail(const KernelArgs& args, const std::string& message) {
  throw Error(fmt::format("{}: {}", label(args), message));
}

const HostTensor& in(const KernelArgs& args, int i) { return *args.inputs[static_cast<std::size_t>(i)]; }
bool has_in(const KernelArgs& args, int i) { return static_cast<int>(args.inputs.size()) > i && args.inputs[static_cast<std::size_t>(i)]; }
HostTensor& out(const KernelArgs& args, int i) { return *args.outputs[static_cast<std::size_t>(i)]; }

Indices read_ints(const HostTensor& t) {
  auto v = t.values<Index>();
  return Indices(v.begin(), v.end());
}
// HostTensor::to_doubles / from_doubles, with straight loops for f32 and f64
// (the generic ones check every element's index against the shape).
Doubles doubles_of(const HostTensor& t) {
  if (t.dtype() == DType::f32) {
    auto v = t.values<float>();
    return Doubles(v.begin(), v.end());
  }
  if (t.dtype() == DType::f64) {
    auto v = t.values<double>();
    return Doubles(v.begin(), v.end());
  }
  return t.to_doubles();
}
void store(HostTensor& t, const Doubles& values) {
  if (t.dtype() == DType::f32 && t.bytes() == values.size() * sizeof(float)) {
    auto dst = t.values<float>();
    for (std::size_t i = 0; i < values.size(); ++i) dst[i] = static_cast<float>(values[i]);
    return;
  }
  t = HostTensor::from_doubles(t.type(), values);
}
void store_ints(HostTensor& t, const Indices& values) {
  auto dst = t.values<Index>();
  MOEJIT_ASSERT(dst.size() == values.size(), "index result size");
  std::copy(values.begin(), values.end(), dst.begin());
}
std::int64_t dim(const HostTensor& t, int axis) { return t.type().dim(axis); }

// Runs fn(begin, end) over [0, n) on up to `threads` threads when the work is
// large enough to pay for them (cpu_util.h's parallel_for). fn must not throw
// (inputs are checked first).
template <typename Fn>
void parallel_rows(int threads, std::int64_t n, std::int64_t work_per_item, Fn fn) {
  cpu::parallel_for(n, threads, std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(work_per_item, 1)), fn);
}

// ---- checks of index data ----

void check_expert_ids(const KernelArgs& args, const Indices& experts, std::int64_t top_k, std::int64_t num_experts,
                      std::string_view operand) {
  for (std::size_t s = 0; s < experts.size(); ++s)
    if (experts[s] < 0 || experts[s] >= num_experts)
      fail(args, fmt::format("{}[{}, {}] = {}: expected an expert id in 0..{}", operand, s / static_cast<std::size_t>(top_k),
                             s % static_cast<std::size_t>(top_k), experts[s], num_experts - 1));
}

// offsets [E+1]: 0 <= offsets[0] <= ... <= offsets[E] <= rows.
void check_offsets(const KernelArgs& args, const Indices& offsets, std::int64_t rows) {
  for (std::size_t e = 0; e < offsets.size(); ++e) {
    bool ok = offsets[e] >= 0 && offsets[e] <= rows && (e == 0 || offsets[e] >= offsets[e - 1]);
    if (!ok)
      fail(args, fmt::format("offsets[{}] = {}: expected non-decreasing segment offsets in 0..{} (previous {})", e, offsets[e],
                             rows, e ? std::to_string(offsets[e - 1]) : std::string("none")));
  }
}

// positions [T, K]: each -1 (dropped) or a row in 0..rows-1.
void check_positions(const KernelArgs& args, const Indices& positions, std::int64_t top_k, std::int64_t rows) {
  for (std::size_t s = 0; s < positions.size(); ++s)
    if (positions[s] < -1 || positions[s] >= rows)
      fail(args, fmt::format("positions[{}, {}] = {}: expected -1 (dropped) or a row in 0..{}", s / static_cast<std::size_t>(top_k),
                             s % static_cast<std::size_t>(top_k), positions[s], rows - 1));
}

// slots [N]: each -1 (padding) or a slot t*K+k in 0..T*K-1.
void check_slots(const KernelArgs& args, const Indices& slots, std::int64_t num_slots) {
  for (std::size_t i = 0; i < slots.size(); ++i)
    if (slots[i] < -1 || slots[i] >= num_slots)
      fail(args, fmt::format("slots[{}] = {}: expected -1 (padding) or a slot t*K+k in 0..{}", i, slots[i], num_slots - 1));
}

// ---- moe.gate ----

struct GateAttrs {
  std::int64_t top_k;
  bool softmax_score;   // score = "softmax" (else "sigmoid")
  bool score_first;     // order = "softmax_then_topk" (else "topk_then_softmax")
  bool normalize;
};

GateAttrs gate_attrs(const AttrList& attrs, std::int64_t top_k) {
  return {top_k, attrs.get_string("score") == "softmax", attrs.get_string("order") == "softmax_then_topk",
          attrs.get_bool("normalize")};
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Softmax of row[0..n) in place, with the max subtracted first.
void softmax_inplace(double* row, std::int64_t n) {
  double max = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i) max = std::max(max, row[i]);
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) sum += (row[i] = std::exp(row[i] - max));
  for (std::int64_t i = 0; i < n; ++i) row[i] /= sum;
}

// a ranks before b (a's index is higher than b's, so equal keys keep b).
// NaN ranks below every number.
bool ranks_before(double a, double b) { return a > b || (std::isnan(b) && !std::isnan(a)); }

// The k experts of one token: descending key, ties to the lower index.
void select_top_k(const Doubles& key, std::int64_t top_k, Index* chosen) {
  std::int64_t num_experts = static_cast<std::int64_t>(key.size());
  std::vector<bool> taken(key.size(), false);
  for (std::int64_t k = 0; k < top_k; ++k) {
    std::int64_t best = -1;
    for (std::int64_t e = 0; e < num_experts; ++e)
      if (!taken[static_cast<std::size_t>(e)] && (best < 0 || ranks_before(key[static_cast<std::size_t>(e)], key[static_cast<std::size_t>(best)])))
        best = e;
    taken[static_cast<std::size_t>(best)] = true;
    chosen[k] = static_cast<Index>(best);
  }
}

// The k weights of one token before normalization, given its chosen experts.
//   score first:  s = softmax(row) or sigmoid(row) over all E; r_k = s[e_k]
//   top-k first:  r = softmax(row[e_1..e_K]) or sigmoid(row[e_k])
// `probs` receives softmax(row) over all E when score first with softmax.
void raw_gate_weights(const GateAttrs& g, const double* row, std::int64_t num_experts, const Index* chosen, double* raw,
                      Doubles& probs) {
  if (!g.softmax_score) {
    for (std::int64_t k = 0; k < g.top_k; ++k) raw[k] = sigmoid(row[chosen[k]]);
  } else if (g.score_first) {
    probs.assign(row, row + num_experts);
    softmax_inplace(probs.data(), num_experts);
    for (std::int64_t k = 0; k < g.top_k; ++k) raw[k] = probs[static_cast<std::size_t>(chosen[k])];
  } else {
    for (std::int64_t k = 0; k < g.top_k; ++k) raw[k] = row[chosen[k]];
    softmax_inplace(raw, g.top_k);
  }
}

// Gate of every token: logits [T, E], bias [E] or empty -> weights, experts [T, K].
void gate_forward(const GateAttrs& g, const Doubles& logits, std::int64_t tokens, std::int64_t num_experts, const Doubles& bias,
                  Doubles& weights, Indices& experts) {
  weights.assign(static_cast<std::size_t>(tokens * g.top_k), 0.0);
  experts.assign(static_cast<std::size_t>(tokens * g.top_k), 0);
  Doubles key(static_cast<std::size_t>(num_experts)), probs;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const double* row = logits.data() + t * num_experts;
    // The selection key: the scores (score first) or the logits (top-k first), plus the bias.
    for (std::int64_t e = 0; e < num_experts; ++e) key[static_cast<std::size_t>(e)] = row[e];
    if (g.score_first) {
      if (g.softmax_score) softmax_inplace(key.data(), num_experts);
      else for (auto& v : key) v = sigmoid(v);
    }
    if (!bias.empty())
      for (std::int64_t e = 0; e < num_experts; ++e) key[static_cast<std::size_t>(e)] += bias[static_cast<std::size_t>(e)];
    Index* chosen = experts.data() + t * g.top_k;
    double* w = weights.data() + t * g.top_k;
    select_top_k(key, g.top_k, chosen);
    raw_gate_weights(g, row, num_experts, chosen, w, probs);
    if (g.normalize) {
      double sum = 0.0;
      for (std::int64_t k = 0; k < g.top_k; ++k) sum += w[k];
      for (std::int64_t k = 0; k < g.top_k; ++k) w[k] /= sum;
    }
  }
}

// ---- moe.dispatch ----

struct DispatchResult {
  Indices slots, offsets, positions, counts;
};

// experts [T, K] -> slots [N], offsets [E+1], positions [T, K], counts [E].
// Segment e holds the kept slots of expert e in slot order (t*K+k ascending),
// then -1 rows up to a multiple of `block`; a slot past the first `capacity`
// of its expert is dropped. Rows offsets[E]..N-1 are -1.
DispatchResult dispatch_forward(const Indices& experts, std::int64_t tokens, std::int64_t top_k, std::int64_t num_experts,
                                double capacity_factor, std::int64_t block) {
  std::int64_t rows = dispatch_rows(tokens, top_k, num_experts, capacity_factor, block);
  std::int64_t capacity = dispatch_capacity(tokens, top_k, num_experts, capacity_factor);
  DispatchResult r;
  r.counts.assign(static_cast<std::size_t>(num_experts), 0);
  for (Index e : experts) ++r.counts[static_cast<std::size_t>(e)];
  r.offsets.assign(static_cast<std::size_t>(num_experts + 1), 0);
  for (std::int64_t e = 0; e < num_experts; ++e) {
    std::int64_t kept = std::min<std::int64_t>(r.counts[static_cast<std::size_t>(e)], capacity);
    std::int64_t padded = (kept + block - 1) / block * block;
    r.offsets[static_cast<std::size_t>(e + 1)] = static_cast<Index>(r.offsets[static_cast<std::size_t>(e)] + padded);
  }
  MOEJIT_ASSERT(r.offsets.back() <= rows, "dispatch rows bound too small");
  r.slots.assign(static_cast<std::size_t>(rows), -1);
  r.positions.assign(experts.size(), -1);
  Indices filled(static_cast<std::size_t>(num_experts), 0);
  for (std::size_t s = 0; s < experts.size(); ++s) {
    auto e = static_cast<std::size_t>(experts[s]);
    if (filled[e] >= capacity) continue;  // dropped: over capacity
    Index row = r.offsets[e] + filled[e]++;
    r.slots[static_cast<std::size_t>(row)] = static_cast<Index>(s);
    r.positions[s] = row;
  }
  return r;
}

// ---- rows: permute, grouped matmul, combine ----

// xs[i] = x[slots[i] / K], zero where slots[i] = -1. x [T, D] -> xs [N, D].
Doubles permute_rows(const Doubles& x, std::int64_t width, const Indices& slots, std::int64_t top_k) {
  Doubles xs(slots.size() * static_cast<std::size_t>(width), 0.0);
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] < 0) continue;
    const double* src = x.data() + (slots[i] / top_k) * width;
    std::copy(src, src + width, xs.data() + static_cast<std::int64_t>(i) * width);
  }
  return xs;
}

// The expert of each row, -1 outside every segment.
Indices row_experts(const Indices& offsets, std::int64_t rows) {
  Indices expert_of(static_cast<std::size_t>(rows), -1);
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e)
    for (Index i = offsets[e]; i < offsets[e + 1]; ++i) expert_of[static_cast<std::size_t>(i)] = static_cast<Index>(e);
  return expert_of;
}

// xs [N, D], w [E, D, F] (or [E, F, D] when transpose_w) -> [N, F];
// row i of segment e is xs[i] · w[e], rows outside every segment are zero.
Doubles grouped_matmul(const Doubles& xs, std::int64_t rows, std::int64_t d, const Doubles& w, std::int64_t f, bool transpose_w,
                       const Indices& offsets, int threads) {
  Doubles ys(static_cast<std::size_t>(rows * f), 0.0);
  Indices expert_of = row_experts(offsets, rows);
  parallel_rows(threads, rows, d * f, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      Index e = expert_of[static_cast<std::size_t>(i)];
      if (e < 0) continue;
      const double* x_row = xs.data() + i * d;
      const double* we = w.data() + e * d * f;
      double* y_row = ys.data() + i * f;
      if (!transpose_w) {  // w[e] is [D, F]
        for (std::int64_t k = 0; k < d; ++k) {
          double xv = x_row[k];
          if (xv == 0.0) continue;
          const double* w_row = we + k * f;
          for (std::int64_t j = 0; j < f; ++j) y_row[j] += xv * w_row[j];
        }
      } else {  // w[e] is [F, D]
        for (std::int64_t j = 0; j < f; ++j) {
          const double* w_row = we + j * d;
          double acc = 0.0;
          for (std::int64_t k = 0; k < d; ++k) acc += x_row[k] * w_row[k];
          y_row[j] = acc;
        }
      }
    }
  });
  return ys;
}

// xs [N, D], dys [N, F] -> dw [E, D, F]; dw[e] = sum over rows i of segment e of xs[i]^T dys[i].
Doubles grouped_matmul_wgrad(const Doubles& xs, std::int64_t d, const Doubles& dys, std::int64_t f, const Indices& offsets,
                             int threads) {
  std::int64_t num_experts = static_cast<std::int64_t>(offsets.size()) - 1;
  Doubles dw(static_cast<std::size_t>(num_experts * d * f), 0.0);
  std::int64_t rows_total = offsets.back() - offsets.front();
  parallel_rows(threads, num_experts, rows_total * d * f / std::max<std::int64_t>(num_experts, 1),
               [&](std::int64_t begin, std::int64_t end) {
                 for (std::int64_t e = begin; e < end; ++e) {
                   double* dwe = dw.data() + e * d * f;
                   for (Index i = offsets[static_cast<std::size_t>(e)]; i < offsets[static_cast<std::size_t>(e + 1)]; ++i) {
                     const double* x_row = xs.data() + static_cast<std::int64_t>(i) * d;
                     const double* dy_row = dys.data() + static_cast<std::int64_t>(i) * f;
                     for (std::int64_t k = 0; k < d; ++k) {
                       double xv = x_row[k];
                       if (xv == 0.0) continue;
                       for (std::int64_t j = 0; j < f; ++j) dwe[k * f + j] += xv * dy_row[j];
                     }
                   }
                 }
               });
  return dw;
}

// ---- the expert matmuls in f32 ----

// c[0..n) += a0 * b0[0..n) + ... + a3 * b3[0..n): four k steps per pass over
// the c row, a fixed-width inner loop the compiler vectorizes (as in
// cpu_matmul.cpp).
void add_scaled_rows4(float* __restrict c, const float* __restrict b0, const float* __restrict b1,
                      const float* __restrict b2, const float* __restrict b3, float a0, float a1, float a2, float a3,
                      std::int64_t n) {
  constexpr int kWidth = 16;
  std::int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth)
    for (int u = 0; u < kWidth; ++u) c[j + u] += a0 * b0[j + u] + a1 * b1[j + u] + a2 * b2[j + u] + a3 * b3[j + u];
  for (; j < n; ++j) c[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
}

void add_scaled_row(float* __restrict c, const float* __restrict b, float a, std::int64_t n) {
  for (std::int64_t j = 0; j < n; ++j) c[j] += a * b[j];
}

// y[0..f) = x[0..d) · w where w is [d, f] row-major.
void vector_matrix(const float* x, const float* w, std::int64_t d, std::int64_t f, float* y) {
  std::fill(y, y + f, 0.0f);
  std::int64_t k = 0;
  for (; k + 4 <= d; k += 4)
    add_scaled_rows4(y, w + k * f, w + (k + 1) * f, w + (k + 2) * f, w + (k + 3) * f, x[k], x[k + 1], x[k + 2],
                     x[k + 3], f);
  for (; k < d; ++k) add_scaled_row(y, w + k * f, x[k], f);
}

// The same for four rows of one expert: each k block of w (four rows, in
// L1) serves all four before the next is loaded. Every row is computed in
// exactly vector_matrix's order, so grouping never changes a result.
void vector_matrix4(const float* const x[4], const float* w, std::int64_t d, std::int64_t f, float* const y[4]) {
  for (int r = 0; r < 4; ++r) std::fill(y[r], y[r] + f, 0.0f);
  std::int64_t k = 0;
  for (; k + 4 <= d; k += 4)
    for (int r = 0; r < 4; ++r)
      add_scaled_rows4(y[r], w + k * f, w + (k + 1) * f, w + (k + 2) * f, w + (k + 3) * f, x[r][k], x[r][k + 1],
                       x[r][k + 2], x[r][k + 3], f);
  for (; k < d; ++k)
    for (int r = 0; r < 4; ++r) add_scaled_row(y[r], w + k * f, x[r][k], f);
}

// The grouped matmul of row_source(i) (a pointer to row i of xs [N, D], or
// nullptr for a zero row) with w [E, D, F] (transpose_w: [E, F, D], copied
// to [E, D, F] first) -> ys [N, F], zero outside every segment.
template <typename RowSource>
std::vector<float> grouped_matmul_f32(RowSource row_source, std::int64_t rows, std::int64_t d, std::span<const float> w,
                                      std::int64_t f, bool transpose_w, const Indices& offsets, int threads) {
  const std::int64_t num_experts = static_cast<std::int64_t>(offsets.size()) - 1;
  std::vector<float> w_copy;
  const float* w_rows = w.data();  // [E, D, F]
  if (transpose_w) {
    w_copy.resize(w.size());
    for (std::int64_t e = 0; e < num_experts; ++e)
      for (std::int64_t j = 0; j < f; ++j)
        for (std::int64_t k = 0; k < d; ++k) w_copy[idx((e * d + k) * f + j)] = w[idx((e * f + j) * d + k)];
    w_rows = w_copy.data();
  }
  std::vector<float> ys(idx(rows * f), 0.0f);
  const Indices expert_of = row_experts(offsets, rows);
  cpu::parallel_for(rows, threads, std::max<std::int64_t>(1, (1 << 15) / std::max<std::int64_t>(d * f, 1)),
                    [&](std::int64_t begin, std::int64_t end) {
                      for (std::int64_t i = begin; i < end;) {
                        const Index e = expert_of[idx(i)];
                        const float* x_row = e < 0 ? nullptr : row_source(i);
                        if (x_row == nullptr) {
                          ++i;
                          continue;
                        }
                        const float* w_e = w_rows + e * d * f;
                        if (i + 4 <= end && expert_of[idx(i + 3)] == e) {  // segments are contiguous
                          const float* x4[4] = {x_row, row_source(i + 1), row_source(i + 2), row_source(i + 3)};
                          if (x4[1] && x4[2] && x4[3]) {
                            float* const y4[4] = {ys.data() + i * f, ys.data() + (i + 1) * f, ys.data() + (i + 2) * f,
                                                  ys.data() + (i + 3) * f};
                            vector_matrix4(x4, w_e, d, f, y4);
                            i += 4;
                            continue;
                          }
                        }
                        vector_matrix(x_row, w_e, d, f, ys.data() + i * f);
                        ++i;
                      }
                    });
  return ys;
}

// dw [E, D, F]: dw[e] = sum over rows i of segment e (ascending) of xs[i]^T dys[i],
// in f32, four rows i per pass over a dw row (a quarter of its loads and
// stores). Tasks are (expert, block of 16 rows of dw[e]), so every element
// is summed in the same order whatever the thread count.
std::vector<float> grouped_matmul_wgrad_f32(std::span<const float> xs, std::int64_t d, std::span<const float> dys,
                                            std::int64_t f, const Indices& offsets, int threads) {
  const std::int64_t num_experts = static_cast<std::int64_t>(offsets.size()) - 1;
  constexpr std::int64_t kBlock = 16;
  const std::int64_t blocks = (d + kBlock - 1) / kBlock;
  std::vector<float> dw(idx(num_experts * d * f), 0.0f);
  const std::int64_t rows_total = offsets.back() - offsets.front();
  const std::int64_t work_per_task = std::max<std::int64_t>(1, rows_total / std::max<std::int64_t>(num_experts, 1)) * kBlock * f;
  cpu::parallel_for(num_experts * blocks, threads, std::max<std::int64_t>(1, (1 << 15) / work_per_task),
                    [&](std::int64_t begin, std::int64_t end) {
                      for (std::int64_t task = begin; task < end; ++task) {
                        const std::int64_t e = task / blocks, k0 = (task % blocks) * kBlock;
                        const std::int64_t k1 = std::min(d, k0 + kBlock);
                        float* dwe = dw.data() + e * d * f;
                        const std::int64_t first = offsets[idx(e)], last = offsets[idx(e + 1)];
                        auto x_at = [&](std::int64_t i, std::int64_t k) { return xs[idx(i * d + k)]; };
                        auto dy_row = [&](std::int64_t i) { return dys.data() + i * f; };
                        std::int64_t i = first;
                        for (; i + 4 <= last; i += 4)
                          for (std::int64_t k = k0; k < k1; ++k)
                            add_scaled_rows4(dwe + k * f, dy_row(i), dy_row(i + 1), dy_row(i + 2), dy_row(i + 3),
                                             x_at(i, k), x_at(i + 1, k), x_at(i + 2, k), x_at(i + 3, k), f);
                        for (; i < last; ++i)
                          for (std::int64_t k = k0; k < k1; ++k) add_scaled_row(dwe + k * f, dy_row(i), x_at(i, k), f);
                      }
                    });
  return dw;
}

void store_floats(HostTensor& t, std::vector<float> values) {
  auto dst = t.values<float>();
  MOEJIT_ASSERT(dst.size() == values.size(), "f32 result size");
  std::copy(values.begin(), values.end(), dst.begin());
}

// out[t] = sum_k weights[t,k] * ys[positions[t,k]], skipping -1. ys [N, D] -> [T, D].
Doubles combine_rows(const Doubles& ys, std::int64_t width, const Doubles& weights, const Indices& positions, std::int64_t tokens,
                     std::int64_t top_k) {
  Doubles y(static_cast<std::size_t>(tokens * width), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t k = 0; k < top_k; ++k) {
      Index row = positions[static_cast<std::size_t>(t * top_k + k)];
      if (row < 0) continue;
      double wk = weights[static_cast<std::size_t>(t * top_k + k)];
      const double* src = ys.data() + static_cast<std::int64_t>(row) * width;
      double* dst = y.data() + t * width;
      for (std::int64_t j = 0; j < width; ++j) dst[j] += wk * src[j];
    }
  return y;
}

// Route's router matmul: x [T, D] · w [D, E] -> [T, E].
Doubles dense_matmul(const Doubles& x, std::int64_t tokens, std::int64_t d, const Doubles& w, std::int64_t e) {
  Doubles y(static_cast<std::size_t>(tokens * e), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t k = 0; k < d; ++k) {
      double xv = x[static_cast<std::size_t>(t * d + k)];
      for (std::int64_t j = 0; j < e; ++j) y[static_cast<std::size_t>(t * e + j)] += xv * w[static_cast<std::size_t>(k * e + j)];
    }
  return y;
}

double scalar_of(const HostTensor& t) { return t.get(0); }

}  // namespace

// ---- routing ----

// moe.gate: logits [T, E], bias? [E] -> weights [T, K], experts [T, K] i32.
void kernel_Gate(const KernelArgs& args) {
  const HostTensor& logits = in(args, 0);
  std::int64_t tokens = dim(logits, 0), num_experts = dim(logits, 1);
  GateAttrs g = gate_attrs(args.op.attrs, args.op.attrs.get_int("top_k"));
  Doubles bias = has_in(args, 1) ? doubles_of(in(args, 1)) : Doubles{};
  Doubles weights;
  Indices experts;
  gate_forward(g, doubles_of(logits), tokens, num_experts, bias, weights, experts);
  store(out(args, 0), weights);
  store_ints(out(args, 1), experts);
}

// moe.gate_grad: logits [T, E], experts [T, K], dweights [T, K] -> dlogits [T, E].
// The chosen experts are held fixed (selection is not differentiable).
void kernel_GateGrad(const KernelArgs& args) {
  const HostTensor& logits_t = in(args, 0);
  std::int64_t tokens = dim(logits_t, 0), num_experts = dim(logits_t, 1), top_k = dim(in(args, 1), 1);
  GateAttrs g = gate_attrs(args.op.attrs, top_k);
  Doubles logits = doubles_of(logits_t), dweights = doubles_of(in(args, 2));
  Indices experts = read_ints(in(args, 1));
  check_expert_ids(args, experts, top_k, num_experts, "experts");
  Doubles dlogits(logits.size(), 0.0), probs, dprobs(static_cast<std::size_t>(num_experts));
  Doubles raw(static_cast<std::size_t>(top_k)), draw(static_cast<std::size_t>(top_k));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const double* row = logits.data() + t * num_experts;
    const Index* chosen = experts.data() + t * top_k;
    const double* dw = dweights.data() + t * top_k;
    double* dl = dlogits.data() + t * num_experts;
    raw_gate_weights(g, row, num_experts, chosen, raw.data(), probs);
    // Through the renormalization w_k = r_k / S, S = sum_j r_j.
    for (std::int64_t k = 0; k < top_k; ++k) draw[static_cast<std::size_t>(k)] = dw[k];
    if (g.normalize) {
      double sum = 0.0, dot = 0.0;
      for (double r : raw) sum += r;
      for (std::int64_t k = 0; k < top_k; ++k) dot += dw[k] * raw[static_cast<std::size_t>(k)] / sum;
      for (std::int64_t k = 0; k < top_k; ++k) draw[static_cast<std::size_t>(k)] = (dw[k] - dot) / sum;
    }
    // Through the score function.
    if (!g.softmax_score) {
      for (std::int64_t k = 0; k < top_k; ++k) {
        double s = raw[static_cast<std::size_t>(k)];
        dl[chosen[k]] += draw[static_cast<std::size_t>(k)] * s * (1.0 - s);
      }
    } else if (g.score_first) {  // softmax over all E, then picked
      std::fill(dprobs.begin(), dprobs.end(), 0.0);
      for (std::int64_t k = 0; k < top_k; ++k) dprobs[static_cast<std::size_t>(chosen[k])] += draw[static_cast<std::size_t>(k)];
      double dot = 0.0;
      for (std::int64_t e = 0; e < num_experts; ++e) dot += probs[static_cast<std::size_t>(e)] * dprobs[static_cast<std::size_t>(e)];
      for (std::int64_t e = 0; e < num_experts; ++e)
        dl[e] += probs[static_cast<std::size_t>(e)] * (dprobs[static_cast<std::size_t>(e)] - dot);
    } else {  // softmax over the k chosen logits
      double dot = 0.0;
      for (std::int64_t k = 0; k < top_k; ++k) dot += raw[static_cast<std::size_t>(k)] * draw[static_cast<std::size_t>(k)];
      for (std::int64_t k = 0; k < top_k; ++k)
        dl[chosen[k]] += raw[static_cast<std::size_t>(k)] * (draw[static_cast<std::size_t>(k)] - dot);
    }
  }
  store(out(args, 0), dlogits);
}

// moe.dispatch: experts [T, K] -> slots [N], offsets [E+1], positions [T, K], counts [E].
void kernel_Dispatch(const KernelArgs& args) {
  const auto& attrs = args.op.attrs;
  std::int64_t tokens = dim(in(args, 0), 0), top_k = dim(in(args, 0), 1), num_experts = attrs.get_int("num_experts");
  Indices experts = read_ints(in(args, 0));
  check_expert_ids(args, experts, top_k, num_experts, "experts");
  DispatchResult r = dispatch_forward(experts, tokens, top_k, num_experts, attrs.get_float("capacity_factor"), attrs.get_int("block"));
  store_ints(out(args, 0), r.slots);
  store_ints(out(args, 1), r.offsets);
  store_ints(out(args, 2), r.positions);
  store_ints(out(args, 3), r.counts);
}

// moe.permute: x [T, D], slots [N] -> xs [N, D].
void kernel_Permute(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), width = dim(in(args, 0), 1), top_k = args.op.attrs.get_int("top_k");
  Indices slots = read_ints(in(args, 1));
  check_slots(args, slots, tokens * top_k);
  store(out(args, 0), permute_rows(doubles_of(in(args, 0)), width, slots, top_k));
}

// moe.permute_grad: dxs [N, D], positions [T, K] -> dx [T, D];
// dx[t] = sum_k dxs[positions[t,k]] over the kept slots (padding rows give nothing).
void kernel_PermuteGrad(const KernelArgs& args) {
  std::int64_t rows = dim(in(args, 0), 0), width = dim(in(args, 0), 1);
  std::int64_t tokens = dim(in(args, 1), 0), top_k = dim(in(args, 1), 1);
  Indices positions = read_ints(in(args, 1));
  check_positions(args, positions, top_k, rows);
  Doubles ones(positions.size(), 1.0);
  store(out(args, 0), combine_rows(doubles_of(in(args, 0)), width, ones, positions, tokens, top_k));
}

// ---- expert matmuls ----

// moe.grouped_matmul: xs [N, D], w [E, D, F] (or [E, F, D]), offsets [E+1] -> [N, F].
void kernel_GroupedMatmul(const KernelArgs& args) {
  const HostTensor& xs = in(args, 0);
  const HostTensor& w = in(args, 1);
  bool transpose_w = args.op.attrs.get_bool("transpose_w");
  std::int64_t rows = dim(xs, 0), d = dim(xs, 1), f = transpose_w ? dim(w, 1) : dim(w, 2);
  Indices offsets = read_ints(in(args, 2));
  check_offsets(args, offsets, rows);
  if (xs.dtype() == DType::f64 || w.dtype() == DType::f64) {
    store(out(args, 0), grouped_matmul(doubles_of(xs), rows, d, doubles_of(w), f, transpose_w, offsets, args.threads));
    return;
  }
  for_float(args, [&](const KernelArgs& a, auto) {
    std::span<const float> x = cpu::in<float>(a, 0);
    auto row = [&](std::int64_t i) { return x.data() + i * d; };
    store_floats(output(a, 0), grouped_matmul_f32(row, rows, d, cpu::in<float>(a, 1), f, transpose_w, offsets, a.threads));
  });
}

// moe.grouped_matmul_wgrad: xs [N, D], dys [N, F], offsets [E+1] -> [E, D, F].
void kernel_GroupedMatmulWgrad(const KernelArgs& args) {
  std::int64_t rows = dim(in(args, 0), 0), d = dim(in(args, 0), 1), f = dim(in(args, 1), 1);
  Indices offsets = read_ints(in(args, 2));
  check_offsets(args, offsets, rows);
  if (in(args, 0).dtype() == DType::f64 || in(args, 1).dtype() == DType::f64) {
    store(out(args, 0), grouped_matmul_wgrad(doubles_of(in(args, 0)), d, doubles_of(in(args, 1)), f, offsets, args.threads));
    return;
  }
  for_float(args, [&](const KernelArgs& a, auto) {
    store_floats(output(a, 0), grouped_matmul_wgrad_f32(cpu::in<float>(a, 0), d, cpu::in<float>(a, 1), f, offsets, a.threads));
  });
}

// moe.combine: ys [N, D], weights [T, K], positions [T, K] -> [T, D].
void kernel_Combine(const KernelArgs& args) {
  std::int64_t rows = dim(in(args, 0), 0), width = dim(in(args, 0), 1);
  std::int64_t tokens = dim(in(args, 1), 0), top_k = dim(in(args, 1), 1);
  Indices positions = read_ints(in(args, 2));
  check_positions(args, positions, top_k, rows);
  store(out(args, 0), combine_rows(doubles_of(in(args, 0)), width, doubles_of(in(args, 1)), positions, tokens, top_k));
}

// moe.combine_grad: ys [N, D], weights [T, K], positions [T, K], dout [T, D]
//   -> dys [N, D]:   dys[positions[t,k]] += weights[t,k] * dout[t] (rows nobody references stay 0)
//      dweights [T, K]: dout[t] · ys[positions[t,k]], 0 for a dropped slot.
void kernel_CombineGrad(const KernelArgs& args) {
  std::int64_t rows = dim(in(args, 0), 0), width = dim(in(args, 0), 1);
  std::int64_t tokens = dim(in(args, 1), 0), top_k = dim(in(args, 1), 1);
  Indices positions = read_ints(in(args, 2));
  check_positions(args, positions, top_k, rows);
  Doubles ys = doubles_of(in(args, 0)), weights = doubles_of(in(args, 1)), dout = doubles_of(in(args, 3));
  Doubles dys(ys.size(), 0.0), dweights(weights.size(), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t k = 0; k < top_k; ++k) {
      auto s = static_cast<std::size_t>(t * top_k + k);
      if (positions[s] < 0) continue;
      std::int64_t row = positions[s];
      double dot = 0.0;
      for (std::int64_t j = 0; j < width; ++j) {
        double g = dout[static_cast<std::size_t>(t * width + j)];
        dys[static_cast<std::size_t>(row * width + j)] += weights[s] * g;
        dot += g * ys[static_cast<std::size_t>(row * width + j)];
      }
      dweights[s] = dot;
    }
  store(out(args, 0), dys);
  store(out(args, 1), dweights);
}

// ---- auxiliary losses ----

namespace {
// f_e = share of the T*K slots routed to expert e (before any dropping).
Doubles routed_share(const KernelArgs& args, const HostTensor& experts_t, std::int64_t num_experts) {
  Indices experts = read_ints(experts_t);
  std::int64_t top_k = dim(experts_t, 1);
  check_expert_ids(args, experts, top_k, num_experts, "experts");
  Doubles share(static_cast<std::size_t>(num_experts), 0.0);
  for (Index e : experts) share[static_cast<std::size_t>(e)] += 1.0;
  for (auto& v : share) v /= static_cast<double>(experts.size());
  return share;
}

// Column means over tokens: probs [T, E] -> [E].
Doubles column_means(const Doubles& probs, std::int64_t tokens, std::int64_t num_experts) {
  Doubles mean(static_cast<std::size_t>(num_experts), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t e = 0; e < num_experts; ++e) mean[static_cast<std::size_t>(e)] += probs[static_cast<std::size_t>(t * num_experts + e)];
  for (auto& v : mean) v /= static_cast<double>(tokens);
  return mean;
}

double logsumexp(const double* row, std::int64_t n) {
  double max = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i) max = std::max(max, row[i]);
  if (std::isinf(max)) return max;
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) sum += std::exp(row[i] - max);
  return max + std::log(sum);
}

// p log p with p clamped below at kEntropyFloor inside the log (so p = 0 adds 0
// and its gradient stays finite).
constexpr double kEntropyFloor = 1e-20;
double safe_log(double p) { return std::log(std::max(p, kEntropyFloor)); }
}  // namespace

// moe.load_balance_loss: probs [T, E], experts [T, K] -> coeff * E * sum_e f_e * P_e.
void kernel_LoadBalanceLoss(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles share = routed_share(args, in(args, 1), num_experts);
  Doubles mean_prob = column_means(doubles_of(in(args, 0)), tokens, num_experts);
  double loss = 0.0;
  for (std::int64_t e = 0; e < num_experts; ++e) loss += share[static_cast<std::size_t>(e)] * mean_prob[static_cast<std::size_t>(e)];
  store(out(args, 0), {args.op.attrs.get_float("coeff") * static_cast<double>(num_experts) * loss});
}

// moe.load_balance_loss_grad: dprobs[t, e] = dloss * coeff * E * f_e / T (f is constant).
void kernel_LoadBalanceLossGrad(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles share = routed_share(args, in(args, 1), num_experts);
  double scale = scalar_of(in(args, 2)) * args.op.attrs.get_float("coeff") * static_cast<double>(num_experts) / static_cast<double>(tokens);
  Doubles dprobs(static_cast<std::size_t>(tokens * num_experts));
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t e = 0; e < num_experts; ++e) dprobs[static_cast<std::size_t>(t * num_experts + e)] = scale * share[static_cast<std::size_t>(e)];
  store(out(args, 0), dprobs);
}

// moe.z_loss: logits [T, E] -> coeff * mean_t logsumexp(logits[t])^2.
void kernel_ZLoss(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles logits = doubles_of(in(args, 0));
  double sum = 0.0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    double lse = logsumexp(logits.data() + t * num_experts, num_experts);
    sum += lse * lse;
  }
  store(out(args, 0), {args.op.attrs.get_float("coeff") * sum / static_cast<double>(tokens)});
}

// moe.z_loss_grad: dlogits[t, e] = dloss * coeff * 2 * lse_t * softmax(logits[t])_e / T.
void kernel_ZLossGrad(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles logits = doubles_of(in(args, 0));
  double scale = scalar_of(in(args, 1)) * args.op.attrs.get_float("coeff") * 2.0 / static_cast<double>(tokens);
  Doubles dlogits(logits.size());
  for (std::int64_t t = 0; t < tokens; ++t) {
    const double* row = logits.data() + t * num_experts;
    double lse = logsumexp(row, num_experts);
    for (std::int64_t e = 0; e < num_experts; ++e)
      dlogits[static_cast<std::size_t>(t * num_experts + e)] = scale * lse * std::exp(row[e] - lse);
  }
  store(out(args, 0), dlogits);
}

// moe.entropy_reg: probs [T, E] -> coeff * sum_e p_e log p_e, p = mean over tokens of probs.
void kernel_EntropyReg(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles mean_prob = column_means(doubles_of(in(args, 0)), tokens, num_experts);
  double sum = 0.0;
  for (double p : mean_prob) sum += p * safe_log(p);
  store(out(args, 0), {args.op.attrs.get_float("coeff") * sum});
}

// moe.entropy_reg_grad: dprobs[t, e] = dloss * coeff * (log p_e + 1) / T.
void kernel_EntropyRegGrad(const KernelArgs& args) {
  std::int64_t tokens = dim(in(args, 0), 0), num_experts = dim(in(args, 0), 1);
  Doubles mean_prob = column_means(doubles_of(in(args, 0)), tokens, num_experts);
  double scale = scalar_of(in(args, 1)) * args.op.attrs.get_float("coeff") / static_cast<double>(tokens);
  Doubles dprobs(static_cast<std::size_t>(tokens * num_experts));
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t e = 0; e < num_experts; ++e)
      dprobs[static_cast<std::size_t>(t * num_experts + e)] = scale * (safe_log(mean_prob[static_cast<std::size_t>(e)]) + 1.0);
  store(out(args, 0), dprobs);
}

// ---- fused forms ----

// moe.route: x [T, D], w_router [D, E], bias? [E] -> logits [T, E], weights [T, K],
//   experts [T, K], slots [N], offsets [E+1], positions [T, K], counts [E], xs [N, D]
//   = matmul, then gate, dispatch and permute, each exactly as the unfused op.
void kernel_Route(const KernelArgs& args) {
  const auto& attrs = args.op.attrs;
  const HostTensor& x_t = in(args, 0);
  std::int64_t tokens = dim(x_t, 0), d = dim(x_t, 1), num_experts = dim(in(args, 1), 1), top_k = attrs.get_int("top_k");
  Doubles x = doubles_of(x_t);
  Doubles logits = dense_matmul(x, tokens, d, doubles_of(in(args, 1)), num_experts);
  // Round the logits to their dtype first, as the unfused graph stores them.
  store(out(args, 0), logits);
  logits = doubles_of(out(args, 0));
  Doubles bias = has_in(args, 2) ? doubles_of(in(args, 2)) : Doubles{};
  Doubles weights;
  Indices experts;
  gate_forward(gate_attrs(attrs, top_k), logits, tokens, num_experts, bias, weights, experts);
  DispatchResult r = dispatch_forward(experts, tokens, top_k, num_experts, attrs.get_float("capacity_factor"), attrs.get_int("block"));
  store(out(args, 1), weights);
  store_ints(out(args, 2), experts);
  store_ints(out(args, 3), r.slots);
  store_ints(out(args, 4), r.offsets);
  store_ints(out(args, 5), r.positions);
  store_ints(out(args, 6), r.counts);
  store(out(args, 7), permute_rows(x, d, r.slots, top_k));
}

// moe.gather_matmul: x [T, D], w [E, D, F], slots [N], offsets [E+1], positions [T, K]
//   -> [N, F] = grouped_matmul(permute(x, slots), w, offsets). positions is
//   for the backward only.
void kernel_GatherMatmul(const KernelArgs& args) {
  const HostTensor& x = in(args, 0);
  const HostTensor& w = in(args, 1);
  std::int64_t tokens = dim(x, 0), d = dim(x, 1), f = dim(w, 2), top_k = args.op.attrs.get_int("top_k");
  Indices slots = read_ints(in(args, 2)), offsets = read_ints(in(args, 3));
  std::int64_t rows = static_cast<std::int64_t>(slots.size());
  check_slots(args, slots, tokens * top_k);
  check_offsets(args, offsets, rows);
  if (x.dtype() == DType::f64 || w.dtype() == DType::f64) {
    Doubles xs = permute_rows(doubles_of(x), d, slots, top_k);
    store(out(args, 0), grouped_matmul(xs, rows, d, doubles_of(w), f, false, offsets, args.threads));
    return;
  }
  for_float(args, [&](const KernelArgs& a, auto) {
    std::span<const float> xv = cpu::in<float>(a, 0);
    // Row i of permute(x, slots) is x[slots[i] / K], read in place.
    auto row = [&](std::int64_t i) -> const float* {
      const Index slot = slots[idx(i)];
      return slot < 0 ? nullptr : xv.data() + (slot / top_k) * d;
    };
    store_floats(output(a, 0), grouped_matmul_f32(row, rows, d, cpu::in<float>(a, 1), f, false, offsets, a.threads));
  });
}

// moe.matmul_combine: hs [N, F], w [E, F, D], offsets [E+1], weights [T, K], positions [T, K]
//   -> out [T, D] = combine(ys, weights, positions), ys [N, D] = grouped_matmul(hs, w, offsets).
void kernel_MatmulCombine(const KernelArgs& args) {
  const HostTensor& hs = in(args, 0);
  const HostTensor& w = in(args, 1);
  std::int64_t rows = dim(hs, 0), f = dim(hs, 1), d = dim(w, 2);
  std::int64_t tokens = dim(in(args, 3), 0), top_k = dim(in(args, 3), 1);
  Indices offsets = read_ints(in(args, 2)), positions = read_ints(in(args, 4));
  check_offsets(args, offsets, rows);
  check_positions(args, positions, top_k, rows);
  // The expert outputs (result 1), rounded to their dtype first, as the
  // unfused graph stores them; then the combine reads them back.
  HostTensor& ys_t = out(args, 1);
  if (hs.dtype() == DType::f64 || w.dtype() == DType::f64) {
    store(ys_t, grouped_matmul(doubles_of(hs), rows, f, doubles_of(w), d, false, offsets, args.threads));
  } else {
    const HostTensor hs32 = hs.dtype() == DType::f32 ? hs : hs.cast(DType::f32);
    const HostTensor w32 = w.dtype() == DType::f32 ? w : w.cast(DType::f32);
    std::span<const float> hv = hs32.values<float>();
    auto row = [&](std::int64_t i) { return hv.data() + i * f; };
    HostTensor ys32(TensorType{DType::f32, {rows, d}});
    store_floats(ys32, grouped_matmul_f32(row, rows, f, w32.values<float>(), d, false, offsets, args.threads));
    ys_t = ys_t.dtype() == DType::f32 ? std::move(ys32) : ys32.cast(ys_t.dtype());
  }
  store(out(args, 0), combine_rows(doubles_of(ys_t), d, doubles_of(in(args, 3)), positions, tokens, top_k));
}

}  // namespace moejit::cpu
