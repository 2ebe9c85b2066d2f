// CPU kernel of mj.matmul: batched, optional transposes, b of rank 2 shared
// by every batch of a.
//
// Layout of the loop: transposed operands are first copied to row-major
// [M, K] and [K, N]; then each output row is c[m, :] = sum_k a[m, k] * b[k, :]
// (the "ikj" order, whose inner loop runs along contiguous rows of b and c
// and vectorizes), four k steps per pass. Rows are split over up to
// KernelArgs::threads threads. Accumulation is in the element type (f32 in
// f32, like the GPU) in a fixed order per row, so results do not depend on the
// number of threads. tests/cpu/matmul_layout_test.cpp keeps the exact naive
// triple loop this must agree with.
#include <vector>

#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

// Copies `batches` matrices [rows, cols] to [cols, rows].
template <typename T>
std::vector<T> transpose_each(std::span<const T> x, std::int64_t batches, std::int64_t rows, std::int64_t cols) {
  std::vector<T> t(x.size());
  for (std::int64_t bi = 0; bi < batches; ++bi) {
    const T* src = x.data() + bi * rows * cols;
    T* dst = t.data() + bi * rows * cols;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
  return t;
}

// c[0..n) += a0 * b0[0..n) + a1 * b1[0..n) + a2 * b2[0..n) + a3 * b3[0..n):
// four k steps per pass over the c row (a quarter of the loads and stores of
// c). The fixed-width inner loop lets the compiler vectorize it at -O2;
// __restrict: c never overlaps b.
template <typename T>
void add_scaled_rows4(T* __restrict c, const T* __restrict b0, const T* __restrict b1, const T* __restrict b2,
                      const T* __restrict b3, T a0, T a1, T a2, T a3, std::int64_t n) {
  constexpr int kWidth = 16;
  std::int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth)
    for (int u = 0; u < kWidth; ++u) c[j + u] += a0 * b0[j + u] + a1 * b1[j + u] + a2 * b2[j + u] + a3 * b3[j + u];
  for (; j < n; ++j) c[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
}

// c[0..n) += a * b[0..n), for the last k steps.
template <typename T>
void add_scaled_row(T* __restrict c, const T* __restrict b, T a, std::int64_t n) {
  for (std::int64_t j = 0; j < n; ++j) c[j] += a * b[j];
}

}  // namespace

/// matmul: a [..., M, K], b [..., K, N] (or [K, N]) -> c [..., M, N];
/// transpose_a / transpose_b mean the operand is stored as [..., K, M] /
/// [..., N, K].
void kernel_Matmul(const KernelArgs& args) {
  for_float(args, [&](const KernelArgs& a_args, auto zero) {
    using T = decltype(zero);
    const TensorType& a_type = input(a_args, 0).type();
    const TensorType& b_type = input(a_args, 1).type();
    const TensorType& c_type = output(a_args, 0).type();
    const bool transpose_a = a_args.op.attrs.get_bool("transpose_a");
    const bool transpose_b = a_args.op.attrs.get_bool("transpose_b");
    const std::int64_t m = c_type.dim(-2), n = c_type.dim(-1);
    const std::int64_t k = transpose_a ? a_type.dim(-2) : a_type.dim(-1);
    const std::int64_t batches = c_type.numel() / (m * n);
    const bool b_batched = b_type.rank() > 2;
    const std::int64_t b_batches = b_batched ? batches : 1;

    // a_rows: [batches, M, K] row-major; b_rows: [b_batches, K, N] row-major.
    std::vector<T> a_copy, b_copy;
    std::span<const T> a_rows = in<T>(a_args, 0), b_rows = in<T>(a_args, 1);
    if (transpose_a) {
      a_copy = transpose_each(a_rows, batches, k, m);
      a_rows = a_copy;
    }
    if (transpose_b) {
      b_copy = transpose_each(b_rows, b_batches, n, k);
      b_rows = b_copy;
    }
    auto c = out<T>(a_args, 0);

    // One task per output row r = batch * M + row.
    parallel_for(batches * m, a_args.threads, std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(n * k, 1)),
                 [&](std::int64_t begin, std::int64_t end) {
                   for (std::int64_t r = begin; r < end; ++r) {
                     const std::int64_t bi = r / m;
                     const T* a_row = a_rows.data() + r * k;                   // a[bi, row, :]
                     const T* b_mat = b_rows.data() + (b_batched ? bi : 0) * k * n;  // b[bi] or b
                     T* c_row = c.data() + r * n;                               // c[bi, row, :]
                     for (std::int64_t j = 0; j < n; ++j) c_row[j] = T(0);
                     std::int64_t p = 0;
                     for (; p + 4 <= k; p += 4)
                       add_scaled_rows4(c_row, b_mat + p * n, b_mat + (p + 1) * n, b_mat + (p + 2) * n, b_mat + (p + 3) * n,
                                        a_row[p], a_row[p + 1], a_row[p + 2], a_row[p + 3], n);
                     for (; p < k; ++p) add_scaled_row(c_row, b_mat + p * n, a_row[p], n);
                   }
                 });
  });
}

}  // namespace moejit::cpu
