// The create functions of every pass (one line each; passes/registry.cpp
// lists them by name), plus small graph utilities the passes share.
#pragma once
#include <memory>

#include "passes/pass.h"

namespace moejit {

std::unique_ptr<Pass> create_canonicalize_pass(const PassOptions& options);
std::unique_ptr<Pass> create_cse_pass(const PassOptions& options);
std::unique_ptr<Pass> create_dce_pass(const PassOptions& options);
// autodiff{loss=NAME wrt=a,b}: wraps append_backward (passes/autodiff.h).
std::unique_ptr<Pass> create_autodiff_pass(const PassOptions& options);
std::unique_ptr<Pass> create_fuse_router_permute_pass(const PassOptions& options);
std::unique_ptr<Pass> create_fuse_expert_gather_scatter_pass(const PassOptions& options);
// moe-tiling{pad-dispatch=true|false}
std::unique_ptr<Pass> create_moe_tiling_pass(const PassOptions& options);
// fuse-elementwise: marks chains of elementwise ops with mj.fusion_group (passes/fuse_elementwise.cpp).
std::unique_ptr<Pass> create_fuse_elementwise_pass(const PassOptions& options);
// fuse-gemm-epilogue: folds mj.gelu / mj.gelu_grad into the GEMM producing
// their operand (attributes mj.epilogue, mj.gemm_epilogue; passes/fuse_gemm_epilogue.cpp).
std::unique_ptr<Pass> create_fuse_gemm_epilogue_pass(const PassOptions& options);
// True for the elementwise ops (one result element from the same element
// of each operand, or from a one-element operand).
bool is_fusible_elementwise(OpKind kind);
// The ops an elementwise chain may contain (the CUDA codegen fuses exactly
// these): the elementwise ops and mj.broadcast, which joins the chain of its
// one reader as a load of its operand at the broadcast index.
bool joins_elementwise_chain(OpKind kind);
// Whether casts are folded into the kernels producing their operand
// (MOEJIT_CAST_FOLDS unset or 1; 0: not; anything else throws):
// fuse-gemm-epilogue's cast and codegen's norm groups (codegen/op_groups.cpp).
bool cast_folds_enabled();
// Whether the fusions run at all (MOEJIT_FUSIONS unset or 1; 0: not; anything
// else throws): with 0 the named pipelines keep only what is not a fusion
// (moe-tiling), the trainer's forward pipeline only mixed precision, and
// codegen forms no op groups: every op its own kernel, the unfused run the
// fused one is checked against (passes/pipelines.cpp).
bool fusions_enabled();
// mixed-precision{dtype=bf16}: bf16 autocast of the matmuls (passes/mixed_precision.cpp).
std::unique_ptr<Pass> create_mixed_precision_pass(const PassOptions& options);
// shard-experts{rank=r world_size=N}: expert parallelism (passes/shard_experts.cpp).
std::unique_ptr<Pass> create_shard_experts_pass(const PassOptions& options);
// all-reduce-grads{world_size=N bucket_mib=25}: data-parallel gradients (passes/all_reduce_grads.cpp).
std::unique_ptr<Pass> create_all_reduce_grads_pass(const PassOptions& options);
// attention-layout: folds head transposes into mj.attention's layout (passes/attention_layout.cpp).
std::unique_ptr<Pass> create_attention_layout_pass(const PassOptions& options);
// fuse-attention-qkv: an attention on the three column thirds of one
// projection reads it packed (mj.attention_qkv; passes/fuse_attention_qkv.cpp).
std::unique_ptr<Pass> create_fuse_attention_qkv_pass(const PassOptions& options);
// memory-plan{print=true|false}: reports the arena plan (passes/memory_plan.h).
std::unique_ptr<Pass> create_memory_plan_pass(const PassOptions& options);

// Erases every op none of whose results reaches a graph output (directly or
// through other ops); keeps arguments and outputs. Returns the number of ops
// erased. dce is this; canonicalize calls it to drop what its rewrites
// orphaned.
int erase_ops_not_reaching_outputs(Graph& graph);
// Erases op i wherever keep[i] is false, the others keeping their order;
// returns how many went (the passes' own dead-op sweeps end with it).
int erase_ops_unless(Graph& graph, const std::vector<bool>& keep);

}  // namespace moejit
