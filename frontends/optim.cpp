// Training helpers built from ops: global-norm clipping and AdamW (see optim.h).
#include "frontends/optim.h"

#include <fmt/format.h>

#include <numeric>
#include <optional>

#include "ir/error.h"

namespace moejit {

std::vector<Tensor> as_tensors(Graph& graph, const std::vector<ValueId>& values) {
  std::vector<Tensor> tensors;
  for (auto v : values) tensors.push_back(Tensor{&graph, v});
  return tensors;
}

Tensor global_grad_norm(Builder& b, const std::vector<Tensor>& grads, const GradSharding& sharding) {
  if (grads.empty()) throw Error("global_grad_norm: expected at least one gradient, found none");
  DType dtype = grads[0].dtype();
  if (!is_float(dtype)) throw Error(fmt::format("clip_grad_norm: expected float gradients, found {}", grads[0].type().str()));
  if (!sharding.sharded.empty() && sharding.sharded.size() != grads.size())
    throw Error(fmt::format("global_grad_norm: expected one sharded flag per gradient ({}), found {}", grads.size(),
                            sharding.sharded.size()));

  // norm = sqrt(sum over grads of sum(g * g))    []
  std::optional<Tensor> total, sharded_total;
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    if (g.dtype() != dtype)
      throw Error(fmt::format("clip_grad_norm: gradient #{} has type {}, expected dtype {} (that of gradient #0)", i, g.type().str(),
                              dtype_name(dtype)));
    std::vector<std::int64_t> all(static_cast<std::size_t>(g.rank()));
    std::iota(all.begin(), all.end(), 0);
    Tensor squares = b.sum(b.mul(g, g), all, false);
    std::optional<Tensor>& sum = !sharding.sharded.empty() && sharding.sharded[i] ? sharded_total : total;
    sum = sum ? b.add(*sum, squares) : squares;
  }
  if (sharded_total) {
    Tensor across = b.op1(OpKind::AllReduce, {*sharded_total}, {{"world_size", sharding.world_size}});
    total = total ? b.add(*total, across) : across;
  }
  return b.sqrt(*total);
}

ClippedGrads clip_grad_norm(Builder& b, const std::vector<Tensor>& grads, double max_norm) {
  return clip_grad_norm(b, grads, max_norm, GradSharding{});
}

ClippedGrads clip_grad_norm(Builder& b, const std::vector<Tensor>& grads, double max_norm, const GradSharding& sharding) {
  if (grads.empty()) throw Error("clip_grad_norm: expected at least one gradient, found none");
  if (!(max_norm > 0.0)) throw Error(fmt::format("clip_grad_norm: expected max_norm > 0, found {}", max_norm));
  DType dtype = grads[0].dtype();
  Tensor norm = global_grad_norm(b, grads, sharding);

  // factor = min(1, max_norm / (norm + 1e-6))    []
  Tensor limit = b.constant(max_norm, {}, dtype);
  Tensor ratio = b.div(limit, b.add(norm, b.constant(1e-6, {}, dtype)));
  Tensor factor = b.minimum(b.constant(1.0, {}, dtype), ratio);

  ClippedGrads out{{}, norm};
  for (const Tensor& g : grads) out.grads.push_back(b.mul(g, g.rank() == 0 ? factor : b.broadcast(factor, g.shape())));
  return out;
}

namespace {

Tensor scalar_input(Builder& b, const std::string& name) {
  Graph& graph = b.graph();
  const TensorType scalar{DType::f32, {}};
  ValueId existing = graph.find_arg(name);
  if (existing == kNoValue) return b.input(name, {}, DType::f32);
  if (graph.type(existing) != scalar)
    throw Error(fmt::format("append_adamw: argument '{}' exists with type {}, expected {}", name, graph.type(existing).str(),
                            scalar.str()));
  return Tensor{&graph, existing};
}

}  // namespace

AdamWStep append_adamw(Builder& b, const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const AdamWOptions& options) {
  Graph& graph = b.graph();
  if (params.size() != grads.size())
    throw Error(fmt::format("append_adamw: expected one gradient per param, found {} params and {} gradients", params.size(),
                            grads.size()));
  AdamWStep step{scalar_input(b, "lr"), scalar_input(b, "step"), {}};
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const Arg* arg = graph.arg_of(p.id);
    if (!arg) throw Error(fmt::format("append_adamw: param #{} is not an argument of @{}", i, graph.name()));
    const std::string name = graph.value(p.id).name;  // a copy: new args reallocate the value table
    if (grads[i].type() != p.type())
      throw Error(fmt::format("append_adamw: gradient of '{}' has type {}, expected {}", name, grads[i].type().str(), p.type().str()));
    Tensor m = b.state("m." + name, p.shape(), p.dtype());
    Tensor v = b.state("v." + name, p.shape(), p.dtype());
    auto [new_p, new_m, new_v] = b.adamw(p, grads[i], m, v, step.lr, step.step, options);
    b.output(new_p, "new." + name, name);
    b.output(new_m, "new.m." + name, "m." + name);
    b.output(new_v, "new.v." + name, "v." + name);
    step.moment_names.push_back("m." + name);
    step.moment_names.push_back("v." + name);
  }
  return step;
}

AdamWStep append_adamw(Graph& graph, const std::vector<std::string>& param_names, const std::vector<ValueId>& grads,
                       const AdamWOptions& options) {
  std::vector<Tensor> params;
  for (const auto& name : param_names) {
    ValueId v = graph.find_arg(name);
    if (v == kNoValue) throw Error(fmt::format("append_adamw: '{}' is not an argument of @{}", name, graph.name()));
    params.push_back(Tensor{&graph, v});
  }
  Builder b(graph);
  return append_adamw(b, params, as_tensors(graph, grads), options);
}

}  // namespace moejit
