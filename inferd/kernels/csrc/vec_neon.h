// NEON helpers shared by inferd's CPU kernels on ARM64, four lanes wide: the same operations as
// vec_avx2.h / vec_avx512.h, rounding alike lane for lane (exp4 is exp16's formula step for step).
#pragma once

#if defined(__ARM_NEON)
#include <arm_neon.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace inferd_vec {

// Four floats (or bf16 values widened exactly) from p.
inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const c10::BFloat16* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)), 16));
}

// Lane sum in a fixed tree: (0+1, 2+3), then the two; lane max alike.
inline float hsum4(float32x4_t v) {
  const float32x2_t a = vpadd_f32(vget_low_f32(v), vget_high_f32(v));
  return vget_lane_f32(vpadd_f32(a, a), 0);
}
inline float hmax4(float32x4_t v) { return vmaxvq_f32(v); }

// Four vectors -> one vector of their horizontal sums (lane i = sum of v[i]).
inline float32x4_t reduce4(float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
  return vpaddq_f32(vpaddq_f32(v0, v1), vpaddq_f32(v2, v3));
}

// exp(x): exp16's steps (clamp, split into 2^n and a degree-7 polynomial of 2^f). scalef's
// exact p * 2^n becomes two multiplies by normal powers of two, the second rounding once, as
// scalef does where the result is subnormal; above 89 both overflow to infinity (the extra
// clamp keeps 2^n's exponent field in range), as vec_avx2.h's exp8 does: bitwise exp16 lane for
// lane. NaN becomes -104 as in x86's max_ps (its second operand where either is NaN): fmaxnm.
inline float32x4_t exp4(float32x4_t x) {
  x = vminnmq_f32(vmaxnmq_f32(x, vdupq_n_f32(-104.f)), vdupq_n_f32(89.f));
  const float32x4_t t = vmulq_f32(x, vdupq_n_f32(1.4426950408889634f));
  const float32x4_t n = vrndnq_f32(t);  // nearest, ties to even, as roundscale does
  const float32x4_t f = vmulq_f32(vsubq_f32(t, n), vdupq_n_f32(0.6931471805599453f));
  float32x4_t p = vdupq_n_f32(1.f / 5040.f);
  p = vfmaq_f32(vdupq_n_f32(1.f / 720.f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f / 120.f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f / 24.f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f / 6.f), p, f);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f), p, f);
  p = vfmaq_f32(vdupq_n_f32(1.f), p, f);
  const int32x4_t ni = vcvtq_s32_f32(n);  // integral already; in [-150, 128]
  const int32x4_t a = vshrq_n_s32(ni, 1), b = vsubq_s32(ni, a);
  const float32x4_t pa = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(a, vdupq_n_s32(127)), 23));
  const float32x4_t pb = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(b, vdupq_n_s32(127)), 23));
  return vmulq_f32(vmulq_f32(p, pa), pb);
}

// Round 4 floats to bfloat16 precision (nearest even), kept as floats; inputs are finite.
inline float32x4_t round_bf16(float32x4_t x) {
  const uint32x4_t bits = vreinterpretq_u32_f32(x);
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
  const uint32x4_t biased = vaddq_u32(bits, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
  return vreinterpretq_f32_u32(vandq_u32(biased, vdupq_n_u32(0xffff0000u)));
}
inline float32x4_t round_as4(float32x4_t x, float) { return x; }
inline float32x4_t round_as4(float32x4_t x, c10::BFloat16) { return round_bf16(x); }
inline void store4(float* p, float32x4_t x) { vst1q_f32(p, x); }
inline void store4(c10::BFloat16* p, float32x4_t x) {  // x already holds bf16-exact values
  vst1_u16(reinterpret_cast<uint16_t*>(p), vshrn_n_u32(vreinterpretq_u32_f32(x), 16));
}

}  // namespace inferd_vec
#endif
