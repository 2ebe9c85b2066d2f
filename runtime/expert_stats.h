// Expert statistics of a run: how many routed slots each expert of each MoE
// layer got, how many were dropped for capacity, and how uneven the load is.
// Read from the routing results a graph exposes as outputs (moe.dispatch or
// moe.route: counts [E], positions [T, K], offsets [E+1]).
//
//   std::vector<MoeLayerStats> layers;
//   layers.push_back(moe_layer_stats("layer0", exe->get("counts.0"), exe->get("positions.0"), exe->get("offsets.0")));
//   fmt::print("{}", format_moe_stats(layers));
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "runtime/host_tensor.h"

namespace moejit {

struct MoeLayerStats {
  std::string layer;
  std::vector<std::int64_t> routed;  // [E] slots routed to each expert, before dropping
  // [E] slots each expert keeps (computes); empty when the inputs do not say.
  std::vector<std::int64_t> kept;
  std::int64_t slots = 0;    // T*K
  std::int64_t dropped = 0;  // slots over capacity (positions = -1)

  std::int64_t num_experts() const { return static_cast<std::int64_t>(routed.size()); }
  // max over experts / mean over experts of `routed`: 1 is perfectly
  // balanced, E means one expert takes everything. NaN when no slot was routed.
  double imbalance() const;
  // dropped / slots (0 when there are no slots).
  double drop_rate() const;
};

// From moe.dispatch's counts [E] i32 and, optionally, positions [T, K] i32
// (dropped slots) and offsets [E+1] i32 (with positions: the slots each
// expert keeps, as the segment each kept position lies in; padding rows are
// never counted). Without positions nothing is known to be dropped and
// `kept` stays empty. Throws moejit::Error on tensors that do not fit
// together (wrong dtypes or ranks, counts not summing to T*K, a position
// outside every segment).
MoeLayerStats moe_layer_stats(std::string layer, const HostTensor& counts, const HostTensor* positions = nullptr,
                              const HostTensor* offsets = nullptr);

// From the offsets [E+1] alone: routed = kept = each segment's length, which
// counts padding rows too when the dispatch block is > 1, and cannot see
// dropped slots.
MoeLayerStats moe_layer_stats_from_offsets(std::string layer, const HostTensor& offsets);

// A plain-text table, one row per layer:
//   layer      e0    e1    e2    e3 |  slots  dropped  max/mean
//   moe.0      12     3     0    17 |     32   2 (6.2%)      2.13
// Layers with different expert counts each get their own header line.
std::string format_moe_stats(std::span<const MoeLayerStats> layers);

}  // namespace moejit
