// Builds one MoE layer with the builder API and prints its IR.
//   router -> gate (top-2) -> dispatch -> permute -> experts (GELU) -> combine
#include <cstdio>

#include "ir/builder.h"
#include "ir/printer.h"
#include "ir/verifier.h"

int main() {
  using namespace moejit;
  const std::int64_t tokens = 64, d_model = 32, d_expert = 64, num_experts = 4, top_k = 2;

  Graph graph("moe_layer");
  Builder b(graph);
  Tensor x = b.input("x", {tokens, d_model});
  Tensor w_router = b.param("w_router", {d_model, num_experts});
  Tensor w_up = b.param("w_up", {num_experts, d_model, d_expert});
  Tensor w_down = b.param("w_down", {num_experts, d_expert, d_model});

  Tensor logits = b.matmul(x, w_router);
  auto [weights, experts] = b.moe_gate(logits, {.top_k = top_k, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = num_experts});
  Tensor xs = b.moe_permute(x, slots, top_k);
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);
  Tensor y = b.moe_combine(ys, weights, positions);
  Tensor aux = b.moe_load_balance_loss(b.softmax(logits), experts, 0.01);

  b.output(y, "y");
  b.output(aux, "aux_loss");
  b.output(counts, "tokens_per_expert");
  verify_or_throw(graph);
  std::fputs(print_graph(graph).c_str(), stdout);
  return 0;
}
