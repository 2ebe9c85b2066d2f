// GPT-MoE model builder (see gpt_moe.h).
#include "frontends/gpt_moe.h"

#include <fmt/format.h>

#include <cmath>

#include "ir/error.h"

namespace moejit {

GptMoeGraph build_gpt_moe(Graph& graph, const GptMoeConfig& c, const GptMoeGraphOptions& options) {
  validate_config(c);
  if (c.vocab_size <= 0)
    throw Error(fmt::format("gpt_moe: vocab_size: expected a positive vocabulary size (from the tokenizer), found {}",
                            c.vocab_size));
  const std::int64_t B = options.batch;
  const std::int64_t T = options.seq_len > 0 ? options.seq_len : c.block_size;
  if (B <= 0) throw Error(fmt::format("gpt_moe: batch: expected a positive batch size, found {}", B));
  if (T > c.block_size)
    throw Error(fmt::format("gpt_moe: seq_len: expected at most block_size ({}), found {}", c.block_size, T));
  const std::int64_t D = c.n_embd, V = c.vocab_size, rows = B * T;

  GptMoeGraph result;
  result.batch = B;
  result.seq_len = T;
  Builder b(graph);
  // Dropout masks and gating noise: one Philox stream keyed by the config's seed.
  RandomStreams random;
  random.seed = c.seed;
  Scope root(b, result.params, {.training = options.training, .dropout = c.dropout}, &random);
  // GPT-2's scaled init of the residual projections: std / sqrt(2 * n_layer).
  const double proj_std = c.init_std / std::sqrt(2.0 * static_cast<double>(c.n_layer));

  Tensor idx = b.input("idx", {B, T}, DType::i32);
  std::optional<Tensor> targets;
  if (options.with_loss) targets = b.input("targets", {B, T}, DType::i32);

  // Embeddings: tok [B, T, D] (+ learned positions pos [T, D] broadcast
  // over the batch; with rope the positions enter at q and k instead).
  Tensor tok = nn::embedding(root.child("wte"), idx, V, D, c.init_std);
  Tensor x = tok;
  const bool rope = c.position_embedding == "rope";
  if (!rope) {
    Tensor wpe = root.param("wpe.weight", {c.block_size, D}, {ParamInit::Kind::normal, c.init_std});
    Tensor pos = T == c.block_size ? wpe : b.slice(wpe, {0, 0}, {T, D});
    x = b.add(tok, b.broadcast(pos, {B, T, D}));
  }
  x = b.reshape(x, {rows, D});  // [BT, D]
  x = root.dropout(x);

  // Layer groups (MoEUT): block `layer` is built under the name of its group
  // layer h.<layer % G>; repeats (layer >= G) reuse those parameters, so the
  // checkpoint holds one tensor per group layer and autodiff sums the
  // gradients of the repeats.
  Scope shared_root(b, result.params,
                    {.training = options.training, .dropout = c.dropout, .share_params = true}, &random);
  const bool peri = c.layer_norm == "peri";
  std::optional<Tensor> aux_total;
  std::vector<std::pair<std::int64_t, nn::MoeOutputs>> routing;
  std::vector<std::pair<std::int64_t, nn::SwitchHeadOutputs>> att_routing;
  for (std::int64_t layer = 0; layer < c.n_layer; ++layer) {
    const std::int64_t group_layer = c.group_layer(layer);
    Scope h = (layer == group_layer ? root : shared_root).child(fmt::format("h.{}", group_layer));
    Tensor ln_1 = nn::layer_norm(h.child("ln_1"), x);
    Tensor a;
    if (c.attention == "switchhead") {
      // peri-LN: q, k and the routers read LN(x), the values read x.
      nn::SwitchHeadOutputs sh = nn::switchhead_attention(
          h.child("attn"), peri ? x : ln_1, ln_1,
          {.batch = B, .seq_len = T, .n_head = c.n_head, .head_dim = c.head_dim, .num_experts = c.att_n_experts,
           .top_k = c.att_k, .rope = rope, .init_std = c.init_std, .proj_std = proj_std});
      a = sh.y;
      att_routing.emplace_back(layer, sh);
    } else {
      a = nn::causal_self_attention(h.child("attn"), ln_1,
                                    {.batch = B, .seq_len = T, .n_head = c.n_head, .bias = c.bias,
                                     .init_std = c.init_std, .proj_std = proj_std, .rope = rope});
    }
    x = b.add(x, h.dropout(a));
    Tensor normed = nn::layer_norm(h.child("ln_2"), x);
    Tensor f;
    if (c.is_moe_layer(layer)) {
      // peri-LN: the router reads LN(x), the experts read x.
      nn::MoeOutputs moe = nn::moe_block(
          h.child("moe"), peri ? x : normed,
          {.num_experts = c.num_experts, .top_k = c.top_k, .d_expert = c.d_expert, .activation = c.activation,
           .score = c.router_score, .order = c.router_order, .normalize = c.normalize_topk,
           .noisy_gating = c.noisy_gating, .selection_bias = c.selection_bias, .capacity_factor = c.capacity_factor,
           .aux_loss_coeff = c.aux_loss_coeff, .z_loss_coeff = c.z_loss_coeff, .entropy_coeff = c.entropy_coeff,
           .shared_expert = c.shared_expert, .bias = c.bias, .init_std = c.init_std, .proj_std = proj_std,
           .router_type = c.router_type, .expert_dropout = c.expert_dropout},
          normed);
      f = moe.y;
      if (moe.aux_loss) aux_total = aux_total ? b.add(*aux_total, *moe.aux_loss) : *moe.aux_loss;
      result.moe_layers.push_back(layer);
      routing.emplace_back(layer, moe);
      result.routing_tables.push_back({fmt::format("layer {}", layer), fmt::format("experts.{}", layer), layer,
                                       c.num_experts, 1, c.router_type == "expert_choice"});
    } else {
      f = nn::mlp(h.child("mlp"), normed,
                  {.hidden = c.dense_hidden(), .activation = c.activation, .bias = c.bias, .init_std = c.init_std,
                   .proj_std = proj_std});
    }
    x = b.add(x, h.dropout(f));
  }
  result.rng_positions_per_step = random.positions_per_step;
  x = nn::layer_norm(root.child("ln_f"), x);
  // Tied lm head: logits [BT, V] = x [BT, D] · wte.weight [V, D]ᵀ.
  Tensor wte = Tensor{&graph, graph.find_arg("wte.weight")};
  Tensor logits = b.matmul(x, wte, false, true);

  if (options.output_logits) b.output(logits, "logits");
  if (options.with_loss) {
    Tensor lm_loss = b.cross_entropy(logits, b.reshape(*targets, {rows}));
    Tensor loss = aux_total ? b.add(lm_loss, *aux_total) : lm_loss;
    b.output(loss, "loss");
    b.output(lm_loss, "lm_loss");
    if (aux_total) b.output(*aux_total, "aux_loss");
  }
  if (options.output_router) {
    for (auto& [layer, moe] : routing) {
      b.output(moe.router_logits, fmt::format("router_logits.{}", layer));
      if (moe.aux_loss) b.output(*moe.aux_loss, fmt::format("aux_loss.{}", layer));
    }
  }
  if (options.output_routing) {
    for (auto& [layer, moe] : routing) {
      b.output(moe.experts, fmt::format("experts.{}", layer));
      b.output(moe.counts, fmt::format("counts.{}", layer));
    }
    for (auto& [layer, sh] : att_routing) {
      if (sh.value_experts) b.output(*sh.value_experts, fmt::format("att_v_experts.{}", layer));
      b.output(sh.output_experts, fmt::format("att_o_experts.{}", layer));
    }
  }
  // SwitchHead routing tables: rows (token, head), ids h*E + e. After the
  // feed-forward tables, each layer's value then output table.
  for (auto& [layer, sh] : att_routing) {
    const std::int64_t experts = c.n_head * c.att_n_experts;
    if (sh.value_experts)
      result.routing_tables.push_back({fmt::format("layer {} attention values", layer),
                                       fmt::format("att_v_experts.{}", layer), layer, experts, c.n_head, false});
    result.routing_tables.push_back({fmt::format("layer {} attention output", layer),
                                     fmt::format("att_o_experts.{}", layer), layer, experts, c.n_head, false});
  }
  return result;
}

std::vector<ParamSpec> gpt_moe_param_specs(const GptMoeConfig& config) {
  Graph graph("specs");
  GptMoeGraphOptions options{.batch = 1, .seq_len = 1, .training = false, .with_loss = false};
  return build_gpt_moe(graph, config, options).params;
}

std::int64_t count_parameters(const std::vector<ParamSpec>& specs) {
  std::int64_t n = 0;
  for (const ParamSpec& s : specs)
    if (s.role == ArgRole::param) n += s.type.numel();
  return n;
}

}  // namespace moejit
