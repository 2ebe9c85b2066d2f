// The graphs moe_bench times, each with its arguments and its floor.
//
//   grouped_matmul  xs [N, D], w [E, D, F], offsets [E+1] -> ys [N, F]  (one op)
//   route           x [T, D], w_router [D, E] -> matmul, moe.gate, moe.dispatch,
//                   moe.permute -> xs, weights, positions, offsets
//                   (unfused; or "fused": one moe.route after fuse-router-permute)
//   layer           router -> experts (grouped matmul, GELU, grouped matmul)
//                   -> combine, loss = mean(y * target) + load-balance aux loss,
//                   append_backward wrt x, w_router, w_up, w_down
//                   (unfused; or "fused": fuse-router-permute and
//                   fuse-expert-gather-scatter on the forward graph first)
//   dense_matmul    a [M, K] x b [K, N] (one mj.matmul: what the backend's
//                   matmul reaches, for context)
//
// Sizes: T tokens, D d_model, F d_expert, E experts, K top_k, N = T*K routed
// rows (dropless, no padding).
//
// Floor (METHOD.md): FLOPs of the matmuls only (2 per multiply-add;
// elementwise, softmax and top-k work is not counted), and bytes = every
// graph argument read once plus every output written once, in the graph's
// dtypes (f32). Intermediates count nothing, so the floor of a whole layer is
// a bound no real implementation reaches; it says how far away we are.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "runtime/host_tensor.h"

namespace moejit::bench {

struct MoeShape {
  std::int64_t tokens = 0, d_model = 0, d_expert = 0, experts = 0, top_k = 0;
  std::int64_t rows() const { return tokens * top_k; }
  std::string label() const;  // "T4096 D512 F1024 E8 K2"
  // Work of the largest matmuls (to pick the smallest shape).
  double size() const { return static_cast<double>(rows()) * static_cast<double>(d_model) * static_cast<double>(d_expert); }
};
// "T,D,F,E,K" -> shape; throws moejit::Error naming the text when malformed
// or when a size is < 1 or top_k > experts.
MoeShape parse_moe_shape(const std::string& text);

struct Floor {
  double flops = 0.0;
  double bytes = 0.0;
};

struct BenchCase {
  std::string name;   // "grouped_matmul", "route", "route (fused)", "layer fwd+bwd", ...
  Graph graph;
  std::map<std::string, HostTensor> args;
  Floor floor;
  double slack = 1.0;  // tolerance multiplier against the CPU reference (longer chains)
  // Compile with kUnfusedCudaPipeline (no MoE fusions): the unfused twin of a fused case.
  bool unfused = false;
};

// What the unfused cases compile with on the GPU: the CUDA backend's pipeline
// (cuda-pipeline) without the MoE fusions, which would fuse the route after
// autodiff; the same tiles as the fused twin.
inline constexpr const char* kUnfusedCudaPipeline = "moe-tiling{pad-dispatch=false},fuse-elementwise";

BenchCase make_grouped_matmul_case(const MoeShape& shape, std::uint64_t seed);
BenchCase make_route_case(const MoeShape& shape, bool fused, std::uint64_t seed);
BenchCase make_layer_case(const MoeShape& shape, bool fused, std::uint64_t seed);
BenchCase make_dense_matmul_case(std::int64_t m, std::int64_t n, std::int64_t k, std::uint64_t seed);

// Host reference of a few rows of a grouped matmul, in double: for each row
// r in `rows`, ys[r, :] = xs[r, :] . w[e] with e the expert whose segment
// holds r (zero outside every segment). Returns the normalized error of
// `ys` on those rows.
double spot_check_grouped_matmul(const HostTensor& xs, const HostTensor& w, const HostTensor& offsets, const HostTensor& ys,
                                 const std::vector<std::int64_t>& rows);

}  // namespace moejit::bench
