// Training helpers built from ops, appended to a graph after the backward
// pass (passes/autodiff.h): global-norm gradient clipping and AdamW.
//
//   Graph g;  Builder b(g);  ... forward, output "loss" ...
//   auto grads = append_backward(g, {.loss = "loss"});
//   auto clipped = clip_grad_norm(b, as_tensors(g, grads), 1.0);
//   auto step = append_adamw(b, params, clipped.grads, {});
//   // bind lr and step (1-based) before each run, the moments once (zeros);
//   // each run then replaces every param, m.<name> and v.<name> in place.
#pragma once
#include <string>
#include <vector>

#include "ir/builder.h"

namespace moejit {

// Tensor handles for value ids of `graph` (what append_backward returns).
std::vector<Tensor> as_tensors(Graph& graph, const std::vector<ValueId>& values);

struct ClippedGrads {
  std::vector<Tensor> grads;  // each g * min(1, max_norm / (norm + 1e-6))
  Tensor norm;                // [] the global L2 norm sqrt(sum_g sum(g^2)), before clipping
};

// Scales all gradients by one factor so that their global L2 norm is at most
// max_norm (the norm is computed in the grads' dtype; all grads must share
// one float dtype). Throws moejit::Error on an empty list, mixed dtypes or
// max_norm <= 0.
ClippedGrads clip_grad_norm(Builder& b, const std::vector<Tensor>& grads, double max_norm);

// Expert parallelism (docs/scale.md): which gradients are a rank's slice of
// a sharded tensor (`sharded[i]` for grads[i]) among `world_size` ranks. The
// global norm then adds the all_reduce (comm.all_reduce) of the sharded
// gradients' squares to the dense ones' (every rank has the same dense
// gradients after all-reduce-grads), so every rank clips by the same factor.
struct GradSharding {
  std::vector<bool> sharded;  // empty: nothing is sharded
  std::int64_t world_size = 1;
};
ClippedGrads clip_grad_norm(Builder& b, const std::vector<Tensor>& grads, double max_norm, const GradSharding& sharding);
// The global L2 norm alone, sqrt(sum_g sum(g^2)) (with `sharding` as above).
Tensor global_grad_norm(Builder& b, const std::vector<Tensor>& grads, const GradSharding& sharding = {});

struct AdamWStep {
  Tensor lr;    // input "lr"   [] f32, the learning rate of this step
  Tensor step;  // input "step" [] f32, 1-based step count (bias correction)
  std::vector<std::string> moment_names;  // "m.<name>", "v.<name>" per param
};

// For each param p (an f32 argument) with gradient g: adds state arguments
// m.<p> and v.<p> (same type as p; bind them to zeros before the first run),
// inputs "lr" and "step" (reused if the graph already has them with type
// tensor<f32>), one mj.adamw op, and outputs "new.<p>", "new.m.<p>",
// "new.v.<p>" that update p, m.<p> and v.<p>. Throws moejit::Error when a
// param is not an argument, the lists differ in length, or types differ.
AdamWStep append_adamw(Builder& b, const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const AdamWOptions& options = {});

// The same, with params named and grads as value ids (append_backward's result).
AdamWStep append_adamw(Graph& graph, const std::vector<std::string>& param_names, const std::vector<ValueId>& grads,
                       const AdamWOptions& options = {});

}  // namespace moejit
