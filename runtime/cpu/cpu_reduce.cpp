// CPU kernels of the reductions (sum, mean, max over axes) and of softmax /
// log_softmax over the last axis.
//
// Accumulation: float reductions accumulate in double and round once to the
// element type (so an f32 sum is the correctly rounded f64 sum, independent
// of loop order); integer sums accumulate in i64 and wrap to the dtype.
#include <cmath>
#include <limits>

#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

// For x [d0, ..., d(r-1)] reduced over `axes`: for every flat input index,
// the flat index of its output element (the output laid out row-major over
// the kept dims; keepdims does not change the layout).
std::vector<std::int64_t> output_index_of_each_input(const Shape& shape, const std::vector<std::int64_t>& axes) {
  const int rank = static_cast<int>(shape.size());
  std::vector<bool> reduced(shape.size(), false);
  for (auto axis : axes) reduced[idx(axis < 0 ? axis + rank : axis)] = true;
  // Stride of each input dim in the output: 0 for reduced dims.
  std::vector<std::int64_t> out_stride(shape.size(), 0);
  std::int64_t stride = 1;
  for (int i = rank - 1; i >= 0; --i) {
    if (reduced[idx(i)]) continue;
    out_stride[idx(i)] = stride;
    stride *= shape[idx(i)];
  }
  std::int64_t numel = 1;
  for (auto d : shape) numel *= d;
  std::vector<std::int64_t> result(idx(numel));
  std::vector<std::int64_t> counter(shape.size(), 0);  // the multi-index of flat index i
  for (std::int64_t i = 0; i < numel; ++i) {
    std::int64_t o = 0;
    for (int d = 0; d < rank; ++d) o += counter[idx(d)] * out_stride[idx(d)];
    result[idx(i)] = o;
    for (int d = rank - 1; d >= 0; --d) {  // advance the multi-index
      if (++counter[idx(d)] < shape[idx(d)]) break;
      counter[idx(d)] = 0;
    }
  }
  return result;
}

enum class Reduction { sum, mean, max };

// y = reduce(x) over the op's `axes`; x [...] -> y [kept dims] (or with
// size-1 reduced dims under keepdims: the same elements in the same order).
void reduce(const KernelArgs& args, Reduction how) {
  const HostTensor& x = input(args, 0);
  HostTensor& y = output(args, 0);
  std::vector<std::int64_t> target = output_index_of_each_input(x.shape(), args.op.attrs.get_ints("axes"));
  const std::int64_t count = y.numel() == 0 ? 0 : x.numel() / y.numel();  // elements per output

  if (is_integer(x.dtype())) {  // sum or max; wraps to the dtype
    std::vector<std::int64_t> acc(idx(y.numel()),
                                  how == Reduction::max ? std::numeric_limits<std::int64_t>::min() : 0);
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      std::int64_t v = x.dtype() == DType::i64 ? x.values<std::int64_t>()[idx(i)] : x.values<std::int32_t>()[idx(i)];
      std::int64_t& a = acc[idx(target[idx(i)])];
      a = how == Reduction::max ? std::max(a, v) : static_cast<std::int64_t>(static_cast<std::uint64_t>(a) + static_cast<std::uint64_t>(v));
    }
    for (std::int64_t o = 0; o < y.numel(); ++o) {
      if (y.dtype() == DType::i64) y.values<std::int64_t>()[idx(o)] = acc[idx(o)];
      else y.values<std::int32_t>()[idx(o)] = static_cast<std::int32_t>(static_cast<std::uint32_t>(acc[idx(o)]));
    }
    return;
  }

  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto xs = in<T>(a, 0);
    auto ys = out<T>(a, 0);
    std::vector<double> acc(ys.size(), how == Reduction::max ? -std::numeric_limits<double>::infinity() : 0.0);
    for (std::size_t i = 0; i < xs.size(); ++i) {
      double& s = acc[idx(target[i])];
      double v = xs[i];
      if (how == Reduction::max)
        s = (std::isnan(v) || v > s) ? v : s;  // NaN wins and stays
      else
        s += v;
    }
    for (std::size_t o = 0; o < ys.size(); ++o)
      ys[o] = static_cast<T>(how == Reduction::mean ? acc[o] / static_cast<double>(count) : acc[o]);
  });
}

// softmax or log_softmax over the last axis: x, y [rows, C].
void softmax_rows(const KernelArgs& args, bool log) {
  for_float(args, [&](const KernelArgs& a, auto zero) {
    using T = decltype(zero);
    auto x = in<T>(a, 0);
    auto y = out<T>(a, 0);
    const std::int64_t c = input(a, 0).type().dim(-1);
    const std::int64_t rows = static_cast<std::int64_t>(x.size()) / c;
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* xr = x.data() + r * c;
      T* yr = y.data() + r * c;
      double max = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < c; ++j) max = std::max<double>(max, xr[j]);
      double denominator = 0.0;
      for (std::int64_t j = 0; j < c; ++j) denominator += std::exp(static_cast<double>(xr[j]) - max);
      double log_denominator = std::log(denominator);
      for (std::int64_t j = 0; j < c; ++j) {
        double shifted = static_cast<double>(xr[j]) - max;
        yr[j] = static_cast<T>(log ? shifted - log_denominator : std::exp(shifted) / denominator);
      }
    }
  });
}

}  // namespace

/// sum: x [...] numeric -> the sum over `axes` (negative axes count from the
/// end; keepdims keeps them as size 1). Empty `axes` copies x.
void kernel_Sum(const KernelArgs& args) { reduce(args, Reduction::sum); }
/// mean: x [...] float -> sum over `axes` / number of elements reduced.
void kernel_Mean(const KernelArgs& args) { reduce(args, Reduction::mean); }
/// max: x [...] numeric -> the largest element over `axes` (NaN if any is NaN).
void kernel_Max(const KernelArgs& args) { reduce(args, Reduction::max); }
/// softmax: x [..., C] -> exp(x - max) / sum exp(x - max) along the last axis.
void kernel_Softmax(const KernelArgs& args) { softmax_rows(args, false); }
/// log_softmax: x [..., C] -> x - max - log(sum exp(x - max)) along the last axis.
void kernel_LogSoftmax(const KernelArgs& args) { softmax_rows(args, true); }

}  // namespace moejit::cpu
