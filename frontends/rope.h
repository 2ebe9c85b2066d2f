// Rotary position embeddings (RoPE) as Hugging Face Llama computes them, in
// the half-split convention (rotate_half): for a head vector x of size Dh,
//
//   x1 = x[0 : Dh/2], x2 = x[Dh/2 : Dh]
//   rope(x)[t] = x * cos[t] + concat(-x2, x1) * sin[t]
//   cos[t, i] = cos(t * inv_freq[i mod Dh/2]),  sin likewise,
//   inv_freq[i] = rope_theta^(-2i/Dh), i in 0 .. Dh/2-1, then scaled:
//     "linear": inv_freq / factor
//     "llama3": wavelength 2π/inv_freq above original_max/low_freq_factor is
//               divided by factor, below original_max/high_freq_factor kept,
//               in between interpolated smoothly (Llama 3.1 / SmolLM).
//
// moejit has no sin/cos op, so the tables are computed here on the host in
// double precision and enter the graph as two inputs, "rope.cos" and
// "rope.sin" [T, Dh] f32, shared by every layer. Whoever runs a graph built
// with apply_rope binds them once from rope_tables() (they do not change
// between steps; the Executable keeps them bound like parameters).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ir/builder.h"
#include "runtime/host_tensor.h"

namespace moejit {

struct RopeConfig {
  double theta = 10000.0;
  std::string scaling = "default";  // default | linear | llama3
  double factor = 1.0;              // linear, llama3
  double low_freq_factor = 1.0;     // llama3
  double high_freq_factor = 4.0;    // llama3
  std::int64_t original_max_position_embeddings = 8192;  // llama3
};

// Throws moejit::Error naming the field unless the config is usable for head
// size head_dim (even, positive; theta > 0; factor > 0; known scaling;
// llama3: high_freq_factor > low_freq_factor > 0).
void validate_rope(const RopeConfig& config, std::int64_t head_dim);

// inv_freq [Dh/2] after scaling, in double.
std::vector<double> rope_inverse_frequencies(const RopeConfig& config, std::int64_t head_dim);

struct RopeTables {
  HostTensor cos;  // [T, Dh] f32
  HostTensor sin;  // [T, Dh] f32
};
// The tables for positions 0 .. seq_len-1.
RopeTables rope_tables(const RopeConfig& config, std::int64_t seq_len, std::int64_t head_dim);

// Graph input names of the tables.
inline constexpr const char* kRopeCosInput = "rope.cos";
inline constexpr const char* kRopeSinInput = "rope.sin";

// apply_rope: x [B, H, T, Dh] f32 -> [B, H, T, Dh] f32, positions 0..T-1;
//   layout bthd: x [B, T, H, Dh] (the heads before their transpose, so the
//   attention-layout pass can fold that transpose into the attention).
//   Uses (creating on first use) graph inputs "rope.cos", "rope.sin" [T, Dh];
//   a second call in the same graph must have the same T and Dh.
Tensor apply_rope(Builder& b, Tensor x, HeadLayout layout = HeadLayout::bhtd);

// Binds "rope.cos" and "rope.sin" of a compiled graph, if the graph has them
// (a graph without RoPE is left alone). T and Dh are read from the graph's
// arguments.
class Executable;
void bind_rope_tables(Executable& exe, const RopeConfig& config);

}  // namespace moejit
