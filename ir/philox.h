// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11), the counter-based generator behind mj.dropout and
// mj.random_normal on every backend.
//
// This header is deliberately plain: unsigned int / unsigned long long
// arithmetic, no std::, no includes, so the CUDA backend can paste the text
// of philox4x32_10 and philox_uniform24 into generated kernels and produce
// the same bits as the CPU.
//
// How the ops map (seed, offset, step_offset, element) to Philox:
//   key     = (seed & 0xffffffff, seed >> 32)
//   base    = offset + step_offset: the op's `offset` attribute plus its
//             optional rank-0 i64 operand `step_offset` (0 when absent),
//             both taken as unsigned 64-bit, the sum wrapping mod 2^64. The
//             operand is read at run time, so one compiled graph draws fresh
//             numbers each step when fed a new step_offset; step_offset k
//             gives exactly the bits of offset + k with no operand.
//   n       = base + element index (flat, row-major), a 64-bit position
//   counter = (c0, c1, stream, 0) with (c0, c1) = the low and high words of
//             a 64-bit block number and `stream` naming the op, so dropout
//             and random_normal with equal seed and offset stay independent.
//
//   dropout (stream 0): block = n / 4, and element n takes output word n % 4.
//     uniform(n) = (word >> 8) * 2^-24, in [0, 1), exact in f32.
//     Element n is kept iff uniform(n) >= p, i.e. iff (word >> 8) >=
//     ceil(p * 2^24); kept elements are scaled by 1 / (1 - p).
//
//   random_normal (stream 1): block = n / 2 (one Philox call per pair of
//     elements); with words w0, w1 of that call,
//       u1 = (w0 + 0.5) * 2^-32   in (0, 1)
//       u2 = w1 * 2^-32           in [0, 1)
//       r  = sqrt(-2 ln u1),  theta = 2 pi u2          (Box-Muller)
//     element 2*block gets r cos(theta), element 2*block + 1 gets r sin(theta),
//     computed in double and rounded once to the result dtype.
//     (The uniforms are bit-exact everywhere; the transcendental functions are
//     double precision, so backends agree in f32 except for the rare value
//     whose double results differ by an ulp across an f32 rounding boundary.)
#pragma once

namespace moejit {

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MOEJIT_PHILOX_FN __host__ __device__ inline
#else
#define MOEJIT_PHILOX_FN constexpr inline
#endif

struct Philox4x32Block {
  unsigned int word[4];
};

// Philox 4x32 with 10 rounds: counter (c0..c3), key (k0, k1) -> 4 words.
// A round multiplies c0 and c2 by the Philox constants, keeps the high and
// low halves, and mixes in the other words and the key; the key is bumped by
// the Weyl constants between rounds.
MOEJIT_PHILOX_FN Philox4x32Block philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                               unsigned int k0, unsigned int k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    unsigned long long product0 = 0xD2511F53ull * c0;
    unsigned long long product1 = 0xCD9E8D57ull * c2;
    unsigned int hi0 = static_cast<unsigned int>(product0 >> 32), lo0 = static_cast<unsigned int>(product0);
    unsigned int hi1 = static_cast<unsigned int>(product1 >> 32), lo1 = static_cast<unsigned int>(product1);
    unsigned int next0 = hi1 ^ c1 ^ k0;
    unsigned int next2 = hi0 ^ c3 ^ k1;
    c0 = next0;
    c1 = lo1;
    c2 = next2;
    c3 = lo0;
  }
  return Philox4x32Block{{c0, c1, c2, c3}};
}

// The streams of the ops (counter word 2).
inline constexpr unsigned int kPhiloxStreamDropout = 0;
inline constexpr unsigned int kPhiloxStreamNormal = 1;

// The Philox call of one 64-bit block number in a stream, keyed by a seed.
MOEJIT_PHILOX_FN Philox4x32Block philox_block(unsigned long long seed, unsigned long long block, unsigned int stream) {
  return philox4x32_10(static_cast<unsigned int>(block), static_cast<unsigned int>(block >> 32), stream, 0u,
                       static_cast<unsigned int>(seed), static_cast<unsigned int>(seed >> 32));
}

// The top 24 bits of a word: uniform(n) = philox_uniform24(...) * 2^-24.
MOEJIT_PHILOX_FN unsigned int philox_uniform24(unsigned int word) { return word >> 8; }

// Dropout's 24-bit uniform of position n (= base + element index).
MOEJIT_PHILOX_FN unsigned int dropout_uniform24(unsigned long long seed, unsigned long long n) {
  Philox4x32Block b = philox_block(seed, n / 4, kPhiloxStreamDropout);
  return philox_uniform24(b.word[n % 4]);
}

}  // namespace moejit

#if !defined(__CUDACC_RTC__)
namespace moejit {
// Host-only helpers built on the arithmetic above (ir/philox.cpp).
// ceil(p * 2^24): dropout keeps position n iff dropout_uniform24 >= this.
unsigned int dropout_threshold24(double p);
// Element n of mj.random_normal, as a double (round it to the dtype once).
double philox_normal(unsigned long long seed, unsigned long long n);
}  // namespace moejit
#endif
