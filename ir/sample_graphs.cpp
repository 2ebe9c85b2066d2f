// Sample graphs (see ir/sample_graphs.h). Built with the Builder, so each op
// is checked by its shape rule as it is added.
#include "ir/sample_graphs.h"

#include <fmt/format.h>

#include "ir/builder.h"
#include "ir/error.h"

namespace moejit {

namespace {

// Makes every op result that nothing consumes an output named after its op
// ("gelu_grad_57", "layer_norm_grad_58_r1"), so the graph has no dead op.
void output_unused_results(Graph& graph) {
  auto uses = graph.use_counts();
  for (std::size_t i = 0; i < graph.ops().size(); ++i) {
    const Op& op = graph.ops()[i];
    std::string base(op_name(op.kind));
    base = base.substr(base.find('.') + 1);
    for (std::size_t r = 0; r < op.results.size(); ++r) {
      if (uses[static_cast<std::size_t>(op.results[r])] > 0) continue;
      std::string name = op.results.size() == 1 ? fmt::format("{}_{}", base, i) : fmt::format("{}_{}_r{}", base, i, r);
      graph.add_output(op.results[r], name);
    }
  }
}

}  // namespace

Graph make_all_ops_graph() {
  const std::int64_t tokens = 4, d_model = 8, num_experts = 4, top_k = 2, d_expert = 6, vocab = 10;
  Graph graph("all_ops");
  Builder b(graph);

  // ---- arguments ----
  Tensor x = b.input("x", {tokens, d_model});
  Tensor ids = b.input("ids", {tokens}, DType::i32);  // token ids, also the targets
  Tensor lr = b.input("lr", {});
  Tensor step = b.input("step", {});
  Tensor rng_offset = b.input("rng_offset", {}, DType::i64);  // step_offset of the random ops
  Tensor table = b.param("embedding", {vocab, d_model});
  Tensor w = b.param("w", {d_model, d_model});
  Tensor gamma = b.param("gamma", {d_model});
  Tensor beta = b.param("beta", {d_model});
  Tensor w_vocab = b.param("w_vocab", {d_model, vocab});
  Tensor w_router = b.param("w_router", {d_model, num_experts});
  Tensor w_up = b.param("w_up", {num_experts, d_model, d_expert});
  Tensor w_down = b.param("w_down", {num_experts, d_expert, d_model});
  Tensor router_bias = b.state("router_bias", {num_experts});  // aux-loss-free balancing bias
  Tensor w_m = b.state("w_m", {d_model, d_model});
  Tensor w_v = b.state("w_v", {d_model, d_model});

  // ---- elementwise ----  h, e, u, d: [T, D]
  Tensor h = b.add(b.embedding(table, ids), x);
  Tensor e = b.exp(b.neg(h));  // > 0, so log, sqrt and rsqrt are finite
  Tensor u = b.add(b.add(b.log(e), b.sqrt(e)), b.rsqrt(e));
  u = b.add(u, b.tanh(h));
  u = b.add(u, b.relu(h));
  u = b.add(u, b.gelu(h));
  u = b.add(u, b.silu(h));
  u = b.add(u, b.sigmoid(h));
  u = b.add(u, b.softplus(h));
  Tensor d = b.div(b.sub(u, h), b.add(e, b.full_like(e, 1.0)));
  d = b.minimum(b.maximum(b.mul(d, h), b.full_like(d, -4.0)), b.full_like(d, 4.0));
  Tensor s = b.where(b.compare(d, h, "gt"), d, h);
  Tensor back = b.cast(b.cast(s, DType::bf16), DType::f32);

  // ---- reductions and normalizations ----
  Tensor row_sum = b.sum(back, {1});               // [T]
  Tensor col_mean = b.mean(back, {0}, true);       // [1, D]
  Tensor row_max = b.max(back, {-1}, true);        // [T, 1]
  Tensor centered = b.add(b.sub(back, b.broadcast(row_max, {tokens, d_model})), b.broadcast(col_mean, {tokens, d_model}));
  Tensor row_sum_wide = b.broadcast(b.reshape(row_sum, {tokens, 1}), {tokens, d_model});
  centered = b.add(centered, b.softmax(row_sum_wide));
  centered = b.add(centered, b.log_softmax(centered));
  Tensor normed = b.layer_norm(centered, gamma, beta);
  Tensor rms = b.rms_norm(normed, gamma);

  // ---- matmul and layout ----
  Tensor mixed = b.matmul(b.matmul(rms, w), w, false, true);              // [T, D]
  Tensor heads = b.transpose(b.reshape(mixed, {1, tokens, 2, d_model / 2}), {0, 2, 1, 3});  // [1, 2, T, D/2]
  std::vector<Tensor> attention = b.op(OpKind::Attention, {heads, heads, heads}, {{"scale", 0.0}});
  Tensor attended = attention[0];  // [1, 2, T, D/2]; attention[1] is lse [1, 2, T]
  Tensor packed = b.reshape(b.concat({mixed, mixed, mixed}, 1), {1, tokens, 3, 2, d_model / 2});  // [1, T, 3, 2, D/2]
  std::vector<Tensor> packed_attention = b.op(OpKind::AttentionQkv, {packed}, {{"scale", 0.0}});  // [1, T, 2, D/2], [1, 2, T]
  Tensor flat = b.reshape(b.transpose(attended, {0, 2, 1, 3}), {tokens, d_model});
  Tensor top = b.slice(flat, {0, 0}, {2, d_model});
  Tensor bottom = b.slice(flat, {2, 0}, {tokens, d_model});
  Tensor dense = b.add(b.concat({bottom, top}, 0), b.pad(top, {0, 0}, {2, 0}));  // [T, D]

  // ---- model-level ops ----
  Tensor logits = b.matmul(dense, w_vocab);  // [T, V]
  b.output(b.cross_entropy(logits, ids), "loss");
  Tensor noisy = b.add(b.dropout(dense, 0.1, 7), b.random_normal({tokens, d_model}, 3));
  // The same ops with a run-time step_offset added to their offset attribute.
  noisy = b.add(noisy, b.mul(b.dropout(dense, 0.5, 7, 40, &rng_offset),
                             b.random_normal({tokens, d_model}, 3, 5, DType::f32, &rng_offset)));

  // ---- MoE layer, unfused ----
  Tensor router_logits = b.matmul(noisy, w_router);  // [T, E]
  auto [weights, experts] = b.moe_gate(router_logits, {.top_k = top_k, .normalize = true}, &router_bias);
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = num_experts});
  Tensor xs = b.moe_permute(noisy, slots, top_k);  // [N, D]
  Tensor hidden = b.gelu(b.op1(OpKind::GroupedMatmul, {xs, w_up, offsets},
                               {{"transpose_w", false}, {"tile_m", std::int64_t{16}}, {"tile_n", std::int64_t{16}},
                                {"tile_k", std::int64_t{8}}}));  // [N, F]
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);          // [N, D]
  b.output(b.moe_combine(ys, weights, positions), "moe_out");
  b.output(counts, "tokens_per_expert");
  Tensor probs = b.softmax(router_logits);
  b.output(b.moe_load_balance_loss(probs, experts, 0.01), "load_balance_loss");
  b.output(b.moe_z_loss(router_logits, 0.001), "z_loss");
  b.output(b.moe_entropy_reg(probs, 0.01), "entropy_reg");
  // Expert-choice routing: each expert takes its top-C tokens by probability.
  auto chosen = b.op(OpKind::ExpertChoice, {probs}, {{"capacity_factor", 1.0}, {"top_k", top_k}});
  b.output(b.moe_permute(noisy, chosen[0], num_experts), "expert_choice_rows");

  // ---- communication, one rank (the identity) ----
  const AttrList one_rank{{"world_size", std::int64_t{1}}};
  b.output(b.op1(OpKind::AllReduce, {dense}, one_rank), "all_reduced");
  Tensor gathered_rows = b.op1(OpKind::AllGather, {dense}, one_rank);  // [T, D]
  b.output(b.op1(OpKind::ReduceScatter, {gathered_rows}, one_rank), "reduce_scattered");
  // The rows routed to expert 0 all go to rank 0: a count within xs's rows.
  auto exchanged = b.op(OpKind::AllToAll, {xs, b.slice(counts, {0}, {1})}, one_rank);  // [N, D], [1]
  b.output(exchanged[0], "all_to_all_rows");

  // ---- MoE layer, fused forms ----
  auto route = b.op(OpKind::Route, {noisy, w_router, router_bias},
                    {{"block", std::int64_t{1}}, {"capacity_factor", 1.25}, {"normalize", true},
                     {"num_experts", num_experts}, {"order", std::string("topk_then_softmax")},
                     {"score", std::string("softmax")}, {"top_k", top_k}});
  // route: logits, weights, experts, slots, offsets, positions, counts, xs
  Tensor gathered = b.op1(OpKind::GatherMatmul, {noisy, w_up, route[3], route[4], route[5]}, {{"top_k", top_k}});  // [N, F]
  b.output(b.op(OpKind::MatmulCombine, {b.gelu(gathered), w_down, route[4], route[1], route[5]})[0], "fused_moe_out");

  // ---- backward helpers ----
  Tensor dy = b.full_like(x, 0.5);  // [T, D]
  Tensor dloss = b.constant(1.0, {});
  b.op(OpKind::GeluGrad, {dense, dy});
  b.op(OpKind::LayerNormGrad, {centered, gamma, dy}, {{"eps", 1e-5}});
  b.op(OpKind::RmsNormGrad, {normed, gamma, dy}, {{"eps", 1e-5}});
  b.op(OpKind::AttentionGrad, {heads, heads, heads, attended, attention[1], attended}, {{"scale", 0.0}});
  b.op(OpKind::AttentionQkvGrad, {packed, packed_attention[0], packed_attention[1], packed_attention[0]}, {{"scale", 0.0}});
  b.op(OpKind::CrossEntropyGrad, {logits, ids, dloss});
  b.op(OpKind::EmbeddingGrad, {ids, dy}, {{"num_embeddings", vocab}});
  b.op(OpKind::GateGrad, {router_logits, experts, b.full_like(weights, 1.0)},
       {{"normalize", true}, {"order", std::string("softmax_then_topk")}, {"score", std::string("softmax")}});
  b.op(OpKind::PermuteGrad, {xs, positions});
  b.op(OpKind::GroupedMatmulWgrad, {xs, hidden, offsets});
  b.op(OpKind::CombineGrad, {ys, weights, positions, dy});
  b.op(OpKind::LoadBalanceLossGrad, {probs, experts, dloss}, {{"coeff", 0.01}});
  b.op(OpKind::ZLossGrad, {router_logits, dloss}, {{"coeff", 0.001}});
  b.op(OpKind::EntropyRegGrad, {probs, dloss}, {{"coeff", 0.01}});

  // ---- optimizer: one AdamW step on w, with its moments as state ----
  Tensor w_grad = b.matmul(rms, dy, true, false);  // [D, D]
  auto [new_w, new_m, new_v] = b.adamw(w, w_grad, w_m, w_v, lr, step);
  b.output(new_w, "w_new", "w");
  b.output(new_m, "w_m_new", "w_m");
  b.output(new_v, "w_v_new", "w_v");

  output_unused_results(graph);
  return graph;
}

Graph make_moe_layer_graph() {
  const std::int64_t tokens = 64, d_model = 32, d_expert = 64, num_experts = 4, top_k = 2;
  Graph graph("moe_layer");
  Builder b(graph);
  Tensor x = b.input("x", {tokens, d_model});
  Tensor w_router = b.param("w_router", {d_model, num_experts});
  Tensor w_up = b.param("w_up", {num_experts, d_model, d_expert});
  Tensor w_down = b.param("w_down", {num_experts, d_expert, d_model});

  Tensor logits = b.matmul(x, w_router);  // [T, E]
  auto [weights, experts] = b.moe_gate(logits, {.top_k = top_k, .normalize = true});
  auto [slots, offsets, positions, counts] = b.moe_dispatch(experts, {.num_experts = num_experts});
  Tensor xs = b.moe_permute(x, slots, top_k);                            // [N, D]
  Tensor hidden = b.gelu(b.moe_grouped_matmul(xs, w_up, offsets));       // [N, F]
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);             // [N, D]
  Tensor y = b.moe_combine(ys, weights, positions);                      // [T, D]
  Tensor aux = b.moe_load_balance_loss(b.softmax(logits), experts, 0.01);

  b.output(y, "y");
  b.output(aux, "aux_loss");
  b.output(counts, "tokens_per_expert");
  return graph;
}

}  // namespace moejit
