// CPU kernels of mj.attention (causal scaled dot-product attention) and its
// backward, mj.attention_grad, which recomputes the probabilities from the
// forward's log-sum-exp instead of storing them.
//
// Shapes: q, k, v, out [B, H, T, Dh] (layout "bhtd", the default) or
// [B, T, H, Dh] (layout "bthd": each head's rows H * Dh apart), lse
// [B, H, T] in both (ir/attention_layout.h). For one (batch, head), with
// S = scale:
//   scores[t, s] = S * q[t] . k[s]               for s <= t (causal)
//   lse[t]       = log sum_{s <= t} exp(scores[t, s])
//   P[t, s]      = exp(scores[t, s] - lse[t])    (softmax over s <= t)
//   out[t]       = sum_{s <= t} P[t, s] v[s]
// Dot products, softmax sums and gradient sums accumulate in double and are
// rounded once to the element type. (batch, head) pairs are split over
// KernelArgs::threads threads.
#include <cmath>
#include <limits>
#include <vector>

#include "ir/attention_layout.h"
#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

double attention_scale(const KernelArgs& args, std::int64_t head_dim) {
  double scale = args.op.attrs.get_float("scale");
  return scale == 0.0 ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : scale;
}

// scores[t, s] for s <= t of one (batch, head): q, k T rows of Dh values,
// dims.row_stride elements apart -> scores [T, T] row-major (entries above the
// diagonal are not written).
template <typename T>
void causal_scores(const T* q, const T* k, const HeadDims& dims, double scale, std::vector<double>& scores) {
  const std::int64_t tokens = dims.tokens, head_dim = dims.head_dim, ld = dims.row_stride;
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t s = 0; s <= t; ++s) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < head_dim; ++d)
        dot += static_cast<double>(q[t * ld + d]) * static_cast<double>(k[s * ld + d]);
      scores[idx(t * tokens + s)] = dot * scale;
    }
}

}  // namespace

/// attention: q, k, v [B, H, T, Dh] (or [B, T, H, Dh]) -> out (q's type),
/// lse [B, H, T]; causal softmax attention with scale (0 means 1/sqrt(Dh)).
void kernel_Attention(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const HeadDims dims = head_dims(input(a, 0).type(), head_layout(a.op.attrs));
    const std::int64_t tokens = dims.tokens, head_dim = dims.head_dim, ld = dims.row_stride;
    const double scale = attention_scale(a, head_dim);
    auto q = in<T>(a, 0), k = in<T>(a, 1), v = in<T>(a, 2);
    auto o = out<T>(a, 0);
    auto lse = out<T>(a, 1);  // f32 for f32/bf16/f16 attention, f64 for f64: the arithmetic type T
    parallel_for(dims.batch * dims.heads, a.threads, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<double> scores(idx(tokens * tokens));
      std::vector<double> acc(idx(head_dim));
      for (std::int64_t bh = begin; bh < end; ++bh) {
        const std::int64_t base = dims.head_offset(bh);  // row t of (batch, head) at base + t * ld in q, k, v, out
        causal_scores(q.data() + base, k.data() + base, dims, scale, scores);
        for (std::int64_t t = 0; t < tokens; ++t) {
          const double* row = scores.data() + t * tokens;
          double max = -std::numeric_limits<double>::infinity();
          for (std::int64_t s = 0; s <= t; ++s) max = std::max(max, row[s]);
          double sum = 0.0;
          for (std::int64_t s = 0; s <= t; ++s) sum += std::exp(row[s] - max);
          const double row_lse = max + std::log(sum);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (std::int64_t s = 0; s <= t; ++s) {
            const double p = std::exp(row[s] - row_lse);
            for (std::int64_t d = 0; d < head_dim; ++d) acc[idx(d)] += p * v[idx(base + s * ld + d)];
          }
          for (std::int64_t d = 0; d < head_dim; ++d) o[idx(base + t * ld + d)] = static_cast<T>(acc[idx(d)]);
          lse[idx(bh * tokens + t)] = static_cast<T>(row_lse);
        }
      }
    });
  });
}

/// attention_grad: q, k, v, out, lse, dout -> dq, dk, dv (q's type and layout), from
/// the forward's out and lse (FlashAttention-2's backward):
///   P[t, s]  = exp(S * q[t] . k[s] - lse[t])   for s <= t
///   dP[t, s] = dout[t] . v[s],   delta[t] = dout[t] . out[t]  (= sum_s P[t, s] dP[t, s])
///   dS[t, s] = P[t, s] (dP[t, s] - delta[t])
///   dv[s] = sum_{t >= s} P[t, s] dout[t]
///   dq[t] = S * sum_s dS[t, s] k[s],   dk[s] = S * sum_t dS[t, s] q[t]
void kernel_AttentionGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const HeadDims dims = head_dims(input(a, 0).type(), head_layout(a.op.attrs));
    const std::int64_t tokens = dims.tokens, head_dim = dims.head_dim, ld = dims.row_stride;
    const double scale = attention_scale(a, head_dim);
    auto q = in<T>(a, 0), k = in<T>(a, 1), v = in<T>(a, 2), o = in<T>(a, 3), lse = in<T>(a, 4), dout = in<T>(a, 5);
    auto dq = out<T>(a, 0), dk = out<T>(a, 1), dv = out<T>(a, 2);
    parallel_for(dims.batch * dims.heads, a.threads, 1, [&](std::int64_t begin, std::int64_t end) {
      const auto n = idx(tokens * head_dim);  // the accumulators: T rows of Dh, contiguous
      std::vector<double> scores(idx(tokens * tokens));
      std::vector<double> dq_acc(n), dk_acc(n), dv_acc(n);
      for (std::int64_t bh = begin; bh < end; ++bh) {
        const std::int64_t base = dims.head_offset(bh);
        const T* qb = q.data() + base;
        const T* kb = k.data() + base;
        const T* vb = v.data() + base;
        const T* ob = o.data() + base;
        const T* dob = dout.data() + base;
        causal_scores(qb, kb, dims, scale, scores);
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
        std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
        std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
        for (std::int64_t t = 0; t < tokens; ++t) {
          const double row_lse = static_cast<double>(lse[idx(bh * tokens + t)]);
          double delta = 0.0;
          for (std::int64_t d = 0; d < head_dim; ++d)
            delta += static_cast<double>(dob[t * ld + d]) * static_cast<double>(ob[t * ld + d]);
          for (std::int64_t s = 0; s <= t; ++s) {
            double dp = 0.0;
            for (std::int64_t d = 0; d < head_dim; ++d)
              dp += static_cast<double>(dob[t * ld + d]) * static_cast<double>(vb[s * ld + d]);
            const double p = std::exp(scores[idx(t * tokens + s)] - row_lse);
            const double ds = p * (dp - delta) * scale;
            for (std::int64_t d = 0; d < head_dim; ++d) {
              dv_acc[idx(s * head_dim + d)] += p * static_cast<double>(dob[t * ld + d]);
              dq_acc[idx(t * head_dim + d)] += ds * static_cast<double>(kb[s * ld + d]);
              dk_acc[idx(s * head_dim + d)] += ds * static_cast<double>(qb[t * ld + d]);
            }
          }
        }
        for (std::int64_t t = 0; t < tokens; ++t)
          for (std::int64_t d = 0; d < head_dim; ++d) {
            const std::size_t from = idx(t * head_dim + d), to = idx(base + t * ld + d);
            dq[to] = static_cast<T>(dq_acc[from]);
            dk[to] = static_cast<T>(dk_acc[from]);
            dv[to] = static_cast<T>(dv_acc[from]);
          }
      }
    });
  });
}

}  // namespace moejit::cpu
