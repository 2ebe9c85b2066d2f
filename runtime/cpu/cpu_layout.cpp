// CPU kernels of the layout ops: reshape, transpose, broadcast, slice, pad,
// concat. They move elements without looking at them, so they work for every
// dtype (elements are copied as bytes of dtype_size).
//
// All of them are one strided copy: walk a shape with a multi-index i; the
// element read is at src_base + sum_d i[d] * src_stride[d] and the element
// written at dst_base + sum_d i[d] * dst_stride[d] (in elements). A stride of
// 0 repeats an element (broadcast).
#include <cstring>

#include "runtime/cpu/cpu_util.h"

namespace moejit::cpu {
namespace {

struct Strided {
  const std::byte* src;
  std::vector<std::int64_t> src_stride;
  std::int64_t src_base = 0;
  std::byte* dst;
  std::vector<std::int64_t> dst_stride;
  std::int64_t dst_base = 0;
};

// Copies every element of `shape` as described above. The last dim is the
// inner loop; when it is contiguous on both sides whole rows are memcpy'd.
void strided_copy(const Shape& shape, const Strided& s, std::size_t element_size) {
  const int rank = static_cast<int>(shape.size());
  std::int64_t numel = 1;
  for (auto d : shape) numel *= d;
  if (numel == 0) return;
  if (rank == 0) {
    std::memcpy(s.dst + idx(s.dst_base) * element_size, s.src + idx(s.src_base) * element_size, element_size);
    return;
  }
  const std::int64_t inner = shape[idx(rank - 1)];
  const std::int64_t src_inner = s.src_stride[idx(rank - 1)], dst_inner = s.dst_stride[idx(rank - 1)];
  const bool contiguous_rows = src_inner == 1 && dst_inner == 1;
  std::vector<std::int64_t> counter(idx(rank), 0);  // multi-index of the outer dims; counter[rank-1] stays 0
  for (std::int64_t row = 0; row < numel / inner; ++row) {
    std::int64_t src = s.src_base, dst = s.dst_base;
    for (int d = 0; d < rank - 1; ++d) {
      src += counter[idx(d)] * s.src_stride[idx(d)];
      dst += counter[idx(d)] * s.dst_stride[idx(d)];
    }
    if (contiguous_rows) {
      std::memcpy(s.dst + idx(dst) * element_size, s.src + idx(src) * element_size, idx(inner) * element_size);
    } else {
      for (std::int64_t j = 0; j < inner; ++j)
        std::memcpy(s.dst + idx(dst + j * dst_inner) * element_size, s.src + idx(src + j * src_inner) * element_size,
                    element_size);
    }
    for (int d = rank - 2; d >= 0; --d) {  // next row
      if (++counter[idx(d)] < shape[idx(d)]) break;
      counter[idx(d)] = 0;
    }
  }
}

std::size_t element_size(const KernelArgs& args) { return dtype_size(input(args, 0).dtype()); }

}  // namespace

/// reshape: x -> the same elements in the same (row-major) order, new shape.
void kernel_Reshape(const KernelArgs& args) {
  if (input(args, 0).bytes() > 0) std::memcpy(output(args, 0).raw(), input(args, 0).raw(), input(args, 0).bytes());
}

/// transpose: y [x.shape[perm[0]], ...], y[i0, i1, ...] = x at the index
/// whose dim perm[d] is i_d.
void kernel_Transpose(const KernelArgs& args) {
  const HostTensor& x = input(args, 0);
  HostTensor& y = output(args, 0);
  const auto& perm = args.op.attrs.get_ints("perm");
  std::vector<std::int64_t> x_strides = row_major_strides(x.shape());
  Strided s{x.raw(), {}, 0, y.raw(), row_major_strides(y.shape()), 0};
  for (auto p : perm) s.src_stride.push_back(x_strides[idx(p)]);  // walking y's dim d moves along x's dim perm[d]
  strided_copy(y.shape(), s, element_size(args));
}

/// broadcast: x [...] -> y [shape] (numpy rule: x's dims align with the last
/// dims of y; a size-1 dim of x repeats along y's dim, missing leading dims
/// repeat the whole of x).
void kernel_Broadcast(const KernelArgs& args) {
  const HostTensor& x = input(args, 0);
  HostTensor& y = output(args, 0);
  const int lead = y.type().rank() - x.type().rank();
  std::vector<std::int64_t> x_strides = row_major_strides(x.shape());
  Strided s{x.raw(), {}, 0, y.raw(), row_major_strides(y.shape()), 0};
  for (int d = 0; d < y.type().rank(); ++d) {
    int xd = d - lead;
    s.src_stride.push_back(xd < 0 || x.shape()[idx(xd)] == 1 ? 0 : x_strides[idx(xd)]);
  }
  strided_copy(y.shape(), s, element_size(args));
}

/// slice: y[i] = x[i + start] per dim; y's dims are limit - start.
void kernel_Slice(const KernelArgs& args) {
  const HostTensor& x = input(args, 0);
  HostTensor& y = output(args, 0);
  const auto& start = args.op.attrs.get_ints("start");
  Strided s{x.raw(), row_major_strides(x.shape()), 0, y.raw(), row_major_strides(y.shape()), 0};
  for (std::size_t d = 0; d < start.size(); ++d) s.src_base += start[d] * s.src_stride[d];
  strided_copy(y.shape(), s, element_size(args));
}

/// pad: y [x.shape + low + high], zero everywhere except y[i + low] = x[i].
void kernel_Pad(const KernelArgs& args) {
  const HostTensor& x = input(args, 0);
  HostTensor& y = output(args, 0);
  std::memset(y.raw(), 0, y.bytes());
  const auto& low = args.op.attrs.get_ints("low");
  Strided s{x.raw(), row_major_strides(x.shape()), 0, y.raw(), row_major_strides(y.shape()), 0};
  for (std::size_t d = 0; d < low.size(); ++d) s.dst_base += low[d] * s.dst_stride[d];
  strided_copy(x.shape(), s, element_size(args));
}

/// concat: inputs [..., n_i, ...] along `axis` (negative counts from the end)
/// -> y with the n_i side by side, in operand order.
void kernel_Concat(const KernelArgs& args) {
  HostTensor& y = output(args, 0);
  std::int64_t axis = args.op.attrs.get_int("axis");
  if (axis < 0) axis += y.type().rank();
  std::vector<std::int64_t> y_strides = row_major_strides(y.shape());
  std::int64_t position = 0;  // where along `axis` the next input starts
  for (const HostTensor* x : args.inputs) {
    Strided s{x->raw(), row_major_strides(x->shape()), 0, y.raw(), y_strides, position * y_strides[idx(axis)]};
    strided_copy(x->shape(), s, element_size(args));
    position += x->shape()[idx(axis)];
  }
}

}  // namespace moejit::cpu
