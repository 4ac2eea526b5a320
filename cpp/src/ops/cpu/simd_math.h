#pragma once
// Branch-free float32 transcendentals for the CPU loss kernels, written so that GCC/Clang vectorise
// the loops that call them (libm's scalar expf/log1pf stop that). Accuracy: exp within ~2 ulp over
// the clamped range, log1p within ~3 ulp on [0, 1]; the loss kernels accumulate in double, so the
// float64-oracle tests keep their 1e-5 relative bound in fp32. Double inputs keep libm (1e-10 bound).
//
// DTC_SIMD_CLONES compiles a loop for AVX-512, AVX2 and the x86-64 baseline and picks one when the
// library loads (GCC/Clang function multi-versioning); elsewhere it is the plain function.

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__CUDACC__)
#define DTC_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DTC_SIMD_CLONES
#endif

namespace dtc::simd {

// Selects on the bits: a floating-point `c ? a : b` is if-converted (vectorised) only where the
// target has masked instructions (AVX-512) or when neither arm can trap; integer masks vectorise on
// every target. Both arms are evaluated.
inline uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

inline float from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

inline float select(bool c, float a, float b) {
  const uint32_t mask = c ? 0xffffffffu : 0u;
  return from_bits((bits_of(a) & mask) | (bits_of(b) & ~mask));
}

inline float abs(float v) { return from_bits(bits_of(v) & 0x7fffffffu); }

// `value` where `weight` != 0 (either sign of zero counts as zero), else +0: NaN/Inf in `value` at
// zero weights do not leak.
inline float where_nonzero(float weight, float value) {
  return from_bits(bits_of(value) & ((bits_of(weight) & 0x7fffffffu) != 0u ? 0xffffffffu : 0u));
}

// floor(v) for every float, exactly, without branches: std::floor is a libm call on the x86-64
// baseline and stops GCC's vectoriser on every target. Below 2^23 in magnitude, adding and
// subtracting 2^23 rounds |v| to the nearest integer; one step down where that overshot gives the
// floor. From 2^23 on every float is an integer, and NaN passes through (its comparisons are false).
inline float floor(float v) {
  const float two23 = 8388608.0f;
  const float a = abs(v);
  const float nearest = from_bits(bits_of((a + two23) - two23) | (bits_of(v) & 0x80000000u));
  const float down = nearest - select(nearest > v, 1.0f, 0.0f);
  return select(a < two23, down, v);
}

// exp(x) by Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial of exp(r)
// (truncation < 1e-8 relative) and 2^n assembled in the exponent bits. x is clamped to the range where
// 2^n is a normal float, so exp(-100) returns ~1e-38 instead of 0: harmless in 1 + exp(.) and in the
// confidence weights (a subnormal-free result keeps the vector units on their fast path).
inline float exp(float x) {
  x = select(x < -87.0f, -87.0f, select(x > 88.0f, 88.0f, x));
  // Adding 1.5 * 2^23 rounds to the nearest integer in the mantissa (no -ffast-math needed).
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // A NaN x passes the clamps and makes n NaN, whose conversion to int is undefined behaviour (UBSan's
  // float-cast-overflow); convert 0 instead: p is NaN already, so the result stays NaN.
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(select(n == n, n, 0.0f)) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: no cancellation near e = 0.
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 17.0f;
  p = p * s2 + 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// sigmoid(z) through exp(-|z|) so that nothing overflows: 1 / (1 + e) for z >= 0, e / (1 + e) else.
inline float sigmoid(float z) {
  const float e = simd::exp(-simd::abs(z));
  const float inv = 1.0f / (1.0f + e);
  return select(z >= 0.0f, inv, e * inv);
}

// Binary cross-entropy of a logit against a soft label: max(z, 0) - z y + log(1 + exp(-|z|)).
inline float bce_with_logits(float z, float y) {
  return select(z > 0.0f, z, 0.0f) - z * y + log1p_unit(simd::exp(-simd::abs(z)));
}

}  // namespace dtc::simd
