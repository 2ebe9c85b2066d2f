// The registry of passes: one explicit line per pass (a static-initializer
// registration would be dropped by the linker from a static library).
//
// To add a pass: declare `std::unique_ptr<Pass> create_<name>_pass(const
// PassOptions&)` in passes/passes.h and add its line below, listing the
// option keys it takes (create_pass rejects any other key).
#include <fmt/format.h>

#include "ir/error.h"
#include "passes/pass.h"
#include "passes/passes.h"

namespace moejit {

const std::vector<PassRegistration>& registered_passes() {
  static const std::vector<PassRegistration> passes = {
      {"canonicalize", "fold constants and simplify algebraic identities (x+0, x*1, reshape of reshape, ...)",
       create_canonicalize_pass},
      {"cse", "merge ops with equal kind, operands and attributes", create_cse_pass},
      {"dce", "erase ops none of whose results reaches an output", create_dce_pass},
      {"autodiff", "append the backward graph of a scalar loss (options: loss=NAME wrt=a,b)", create_autodiff_pass,
       {"loss", "wrt"}},
      {"fuse-router-permute", "fuse router matmul + moe.gate + moe.dispatch + moe.permute into moe.route",
       create_fuse_router_permute_pass},
      {"fuse-expert-gather-scatter", "fold moe.permute into the first expert matmul and moe.combine into the last",
       create_fuse_expert_gather_scatter_pass},
      {"moe-tiling", "choose tile_m/n/k of the expert matmuls; pad the dispatch to tile_m (options: pad-dispatch=true|false)",
       create_moe_tiling_pass, {"pad-dispatch"}},
      {"fuse-gemm-epilogue", "fold mj.gelu / mj.gelu_grad into the epilogue of the 16-bit GEMM producing their operand (attribute mj.epilogue; MOEJIT_GEMM_EPILOGUES=all: gelu_grad too, 0: off)",
       create_fuse_gemm_epilogue_pass},
      {"fuse-elementwise", "mark chains of single-use elementwise ops as one fused kernel (attribute mj.fusion_group)",
       create_fuse_elementwise_pass},
      {"mixed-precision", "bf16 autocast (PyTorch AMP): matmuls and attention in bf16, the rest and the router in f32; before autodiff (options: dtype=bf16)",
       create_mixed_precision_pass, {"dtype"}},
      {"shard-experts", "expert parallelism: keep E/N experts per rank, exchange the routed rows by all_to_all; before autodiff and the MoE fusions (options: rank=r world_size=N)",
       create_shard_experts_pass, {"rank", "world_size"}},
      {"all-reduce-grads", "data parallelism: average the gradients over ranks (dense ones all-reduced in buckets), and the loss; after autodiff (options: world_size=N bucket_mib=25)",
       create_all_reduce_grads_pass, {"bucket_mib", "world_size"}},
      {"attention-layout", "fold the head transposes (0, 2, 1, 3) around mj.attention / mj.attention_grad into layout = \"bthd\"; after autodiff",
       create_attention_layout_pass},
      {"fuse-attention-qkv", "an attention on the q, k, v column thirds of one [B*T, 3D] projection reads it packed (mj.attention_qkv, whose gradient writes one d_qkv); before autodiff",
       create_fuse_attention_qkv_pass},
      {"memory-plan", "plan every intermediate value into one arena; report its size (options: print=true|false)",
       create_memory_plan_pass, {"print"}},
  };
  return passes;
}

const PassRegistration* find_pass(std::string_view name) {
  for (const auto& registration : registered_passes())
    if (registration.name == name) return &registration;
  return nullptr;
}

std::unique_ptr<Pass> create_pass(std::string_view name, const PassOptions& options) {
  const PassRegistration* registration = find_pass(name);
  if (!registration) {
    std::vector<std::string> known;
    for (const auto& r : registered_passes()) known.push_back(r.name);
    throw Error(fmt::format("unknown pass '{}'; known passes: {}", name, fmt::join(known, ", ")));
  }
  for (const auto& [key, value] : options) {
    bool taken = false;
    for (const auto& allowed : registration->options) taken = taken || allowed == key;
    if (!taken) {
      if (registration->options.empty())
        throw Error(fmt::format("pass '{}' takes no options, found '{}={}'", name, key, value));
      throw Error(fmt::format("pass '{}' has no option '{}' (its options: {})", name, key,
                              fmt::join(registration->options, ", ")));
    }
  }
  auto pass = registration->create(options);
  MOEJIT_ASSERT(pass != nullptr, fmt::format("create function of pass '{}' returned null", name));
  return pass;
}

}  // namespace moejit
