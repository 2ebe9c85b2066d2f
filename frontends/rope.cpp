// Rotary position embeddings (see rope.h).
#include "frontends/rope.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

#include "ir/error.h"
#include "runtime/backend.h"

namespace moejit {

void validate_rope(const RopeConfig& c, std::int64_t head_dim) {
  if (head_dim <= 0 || head_dim % 2 != 0)
    throw Error(fmt::format("rope: head_dim: expected a positive even size, found {}", head_dim));
  if (!(c.theta > 0)) throw Error(fmt::format("rope: rope_theta: expected > 0, found {}", c.theta));
  if (c.scaling != "default" && c.scaling != "linear" && c.scaling != "llama3")
    throw Error(fmt::format("rope: rope_scaling type: expected default, linear or llama3, found '{}'", c.scaling));
  if (c.scaling != "default" && !(c.factor > 0))
    throw Error(fmt::format("rope: rope_scaling factor: expected > 0, found {}", c.factor));
  if (c.scaling == "llama3") {
    if (!(c.low_freq_factor > 0) || !(c.high_freq_factor > c.low_freq_factor))
      throw Error(fmt::format(
          "rope: llama3 rope_scaling: expected high_freq_factor > low_freq_factor > 0, found {} and {}",
          c.high_freq_factor, c.low_freq_factor));
    if (c.original_max_position_embeddings <= 0)
      throw Error(fmt::format("rope: llama3 rope_scaling original_max_position_embeddings: expected > 0, found {}",
                              c.original_max_position_embeddings));
  }
}

std::vector<double> rope_inverse_frequencies(const RopeConfig& c, std::int64_t head_dim) {
  validate_rope(c, head_dim);
  const std::int64_t half = head_dim / 2;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    inv_freq[i] = 1.0 / std::pow(c.theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
  if (c.scaling == "linear") {
    for (double& f : inv_freq) f /= c.factor;
  } else if (c.scaling == "llama3") {
    // Long wavelengths (low frequencies) are stretched by `factor`, short ones
    // kept, and the band between blends the two linearly in 1/wavelength.
    const double old_len = static_cast<double>(c.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / c.low_freq_factor;
    const double high_freq_wavelen = old_len / c.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= c.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (old_len / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
        f = (1.0 - smooth) * f / c.factor + smooth * f;
      }
    }
  }
  return inv_freq;
}

RopeTables rope_tables(const RopeConfig& c, std::int64_t seq_len, std::int64_t head_dim) {
  std::vector<double> inv_freq = rope_inverse_frequencies(c, head_dim);
  const std::int64_t half = head_dim / 2;
  RopeTables tables{HostTensor(TensorType{DType::f32, {seq_len, head_dim}}),
                    HostTensor(TensorType{DType::f32, {seq_len, head_dim}})};
  std::span<float> cos = tables.cos.values<float>(), sin = tables.sin.values<float>();
  for (std::int64_t t = 0; t < seq_len; ++t) {
    for (std::int64_t i = 0; i < head_dim; ++i) {
      const double angle = static_cast<double>(t) * inv_freq[i % half];
      cos[t * head_dim + i] = static_cast<float>(std::cos(angle));
      sin[t * head_dim + i] = static_cast<float>(std::sin(angle));
    }
  }
  return tables;
}

namespace {

Tensor table_input(Builder& b, const char* name, std::int64_t seq_len, std::int64_t head_dim) {
  Graph& g = b.graph();
  ValueId existing = g.find_arg(name);
  if (existing == kNoValue) return b.input(name, {seq_len, head_dim}, DType::f32);
  Tensor table{&g, existing};
  if (table.shape() != Shape{seq_len, head_dim})
    throw Error(fmt::format("apply_rope: input {}: expected [{}, {}] (this call's T and Dh), found {} from an "
                            "earlier call",
                            name, seq_len, head_dim, table.type().str()));
  return table;
}

}  // namespace

Tensor apply_rope(Builder& b, Tensor x, HeadLayout layout) {
  const bool bthd = layout == HeadLayout::bthd;
  if (x.rank() != 4 || x.dtype() != DType::f32 || x.dim(3) % 2 != 0)
    throw Error(fmt::format("apply_rope: x: expected [{}] f32 with Dh even, found {}", bthd ? "B, T, H, Dh" : "B, H, T, Dh",
                            x.type().str()));
  const std::int64_t T = x.dim(bthd ? 1 : 2), Dh = x.dim(3), half = Dh / 2;
  // The tables [T, Dh] broadcast over batch and heads ([T, 1, Dh] when the heads follow T).
  auto table = [&](const char* name) {
    Tensor t = table_input(b, name, T, Dh);
    return b.broadcast(bthd ? b.reshape(t, {T, 1, Dh}) : t, x.shape());
  };
  Tensor cos = table(kRopeCosInput), sin = table(kRopeSinInput);
  const Shape& s = x.shape();
  Tensor x1 = b.slice(x, {0, 0, 0, 0}, {s[0], s[1], s[2], half});   // first half
  Tensor x2 = b.slice(x, {0, 0, 0, half}, {s[0], s[1], s[2], Dh});  // second half
  Tensor rotated = b.concat({b.neg(x2), x1}, 3);           // rotate_half(x)
  return b.add(b.mul(x, cos), b.mul(rotated, sin));
}

void bind_rope_tables(Executable& exe, const RopeConfig& config) {
  const Graph& g = exe.graph();
  ValueId cos = g.find_arg(kRopeCosInput);
  if (cos == kNoValue) return;
  const TensorType& type = g.type(cos);
  RopeTables tables = rope_tables(config, type.dim(0), type.dim(1));
  exe.set(kRopeCosInput, tables.cos);
  exe.set(kRopeSinInput, tables.sin);
}

}  // namespace moejit
