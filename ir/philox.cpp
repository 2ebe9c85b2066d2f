// Host-side helpers of the Philox streams described in ir/philox.h.
#include "ir/philox.h"

#include <cmath>
#include <numbers>

namespace moejit {

unsigned int dropout_threshold24(double p) {
  double threshold = std::ceil(p * 16777216.0);  // p * 2^24, exact scaling
  if (threshold <= 0.0) return 0;
  if (threshold >= 16777216.0) return 16777216u;  // keeps nothing (p >= 1 is rejected by the verifier)
  return static_cast<unsigned int>(threshold);
}

double philox_normal(unsigned long long seed, unsigned long long n) {
  Philox4x32Block b = philox_block(seed, n / 2, kPhiloxStreamNormal);
  const double two_pow_minus_32 = 1.0 / 4294967296.0;
  double u1 = (static_cast<double>(b.word[0]) + 0.5) * two_pow_minus_32;  // (0, 1)
  double u2 = static_cast<double>(b.word[1]) * two_pow_minus_32;          // [0, 1)
  double radius = std::sqrt(-2.0 * std::log(u1));
  double theta = 2.0 * std::numbers::pi * u2;
  return n % 2 == 0 ? radius * std::cos(theta) : radius * std::sin(theta);
}

}  // namespace moejit
