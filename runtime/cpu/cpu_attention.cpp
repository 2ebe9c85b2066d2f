// CPU kernels of mj.attention (causal scaled dot-product attention) and its
// backward, mj.attention_grad, which recomputes the probabilities instead of
// storing them.
//
// Shapes: q, k, v, out [B, H, T, Dh]. For one (batch, head), with S = scale:
//   scores[t, s] = S * q[t] . k[s]               for s <= t (causal)
//   P[t, s]      = softmax over s <= t of scores[t, :]
//   out[t]       = sum_{s <= t} P[t, s] v[s]
// Dot products, softmax sums and gradient sums accumulate in double and are
// rounded once to the element type. (batch, head) pairs are split over
// KernelArgs::threads threads.
#include <cmath>
#include <limits>
#include <vector>

#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

double attention_scale(const KernelArgs& args, std::int64_t head_dim) {
  double scale = args.op.attrs.get_float("scale");
  return scale == 0.0 ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : scale;
}

// P[t, s] for s <= t of one (batch, head): q, k [T, Dh] -> probs [T, T]
// row-major (entries above the diagonal are 0).
template <typename T>
void causal_probabilities(const T* q, const T* k, std::int64_t tokens, std::int64_t head_dim, double scale,
                          std::vector<double>& probs) {
  for (std::int64_t t = 0; t < tokens; ++t) {
    double* row = probs.data() + t * tokens;
    double max = -std::numeric_limits<double>::infinity();
    for (std::int64_t s = 0; s <= t; ++s) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < head_dim; ++d)
        dot += static_cast<double>(q[t * head_dim + d]) * static_cast<double>(k[s * head_dim + d]);
      row[s] = dot * scale;
      max = std::max(max, row[s]);
    }
    double sum = 0.0;
    for (std::int64_t s = 0; s <= t; ++s) {
      row[s] = std::exp(row[s] - max);
      sum += row[s];
    }
    for (std::int64_t s = 0; s <= t; ++s) row[s] /= sum;
    for (std::int64_t s = t + 1; s < tokens; ++s) row[s] = 0.0;
  }
}

}  // namespace

/// attention: q, k, v [B, H, T, Dh] -> out [B, H, T, Dh], causal softmax
/// attention with scale (0 means 1/sqrt(Dh)).
void kernel_Attention(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const TensorType& type = input(a, 0).type();
    const std::int64_t heads = type.dim(0) * type.dim(1), tokens = type.dim(2), head_dim = type.dim(3);
    const double scale = attention_scale(a, head_dim);
    auto q = in<T>(a, 0), k = in<T>(a, 1), v = in<T>(a, 2);
    auto o = out<T>(a, 0);
    parallel_for(heads, a.threads, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<double> probs(idx(tokens * tokens));
      std::vector<double> acc(idx(head_dim));
      for (std::int64_t bh = begin; bh < end; ++bh) {
        const std::int64_t base = bh * tokens * head_dim;  // start of (batch, head) in every tensor
        causal_probabilities(q.data() + base, k.data() + base, tokens, head_dim, scale, probs);
        for (std::int64_t t = 0; t < tokens; ++t) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (std::int64_t s = 0; s <= t; ++s)
            for (std::int64_t d = 0; d < head_dim; ++d) acc[idx(d)] += probs[idx(t * tokens + s)] * v[idx(base + s * head_dim + d)];
          for (std::int64_t d = 0; d < head_dim; ++d) o[idx(base + t * head_dim + d)] = static_cast<T>(acc[idx(d)]);
        }
      }
    });
  });
}

/// attention_grad: q, k, v, dout [B, H, T, Dh] -> dq, dk, dv [B, H, T, Dh].
/// With P recomputed and dP[t, s] = dout[t] . v[s]:
///   dv[s] = sum_{t >= s} P[t, s] dout[t]
///   dS[t, s] = P[t, s] (dP[t, s] - sum_{s'} P[t, s'] dP[t, s'])
///   dq[t] = S * sum_s dS[t, s] k[s],   dk[s] = S * sum_t dS[t, s] q[t]
void kernel_AttentionGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const TensorType& type = input(a, 0).type();
    const std::int64_t heads = type.dim(0) * type.dim(1), tokens = type.dim(2), head_dim = type.dim(3);
    const double scale = attention_scale(a, head_dim);
    auto q = in<T>(a, 0), k = in<T>(a, 1), v = in<T>(a, 2), dout = in<T>(a, 3);
    auto dq = out<T>(a, 0), dk = out<T>(a, 1), dv = out<T>(a, 2);
    parallel_for(heads, a.threads, 1, [&](std::int64_t begin, std::int64_t end) {
      const auto n = idx(tokens * head_dim);
      std::vector<double> probs(idx(tokens * tokens)), dscores(idx(tokens * tokens));
      std::vector<double> dq_acc(n), dk_acc(n), dv_acc(n);
      for (std::int64_t bh = begin; bh < end; ++bh) {
        const std::int64_t base = bh * tokens * head_dim;
        const T* qb = q.data() + base;
        const T* kb = k.data() + base;
        const T* vb = v.data() + base;
        const T* dob = dout.data() + base;
        causal_probabilities(qb, kb, tokens, head_dim, scale, probs);
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
        std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
        std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
        for (std::int64_t t = 0; t < tokens; ++t) {
          // dP[t, s] into dscores, and the row sum of P * dP.
          double row_dot = 0.0;
          for (std::int64_t s = 0; s <= t; ++s) {
            double dp = 0.0;
            for (std::int64_t d = 0; d < head_dim; ++d)
              dp += static_cast<double>(dob[t * head_dim + d]) * static_cast<double>(vb[s * head_dim + d]);
            dscores[idx(t * tokens + s)] = dp;
            row_dot += probs[idx(t * tokens + s)] * dp;
          }
          for (std::int64_t s = 0; s <= t; ++s) {
            const double p = probs[idx(t * tokens + s)];
            const double ds = p * (dscores[idx(t * tokens + s)] - row_dot) * scale;
            for (std::int64_t d = 0; d < head_dim; ++d) {
              dv_acc[idx(s * head_dim + d)] += p * static_cast<double>(dob[t * head_dim + d]);
              dq_acc[idx(t * head_dim + d)] += ds * static_cast<double>(kb[s * head_dim + d]);
              dk_acc[idx(s * head_dim + d)] += ds * static_cast<double>(qb[t * head_dim + d]);
            }
          }
        }
        for (std::size_t i = 0; i < n; ++i) {
          dq[idx(base) + i] = static_cast<T>(dq_acc[i]);
          dk[idx(base) + i] = static_cast<T>(dk_acc[i]);
          dv[idx(base) + i] = static_cast<T>(dv_acc[i]);
        }
      }
    });
  });
}

}  // namespace moejit::cpu
