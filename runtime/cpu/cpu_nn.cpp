// CPU kernels of the model-level ops and their backward helpers:
// layer_norm / rms_norm (+ grads), embedding (+ grad), cross_entropy
// (+ grad), dropout, random_normal (Philox, see ir/philox.h) and adamw.
//
// Row statistics and sums over rows accumulate in double and are rounded once
// to the element type; per-element formulas (dropout, adamw) compute in the
// element type.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/cpu/cpu_util.h"
#include "ir/philox.h"

namespace moejit::cpu {
namespace {

// Mean and 1/sqrt(var + eps) of one row of C values (biased variance).
template <typename T>
void layer_norm_stats(const T* x, std::int64_t c, double eps, double& mean, double& rstd) {
  double sum = 0.0;
  for (std::int64_t j = 0; j < c; ++j) sum += x[j];
  mean = sum / static_cast<double>(c);
  double var = 0.0;
  for (std::int64_t j = 0; j < c; ++j) var += (x[j] - mean) * (x[j] - mean);
  rstd = 1.0 / std::sqrt(var / static_cast<double>(c) + eps);
}

// 1/sqrt(mean(x^2) + eps) of one row.
template <typename T>
double rms_rstd(const T* x, std::int64_t c, double eps) {
  double sum_squares = 0.0;
  for (std::int64_t j = 0; j < c; ++j) sum_squares += static_cast<double>(x[j]) * x[j];
  return 1.0 / std::sqrt(sum_squares / static_cast<double>(c) + eps);
}

// Checks 0 <= id < limit; the message names the operand, the flat index and the value.
void check_id(std::string_view operand, std::int64_t index, std::int64_t id, std::int64_t limit) {
  if (id < 0 || id >= limit)
    throw Error(fmt::format("{}[{}]: expected a value in [0, {}), found {}", operand, index, limit, id));
}

}  // namespace

// ---- normalization ----

/// layer_norm: x [rows, C], gamma, beta [C] -> y [rows, C],
/// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis
/// (biased variance).
void kernel_LayerNorm(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0), gamma = in<T>(a, 1), beta = in<T>(a, 2);
    auto y = out<T>(a, 0);
    const std::int64_t c = static_cast<std::int64_t>(gamma.size()), rows = static_cast<std::int64_t>(x.size()) / c;
    const double eps = a.op.attrs.get_float("eps");
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * c;
      double mean, rstd;
      layer_norm_stats(xr, c, eps, mean, rstd);
      for (std::int64_t j = 0; j < c; ++j)
        y[idx(r * c + j)] = static_cast<T>((xr[j] - mean) * rstd * gamma[idx(j)] + beta[idx(j)]);
    }
  });
}

/// rms_norm: x [rows, C], gamma [C] -> y = x / sqrt(mean(x^2) + eps) * gamma.
void kernel_RmsNorm(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0), gamma = in<T>(a, 1);
    auto y = out<T>(a, 0);
    const std::int64_t c = static_cast<std::int64_t>(gamma.size()), rows = static_cast<std::int64_t>(x.size()) / c;
    const double eps = a.op.attrs.get_float("eps");
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * c;
      const double rstd = rms_rstd(xr, c, eps);
      for (std::int64_t j = 0; j < c; ++j) y[idx(r * c + j)] = static_cast<T>(xr[j] * rstd * gamma[idx(j)]);
    }
  });
}

/// layer_norm_grad: x [rows, C], gamma [C], dy [rows, C] -> dx [rows, C],
/// dgamma [C], dbeta [C]. With xhat = (x - mean) * rstd and g = dy * gamma:
///   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
///   dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy.
void kernel_LayerNormGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0), gamma = in<T>(a, 1), dy = in<T>(a, 2);
    auto dx = out<T>(a, 0), dgamma = out<T>(a, 1), dbeta = out<T>(a, 2);
    const std::int64_t c = static_cast<std::int64_t>(gamma.size()), rows = static_cast<std::int64_t>(x.size()) / c;
    const double eps = a.op.attrs.get_float("eps");
    std::vector<double> dgamma_acc(idx(c), 0.0), dbeta_acc(idx(c), 0.0), xhat(idx(c)), g(idx(c));
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * c;
      const T* dyr = dy.data() + r * c;
      double mean, rstd;
      layer_norm_stats(xr, c, eps, mean, rstd);
      double mean_g = 0.0, mean_g_xhat = 0.0;
      for (std::int64_t j = 0; j < c; ++j) {
        xhat[idx(j)] = (xr[j] - mean) * rstd;
        g[idx(j)] = static_cast<double>(dyr[j]) * gamma[idx(j)];
        mean_g += g[idx(j)];
        mean_g_xhat += g[idx(j)] * xhat[idx(j)];
        dgamma_acc[idx(j)] += static_cast<double>(dyr[j]) * xhat[idx(j)];
        dbeta_acc[idx(j)] += dyr[j];
      }
      mean_g /= static_cast<double>(c);
      mean_g_xhat /= static_cast<double>(c);
      for (std::int64_t j = 0; j < c; ++j)
        dx[idx(r * c + j)] = static_cast<T>(rstd * (g[idx(j)] - mean_g - xhat[idx(j)] * mean_g_xhat));
    }
    for (std::int64_t j = 0; j < c; ++j) {
      dgamma[idx(j)] = static_cast<T>(dgamma_acc[idx(j)]);
      dbeta[idx(j)] = static_cast<T>(dbeta_acc[idx(j)]);
    }
  });
}

/// rms_norm_grad: x [rows, C], gamma [C], dy [rows, C] -> dx [rows, C],
/// dgamma [C]. With xhat = x * rstd and g = dy * gamma:
///   dx = rstd * (g - xhat * mean(g * xhat)),  dgamma = sum over rows of dy * xhat.
void kernel_RmsNormGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0), gamma = in<T>(a, 1), dy = in<T>(a, 2);
    auto dx = out<T>(a, 0), dgamma = out<T>(a, 1);
    const std::int64_t c = static_cast<std::int64_t>(gamma.size()), rows = static_cast<std::int64_t>(x.size()) / c;
    const double eps = a.op.attrs.get_float("eps");
    std::vector<double> dgamma_acc(idx(c), 0.0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * c;
      const T* dyr = dy.data() + r * c;
      const double rstd = rms_rstd(xr, c, eps);
      double mean_g_xhat = 0.0;
      for (std::int64_t j = 0; j < c; ++j) {
        const double xhat = xr[j] * rstd;
        mean_g_xhat += static_cast<double>(dyr[j]) * gamma[idx(j)] * xhat;
        dgamma_acc[idx(j)] += static_cast<double>(dyr[j]) * xhat;
      }
      mean_g_xhat /= static_cast<double>(c);
      for (std::int64_t j = 0; j < c; ++j)
        dx[idx(r * c + j)] = static_cast<T>(rstd * (static_cast<double>(dyr[j]) * gamma[idx(j)] - xr[j] * rstd * mean_g_xhat));
    }
    for (std::int64_t j = 0; j < c; ++j) dgamma[idx(j)] = static_cast<T>(dgamma_acc[idx(j)]);
  });
}

// ---- embedding ----

/// embedding: table [V, D], ids [...] i32 -> y [..., D], y[i] = table[ids[i]].
/// An id outside [0, V) is an error naming the index and the value.
void kernel_Embedding(const KernelArgs& args) {
  const HostTensor& table = input(args, 0);
  auto ids = in<std::int32_t>(args, 1);
  HostTensor& y = output(args, 0);
  const std::int64_t vocab = table.type().dim(0);
  const std::size_t row_bytes = idx(table.type().dim(1)) * dtype_size(table.dtype());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    check_id("ids", static_cast<std::int64_t>(i), ids[i], vocab);
    std::memcpy(y.raw() + i * row_bytes, table.raw() + idx(ids[i]) * row_bytes, row_bytes);
  }
}

/// embedding_grad: ids [...] i32, dy [..., D] -> dtable [num_embeddings, D],
/// dtable[v] = sum of dy[i] over every i with ids[i] = v (scatter-add,
/// accumulated in double in index order).
void kernel_EmbeddingGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto ids = in<std::int32_t>(a, 0);
    auto dy = in<T>(a, 1);
    auto dtable = out<T>(a, 0);
    const std::int64_t vocab = output(a, 0).type().dim(0), d = output(a, 0).type().dim(1);
    std::vector<double> acc(dtable.size(), 0.0);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      check_id("ids", static_cast<std::int64_t>(i), ids[i], vocab);
      for (std::int64_t j = 0; j < d; ++j) acc[idx(ids[i] * d + j)] += dy[i * idx(d) + idx(j)];
    }
    for (std::size_t i = 0; i < acc.size(); ++i) dtable[i] = static_cast<T>(acc[i]);
  });
}

// ---- cross entropy ----

namespace {
// log(sum_j exp(row[j])) of one row of logits, shifted by the row's max so
// that large logits do not overflow; accumulated in double.
template <typename T>
double row_logsumexp(const T* row, std::int64_t n) {
  double max = -std::numeric_limits<double>::infinity();
  for (std::int64_t j = 0; j < n; ++j) max = std::max<double>(max, row[j]);
  double sum = 0.0;
  for (std::int64_t j = 0; j < n; ++j) sum += std::exp(row[j] - max);
  return max + std::log(sum);
}
}  // namespace

/// cross_entropy: logits [N, V], targets [N] i32 -> loss [], the mean over
/// rows of logsumexp(logits[n]) - logits[n, targets[n]]. A target outside
/// [0, V) is an error naming the row and the value.
void kernel_CrossEntropy(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto logits = in<T>(a, 0);
    auto targets = in<std::int32_t>(a, 1);
    const std::int64_t rows = input(a, 0).type().dim(0), vocab = input(a, 0).type().dim(1);
    double total = 0.0;
    for (std::int64_t n = 0; n < rows; ++n) {
      check_id("targets", n, targets[idx(n)], vocab);
      const T* row = logits.data() + n * vocab;
      total += row_logsumexp(row, vocab) - row[targets[idx(n)]];
    }
    out<T>(a, 0)[0] = static_cast<T>(total / static_cast<double>(rows));
  });
}

/// cross_entropy_grad: logits [N, V], targets [N] i32, dloss [] -> dlogits
/// [N, V] = (softmax(logits[n]) - onehot(targets[n])) * dloss / N.
void kernel_CrossEntropyGrad(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto logits = in<T>(a, 0);
    auto targets = in<std::int32_t>(a, 1);
    const double dloss = in<T>(a, 2)[0];
    auto dlogits = out<T>(a, 0);
    const std::int64_t rows = input(a, 0).type().dim(0), vocab = input(a, 0).type().dim(1);
    const double scale = dloss / static_cast<double>(rows);
    for (std::int64_t n = 0; n < rows; ++n) {
      check_id("targets", n, targets[idx(n)], vocab);
      const T* row = logits.data() + n * vocab;
      const double lse = row_logsumexp(row, vocab);
      for (std::int64_t j = 0; j < vocab; ++j) {
        double p = std::exp(row[j] - lse);
        dlogits[idx(n * vocab + j)] = static_cast<T>((p - (j == targets[idx(n)] ? 1.0 : 0.0)) * scale);
      }
    }
  });
}

// ---- random ----

namespace {
// The Philox base position of a random op: its `offset` attribute plus its
// optional step_offset operand [] i64 (operand #step_index), as unsigned
// 64-bit numbers whose sum wraps.
unsigned long long philox_base(const KernelArgs& args, std::size_t step_index) {
  auto base = static_cast<unsigned long long>(args.op.attrs.get_int("offset"));
  if (args.inputs.size() > step_index)
    base += static_cast<unsigned long long>(in<std::int64_t>(args, static_cast<int>(step_index))[0]);
  return base;
}
}  // namespace

/// dropout: x [...], step_offset? [] i64 -> y [...]; element i is kept iff its
/// Philox uniform at position base + i is >= p, base = offset + step_offset
/// (ir/philox.h), and kept elements are scaled by 1 / (1 - p); the rest
/// are 0.
void kernel_Dropout(const KernelArgs& args) {
  const unsigned long long base = philox_base(args, 1);
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0);
    auto y = out<T>(a, 0);
    const double p = a.op.attrs.get_float("p");
    const auto seed = static_cast<unsigned long long>(a.op.attrs.get_int("seed"));
    const unsigned int threshold = dropout_threshold24(p);
    const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
    for (std::size_t i = 0; i < x.size(); ++i)
      y[i] = dropout_uniform24(seed, base + i) >= threshold ? x[i] * keep_scale : T(0);
  });
}

/// random_normal: step_offset? [] i64 -> [shape] dtype, element i =
/// philox_normal(seed, base + i), base = offset + step_offset (Box-Muller in
/// double, ir/philox.h), converted to the dtype once.
void kernel_RandomNormal(const KernelArgs& args) {
  HostTensor& y = output(args, 0);
  const auto seed = static_cast<unsigned long long>(args.op.attrs.get_int("seed"));
  const unsigned long long base = philox_base(args, 0);
  for (std::int64_t i = 0; i < y.numel(); ++i) y.set(i, philox_normal(seed, base + static_cast<unsigned long long>(i)));
}

// ---- optimizer ----

/// adamw: param, grad, m, v [...] f32, lr [] f32, step [] f32 (1-based) ->
/// (param', m', v'), as torch.optim.AdamW (decoupled weight decay):
///   m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,
///   m^ = m' / (1 - b1^step),  v^ = v' / (1 - b2^step),
///   param' = param - lr (m^ / (sqrt(v^) + eps) + weight_decay param).
/// Per-element math in f32; the bias corrections in double.
void kernel_AdamW(const KernelArgs& args) {
  auto param = in<float>(args, 0), grad = in<float>(args, 1), m = in<float>(args, 2), v = in<float>(args, 3);
  const float lr = in<float>(args, 4)[0];
  const double step = in<float>(args, 5)[0];
  if (!(step >= 1.0)) throw Error(fmt::format("operand #5 (step): expected a 1-based step >= 1, found {}", step));
  auto new_param = out<float>(args, 0), new_m = out<float>(args, 1), new_v = out<float>(args, 2);
  const double beta1 = args.op.attrs.get_float("beta1"), beta2 = args.op.attrs.get_float("beta2");
  const auto b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
  const auto eps = static_cast<float>(args.op.attrs.get_float("eps"));
  const auto weight_decay = static_cast<float>(args.op.attrs.get_float("weight_decay"));
  const auto correction1 = static_cast<float>(1.0 - std::pow(beta1, step));
  const auto correction2 = static_cast<float>(1.0 - std::pow(beta2, step));
  for (std::size_t i = 0; i < param.size(); ++i) {
    const float g = grad[i];
    new_m[i] = b1 * m[i] + (1.0f - b1) * g;
    new_v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    const float m_hat = new_m[i] / correction1;
    const float v_hat = new_v[i] / correction2;
    new_param[i] = param[i] - lr * (m_hat / (std::sqrt(v_hat) + eps) + weight_decay * param[i]);
  }
}

}  // namespace moejit::cpu
