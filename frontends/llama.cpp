// Llama-family model builder (see llama.h).
#include "frontends/llama.h"

#include <fmt/format.h>

#include "ir/error.h"

namespace moejit {

void validate_llama_config(const LlamaConfig& c) {
  auto positive = [](const char* key, std::int64_t v) {
    if (v <= 0) throw Error(fmt::format("llama config: {}: expected a positive integer, found {}", key, v));
  };
  if (c.architecture != "LlamaForCausalLM" && c.architecture != "MixtralForCausalLM")
    throw Error(fmt::format("llama config: architectures: expected LlamaForCausalLM or MixtralForCausalLM, found '{}'",
                            c.architecture));
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("max_position_embeddings", c.max_position_embeddings);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw Error(fmt::format("llama config: num_key_value_heads: expected a divisor of num_attention_heads ({}), found {}",
                            c.num_attention_heads, c.num_key_value_heads));
  if (c.head_dim <= 0 && c.hidden_size % c.num_attention_heads != 0)
    throw Error(fmt::format("llama config: hidden_size: expected a multiple of num_attention_heads ({}) when head_dim "
                            "is not given, found {}",
                            c.num_attention_heads, c.hidden_size));
  if (!(c.rms_norm_eps > 0)) throw Error(fmt::format("llama config: rms_norm_eps: expected > 0, found {}", c.rms_norm_eps));
  validate_rope(c.rope, c.head_size());
  if (c.architecture == "MixtralForCausalLM" && !c.is_moe())
    throw Error("llama config: num_local_experts: expected > 0 for MixtralForCausalLM, found 0");
  if (c.architecture == "LlamaForCausalLM" && c.is_moe())
    throw Error(fmt::format("llama config: num_local_experts: expected 0 for LlamaForCausalLM, found {}",
                            c.num_local_experts));
  if (c.is_moe() && (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_local_experts))
    throw Error(fmt::format("llama config: num_experts_per_tok: expected 1..num_local_experts ({}), found {}",
                            c.num_local_experts, c.num_experts_per_tok));
}

namespace {

// Grouped-query attention of one layer: x [BT, D] -> [BT, D].
Tensor llama_attention(const Scope& s, Tensor x, const LlamaConfig& c, std::int64_t B, std::int64_t T) {
  Builder& b = s.b();
  const std::int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, Dh = c.head_size();
  const double std = c.initializer_range;
  // [BT, n*Dh] -> [B, n, T, Dh], RoPE before the head transpose (which the
  // attention-layout pass then folds into the attention, as long as no GQA
  // repeat stands between them).
  auto heads = [&](const char* name, std::int64_t n, bool rope) {
    Tensor t = b.reshape(nn::linear(s.child(name), x, n * Dh, {.bias = false, .init_std = std}), {B, T, n, Dh});
    if (rope) t = apply_rope(b, t, HeadLayout::bthd);
    return b.transpose(t, {0, 2, 1, 3});
  };
  Tensor q = heads("q_proj", Hq, true);
  Tensor k = heads("k_proj", Hkv, true);
  Tensor v = heads("v_proj", Hkv, false);
  if (Hkv != Hq) {  // repeat each kv head for its Hq/Hkv query heads: [B, Hkv, T, Dh] -> [B, Hq, T, Dh]
    const std::int64_t rep = Hq / Hkv;
    auto repeat = [&](Tensor t) {  // (rank 3 for the broadcast: every backend's layout ops handle it)
      t = b.reshape(t, {B * Hkv, 1, T * Dh});
      return b.reshape(b.broadcast(t, {B * Hkv, rep, T * Dh}), {B, Hq, T, Dh});
    };
    k = repeat(k);
    v = repeat(v);
  }
  Tensor out = b.attention(q, k, v);                                        // [B, Hq, T, Dh]
  out = b.reshape(b.transpose(out, {0, 2, 1, 3}), {B * T, Hq * Dh});       // [BT, Hq*Dh]
  return nn::linear(s.child("o_proj"), out, c.hidden_size, {.bias = false, .init_std = std});
}

// SwiGLU MLP with Hugging Face names: x [N, D] -> [N, D].
Tensor llama_mlp(const Scope& s, Tensor x, const LlamaConfig& c) {
  Builder& b = s.b();
  const double std = c.initializer_range;
  Tensor gate = nn::linear(s.child("gate_proj"), x, c.intermediate_size, {.bias = false, .init_std = std});
  Tensor up = nn::linear(s.child("up_proj"), x, c.intermediate_size, {.bias = false, .init_std = std});
  return nn::linear(s.child("down_proj"), b.mul(b.silu(gate), up), c.hidden_size, {.bias = false, .init_std = std});
}

Tensor rms_norm(const Scope& s, Tensor x, double eps) {
  Tensor gamma = s.param("weight", {x.dim(-1)}, {ParamInit::Kind::ones}, false);
  return s.b().rms_norm(x, gamma, eps);
}

}  // namespace

LlamaGraph build_llama(Graph& graph, const LlamaConfig& c, const LlamaGraphOptions& options) {
  validate_llama_config(c);
  const std::int64_t B = options.batch, T = options.seq_len, D = c.hidden_size, V = c.vocab_size;
  if (B <= 0 || T <= 0)
    throw Error(fmt::format("llama: expected a positive batch and seq_len, found batch {} and seq_len {}", B, T));
  if (T > c.max_position_embeddings)
    throw Error(fmt::format("llama: seq_len: expected at most max_position_embeddings ({}), found {}",
                            c.max_position_embeddings, T));
  if (c.sliding_window > 0 && T > c.sliding_window)
    throw Error(fmt::format("llama: seq_len: expected at most sliding_window ({}; sliding-window attention is not "
                            "implemented), found {}",
                            c.sliding_window, T));
  LlamaGraph result;
  result.batch = B;
  result.seq_len = T;
  Builder b(graph);
  Scope root(b, result.params, {.training = false});
  Scope model = root.child("model");

  Tensor idx = b.input("idx", {B, T}, DType::i32);
  std::optional<Tensor> targets;
  if (options.with_loss) targets = b.input("targets", {B, T}, DType::i32);
  Tensor x = b.reshape(nn::embedding(model.child("embed_tokens"), idx, V, D, c.initializer_range), {B * T, D});

  std::optional<Tensor> aux_total;
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    Scope h = model.child(fmt::format("layers.{}", layer));
    x = b.add(x, llama_attention(h.child("self_attn"), rms_norm(h.child("input_layernorm"), x, c.rms_norm_eps), c,
                                 B, T));
    Tensor normed = rms_norm(h.child("post_attention_layernorm"), x, c.rms_norm_eps);
    Tensor f;
    if (c.is_moe()) {
      // Mixtral: softmax over all experts, top-k, renormalized; no aux losses.
      nn::MoeOutputs moe = nn::moe_block(
          h.child("block_sparse_moe"), normed,
          {.num_experts = c.num_local_experts, .top_k = c.num_experts_per_tok, .d_expert = c.intermediate_size,
           .activation = "swiglu", .score = "softmax", .order = "softmax_then_topk", .normalize = true,
           .aux_loss_coeff = options.with_loss ? options.aux_loss_coeff : 0.0, .z_loss_coeff = 0.0,
           .entropy_coeff = 0.0, .init_std = c.initializer_range, .proj_std = c.initializer_range});
      f = moe.y;
      if (moe.aux_loss) aux_total = aux_total ? b.add(*aux_total, *moe.aux_loss) : *moe.aux_loss;
      if (options.output_routing) b.output(moe.counts, fmt::format("counts.{}", layer));
    } else {
      f = llama_mlp(h.child("mlp"), normed, c);
    }
    x = b.add(x, f);
  }
  x = rms_norm(model.child("norm"), x, c.rms_norm_eps);
  Tensor head = c.tie_word_embeddings
                    ? Tensor{&graph, graph.find_arg("model.embed_tokens.weight")}
                    : root.param("lm_head.weight", {V, D}, {ParamInit::Kind::normal, c.initializer_range});
  Tensor logits = b.matmul(x, head, false, true);  // [BT, V]
  if (options.output_logits) b.output(logits, "logits");
  if (options.with_loss) {
    Tensor lm_loss = b.cross_entropy(logits, b.reshape(*targets, {B * T}));
    b.output(aux_total ? b.add(lm_loss, *aux_total) : lm_loss, "loss");
    if (aux_total) {
      b.output(lm_loss, "lm_loss");
      b.output(*aux_total, "aux_loss");
    }
  }
  return result;
}

std::vector<ParamSpec> llama_param_specs(const LlamaConfig& config) {
  Graph graph("llama_specs");
  return build_llama(graph, config, {.batch = 1, .seq_len = 1}).params;
}

HostTensor llama_logits(Backend& backend, const LlamaConfig& config, const std::map<std::string, HostTensor>& params,
                        const HostTensor& ids) {
  if (ids.dtype() != DType::i32 || ids.shape().size() != 2)
    throw Error(fmt::format("llama_logits: ids: expected [B, T] i32, found {}", ids.type().str()));
  Graph graph("llama");
  LlamaGraph model = build_llama(graph, config, {.batch = ids.shape()[0], .seq_len = ids.shape()[1]});
  check_parameters(params, model.params, "llama_logits");
  auto exe = backend.compile(graph);
  for (const ParamSpec& spec : model.params) exe->set(spec.name, params.at(spec.name));
  bind_rope_tables(*exe, config.rope);
  exe->set("idx", ids);
  exe->run();
  return exe->get("logits");
}

}  // namespace moejit
