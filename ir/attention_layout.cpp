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

HeadDims head_dims(const TensorType& q, HeadLayout layout) {
  HeadDims d;
  d.batch = q.dim(0);
  d.head_dim = q.dim(3);
  if (layout == HeadLayout::bhtd) {
    d.heads = q.dim(1);
    d.tokens = q.dim(2);
    d.head_stride = d.tokens * d.head_dim;
    d.row_stride = d.head_dim;
  } else {
    d.tokens = q.dim(1);
    d.heads = q.dim(2);
    d.head_stride = d.head_dim;
    d.row_stride = d.heads * d.head_dim;
  }
  return d;
}

}  // namespace moejit
