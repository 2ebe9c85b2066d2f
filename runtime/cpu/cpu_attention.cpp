// CPU kernels of mj.attention (causal scaled dot-product attention) and its
// backward, mj.attention_grad, which recomputes the probabilities from the
// forward's log-sum-exp instead of storing them; and of their packed form,
// mj.attention_qkv / mj.attention_qkv_grad, the same computation with q, k,
// v read out of one [B, T, 3, H, Dh] tensor and dq, dk, dv written into one.
//
// Shapes: q, k, v, out [B, H, T, Dh] (layout "bhtd", the default) or
// [B, T, H, Dh] (layout "bthd": each head's rows H * Dh apart), lse
// [B, H, T] in both (ir/attention_layout.h); packed: qkv [B, T, 3, H, Dh]
// (rows 3 * H * Dh apart), out [B, T, H, Dh]. For one (batch, head), with
// S = scale:
//   scores[t, s] = S * q[t] . k[s]               for s <= t (causal)
//   lse[t]       = log sum_{s <= t} exp(scores[t, s])
//   P[t, s]      = exp(scores[t, s] - lse[t])    (softmax over s <= t)
//   out[t]       = sum_{s <= t} P[t, s] v[s]
// Dot products, softmax sums and gradient sums accumulate in double and are
// rounded once to the element type. (batch, head) pairs are split over
// KernelArgs::threads threads. Both forms run the same two functions below
// on pointers and an AttentionGeometry, so they agree bit for bit.
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
// ld elements apart -> scores [T, T] row-major (entries above the diagonal
// are not written).
template <typename T>
void causal_scores(const T* q, const T* k, std::int64_t tokens, std::int64_t head_dim, std::int64_t ld, double scale,
                   std::vector<double>& scores) {
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t s = 0; s <= t; ++s) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < head_dim; ++d)
        dot += static_cast<double>(q[t * ld + d]) * static_cast<double>(k[s * ld + d]);
      scores[idx(t * tokens + s)] = dot * scale;
    }
}

// The forward of every (batch, head) pair: q, k, v (g.qkv's view), out
// (g.out's), lse [B * H, T].
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttentionGeometry& g, double scale, int threads) {
  const std::int64_t tokens = g.tokens, head_dim = g.head_dim, ld = g.qkv.row_stride, old = g.out.row_stride;
  parallel_for(g.batch * g.heads, threads, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> scores(idx(tokens * tokens));
    std::vector<double> acc(idx(head_dim));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const std::int64_t base = g.qkv.offset(bh, g.heads), obase = g.out.offset(bh, g.heads);
      const T* vb = v + base;
      causal_scores(q + base, k + base, tokens, head_dim, ld, scale, scores);
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
          for (std::int64_t d = 0; d < head_dim; ++d) acc[idx(d)] += p * static_cast<double>(vb[s * ld + d]);
        }
        for (std::int64_t d = 0; d < head_dim; ++d) o[obase + t * old + d] = static_cast<T>(acc[idx(d)]);
        lse[bh * tokens + t] = static_cast<T>(row_lse);
      }
    }
  });
}

// The backward (FlashAttention-2's, from the forward's out and lse):
//   P[t, s]  = exp(S * q[t] . k[s] - lse[t])   for s <= t
//   dP[t, s] = dout[t] . v[s],   delta[t] = dout[t] . out[t]  (= sum_s P[t, s] dP[t, s])
//   dS[t, s] = P[t, s] (dP[t, s] - delta[t])
//   dv[s] = sum_{t >= s} P[t, s] dout[t]
//   dq[t] = S * sum_s dS[t, s] k[s],   dk[s] = S * sum_t dS[t, s] q[t]
// q, k, v, dq, dk, dv in g.qkv's view; out, dout in g.out's.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout, T* dq, T* dk, T* dv,
                        const AttentionGeometry& g, double scale, int threads) {
  const std::int64_t tokens = g.tokens, head_dim = g.head_dim, ld = g.qkv.row_stride, old = g.out.row_stride;
  parallel_for(g.batch * g.heads, threads, 1, [&](std::int64_t begin, std::int64_t end) {
    const auto n = idx(tokens * head_dim);  // the accumulators: T rows of Dh, contiguous
    std::vector<double> scores(idx(tokens * tokens));
    std::vector<double> dq_acc(n), dk_acc(n), dv_acc(n);
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const std::int64_t base = g.qkv.offset(bh, g.heads), obase = g.out.offset(bh, g.heads);
      const T* qb = q + base;
      const T* kb = k + base;
      const T* vb = v + base;
      const T* ob = o + obase;
      const T* dob = dout + obase;
      causal_scores(qb, kb, tokens, head_dim, ld, scale, scores);
      std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
      for (std::int64_t t = 0; t < tokens; ++t) {
        const double row_lse = static_cast<double>(lse[bh * tokens + t]);
        double delta = 0.0;
        for (std::int64_t d = 0; d < head_dim; ++d)
          delta += static_cast<double>(dob[t * old + d]) * static_cast<double>(ob[t * old + d]);
        for (std::int64_t s = 0; s <= t; ++s) {
          double dp = 0.0;
          for (std::int64_t d = 0; d < head_dim; ++d)
            dp += static_cast<double>(dob[t * old + d]) * static_cast<double>(vb[s * ld + d]);
          const double p = std::exp(scores[idx(t * tokens + s)] - row_lse);
          const double ds = p * (dp - delta) * scale;
          for (std::int64_t d = 0; d < head_dim; ++d) {
            dv_acc[idx(s * head_dim + d)] += p * static_cast<double>(dob[t * old + d]);
            dq_acc[idx(t * head_dim + d)] += ds * static_cast<double>(kb[s * ld + d]);
            dk_acc[idx(s * head_dim + d)] += ds * static_cast<double>(qb[t * ld + d]);
          }
        }
      }
      for (std::int64_t t = 0; t < tokens; ++t)
        for (std::int64_t d = 0; d < head_dim; ++d) {
          const std::size_t from = idx(t * head_dim + d);
          const std::int64_t to = base + t * ld + d;
          dq[to] = static_cast<T>(dq_acc[from]);
          dk[to] = static_cast<T>(dk_acc[from]);
          dv[to] = static_cast<T>(dv_acc[from]);
        }
    }
  });
}

}  // namespace

/// attention: q, k, v [B, H, T, Dh] (or [B, T, H, Dh]) -> out (q's type),
/// lse [B, H, T]; causal softmax attention with scale (0 means 1/sqrt(Dh)).
void kernel_Attention(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const AttentionGeometry g = attention_geometry(input(a, 0).type(), head_layout(a.op.attrs));
    // lse: f32 for f32/bf16/f16 attention, f64 for f64: the arithmetic type T
    attention_forward(in<T>(a, 0).data(), in<T>(a, 1).data(), in<T>(a, 2).data(), out<T>(a, 0).data(), out<T>(a, 1).data(), g,
                      attention_scale(a, g.head_dim), a.threads);
  });
}

/// attention_grad: q, k, v, out, lse, dout -> dq, dk, dv (q's type and layout).
void kernel_AttentionGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const AttentionGeometry g = attention_geometry(input(a, 0).type(), head_layout(a.op.attrs));
    attention_backward(in<T>(a, 0).data(), in<T>(a, 1).data(), in<T>(a, 2).data(), in<T>(a, 3).data(), in<T>(a, 4).data(),
                       in<T>(a, 5).data(), out<T>(a, 0).data(), out<T>(a, 1).data(), out<T>(a, 2).data(), g,
                       attention_scale(a, g.head_dim), a.threads);
  });
}

/// attention_qkv: qkv [B, T, 3, H, Dh] -> out [B, T, H, Dh], lse [B, H, T]:
/// mj.attention in layout bthd of qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2].
void kernel_AttentionQkv(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const AttentionGeometry g = packed_attention_geometry(input(a, 0).type());
    const T* qkv = in<T>(a, 0).data();
    attention_forward(qkv, qkv + g.k_offset, qkv + g.v_offset, out<T>(a, 0).data(), out<T>(a, 1).data(), g,
                      attention_scale(a, g.head_dim), a.threads);
  });
}

/// attention_qkv_grad: qkv, out, lse, dout -> dqkv [B, T, 3, H, Dh], whose
/// parts 0, 1, 2 along axis 2 are dq, dk, dv (every element written once).
void kernel_AttentionQkvGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    const AttentionGeometry g = packed_attention_geometry(input(a, 0).type());
    const T* qkv = in<T>(a, 0).data();
    T* dqkv = out<T>(a, 0).data();
    attention_backward(qkv, qkv + g.k_offset, qkv + g.v_offset, in<T>(a, 1).data(), in<T>(a, 2).data(), in<T>(a, 3).data(), dqkv,
                       dqkv + g.k_offset, dqkv + g.v_offset, g, attention_scale(a, g.head_dim), a.threads);
  });
}

}  // namespace moejit::cpu
