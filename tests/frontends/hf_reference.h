// Test helpers for the Hugging Face tests: random checkpoints written in the
// Hugging Face layout (config.json + safetensors, optionally sharded) and an
// independent double-precision Llama / Mixtral forward pass over the Hugging
// Face tensors, written loop by loop from the models' definitions.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "frontends/llama.h"
#include "frontends/rope.h"
#include "frontends/safetensors.h"
#include "runtime/host_tensor.h"

namespace hf_test {

using namespace moejit;
namespace fs = std::filesystem;

inline fs::path temp_dir(const std::string& test) {
  fs::path dir = fs::path(MOEJIT_BINARY_DIR) / "tests_tmp" / "frontends" / test;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

inline void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// config.json written by hand with Hugging Face's keys (transformers 4 style).
inline std::string hf_config_json(const LlamaConfig& c) {
  std::string rope = "null";
  if (c.rope.scaling == "linear") rope = fmt::format(R"({{"rope_type": "linear", "factor": {}}})", c.rope.factor);
  if (c.rope.scaling == "llama3")
    rope = fmt::format(R"({{"rope_type": "llama3", "factor": {}, "low_freq_factor": {}, "high_freq_factor": {},
                        "original_max_position_embeddings": {}}})",
                       c.rope.factor, c.rope.low_freq_factor, c.rope.high_freq_factor,
                       c.rope.original_max_position_embeddings);
  std::string moe = c.is_moe() ? fmt::format(R"("num_local_experts": {}, "num_experts_per_tok": {}, "sliding_window": null,)",
                                             c.num_local_experts, c.num_experts_per_tok)
                               : "";
  return fmt::format(R"({{"architectures": ["{}"], "model_type": "{}", "vocab_size": {}, "hidden_size": {},
    "intermediate_size": {}, "num_hidden_layers": {}, "num_attention_heads": {}, "num_key_value_heads": {},
    "head_dim": {}, "max_position_embeddings": {}, "rms_norm_eps": {}, "tie_word_embeddings": {},
    "hidden_act": "silu", "attention_bias": false, {} "rope_theta": {}, "rope_scaling": {}, "torch_dtype": "float32"}})",
                     c.architecture, c.is_moe() ? "mixtral" : "llama", c.vocab_size, c.hidden_size, c.intermediate_size,
                     c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_size(),
                     c.max_position_embeddings, c.rms_norm_eps, c.tie_word_embeddings ? "true" : "false", moe,
                     c.rope.theta, rope);
}

// Random Hugging Face tensors (per-expert Mixtral layout) for a config.
inline std::map<std::string, HostTensor> random_hf_tensors(const LlamaConfig& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  std::map<std::string, HostTensor> t;
  auto add = [&](const std::string& name, Shape shape, bool norm = false) {
    HostTensor x(TensorType{DType::f32, shape});
    for (float& v : x.values<float>()) v = norm ? 1.0f + 0.3f * normal(rng) : normal(rng);
    t[name] = x;
  };
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, Dh = c.head_size();
  add("model.embed_tokens.weight", {c.vocab_size, D});
  add("model.norm.weight", {D}, true);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, D});
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {D}, true);
    add(p + "post_attention_layernorm.weight", {D}, true);
    add(p + "self_attn.q_proj.weight", {c.num_attention_heads * Dh, D});
    add(p + "self_attn.k_proj.weight", {c.num_key_value_heads * Dh, D});
    add(p + "self_attn.v_proj.weight", {c.num_key_value_heads * Dh, D});
    add(p + "self_attn.o_proj.weight", {D, c.num_attention_heads * Dh});
    if (c.is_moe()) {
      add(p + "block_sparse_moe.gate.weight", {c.num_local_experts, D});
      for (std::int64_t e = 0; e < c.num_local_experts; ++e) {
        std::string q = fmt::format("{}block_sparse_moe.experts.{}.", p, e);
        add(q + "w1.weight", {F, D});
        add(q + "w2.weight", {D, F});
        add(q + "w3.weight", {F, D});
      }
    } else {
      add(p + "mlp.gate_proj.weight", {F, D});
      add(p + "mlp.up_proj.weight", {F, D});
      add(p + "mlp.down_proj.weight", {D, F});
    }
  }
  return t;
}

// Writes config.json and the tensors, in `shards` files (with an index) or one.
inline void write_hf_dir(const fs::path& dir, const LlamaConfig& c, const std::map<std::string, HostTensor>& tensors,
                         int shards = 1) {
  write_text(dir / "config.json", hf_config_json(c));
  if (shards == 1) {
    save_safetensors((dir / "model.safetensors").string(), {tensors, {{"format", "pt"}}});
    return;
  }
  std::vector<Checkpoint> parts(static_cast<std::size_t>(shards));
  std::string index = R"({"metadata": {"total_size": 0}, "weight_map": {)";
  int i = 0;
  for (const auto& [name, t] : tensors) {
    int shard = i++ % shards;
    parts[static_cast<std::size_t>(shard)].tensors[name] = t;
    index += fmt::format("{}\"{}\": \"model-{:05d}-of-{:05d}.safetensors\"", i > 1 ? ", " : "", name, shard + 1, shards);
  }
  index += "}}";
  for (int s = 0; s < shards; ++s)
    save_safetensors((dir / fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards)).string(),
                     parts[static_cast<std::size_t>(s)]);
  write_text(dir / "model.safetensors.index.json", index);
}

// The reference forward pass: logits [T, V] for one sequence.
class ReferenceLlama {
 public:
  ReferenceLlama(const LlamaConfig& c, const std::map<std::string, HostTensor>& t) : c_(c), t_(t) {}

  std::vector<std::vector<double>> logits(const std::vector<int>& ids) const {
    const std::int64_t D = c_.hidden_size, T = static_cast<std::int64_t>(ids.size());
    Mat x(T, std::vector<double>(D));
    const HostTensor& embed = t_.at("model.embed_tokens.weight");
    for (std::int64_t i = 0; i < T; ++i)
      for (std::int64_t d = 0; d < D; ++d) x[i][d] = embed.get(ids[i] * D + d);
    for (std::int64_t l = 0; l < c_.num_hidden_layers; ++l) {
      std::string p = fmt::format("model.layers.{}.", l);
      add_into(x, attention(rms(x, p + "input_layernorm.weight"), p + "self_attn."));
      Mat h = rms(x, p + "post_attention_layernorm.weight");
      add_into(x, c_.is_moe() ? moe(h, p + "block_sparse_moe.") : mlp(h, p + "mlp.gate_proj.weight",
                                                                     p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"));
    }
    return linear(rms(x, "model.norm.weight"), c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  }

 private:
  using Mat = std::vector<std::vector<double>>;

  static void add_into(Mat& x, const Mat& y) {
    for (std::size_t i = 0; i < x.size(); ++i)
      for (std::size_t j = 0; j < x[i].size(); ++j) x[i][j] += y[i][j];
  }
  // y = x · Wᵀ, W [out, in].
  Mat linear(const Mat& x, const std::string& name) const {
    const HostTensor& w = t_.at(name);
    const std::int64_t out = w.shape()[0], in = w.shape()[1];
    Mat y(x.size(), std::vector<double>(out, 0.0));
    for (std::size_t i = 0; i < x.size(); ++i)
      for (std::int64_t o = 0; o < out; ++o)
        for (std::int64_t k = 0; k < in; ++k) y[i][o] += x[i][k] * w.get(o * in + k);
    return y;
  }
  Mat rms(const Mat& x, const std::string& name) const {
    const HostTensor& g = t_.at(name);
    Mat y = x;
    for (auto& row : y) {
      double ss = 0;
      for (double v : row) ss += v * v;
      double inv = 1.0 / std::sqrt(ss / static_cast<double>(row.size()) + c_.rms_norm_eps);
      for (std::size_t j = 0; j < row.size(); ++j) row[j] = row[j] * inv * g.get(static_cast<std::int64_t>(j));
    }
    return y;
  }
  Mat attention(const Mat& x, const std::string& p) const {
    const std::int64_t T = static_cast<std::int64_t>(x.size()), Hq = c_.num_attention_heads,
                       Hkv = c_.num_key_value_heads, Dh = c_.head_size(), half = Dh / 2;
    Mat q = linear(x, p + "q_proj.weight"), k = linear(x, p + "k_proj.weight"), v = linear(x, p + "v_proj.weight");
    std::vector<double> inv_freq = rope_inverse_frequencies(c_.rope, Dh);
    auto rotate = [&](Mat& m, std::int64_t heads) {
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t h = 0; h < heads; ++h)
          for (std::int64_t i = 0; i < half; ++i) {
            double a = m[t][h * Dh + i], b = m[t][h * Dh + i + half], ang = static_cast<double>(t) * inv_freq[i];
            m[t][h * Dh + i] = a * std::cos(ang) - b * std::sin(ang);
            m[t][h * Dh + i + half] = b * std::cos(ang) + a * std::sin(ang);
          }
    };
    rotate(q, Hq);
    rotate(k, Hkv);
    Mat out(T, std::vector<double>(Hq * Dh, 0.0));
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t kvh = h / (Hq / Hkv);
      for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (std::int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (std::int64_t d = 0; d < Dh; ++d) dot += q[t][h * Dh + d] * k[u][kvh * Dh + d];
          s[u] = dot / std::sqrt(static_cast<double>(Dh));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (std::int64_t u = 0; u <= t; ++u)
          for (std::int64_t d = 0; d < Dh; ++d) out[t][h * Dh + d] += s[u] / z * v[u][kvh * Dh + d];
      }
    }
    return linear(out, p + "o_proj.weight");
  }
  Mat mlp(const Mat& x, const std::string& gate, const std::string& up, const std::string& down) const {
    Mat g = linear(x, gate), u = linear(x, up);
    for (std::size_t i = 0; i < g.size(); ++i)
      for (std::size_t j = 0; j < g[i].size(); ++j) g[i][j] = g[i][j] / (1.0 + std::exp(-g[i][j])) * u[i][j];
    return linear(g, down);
  }
  // Mixtral: softmax over the experts, top-k, renormalized, weighted sum.
  Mat moe(const Mat& x, const std::string& p) const {
    Mat logits = linear(x, p + "gate.weight");
    Mat y(x.size(), std::vector<double>(x[0].size(), 0.0));
    const std::int64_t E = c_.num_local_experts, K = c_.num_experts_per_tok;
    for (std::size_t t = 0; t < x.size(); ++t) {
      std::vector<std::int64_t> order(static_cast<std::size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return logits[t][a] > logits[t][b]; });
      double mx = logits[t][order[0]], z = 0, zk = 0;
      for (std::int64_t e = 0; e < E; ++e) z += std::exp(logits[t][e] - mx);
      for (std::int64_t k = 0; k < K; ++k) zk += std::exp(logits[t][order[k]] - mx) / z;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t e = order[k];
        double w = std::exp(logits[t][e] - mx) / z / zk;
        std::string q = fmt::format("{}experts.{}.", p, e);
        Mat out = mlp({x[t]}, q + "w1.weight", q + "w3.weight", q + "w2.weight");
        for (std::size_t d = 0; d < y[t].size(); ++d) y[t][d] += w * out[0][d];
      }
    }
    return y;
  }

  LlamaConfig c_;
  const std::map<std::string, HostTensor>& t_;
};

// max |a - b| / max |b| over [T, V].
inline double max_relative_difference(const HostTensor& a, const std::vector<std::vector<double>>& b) {
  double diff = 0, scale = 0;
  const std::int64_t V = static_cast<std::int64_t>(b[0].size());
  for (std::size_t t = 0; t < b.size(); ++t)
    for (std::int64_t v = 0; v < V; ++v) {
      diff = std::max(diff, std::abs(a.get(static_cast<std::int64_t>(t) * V + v) - b[t][v]));
      scale = std::max(scale, std::abs(b[t][v]));
    }
  return diff / scale;
}

}  // namespace hf_test
