// Expert statistics from routing results (see runtime/expert_stats.h).
#include "runtime/expert_stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ir/error.h"

namespace moejit {

namespace {

std::vector<std::int32_t> index_values(const HostTensor& t, std::string_view what, int rank) {
  if (t.dtype() != DType::i32 || t.type().rank() != rank)
    throw Error(fmt::format("expert stats: {}: expected a rank-{} i32 tensor, found {}", what, rank, t.type().str()));
  auto v = t.values<std::int32_t>();
  return {v.begin(), v.end()};
}

}  // namespace

double MoeLayerStats::imbalance() const {
  std::int64_t total = 0, most = 0;
  for (auto n : routed) {
    total += n;
    most = std::max(most, n);
  }
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(most) * static_cast<double>(routed.size()) / static_cast<double>(total);
}

double MoeLayerStats::drop_rate() const { return slots ? static_cast<double>(dropped) / static_cast<double>(slots) : 0.0; }

MoeLayerStats moe_layer_stats(std::string layer, const HostTensor& counts, const HostTensor* positions, const HostTensor* offsets) {
  MoeLayerStats s;
  s.layer = std::move(layer);
  for (auto c : index_values(counts, "counts", 1)) {
    if (c < 0) throw Error(fmt::format("expert stats: counts: expected counts >= 0, found {}", c));
    s.routed.push_back(c);
    s.slots += c;
  }
  if (!positions) {
    if (offsets) throw Error("expert stats: offsets given without positions (use moe_layer_stats_from_offsets)");
    return s;
  }
  auto pos = index_values(*positions, "positions", 2);
  if (static_cast<std::int64_t>(pos.size()) != s.slots)
    throw Error(fmt::format("expert stats: positions {} holds {} slots but counts sum to {}", positions->type().str(), pos.size(), s.slots));
  s.dropped = std::count(pos.begin(), pos.end(), -1);
  if (!offsets) {
    if (s.dropped == 0) s.kept = s.routed;
    return s;
  }
  auto off = index_values(*offsets, "offsets", 1);
  if (off.size() != s.routed.size() + 1)
    throw Error(fmt::format("expert stats: offsets: expected {} entries (E+1), found {}", s.routed.size() + 1, off.size()));
  s.kept.assign(s.routed.size(), 0);
  for (auto p : pos) {
    if (p < 0) continue;
    auto segment = std::upper_bound(off.begin(), off.end(), p) - off.begin() - 1;  // last e with off[e] <= p
    if (segment < 0 || segment >= static_cast<std::ptrdiff_t>(s.kept.size()) || p >= off[static_cast<std::size_t>(segment) + 1])
      throw Error(fmt::format("expert stats: position {} lies outside every expert segment (offsets end at {})", p, off.back()));
    ++s.kept[static_cast<std::size_t>(segment)];
  }
  return s;
}

MoeLayerStats moe_layer_stats_from_offsets(std::string layer, const HostTensor& offsets) {
  MoeLayerStats s;
  s.layer = std::move(layer);
  auto off = index_values(offsets, "offsets", 1);
  if (off.size() < 2) throw Error(fmt::format("expert stats: offsets: expected E+1 >= 2 entries, found {}", off.size()));
  for (std::size_t e = 0; e + 1 < off.size(); ++e) {
    std::int64_t n = off[e + 1] - off[e];
    if (n < 0) throw Error(fmt::format("expert stats: offsets[{}] = {} > offsets[{}] = {}", e, off[e], e + 1, off[e + 1]));
    s.routed.push_back(n);
    s.slots += n;
  }
  s.kept = s.routed;
  return s;
}

std::string format_moe_stats(std::span<const MoeLayerStats> layers) {
  std::size_t name_width = 5;
  for (const auto& l : layers) name_width = std::max(name_width, l.layer.size());
  std::string out;
  std::int64_t header_experts = -1;
  for (const auto& l : layers) {
    if (l.num_experts() != header_experts) {
      header_experts = l.num_experts();
      out += fmt::format("{:<{}}", "layer", name_width);
      for (std::int64_t e = 0; e < header_experts; ++e) out += fmt::format(" {:>6}", fmt::format("e{}", e));
      out += fmt::format(" | {:>7} {:>15} {:>9}\n", "slots", "dropped", "max/mean");
    }
    out += fmt::format("{:<{}}", l.layer, name_width);
    for (auto n : l.routed) out += fmt::format(" {:>6}", n);
    std::string dropped = fmt::format("{} ({:.1f}%)", l.dropped, 100.0 * l.drop_rate());
    double ratio = l.imbalance();
    out += fmt::format(" | {:>7} {:>15} {:>9}\n", l.slots, dropped, std::isnan(ratio) ? std::string("n/a") : fmt::format("{:.2f}", ratio));
  }
  return out;
}

}  // namespace moejit
