// The head layout of mj.attention and mj.attention_grad: their optional
// string attribute "layout".
//
//   "bhtd" (the default, attribute absent): q, k, v, out, dout, dq, dk, dv
//          are [B, H, T, Dh], each head's T x Dh rows contiguous;
//   "bthd": they are [B, T, H, Dh], the layout a [B*T, H*Dh] projection has
//          once reshaped, so the heads are read in place with a row stride
//          of H * Dh instead of being transposed first.
// lse is [B, H, T] in both. One set of helpers for the shape rule, the CPU
// kernels, the CUDA emitters and the attention-layout pass.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "ir/attr.h"
#include "ir/type.h"

namespace moejit {

enum class HeadLayout { bhtd, bthd };

std::string_view head_layout_name(HeadLayout layout);
// The layout an attention op's attributes name; nullopt for an unknown value.
std::optional<HeadLayout> find_head_layout(const AttrList& attrs);
// The same for a verified op (an unknown value is an internal error).
HeadLayout head_layout(const AttrList& attrs);
// Sets (bthd) or removes (bhtd, the default) the attribute.
void set_head_layout(AttrList& attrs, HeadLayout layout);

// The sizes of a rank-4 q in a layout and where element (b, h, t, d) lives:
// b * heads * tokens * head_dim + h * head_stride + t * row_stride + d.
struct HeadDims {
  std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
  std::int64_t head_stride = 0, row_stride = 0;
  // The offset of (batch, head) pair bh = b * heads + h.
  std::int64_t head_offset(std::int64_t bh) const { return (bh / heads) * heads * tokens * head_dim + (bh % heads) * head_stride; }
};
HeadDims head_dims(const TensorType& q, HeadLayout layout);

}  // namespace moejit
