// Helpers the GEMM-family GPU tests share (sm90, sm80, epilogues, fused
// ops): running a graph for its outputs, comparing a 16-bit run with the CPU
// reference, and a routed bf16 expert layer with its backward.
#pragma once
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>

#include "cuda/cuda_test_util.h"
#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"
#include "runtime/backend.h"

namespace moejit::cuda_test {

using Values = std::map<std::string, HostTensor>;

// An environment variable for the scope of a test (the previous value back afterwards).
class EnvOverride {
 public:
  EnvOverride(const char* name, const char* value) : name_(name) {
    if (const char* v = std::getenv(name)) previous_ = v;
    ::setenv(name, value, 1);
  }
  ~EnvOverride() {
    if (previous_) ::setenv(name_, previous_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

// Every output of `graph` after one run on `backend` with `args`.
inline Values run_outputs(Backend& backend, const Graph& graph, const Values& args) {
  auto exe = backend.compile(graph);
  for (const auto& [name, value] : args) exe->set(name, value);
  exe->run();
  Values out;
  for (const auto& o : graph.outputs()) out.emplace(o.name, exe->get(o.name));
  return out;
}

// Whether two tensors have the same type and bytes.
inline bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.type() == b.type() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// Each output within its dtype's tolerance of the CPU's; an f32 output (the
// loss) of a 16-bit product inherits the operands' rounding, so bf16's.
inline void check_close(const Values& gpu, const Values& cpu) {
  for (const auto& [name, want] : cpu) {
    double err = normalized_error(gpu.at(name), want);
    double tol = tolerance(want.dtype() == DType::f32 ? DType::bf16 : want.dtype());
    INFO(fmt::format("{} {}: normalized error {:.3g} (tolerance {:.3g})", name, want.type().str(), err, tol));
    CHECK(err <= tol);
  }
}

// A routed expert layer in bf16: dispatch of given experts, the up
// projection through the permuted rows, GELU, the down projection and the
// weighted combine; `fusions` (a pass pipeline) runs before autodiff, as the
// trainer runs the MoE fusions; then (with `backward`) the backward of x,
// w_up and w_down. A capacity factor > 0 drops the slots past each
// expert's capacity (their rows are zeros).
inline Graph routed_layer_graph(const std::string& name, std::int64_t tokens, std::int64_t d, std::int64_t f, std::int64_t experts,
                                std::int64_t top_k, const std::string& fusions, bool backward = true,
                                double capacity_factor = 0.0) {
  Graph g(name);
  Builder b(g);
  Tensor x = b.input("x", {tokens, d}, DType::bf16);
  Tensor chosen = b.input("experts", {tokens, top_k}, DType::i32);
  Tensor weights = b.input("weights", {tokens, top_k}, DType::bf16);
  Tensor w_up = b.param("w_up", {experts, d, f}, DType::bf16);
  Tensor w_down = b.param("w_down", {experts, f, d}, DType::bf16);
  Tensor target = b.input("target", {tokens, d});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(chosen, {.num_experts = experts, .capacity_factor = capacity_factor});
  Tensor h = b.gelu(b.moe_grouped_matmul(b.moe_permute(x, slots, top_k), w_up, offsets));
  Tensor y = b.moe_combine(b.moe_grouped_matmul(h, w_down, offsets), weights, positions);
  b.output(y, "y");
  b.output(b.mean(b.mul(b.cast(y, DType::f32), target), {0, 1}), "loss");
  run_pipeline(g, fusions);
  if (backward) append_backward(g, {.loss = "loss", .wrt = {"x", "w_up", "w_down"}});
  return g;
}

// loss = mean(f32(gelu(x w1) w2) * target) (y an output too), with the
// gradients of x, w1, w2: dense products in three layouts, the forward's
// gelu foldable into x w1 and the backward's gelu_grad into dy w2^T.
inline Graph mlp_graph(const std::string& name, std::int64_t m, std::int64_t d, std::int64_t f, DType dtype = DType::bf16) {
  Graph g(name);
  Builder b(g);
  Tensor x = b.input("x", {m, d}, dtype);
  Tensor w1 = b.param("w1", {d, f}, dtype), w2 = b.param("w2", {f, d}, dtype);
  Tensor target = b.input("target", {m, d});
  Tensor y = b.matmul(b.gelu(b.matmul(x, w1)), w2);
  b.output(y, "y");
  b.output(b.mean(b.mul(b.cast(y, DType::f32), target), {0, 1}), "loss");
  append_backward(g, {.loss = "loss", .wrt = {"x", "w1", "w2"}});
  return g;
}

}  // namespace moejit::cuda_test
