// nn-level builders (see nn.h): linear, embedding, layer norm, causal
// self-attention, MLP and the MoE block, plus parameter initialization.
#include "frontends/nn.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "frontends/moe_gating.h"
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
  auto heads = [&](std::int64_t part) {
    Tensor t = b.slice(qkv, {0, part * d_model}, {rows, (part + 1) * d_model});  // [BT, D]
    t = b.reshape(t, {o.batch, o.seq_len, o.n_head, head_dim});                 // [B, T, H, Dh]
    return b.transpose(t, {0, 2, 1, 3});                                         // [B, H, T, Dh]
  };
  Tensor q = heads(0), k = heads(1), v = heads(2);
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

MoeOutputs moe_block(const Scope& s, Tensor x, const MoeOptions& o) {
  Builder& b = s.b();
  if (x.rank() != 2)
    throw Error(fmt::format("nn::moe_block {}: expected x [T, D], found {}", s.full_name(""), x.type().str()));
  if (o.top_k < 1 || o.top_k > o.num_experts)
    throw Error(fmt::format("nn::moe_block {}: expected 1 <= top_k <= num_experts ({}), found top_k {}",
                            s.full_name(""), o.num_experts, o.top_k));
  const std::int64_t d_model = x.dim(1), E = o.num_experts, F = o.d_expert;

  // Router: logits [T, E], router.weight [E, D] (and router.w_noise [E, D]
  // when noisy gating is configured; the noise itself only while training).
  Scope router = s.child("router");
  std::optional<Tensor> bias;
  if (o.selection_bias) bias = router.state("selection_bias", {E}, {ParamInit::Kind::zeros});
  GateOptions gate{.top_k = o.top_k, .score = o.score, .order = o.order, .normalize = o.normalize};
  Tensor logits, weights, experts;
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
    NoisyGateOutputs g =
        noisy_top_k_gate(b, x, b.transpose(w_router, {1, 0}), b.transpose(w_noise, {1, 0}), gating, bias);
    logits = g.logits;
    weights = g.weights;
    experts = g.experts;
  } else {
    logits = linear(router, x, E, {.bias = false, .init_std = o.init_std, .weight_decay = false});
    auto gated = b.moe_gate(logits, gate, bias ? &*bias : nullptr);  // [T, K] f32, [T, K] i32
    weights = gated[0];
    experts = gated[1];
  }
  auto [slots, offsets, positions, counts] =
      b.moe_dispatch(experts, {.num_experts = E, .capacity_factor = o.capacity_factor, .block = 1});
  Tensor xs = b.moe_permute(x, slots, o.top_k);  // [N, D]

  // Experts: [N, D] -> [N, F] -> [N, D], each row through its own expert.
  Scope ex = s.child("experts");
  Tensor w_up = ex.param("w_up", {E, d_model, F}, {ParamInit::Kind::normal, o.init_std});
  Tensor hidden = b.moe_grouped_matmul(xs, w_up, offsets);
  if (o.activation == "gelu") {
    hidden = b.gelu(hidden);
  } else if (o.activation == "swiglu") {
    Tensor w_gate = ex.param("w_gate", {E, d_model, F}, {ParamInit::Kind::normal, o.init_std});
    hidden = b.mul(b.silu(b.moe_grouped_matmul(xs, w_gate, offsets)), hidden);
  } else {
    throw Error(fmt::format("nn::moe_block {}: expected activation gelu or swiglu, found '{}'", s.full_name(""),
                            o.activation));
  }
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
  return {y, aux, logits, experts, counts};
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
