#include "frontends/moe_layer.h"

#include "ir/builder.h"
#include "passes/autodiff.h"
#include "passes/pass_manager.h"

namespace moejit {

Graph moe_layer_graph(const std::string& name, const MoeLayerShape& s, bool backward) {
  Graph g(name);
  Builder b(g);
  const std::int64_t D = s.d_model, F = s.d_expert, E = s.experts, K = s.top_k;
  Tensor x = b.input("x", {s.tokens, D}, DType::bf16);
  Tensor target = b.input("target", {s.tokens, D}, DType::bf16);  // bf16 as PyTorch holds it (bench/torch_moe_layer.py)
  Tensor w_router = b.param("w_router", {D, E}, DType::bf16);
  Tensor w_up = b.param("w_up", {E, D, F}, DType::bf16);
  Tensor w_down = b.param("w_down", {E, F, D}, DType::bf16);
  Tensor logits = b.cast(b.matmul(x, w_router), DType::f32);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = K, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = E});
  (void)counts;
  Tensor h = b.gelu(b.moe_grouped_matmul(b.moe_permute(x, slots, K), w_up, offsets));
  Tensor y = b.moe_combine(b.moe_grouped_matmul(h, w_down, offsets), b.cast(weights, DType::bf16), positions);
  Tensor aux = b.moe_load_balance_loss(b.softmax(logits), experts, 0.01);
  b.output(y, "y");
  b.output(b.add(b.mean(b.mul(b.cast(y, DType::f32), b.cast(target, DType::f32)), {0, 1}), aux), "loss");
  if (backward) {
    run_pipeline(g, "moe-fusions");
    append_backward(g, {.loss = "loss", .wrt = {"x", "w_router", "w_up", "w_down"}});
  }
  return g;
}

}  // namespace moejit
