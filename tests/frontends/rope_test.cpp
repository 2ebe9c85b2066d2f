// RoPE against a direct double-precision computation written here pair by
// pair (x[i], x[i + Dh/2]) rotated by angle t·inv_freq[i], for the default,
// linear and llama3 frequency rules.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <random>

#include "frontends/rope.h"
#include "ir/error.h"
#include "runtime/backend.h"

using namespace moejit;

namespace {

// The frequency rules restated independently of rope.cpp.
double reference_inv_freq(const RopeConfig& c, std::int64_t i, std::int64_t dh) {
  double f = std::pow(c.theta, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
  if (c.scaling == "linear") return f / c.factor;
  if (c.scaling != "llama3") return f;
  const double len = static_cast<double>(c.original_max_position_embeddings);
  const double wavelen = 2.0 * std::numbers::pi / f;
  if (wavelen < len / c.high_freq_factor) return f;
  if (wavelen > len / c.low_freq_factor) return f / c.factor;
  const double s = (len / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
  return (1 - s) * f / c.factor + s * f;
}

void check_against_reference(const RopeConfig& config, std::int64_t B, std::int64_t H, std::int64_t T,
                             std::int64_t Dh) {
  Graph graph("rope");
  Builder b(graph);
  Tensor x = b.input("x", {B, H, T, Dh});
  b.output(apply_rope(b, x), "y");
  auto exe = make_cpu_backend()->compile(graph);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  HostTensor xv(TensorType{DType::f32, {B, H, T, Dh}});
  for (float& v : xv.values<float>()) v = normal(rng);
  exe->set("x", xv);
  bind_rope_tables(*exe, config);
  exe->run();
  HostTensor y = exe->get("y");

  const std::int64_t half = Dh / 2;
  double max_err = 0;
  for (std::int64_t bh = 0; bh < B * H; ++bh) {
    for (std::int64_t t = 0; t < T; ++t) {
      const float* in = xv.values<float>().data() + (bh * T + t) * Dh;
      const float* out = y.values<float>().data() + (bh * T + t) * Dh;
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(t) * reference_inv_freq(config, i, Dh);
        const double a = in[i], c = in[i + half];
        const double ra = a * std::cos(angle) - c * std::sin(angle);
        const double rc = c * std::cos(angle) + a * std::sin(angle);
        max_err = std::max({max_err, std::abs(out[i] - ra), std::abs(out[i + half] - rc)});
      }
    }
  }
  INFO("scaling " << config.scaling << ", max abs error " << max_err);
  CHECK(max_err < 2e-5);
}

}  // namespace

TEST_CASE("rope matches a direct computation for default, linear and llama3 frequencies", "[rope]") {
  check_against_reference({.theta = 10000.0}, 2, 3, 9, 8);
  check_against_reference({.theta = 100.0, .scaling = "linear", .factor = 4.0}, 1, 2, 12, 16);
  // Small original length so the 16-dim heads' wavelengths fall in all
  // three llama3 bands (kept, blended, stretched).
  RopeConfig llama3{.theta = 10000.0, .scaling = "llama3", .factor = 8.0, .low_freq_factor = 1.0,
                    .high_freq_factor = 4.0, .original_max_position_embeddings = 64};
  std::vector<double> f = rope_inverse_frequencies(llama3, 16);
  int kept = 0, stretched = 0, blended = 0;
  for (std::int64_t i = 0; i < 8; ++i) {
    double raw = std::pow(10000.0, -2.0 * static_cast<double>(i) / 16.0);
    if (std::abs(f[i] - raw) < 1e-15) ++kept;
    else if (std::abs(f[i] - raw / 8.0) < 1e-15) ++stretched;
    else ++blended;
  }
  CHECK(kept > 0);
  CHECK(stretched > 0);
  CHECK(blended > 0);
  check_against_reference(llama3, 1, 2, 20, 16);
}

TEST_CASE("rope position 0 is the identity and tables are shared by layers", "[rope]") {
  RopeTables tables = rope_tables({}, 3, 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(tables.cos.get(i) == 1.0);
    CHECK(tables.sin.get(i) == 0.0);
  }
  Graph graph("two_layers");
  Builder b(graph);
  Tensor q = b.input("q", {1, 2, 3, 4});
  Tensor k = b.input("k", {1, 1, 3, 4});
  apply_rope(b, q);
  apply_rope(b, k);  // same T and Dh: reuses the inputs
  CHECK(graph.find_arg(kRopeCosInput) != kNoValue);
  Tensor other = b.input("other", {1, 1, 5, 4});
  std::string message;
  try {
    apply_rope(b, other);
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message.find("expected [5, 4]") != std::string::npos);
}

TEST_CASE("rope configs are validated", "[rope]") {
  CHECK_THROWS_AS(validate_rope({}, 7), Error);
  CHECK_THROWS_AS(validate_rope({.scaling = "yarn"}, 8), Error);
  CHECK_THROWS_AS(validate_rope({.scaling = "llama3", .factor = 8, .low_freq_factor = 4, .high_freq_factor = 1}, 8),
                  Error);
}
