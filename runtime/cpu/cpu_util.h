// Helpers shared by the CPU kernels (private to runtime/cpu/): typed views of
// operands and results, the float-dtype dispatch (bf16/f16 run through f32
// copies), row-major strides, and a small parallel_for over std::threads.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "ir/error.h"
#include "runtime/cpu/cpu_kernels.h"

namespace moejit::cpu {

inline const HostTensor& input(const KernelArgs& args, int i) { return *args.inputs[static_cast<std::size_t>(i)]; }
inline HostTensor& output(const KernelArgs& args, int i) { return *args.outputs[static_cast<std::size_t>(i)]; }

template <typename T>
std::span<const T> in(const KernelArgs& args, int i) {
  return input(args, i).values<T>();
}
template <typename T>
std::span<T> out(const KernelArgs& args, int i) {
  return output(args, i).values<T>();
}

inline std::size_t idx(std::int64_t i) { return static_cast<std::size_t>(i); }

// Row-major strides of a shape, in elements.
inline std::vector<std::int64_t> row_major_strides(const Shape& shape) {
  std::vector<std::int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i)
    strides[idx(i)] = strides[idx(i + 1)] * shape[idx(i + 1)];
  return strides;
}

inline bool is_half(DType d) { return d == DType::bf16 || d == DType::f16; }

// Runs body(args, T{}) with T = float or double, the element type of the
// op's float tensors (its first float result, else its first float operand).
// When any operand or result is bf16 or f16 the body runs on f32 copies and
// its results are rounded back (round to nearest even) once at the end, so
// half-precision ops compute in f32.
template <class Body>
void for_float(const KernelArgs& args, Body&& body) {
  bool half = false;
  for (const HostTensor* t : args.inputs) half = half || is_half(t->dtype());
  for (const HostTensor* t : args.outputs) half = half || is_half(t->dtype());
  if (half) {
    std::vector<HostTensor> in_copies, out_copies;
    in_copies.reserve(args.inputs.size());
    out_copies.reserve(args.outputs.size());
    std::vector<const HostTensor*> in_ptrs;
    std::vector<HostTensor*> out_ptrs;
    for (const HostTensor* t : args.inputs) {
      if (is_half(t->dtype())) {
        in_copies.push_back(t->cast(DType::f32));
        in_ptrs.push_back(&in_copies.back());
      } else {
        in_ptrs.push_back(t);
      }
    }
    for (HostTensor* t : args.outputs) {
      out_copies.emplace_back(TensorType{is_half(t->dtype()) ? DType::f32 : t->dtype(), t->shape()});
      out_ptrs.push_back(&out_copies.back());
    }
    KernelArgs f32_args{args.graph, args.op, in_ptrs, out_ptrs, args.threads};
    body(static_cast<const KernelArgs&>(f32_args), float{});
    for (std::size_t i = 0; i < args.outputs.size(); ++i)
      *args.outputs[i] = out_copies[i].dtype() == args.outputs[i]->dtype() ? std::move(out_copies[i])
                                                                          : out_copies[i].cast(args.outputs[i]->dtype());
    return;
  }
  DType dtype = DType::i1;
  for (const HostTensor* t : args.outputs)
    if (dtype == DType::i1 && is_float(t->dtype())) dtype = t->dtype();
  for (const HostTensor* t : args.inputs)
    if (dtype == DType::i1 && is_float(t->dtype())) dtype = t->dtype();
  if (dtype == DType::f64) {
    body(args, double{});
  } else {
    MOEJIT_ASSERT(dtype == DType::f32, fmt::format("{}: no float tensor", op_name(args.op.kind)));
    body(args, float{});
  }
}

// Calls fn(begin, end) on `count` items split into contiguous chunks over at
// most `threads` threads (the calling thread takes the first chunk). Only
// worth it for big loops: below `min_per_thread` items per thread it runs
// serially. Chunks are fixed by count and threads, so results are
// deterministic.
template <class Fn>
void parallel_for(std::int64_t count, int threads, std::int64_t min_per_thread, Fn&& fn) {
  const std::int64_t useful = std::max<std::int64_t>(count / std::max<std::int64_t>(min_per_thread, 1), 1);
  const std::int64_t workers = std::min<std::int64_t>(std::max(threads, 1), useful);
  if (workers <= 1) {
    fn(std::int64_t{0}, count);
    return;
  }
  std::vector<std::thread> pool;
  std::int64_t chunk = (count + workers - 1) / workers;
  for (std::int64_t w = 1; w < workers; ++w) {
    std::int64_t begin = w * chunk, end = std::min(count, begin + chunk);
    if (begin < end) pool.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(std::int64_t{0}, std::min(count, chunk));
  for (auto& t : pool) t.join();
}

}  // namespace moejit::cpu
