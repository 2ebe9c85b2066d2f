// nn-level builders (see nn.h): linear, embedding, layer norm, causal
// self-attention, MLP, the MoE block (token or expert choice, sigma-MoE
// options) and SwitchHead attention, plus parameter initialization.
#include "frontends/nn.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "frontends/moe_gating.h"
#include "frontends/rope.h"
#include "ir/error.h"

namespace moejit {

Scope::Scope(Builder& builder, std::vector<ParamSpec>& params, ScopeOptions options, RandomStreams* random,
             std::string prefix)
    : builder_(&builder), params_(&params), options_(options), random_(random), prefix_(std::move(prefix)) {}

Scope Scope::child(std::string_view name) const {
  return Scope(*builder_, *params_, options_, random_, prefix_ + std::string(name) + ".");
}

std::string Scope::full_name(std::string_view name) const { return prefix_ + std::string(name); }

Tensor Scope::param(std::string_view name, Shape shape, ParamInit init, bool weight_decay) const {
  std::string full = full_name(name);
  auto existing = std::find_if(params_->begin(), params_->end(), [&](const ParamSpec& p) { return p.name == full; });
  if (existing != params_->end()) {
    if (!options_.share_params)
      throw Error(fmt::format("nn: parameter {}: expected a new name, found one created before (only a scope with "
                              "share_params reuses parameters)",
                              full));
    if (existing->type.shape != shape || existing->role != ArgRole::param)
      throw Error(fmt::format("nn: shared parameter {}: expected {} as created before, found a use as {}", full,
                              shape_str(existing->type.shape), shape_str(shape)));
    return Tensor{&builder_->graph(), builder_->graph().find_arg(full)};
  }
  Tensor t = builder_->param(full, shape);
  params_->push_back({full, TensorType{DType::f32, std::move(shape)}, init, weight_decay, ArgRole::param});
  return t;
}

Tensor Scope::state(std::string_view name, Shape shape, ParamInit init) const {
  std::string full = full_name(name);
  Tensor t = builder_->state(full, shape);
  params_->push_back({full, TensorType{DType::f32, std::move(shape)}, init, false, ArgRole::state});
  return t;
}

RandomSite Scope::random_site(std::int64_t count) const {
  MOEJIT_ASSERT(random_ != nullptr, "a training scope with random ops (dropout, noisy gating) needs RandomStreams");
  if (!random_->rng_offset) random_->rng_offset = builder_->input("rng_offset", {}, DType::i64);
  RandomSite site{random_->seed, random_->positions_per_step, *random_->rng_offset};
  random_->positions_per_step += count;
  return site;
}

Tensor Scope::dropout(Tensor x) const {
  if (!options_.training || options_.dropout <= 0.0) return x;
  RandomSite site = random_site(x.type().numel());
  return builder_->dropout(x, options_.dropout, site.seed, site.offset, &site.step_offset);
}

namespace nn {

Tensor linear(const Scope& s, Tensor x, std::int64_t out_features, const LinearOptions& options) {
  if (x.rank() != 2)
    throw Error(fmt::format("nn::linear {}: expected x of rank 2 [N, in], found {}", s.full_name("weight"),
                            x.type().str()));
  std::int64_t in_features = x.dim(1);
  Tensor w = s.param("weight", {out_features, in_features}, {ParamInit::Kind::normal, options.init_std},
                         options.weight_decay);
  Tensor y = s.b().matmul(x, w, false, true);  // [N, in] x [out, in]^T -> [N, out]
  if (options.bias) {
    Tensor bias = s.param("bias", {out_features}, {ParamInit::Kind::zeros}, false);
    y = s.b().add(y, s.b().broadcast(bias, {x.dim(0), out_features}));
  }
  return y;
}

Tensor embedding(const Scope& s, Tensor ids, std::int64_t num, std::int64_t dim, double init_std) {
  Tensor table = s.param("weight", {num, dim}, {ParamInit::Kind::normal, init_std}, true);
  return s.b().embedding(table, ids);
}

Tensor layer_norm(const Scope& s, Tensor x, double eps) {
  std::int64_t channels = x.dim(-1);
  Tensor gamma = s.param("weight", {channels}, {ParamInit::Kind::ones}, false);
  Tensor beta = s.param("bias", {channels}, {ParamInit::Kind::zeros}, false);
  return s.b().layer_norm(x, gamma, beta, eps);
}

Tensor causal_self_attention(const Scope& s, Tensor x, const AttentionOptions& o) {
  Builder& b = s.b();
  const std::int64_t rows = x.dim(0), d_model = x.dim(1);
  if (rows != o.batch * o.seq_len)
    throw Error(fmt::format("nn::causal_self_attention {}: expected x with batch*seq_len = {} rows, found {}",
                            s.full_name(""), o.batch * o.seq_len, x.type().str()));
  if (d_model % o.n_head != 0)
    throw Error(fmt::format("nn::causal_self_attention {}: expected d_model divisible by n_head {}, found {}",
                            s.full_name(""), o.n_head, d_model));
  const std::int64_t head_dim = d_model / o.n_head;
  Tensor qkv = linear(s.child("c_attn"), x, 3 * d_model, {.bias = o.bias, .init_std = o.init_std});  // [BT, 3D]
  // RoPE rotates q and k before the head transpose, so that every operand
  // of the attention is a transpose the attention-layout pass folds away.
  auto heads = [&](std::int64_t part, bool rope) {
    Tensor t = b.slice(qkv, {0, part * d_model}, {rows, (part + 1) * d_model});  // [BT, D]
    t = b.reshape(t, {o.batch, o.seq_len, o.n_head, head_dim});                 // [B, T, H, Dh]
    if (rope) t = apply_rope(b, t, HeadLayout::bthd);
    return b.transpose(t, {0, 2, 1, 3});  // [B, H, T, Dh]
  };
  Tensor q = heads(0, o.rope), k = heads(1, o.rope), v = heads(2, false);
  Tensor out = b.attention(q, k, v);                  // [B, H, T, Dh]
  out = b.transpose(out, {0, 2, 1, 3});               // [B, T, H, Dh]
  out = b.reshape(out, {rows, d_model});              // [BT, D]
  return linear(s.child("c_proj"), out, d_model, {.bias = o.bias, .init_std = o.proj_std});
}

Tensor mlp(const Scope& s, Tensor x, const MlpOptions& o) {
  Builder& b = s.b();
  const std::int64_t d_model = x.dim(1);
  Tensor hidden;
  if (o.activation == "gelu") {
    hidden = b.gelu(linear(s.child("c_fc"), x, o.hidden, {.bias = o.bias, .init_std = o.init_std}));
  } else if (o.activation == "swiglu") {
    Tensor gate = b.silu(linear(s.child("c_gate"), x, o.hidden, {.bias = o.bias, .init_std = o.init_std}));
    hidden = b.mul(gate, linear(s.child("c_fc"), x, o.hidden, {.bias = o.bias, .init_std = o.init_std}));
  } else {
    throw Error(fmt::format("nn::mlp {}: expected activation gelu or swiglu, found '{}'", s.full_name(""),
                            o.activation));
  }
  return linear(s.child("c_proj"), hidden, d_model, {.bias = o.bias, .init_std = o.proj_std});
}

namespace {

// The experts' hidden activation of one routed row block.
Tensor expert_activation(const Scope& s, Tensor xs, Tensor hidden, Tensor offsets, const MoeOptions& o) {
  Builder& b = s.b();
  const std::int64_t E = o.num_experts, d_model = xs.dim(1), F = o.d_expert;
  if (o.activation == "gelu") return b.gelu(hidden);
  if (o.activation == "relu") return b.relu(hidden);
  if (o.activation == "swiglu") {
    Tensor w_gate = s.child("experts").param("w_gate", {E, d_model, F}, {ParamInit::Kind::normal, o.init_std});
    return b.mul(b.silu(b.moe_grouped_matmul(xs, w_gate, offsets)), hidden);
  }
  throw Error(fmt::format("nn::moe_block {}: expected activation gelu, relu or swiglu, found '{}'", s.full_name(""),
                          o.activation));
}

// sigma-MoE expert dropout: `selection` [T, E] with each entry replaced by
// -1e9 with probability p (while training), from the scope's random stream.
Tensor drop_experts(const Scope& s, Tensor selection, double p) {
  Builder& b = s.b();
  if (!s.options().training || p <= 0.0) return selection;
  const Shape shape = selection.shape();
  RandomSite site = s.random_site(selection.type().numel());
  // mj.dropout of ones is 0 (dropped) or 1/(1-p) (kept): a Philox mask.
  Tensor mask = b.dropout(b.constant(1.0, shape, selection.dtype()), p, site.seed, site.offset, &site.step_offset);
  Tensor keep = b.compare(mask, b.constant(0.0, shape, selection.dtype()), "gt");
  return b.where(keep, selection, b.constant(-1e9, shape, selection.dtype()));
}

}  // namespace

MoeOutputs moe_block(const Scope& s, Tensor x, const MoeOptions& o, std::optional<Tensor> router_input) {
  Builder& b = s.b();
  if (x.rank() != 2)
    throw Error(fmt::format("nn::moe_block {}: expected x [T, D], found {}", s.full_name(""), x.type().str()));
  if (router_input && router_input->shape() != x.shape())
    throw Error(fmt::format("nn::moe_block {}: expected router_input shaped like x {}, found {}", s.full_name(""),
                            x.type().str(), router_input->type().str()));
  if (o.top_k < 1 || o.top_k > o.num_experts)
    throw Error(fmt::format("nn::moe_block {}: expected 1 <= top_k <= num_experts ({}), found top_k {}",
                            s.full_name(""), o.num_experts, o.top_k));
  const bool expert_choice = o.router_type == "expert_choice";
  if (!expert_choice && o.router_type != "token_choice")
    throw Error(fmt::format("nn::moe_block {}: expected router_type token_choice or expert_choice, found '{}'",
                            s.full_name(""), o.router_type));
  if (expert_choice && (o.noisy_gating || o.selection_bias || o.aux_loss_coeff > 0 || !(o.capacity_factor > 0)))
    throw Error(fmt::format("nn::moe_block {}: expert_choice expected capacity_factor > 0 and no noisy gating, "
                            "selection bias or load-balance loss (balanced by construction), found capacity_factor {}, "
                            "noisy_gating {}, selection_bias {}, aux_loss_coeff {}",
                            s.full_name(""), o.capacity_factor, o.noisy_gating, o.selection_bias, o.aux_loss_coeff));
  const std::int64_t d_model = x.dim(1), E = o.num_experts, F = o.d_expert;
  const Tensor router_x = router_input ? *router_input : x;

  // Router: logits [T, E], router.weight [E, D] (and router.w_noise [E, D]
  // when noisy gating is configured; the noise itself only while training).
  Scope router = s.child("router");
  std::optional<Tensor> bias;
  if (o.selection_bias) bias = router.state("selection_bias", {E}, {ParamInit::Kind::zeros});
  GateOptions gate{.top_k = o.top_k, .score = o.score, .order = o.order, .normalize = o.normalize};
  Tensor logits, weights, experts, slots, offsets, positions, counts;
  std::optional<Tensor> chosen_positions;
  std::int64_t slot_stride = o.top_k;  // slot id = t * slot_stride + column
  if (o.noisy_gating) {
    Tensor w_router = router.param("weight", {E, d_model}, {ParamInit::Kind::normal, o.init_std}, false);
    Tensor w_noise = router.param("w_noise", {E, d_model}, {ParamInit::Kind::normal, o.init_std}, false);
    NoisyGateOptions gating;
    gating.gate = gate;
    gating.noisy = s.options().training;
    gating.selection_bias = o.selection_bias;
    if (gating.noisy) {  // noise [T, E] from the scope's random stream
      RandomSite site = s.random_site(x.dim(0) * E);
      gating.seed = site.seed;
      gating.offset = site.offset;
      gating.step_offset = site.step_offset;
    }
    NoisyGateOutputs g = noisy_top_k_gate(b, router_x, b.transpose(w_router, {1, 0}), b.transpose(w_noise, {1, 0}),
                                          gating, bias);
    logits = g.logits;
    weights = g.weights;
    experts = g.experts;
  } else if (!expert_choice) {
    logits = linear(router, router_x, E, {.bias = false, .init_std = o.init_std, .weight_decay = false});
    Tensor selection = drop_experts(s, logits, o.expert_dropout);
    auto gated = b.moe_gate(selection, gate, bias ? &*bias : nullptr);  // [T, K] f32, [T, K] i32
    weights = gated[0];
    experts = gated[1];
  } else {
    // Expert choice: each expert takes its C best tokens by score [T, E];
    // the weight of (t, e) is its score where taken, else 0.
    logits = linear(router, router_x, E, {.bias = false, .init_std = o.init_std, .weight_decay = false});
    Tensor scores = o.score == "sigmoid" ? b.sigmoid(logits) : b.softmax(logits);
    Tensor selection = drop_experts(s, scores, o.expert_dropout);
    auto chosen = b.op(OpKind::ExpertChoice, {selection},
                       {{"capacity_factor", o.capacity_factor}, {"top_k", o.top_k}});  // slots, offsets, positions, counts
    slots = chosen[0];
    offsets = chosen[1];
    positions = chosen[2];
    counts = chosen[3];
    Tensor taken = b.compare(positions, b.constant(0.0, positions.shape(), DType::i32), "ge");
    weights = b.where(taken, scores, b.full_like(scores, 0.0));  // [T, E]
    experts = positions;
    chosen_positions = positions;
    slot_stride = E;
  }
  if (!expert_choice) {
    auto dispatched = b.moe_dispatch(experts, {.num_experts = E, .capacity_factor = o.capacity_factor, .block = 1});
    slots = dispatched[0];
    offsets = dispatched[1];
    positions = dispatched[2];
    counts = dispatched[3];
  }
  Tensor xs = b.moe_permute(x, slots, slot_stride);  // [N, D]

  // Experts: [N, D] -> [N, F] -> [N, D], each row through its own expert.
  Scope ex = s.child("experts");
  Tensor w_up = ex.param("w_up", {E, d_model, F}, {ParamInit::Kind::normal, o.init_std});
  Tensor hidden = expert_activation(s, xs, b.moe_grouped_matmul(xs, w_up, offsets), offsets, o);
  Tensor w_down = ex.param("w_down", {E, F, d_model}, {ParamInit::Kind::normal, o.proj_std});
  Tensor ys = b.moe_grouped_matmul(hidden, w_down, offsets);  // [N, D]
  Tensor y = b.moe_combine(ys, weights, positions);          // [T, D]

  if (o.shared_expert) {
    y = b.add(y, mlp(s.child("shared"), x,
                     {.hidden = F, .activation = o.activation, .bias = o.bias, .init_std = o.init_std,
                      .proj_std = o.proj_std}));
  }

  // Auxiliary losses, on the clean router logits.
  std::optional<Tensor> aux;
  auto add_loss = [&](Tensor loss) { aux = aux ? b.add(*aux, loss) : loss; };
  if (o.aux_loss_coeff > 0 || o.entropy_coeff > 0) {
    Tensor probs = b.softmax(logits);  // [T, E]
    if (o.aux_loss_coeff > 0) add_loss(b.moe_load_balance_loss(probs, experts, o.aux_loss_coeff));
    if (o.entropy_coeff > 0) add_loss(b.moe_entropy_reg(probs, o.entropy_coeff));
  }
  if (o.z_loss_coeff > 0) add_loss(b.moe_z_loss(logits, o.z_loss_coeff));
  return {y, aux, logits, experts, counts, chosen_positions};
}

namespace {

// Adds h*E to column block h of local expert ids [R*H, K] (rows (r, h)), so
// the H heads' experts are one id range 0..H*E-1 for moe.dispatch.
Tensor global_expert_ids(Builder& b, Tensor local, std::int64_t heads, std::int64_t experts_per_head) {
  if (heads == 1) return local;
  const std::int64_t rows = local.dim(0) / heads, k = local.dim(1);
  std::vector<Tensor> offsets;
  for (std::int64_t h = 0; h < heads; ++h)
    offsets.push_back(b.constant(static_cast<double>(h * experts_per_head), {rows, 1, k}, DType::i32));
  Tensor offset = b.reshape(b.concat(offsets, 1), {rows * heads, k});  // [R*H, K]
  return b.add(local, offset);
}

struct HeadRouting {
  Tensor weights, experts, slots, offsets, positions;
};

// Per (row, head) top-k of a sigmoid router over the head's E experts.
HeadRouting route_heads(const Scope& s, Tensor router_input, std::int64_t heads, std::int64_t experts,
                        std::int64_t top_k, double init_std) {
  Builder& b = s.b();
  const std::int64_t rows = router_input.dim(0);
  Tensor logits = linear(s, router_input, heads * experts, {.bias = false, .init_std = init_std, .weight_decay = false});
  logits = b.reshape(logits, {rows * heads, experts});  // row (r, h)
  auto gated = b.moe_gate(logits, {.top_k = top_k, .score = "sigmoid", .order = "softmax_then_topk", .normalize = false});
  Tensor ids = global_expert_ids(b, gated[1], heads, experts);
  auto d = b.moe_dispatch(ids, {.num_experts = heads * experts, .capacity_factor = 0.0, .block = 1});
  return {gated[0], ids, d[0], d[1], d[2]};
}

}  // namespace

SwitchHeadOutputs switchhead_attention(const Scope& s, Tensor x, Tensor qk_input, const SwitchHeadOptions& o) {
  Builder& b = s.b();
  const std::int64_t rows = x.dim(0), d_model = x.dim(1), H = o.n_head, E = o.num_experts, K = o.top_k;
  const std::int64_t Dh = o.head_dim > 0 ? o.head_dim : d_model / std::max<std::int64_t>(H, 1);
  auto fail = [&](const std::string& what) {
    throw Error(fmt::format("nn::switchhead_attention {}: {}", s.full_name(""), what));
  };
  if (x.rank() != 2 || qk_input.shape() != x.shape())
    fail(fmt::format("expected x and qk_input of one shape [B*T, D], found {} and {}", x.type().str(),
                     qk_input.type().str()));
  if (rows != o.batch * o.seq_len)
    fail(fmt::format("expected batch*seq_len = {} rows, found {}", o.batch * o.seq_len, x.type().str()));
  if (H < 1 || Dh < 1 || E < 1 || K < 1 || K > E)
    fail(fmt::format("expected n_head >= 1, head_dim >= 1 and 1 <= top_k <= num_experts, found n_head {}, head_dim {}, "
                     "num_experts {}, top_k {}",
                     H, Dh, E, K));
  auto heads = [&](Tensor t, bool rope = false) {  // [B*T, H*Dh] -> [B, H, T, Dh] (RoPE before the transpose)
    t = b.reshape(t, {o.batch, o.seq_len, H, Dh});
    if (rope) t = apply_rope(b, t, HeadLayout::bthd);
    return b.transpose(t, {0, 2, 1, 3});
  };
  Tensor q = heads(linear(s.child("q"), qk_input, H * Dh, {.init_std = o.init_std}), o.rope);
  Tensor k = heads(linear(s.child("k"), qk_input, H * Dh, {.init_std = o.init_std}), o.rope);
  // x repeated per head: row (t, h) of [B*T*H, D] is x[t].
  Tensor x_rows = b.reshape(b.broadcast(b.reshape(x, {rows, 1, d_model}), {rows, H, d_model}), {rows * H, d_model});

  SwitchHeadOutputs result;
  Tensor v;  // [B*T, H*Dh]
  if (E == 1) {
    v = linear(s.child("v"), x, H * Dh, {.init_std = o.init_std});
  } else {
    HeadRouting r = route_heads(s.child("sel_v"), qk_input, H, E, K, o.init_std);
    Tensor w_v = s.child("v").param("experts", {H * E, d_model, Dh}, {ParamInit::Kind::normal, o.init_std});
    Tensor vs = b.moe_grouped_matmul(b.moe_permute(x_rows, r.slots, K), w_v, r.offsets);  // [N, Dh]
    v = b.reshape(b.moe_combine(vs, r.weights, r.positions), {rows, H * Dh});            // [B*T*H, Dh]
    result.value_experts = r.experts;
  }
  Tensor att = b.attention(q, k, heads(v));                                   // [B, H, T, Dh]
  att = b.reshape(b.transpose(att, {0, 2, 1, 3}), {rows * H, Dh});            // row (t, h)
  HeadRouting r = route_heads(s.child("sel_o"), qk_input, H, E, K, o.init_std);
  Tensor w_o = s.child("o").param("experts", {H * E, Dh, d_model}, {ParamInit::Kind::normal, o.proj_std});
  Tensor ys = b.moe_grouped_matmul(b.moe_permute(att, r.slots, K), w_o, r.offsets);  // [N, D]
  Tensor per_head = b.moe_combine(ys, r.weights, r.positions);                        // [B*T*H, D]
  result.y = b.sum(b.reshape(per_head, {rows, H, d_model}), {1});                     // [B*T, D]
  result.output_experts = r.experts;
  return result;
}

}  // namespace nn

std::map<std::string, HostTensor> init_parameters(const std::vector<ParamSpec>& specs, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::map<std::string, HostTensor> values;
  for (const ParamSpec& spec : specs) {
    HostTensor t(spec.type);
    std::span<float> data = t.values<float>();
    switch (spec.init.kind) {
      case ParamInit::Kind::zeros: std::fill(data.begin(), data.end(), 0.0f); break;
      case ParamInit::Kind::ones: std::fill(data.begin(), data.end(), 1.0f); break;
      case ParamInit::Kind::normal: {
        std::normal_distribution<double> normal(0.0, spec.init.std);
        for (float& v : data) v = static_cast<float>(normal(rng));
        break;
      }
    }
    values.emplace(spec.name, std::move(t));
  }
  return values;
}

void check_parameters(const std::map<std::string, HostTensor>& values, const std::vector<ParamSpec>& specs,
                      const std::string& path) {
  for (const ParamSpec& spec : specs) {
    auto it = values.find(spec.name);
    if (it == values.end())
      throw Error(fmt::format("{}: tensor {}: expected {} {} (from the config), found no such tensor", path, spec.name,
                              shape_str(spec.type.shape), dtype_name(spec.type.dtype)));
    const HostTensor& t = it->second;
    if (t.type() != spec.type)
      throw Error(fmt::format("{}: tensor {}: expected {} {} (from the config), found {} {}", path, spec.name,
                              shape_str(spec.type.shape), dtype_name(spec.type.dtype), shape_str(t.shape()),
                              dtype_name(t.dtype())));
  }
  for (const auto& [name, tensor] : values) {
    bool known = std::any_of(specs.begin(), specs.end(), [&](const ParamSpec& s) { return s.name == name; });
    if (!known)
      throw Error(fmt::format("{}: tensor {}: expected no such tensor (the config's model has none), found {} {}", path,
                              name, shape_str(tensor.shape()), dtype_name(tensor.dtype())));
  }
}

}  // namespace moejit
