// GptMoeConfig fields, JSON loading and saving, command-line style setters,
// and validation. The one table below names each field once.
#include "frontends/config.h"

#include <fmt/format.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <variant>

#include "ir/error.h"

namespace moejit {
namespace {

using Member = std::variant<std::int64_t GptMoeConfig::*, double GptMoeConfig::*, bool GptMoeConfig::*,
                            std::string GptMoeConfig::*>;

struct FieldEntry {
  ConfigField field;
  Member member;
};

const std::vector<FieldEntry>& entries() {
  using C = GptMoeConfig;
  using K = ConfigKind;
  static const std::vector<FieldEntry> table = {
      {{"vocab_size", "model", K::Int, "vocabulary size; 0 = distinct bytes of the training text", {}}, &C::vocab_size},
      {{"n_layer", "model", K::Int, "number of transformer blocks", {}}, &C::n_layer},
      {{"n_head", "model", K::Int, "attention heads per block", {}}, &C::n_head},
      {{"n_embd", "model", K::Int, "model width d_model", {}}, &C::n_embd},
      {{"block_size", "model", K::Int, "context length in tokens", {}}, &C::block_size},
      {{"ffn_hidden_size", "model", K::Int, "hidden width of dense MLP blocks; 0 = 4 * n_embd", {}}, &C::ffn_hidden_size},
      {{"dropout", "model", K::Float, "dropout probability after embeddings, attention and feed-forward (training only)", {}},
       &C::dropout},
      {{"bias", "model", K::Bool, "biases in linear layers", {}}, &C::bias},
      {{"num_experts", "moe", K::Int, "experts per MoE layer", {}}, &C::num_experts},
      {{"top_k", "moe", K::Int, "experts chosen per token", {}}, &C::top_k},
      {{"moe_every", "moe", K::Int, "every n-th block is MoE (1 = all, 0 = none)", {}}, &C::moe_every},
      {{"d_expert", "moe", K::Int, "hidden width of one expert (Megatron moe_ffn_hidden_size)", {}}, &C::d_expert},
      {{"activation", "moe", K::String, "feed-forward activation", {"gelu", "relu", "swiglu"}}, &C::activation},
      {{"router_score", "moe", K::String, "router score function", {"softmax", "sigmoid"}}, &C::router_score},
      {{"router_order", "moe", K::String, "score then top-k, or top-k then softmax (Mixtral)",
        {"softmax_then_topk", "topk_then_softmax"}},
       &C::router_order},
      {{"normalize_topk", "moe", K::Bool, "renormalize the top-k routing weights to sum to 1", {}}, &C::normalize_topk},
      {{"noisy_gating", "moe", K::Bool, "noisy top-k gating while training", {}}, &C::noisy_gating},
      {{"selection_bias", "moe", K::Bool, "aux-loss-free balancing bias (selection only)", {}}, &C::selection_bias},
      {{"bias_update_rate", "moe", K::Float, "selection-bias update step per iteration", {}}, &C::bias_update_rate},
      {{"capacity_factor", "moe", K::Float, "expert capacity factor; 0 = dropless", {}}, &C::capacity_factor},
      {{"shared_expert", "moe", K::Bool, "add one always-on shared expert", {}}, &C::shared_expert},
      {{"aux_loss_coeff", "moe", K::Float, "load-balancing loss coefficient", {}}, &C::aux_loss_coeff},
      {{"z_loss_coeff", "moe", K::Float, "router z-loss coefficient", {}}, &C::z_loss_coeff},
      {{"entropy_coeff", "moe", K::Float, "router entropy regularizer coefficient", {}}, &C::entropy_coeff},
      {{"router_type", "moe", K::String, "token choice (top-k experts per token) or expert choice (top-C tokens per expert)",
        {"token_choice", "expert_choice"}},
       &C::router_type},
      {{"expert_dropout", "moe", K::Float, "sigma-MoE expert dropout: (token, expert) pairs left out of the selection while training", {}},
       &C::expert_dropout},
      {{"group_size", "moeut", K::Int, "distinct layers G; layer i shares the weights of layer i % G; 0 = n_layer", {}},
       &C::group_size},
      {{"attention", "moeut", K::String, "dense attention, or SwitchHead (per-head MoE value/output projections)",
        {"dense", "switchhead"}},
       &C::attention},
      {{"att_n_experts", "moeut", K::Int, "SwitchHead experts per head (1 = RoPE attention with an output gate)", {}},
       &C::att_n_experts},
      {{"att_k", "moeut", K::Int, "SwitchHead experts per head and token", {}}, &C::att_k},
      {{"head_dim", "moeut", K::Int, "SwitchHead head width; 0 = n_embd / n_head", {}}, &C::head_dim},
      {{"layer_norm", "moeut", K::String, "pre-LN, or MoEUT's peri-LN (routers, q, k read LN(x); values, experts read x)",
        {"pre", "peri"}},
       &C::layer_norm},
      {{"position_embedding", "moeut", K::String, "learned positions (wpe) or rotary q/k", {"learned", "rope"}},
       &C::position_embedding},
      {{"rope_theta", "moeut", K::Float, "RoPE base", {}}, &C::rope_theta},
      {{"batch_size", "training", K::Int, "sequences per batch", {}}, &C::batch_size},
      {{"learning_rate", "training", K::Float, "peak learning rate", {}}, &C::learning_rate},
      {{"min_lr", "training", K::Float, "learning rate at the end of the cosine decay", {}}, &C::min_lr},
      {{"warmup_iters", "training", K::Int, "linear warmup steps", {}}, &C::warmup_iters},
      {{"max_iters", "training", K::Int, "training steps", {}}, &C::max_iters},
      {{"lr_decay_iters", "training", K::Int, "steps of the cosine decay; 0 = max_iters", {}}, &C::lr_decay_iters},
      {{"decay_lr", "training", K::Bool, "decay the learning rate (else constant after warmup)", {}}, &C::decay_lr},
      {{"weight_decay", "training", K::Float, "AdamW weight decay (matrices and embeddings only)", {}}, &C::weight_decay},
      {{"beta1", "training", K::Float, "AdamW beta1", {}}, &C::beta1},
      {{"beta2", "training", K::Float, "AdamW beta2", {}}, &C::beta2},
      {{"grad_clip", "training", K::Float, "clip the global gradient norm to this; 0 = off", {}}, &C::grad_clip},
      {{"eval_interval", "training", K::Int, "steps between train/val loss estimates", {}}, &C::eval_interval},
      {{"eval_iters", "training", K::Int, "batches per loss estimate", {}}, &C::eval_iters},
      {{"log_interval", "training", K::Int, "steps between progress lines", {}}, &C::log_interval},
      {{"checkpoint_interval", "training", K::Int,
        "steps between saves of ckpt.safetensors (resumable); 0 = only at the end (and on SIGINT/SIGTERM)", {}},
       &C::checkpoint_interval},
      {{"seed", "training", K::Int, "seed of initialization, batches and sampling", {}}, &C::seed},
      {{"init_std", "training", K::Float, "standard deviation of the weight initialization", {}}, &C::init_std},
      {{"dtype", "training", K::String, "training precision: bf16 mixed precision or f32; auto = bf16 on the GPU, f32 on the CPU",
        {"auto", "f32", "bf16"}},
       &C::dtype},
  };
  return table;
}

const FieldEntry* find_entry(std::string_view name) {
  for (const FieldEntry& e : entries())
    if (e.field.name == name) return &e;
  return nullptr;
}

std::string known_keys() {
  std::string out;
  for (const FieldEntry& e : entries()) {
    if (!out.empty()) out += ", ";
    out += e.field.name;
  }
  return out;
}

const FieldEntry& entry_or_throw(std::string_view key) {
  const FieldEntry* e = find_entry(key);
  if (!e) throw Error(fmt::format("config: unknown key '{}' (known keys: {})", key, known_keys()));
  return *e;
}

std::string kind_word(ConfigKind kind) {
  switch (kind) {
    case ConfigKind::Int: return "an integer";
    case ConfigKind::Float: return "a number";
    case ConfigKind::Bool: return "true or false";
    case ConfigKind::String: return "a string";
  }
  return "?";
}

void check_choice(const ConfigField& field, const std::string& value) {
  if (field.choices.empty()) return;
  for (std::string_view c : field.choices)
    if (c == value) return;
  std::string list;
  for (std::string_view c : field.choices) list += (list.empty() ? "" : " | ") + std::string(c);
  throw Error(fmt::format("config: {}: expected one of {}, found '{}'", field.name, list, value));
}

std::string format_double(double v) {
  std::string s = fmt::format("{}", v);  // shortest round-trip form
  return s;
}

}  // namespace

std::int64_t GptMoeConfig::num_moe_layers() const {
  std::int64_t n = 0;
  for (std::int64_t i = 0; i < n_layer; ++i) n += is_moe_layer(i) ? 1 : 0;
  return n;
}

const std::vector<ConfigField>& config_fields() {
  static const std::vector<ConfigField> fields = [] {
    std::vector<ConfigField> out;
    for (const FieldEntry& e : entries()) out.push_back(e.field);
    return out;
  }();
  return fields;
}

const ConfigField* find_config_field(std::string_view name) {
  for (const ConfigField& f : config_fields())
    if (f.name == name) return &f;
  return nullptr;
}

void set_config_value(GptMoeConfig& config, std::string_view key, std::string_view text) {
  const FieldEntry& e = entry_or_throw(key);
  auto bad = [&] {
    return Error(fmt::format("config: {}: expected {}, found '{}'", key, kind_word(e.field.kind), text));
  };
  std::visit(
      [&](auto member) {
        using T = std::remove_reference_t<decltype(config.*member)>;
        if constexpr (std::is_same_v<T, std::int64_t>) {
          std::int64_t v = 0;
          auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
          if (ec != std::errc() || end != text.data() + text.size() || text.empty()) throw bad();
          config.*member = v;
        } else if constexpr (std::is_same_v<T, double>) {
          std::string s(text);
          char* end = nullptr;
          double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
          if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) throw bad();
          config.*member = v;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (text == "true" || text == "1") config.*member = true;
          else if (text == "false" || text == "0") config.*member = false;
          else throw bad();
        } else {
          std::string v(text);
          check_choice(e.field, v);
          config.*member = v;
        }
      },
      e.member);
}

std::string get_config_value(const GptMoeConfig& config, std::string_view key) {
  const FieldEntry& e = entry_or_throw(key);
  return std::visit(
      [&](auto member) -> std::string {
        using T = std::remove_cvref_t<decltype(config.*member)>;
        if constexpr (std::is_same_v<T, std::int64_t>) return std::to_string(config.*member);
        else if constexpr (std::is_same_v<T, double>) return format_double(config.*member);
        else if constexpr (std::is_same_v<T, bool>) return config.*member ? "true" : "false";
        else return config.*member;
      },
      e.member);
}

GptMoeConfig config_from_json(std::string_view json_text, const GptMoeConfig& base) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& err) {
    throw Error(fmt::format("config: invalid JSON: {}", err.what()));
  }
  if (!doc.is_object()) throw Error(fmt::format("config: expected a JSON object, found {}", doc.type_name()));
  GptMoeConfig config = base;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const FieldEntry& e = entry_or_throw(it.key());
    const nlohmann::json& v = it.value();
    auto bad = [&] {
      return Error(fmt::format("config: {}: expected {}, found {} ({})", it.key(), kind_word(e.field.kind), v.dump(),
                               v.type_name()));
    };
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(config.*member)>;
          if constexpr (std::is_same_v<T, std::int64_t>) {
            if (!v.is_number_integer()) throw bad();
            if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
              throw Error(fmt::format("config: {}: expected an integer that fits in 64 bits, found {}", it.key(),
                                      v.dump()));
            config.*member = v.get<std::int64_t>();
          } else if constexpr (std::is_same_v<T, double>) {
            if (!v.is_number()) throw bad();
            config.*member = v.get<double>();
          } else if constexpr (std::is_same_v<T, bool>) {
            if (!v.is_boolean()) throw bad();
            config.*member = v.get<bool>();
          } else {
            if (!v.is_string()) throw bad();
            check_choice(e.field, v.get<std::string>());
            config.*member = v.get<std::string>();
          }
        },
        e.member);
  }
  return config;
}

GptMoeConfig load_config_file(const std::string& path, const GptMoeConfig& base) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("config: cannot open '{}'", path));
  std::stringstream text;
  text << in.rdbuf();
  try {
    return config_from_json(text.str(), base);
  } catch (const Error& err) {
    throw Error(fmt::format("{}: {}", path, err.what()));
  }
}

std::string config_to_json(const GptMoeConfig& config, int indent) {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();
  for (const FieldEntry& e : entries()) {
    std::visit([&](auto member) { doc[std::string(e.field.name)] = config.*member; }, e.member);
  }
  return doc.dump(indent);
}

namespace {

// The keys of expert choice, sigma-MoE, layer groups, SwitchHead and RoPE.
void validate_moeut_keys(const GptMoeConfig& c) {
  auto fail = [](std::string_view key, std::string expected, std::string found) {
    throw Error(fmt::format("config: {}: expected {}, found {}", key, expected, found));
  };
  constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
  check_choice(*find_config_field("router_type"), c.router_type);
  check_choice(*find_config_field("attention"), c.attention);
  check_choice(*find_config_field("layer_norm"), c.layer_norm);
  check_choice(*find_config_field("position_embedding"), c.position_embedding);
  if (!(c.expert_dropout >= 0 && c.expert_dropout < 1))
    fail("expert_dropout", "a probability in [0, 1)", format_double(c.expert_dropout));
  if (c.router_type == "expert_choice") {
    if (!(c.capacity_factor > 0) || !std::isfinite(c.capacity_factor))
      fail("capacity_factor", "a finite value > 0 with router_type expert_choice (each expert takes "
           "ceil(capacity_factor * tokens * top_k / num_experts) tokens)", format_double(c.capacity_factor));
    if (c.aux_loss_coeff > 0)
      fail("aux_loss_coeff", "0 with router_type expert_choice (balanced by construction)", format_double(c.aux_loss_coeff));
    if (c.noisy_gating) fail("noisy_gating", "false with router_type expert_choice", "true");
    if (c.selection_bias) fail("selection_bias", "false with router_type expert_choice", "true");
  }
  if (c.group_size < 0 || c.group_size > c.n_layer || (c.group_size > 0 && c.n_layer % c.group_size != 0))
    fail("group_size", fmt::format("0 (no sharing) or a divisor of n_layer ({})", c.n_layer), std::to_string(c.group_size));
  if (c.group_size > 0 && c.group_size < c.n_layer) {
    if (c.selection_bias)
      fail("selection_bias", "false with shared layers (group_size < n_layer): the bias is per layer", "true");
    if (c.moe_every > 1 && c.group_size % c.moe_every != 0)
      fail("moe_every", fmt::format("a divisor of group_size ({}) so repeats of a layer agree on MoE", c.group_size),
           std::to_string(c.moe_every));
  }
  if (c.att_n_experts < 1 || c.att_n_experts > kMaxWidth)
    fail("att_n_experts", fmt::format("1..{}", kMaxWidth), std::to_string(c.att_n_experts));
  if (c.att_k < 1 || c.att_k > c.att_n_experts)
    fail("att_k", fmt::format("1..att_n_experts ({})", c.att_n_experts), std::to_string(c.att_k));
  if (c.head_dim < 0 || c.head_dim > kMaxWidth)
    fail("head_dim", fmt::format("0 (n_embd / n_head) or 1..{}", kMaxWidth), std::to_string(c.head_dim));
  if (c.head_dim > 0 && c.attention != "switchhead")
    fail("head_dim", "0 unless attention is switchhead (dense heads are n_embd / n_head wide)", std::to_string(c.head_dim));
  const std::int64_t head_dim = c.head_dim > 0 ? c.head_dim : c.n_embd / c.n_head;
  if (c.position_embedding == "rope" && head_dim % 2 != 0)
    fail(c.head_dim > 0 ? "head_dim" : "n_embd", "an even head width for rope", std::to_string(head_dim));
  if (c.attention == "switchhead" && c.position_embedding != "rope")
    fail("position_embedding", "rope with attention switchhead (SwitchHead puts RoPE on q and k)",
         "'" + c.position_embedding + "'");
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) fail("rope_theta", "a finite value > 0", format_double(c.rope_theta));
}

}  // namespace

void validate_config(const GptMoeConfig& c) {
  auto fail = [](std::string_view key, std::string expected, std::string found) {
    throw Error(fmt::format("config: {}: expected {}, found {}", key, expected, found));
  };
  auto positive = [&](std::string_view key, std::int64_t v) {
    if (v <= 0) fail(key, "a positive integer", std::to_string(v));
  };
  auto non_negative = [&](std::string_view key, double v) {
    if (!(v >= 0)) fail(key, "a value >= 0", format_double(v));
  };
  if (c.vocab_size < 0 || c.vocab_size > 256)
    fail("vocab_size", "0 (from data) or 1..256 (byte-level)", std::to_string(c.vocab_size));
  // Upper bounds keep every size product far from int64 overflow (a huge
  // value gets this message, not a wrapped negative shape or bad_alloc later).
  auto at_most = [&](std::string_view key, std::int64_t v, std::int64_t limit) {
    if (v > limit) fail(key, fmt::format("at most {}", limit), std::to_string(v));
  };
  constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
  positive("n_layer", c.n_layer);
  positive("n_head", c.n_head);
  positive("n_embd", c.n_embd);
  positive("block_size", c.block_size);
  at_most("n_layer", c.n_layer, 4096);
  at_most("n_embd", c.n_embd, kMaxWidth);
  at_most("block_size", c.block_size, kMaxWidth);
  at_most("ffn_hidden_size", c.ffn_hidden_size, kMaxWidth);
  at_most("num_experts", c.num_experts, kMaxWidth);
  at_most("d_expert", c.d_expert, kMaxWidth);
  at_most("batch_size", c.batch_size, kMaxWidth);
  // Token rows (batch_size * block_size * top_k) are indexed with i32.
  if (c.batch_size > 0 && c.block_size > 0 && c.top_k > 0 && c.top_k <= kMaxWidth &&
      c.batch_size * c.block_size * c.top_k > std::int64_t{INT32_MAX})
    fail("batch_size", fmt::format("batch_size * block_size * top_k at most {}", INT32_MAX),
         fmt::format("{} * {} * {}", c.batch_size, c.block_size, c.top_k));
  if (c.n_embd % c.n_head != 0)
    fail("n_embd", fmt::format("a multiple of n_head ({})", c.n_head), std::to_string(c.n_embd));
  if (c.ffn_hidden_size < 0) fail("ffn_hidden_size", "0 or a positive integer", std::to_string(c.ffn_hidden_size));
  if (!(c.dropout >= 0 && c.dropout < 1)) fail("dropout", "a probability in [0, 1)", format_double(c.dropout));
  if (c.moe_every < 0) fail("moe_every", "0 (no MoE) or a positive integer", std::to_string(c.moe_every));
  if (c.moe_every > c.n_layer)
    fail("moe_every", fmt::format("at most n_layer ({}) so that some block is MoE, or 0", c.n_layer),
         std::to_string(c.moe_every));
  positive("num_experts", c.num_experts);
  positive("top_k", c.top_k);
  if (c.top_k > c.num_experts)
    fail("top_k", fmt::format("at most num_experts ({})", c.num_experts), std::to_string(c.top_k));
  positive("d_expert", c.d_expert);
  non_negative("capacity_factor", c.capacity_factor);
  non_negative("bias_update_rate", c.bias_update_rate);
  non_negative("aux_loss_coeff", c.aux_loss_coeff);
  non_negative("z_loss_coeff", c.z_loss_coeff);
  non_negative("entropy_coeff", c.entropy_coeff);
  positive("batch_size", c.batch_size);
  if (!(c.learning_rate > 0)) fail("learning_rate", "a value > 0", format_double(c.learning_rate));
  non_negative("min_lr", c.min_lr);
  if (c.min_lr > c.learning_rate)
    fail("min_lr", fmt::format("at most learning_rate ({})", format_double(c.learning_rate)), format_double(c.min_lr));
  if (c.warmup_iters < 0) fail("warmup_iters", "an integer >= 0", std::to_string(c.warmup_iters));
  if (c.max_iters < 0) fail("max_iters", "an integer >= 0", std::to_string(c.max_iters));
  if (c.lr_decay_iters < 0) fail("lr_decay_iters", "0 (max_iters) or a positive integer", std::to_string(c.lr_decay_iters));
  non_negative("weight_decay", c.weight_decay);
  if (!(c.beta1 >= 0 && c.beta1 < 1)) fail("beta1", "a value in [0, 1)", format_double(c.beta1));
  if (!(c.beta2 >= 0 && c.beta2 < 1)) fail("beta2", "a value in [0, 1)", format_double(c.beta2));
  non_negative("grad_clip", c.grad_clip);
  positive("eval_interval", c.eval_interval);
  positive("eval_iters", c.eval_iters);
  positive("log_interval", c.log_interval);
  if (c.checkpoint_interval < 0)
    fail("checkpoint_interval", "an integer >= 0", std::to_string(c.checkpoint_interval));
  if (c.seed < 0) fail("seed", "an integer >= 0", std::to_string(c.seed));
  if (!(c.init_std > 0)) fail("init_std", "a value > 0", format_double(c.init_std));
  check_choice(*find_config_field("activation"), c.activation);
  check_choice(*find_config_field("router_score"), c.router_score);
  check_choice(*find_config_field("router_order"), c.router_order);
  if (c.router_order == "topk_then_softmax" && c.router_score != "softmax")
    fail("router_order", "softmax_then_topk when router_score is sigmoid", "'topk_then_softmax'");
  validate_moeut_keys(c);
}

}  // namespace moejit
