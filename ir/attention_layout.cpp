#include "ir/attention_layout.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

std::string_view head_layout_name(HeadLayout layout) { return layout == HeadLayout::bthd ? "bthd" : "bhtd"; }

std::optional<HeadLayout> find_head_layout(const AttrList& attrs) {
  if (!attrs.has("layout")) return HeadLayout::bhtd;
  const std::string& name = attrs.get_string("layout");
  if (name == "bhtd") return HeadLayout::bhtd;
  if (name == "bthd") return HeadLayout::bthd;
  return std::nullopt;
}

HeadLayout head_layout(const AttrList& attrs) {
  std::optional<HeadLayout> layout = find_head_layout(attrs);
  MOEJIT_ASSERT(layout.has_value(), fmt::format("attention layout '{}'", attrs.get_string("layout")));
  return *layout;
}

void set_head_layout(AttrList& attrs, HeadLayout layout) {
  if (layout == HeadLayout::bhtd) attrs.erase("layout");
  else attrs.set("layout", std::string(head_layout_name(layout)));
}

AttentionGeometry attention_geometry(const TensorType& q, HeadLayout layout) {
  AttentionGeometry g;
  g.batch = q.dim(0);
  g.head_dim = q.dim(3);
  if (layout == HeadLayout::bhtd) {
    g.heads = q.dim(1);
    g.tokens = q.dim(2);
    g.qkv = {g.heads * g.tokens * g.head_dim, g.tokens * g.head_dim, g.head_dim};
  } else {
    g.tokens = q.dim(1);
    g.heads = q.dim(2);
    g.qkv = {g.tokens * g.heads * g.head_dim, g.head_dim, g.heads * g.head_dim};
  }
  g.out = g.qkv;
  return g;
}

AttentionGeometry packed_attention_geometry(const TensorType& qkv) {
  AttentionGeometry g;
  g.batch = qkv.dim(0);
  g.tokens = qkv.dim(1);
  g.heads = qkv.dim(3);
  g.head_dim = qkv.dim(4);
  const std::int64_t width = g.heads * g.head_dim;  // D
  g.qkv = {g.tokens * 3 * width, g.head_dim, 3 * width};
  g.out = {g.tokens * width, g.head_dim, width};
  g.k_offset = width;
  g.v_offset = 2 * width;
  return g;
}

}  // namespace moejit
