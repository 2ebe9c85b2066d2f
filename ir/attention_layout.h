// The head layout of mj.attention and mj.attention_grad: their optional
// string attribute "layout".
//
//   "bhtd" (the default, attribute absent): q, k, v, out, dout, dq, dk, dv
//          are [B, H, T, Dh], each head's T x Dh rows contiguous;
//   "bthd": they are [B, T, H, Dh], the layout a [B*T, H*Dh] projection has
//          once reshaped, so the heads are read in place with a row stride
//          of H * Dh instead of being transposed first.
// lse is [B, H, T] in both. mj.attention_qkv reads q, k, v out of one
// packed [B, T, 3, H, Dh] tensor (AttentionGeometry below). One set of
// helpers for the shape rules, the CPU kernels, the CUDA emitters and the
// attention passes.
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

// Where the rows of one (batch, head) pair bh = b * heads + h live in a
// tensor: element (b, h, t, d) at b * batch_stride + h * head_stride +
// t * row_stride + d.
struct HeadView {
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
  std::int64_t offset(std::int64_t bh, std::int64_t heads) const { return (bh / heads) * batch_stride + (bh % heads) * head_stride; }
};

// The sizes of an attention and where its operands' rows live: `qkv` is
// the view of q, k, v and of dq, dk, dv, `out` that of out and dout. With
// three tensors q, k, v (mj.attention, either layout) both views are the
// layout's and k_offset = v_offset = 0; with one packed qkv [B, T, 3, H,
// Dh] (mj.attention_qkv) q, k and v start 0, H * Dh and 2 * H * Dh
// elements into it and share its view (rows 3 * H * Dh apart), while out
// is [B, T, H, Dh].
struct AttentionGeometry {
  std::int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
  HeadView qkv, out;
  std::int64_t k_offset = 0, v_offset = 0;
};
// mj.attention / mj.attention_grad: q rank 4 in `layout`.
AttentionGeometry attention_geometry(const TensorType& q, HeadLayout layout);
// mj.attention_qkv / mj.attention_qkv_grad: qkv rank 5 [B, T, 3, H, Dh].
AttentionGeometry packed_attention_geometry(const TensorType& qkv);

}  // namespace moejit
