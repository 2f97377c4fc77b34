// Vectorised Philox normals/uniforms for the CPU kernels: eight counters per AVX2 pass give 32
// numbers, with Sleef's 1-ulp log/sin/cos for Box-Muller. Without AVX2 the same numbers come from
// the scalar path (glibc libm), so the two differ only by libm rounding.
#pragma once
#include <cmath>
#include <cstdint>

#include "../philox.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <sleef.h>
#define EBJDAT_CPU_AVX2 1
#else
#define EBJDAT_CPU_AVX2 0
#endif

namespace ebjdat {
namespace philox {

// Numbers per generator call: 8 counters x 4 lanes.
constexpr int64_t kChunk = 32;

inline void uniforms32_scalar(uint64_t seed, uint64_t k, float* out) {
  for (int j = 0; j < 8; ++j) {
    const Block b = philox4x32_10(seed, k + j);
    for (int l = 0; l < 4; ++l) out[4 * j + l] = to_uniform(b.v[l]);
  }
}

inline void normals32_scalar(uint64_t seed, uint64_t k, float* out) {
  for (int j = 0; j < 8; ++j) {
    float z[4];
    normals4(seed, k + j, z);
    for (int l = 0; l < 4; ++l) out[4 * j + l] = z[l];
  }
}

#if EBJDAT_CPU_AVX2
inline void mulhilo8(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
  lo = _mm256_mullo_epi32(a, b);
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Philox rounds on counters k..k+7 at once; lane j of w[l] is word l of counter k + j.
inline void philox8(uint64_t seed, uint64_t k, __m256i w[4]) {
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  // 64-bit counters k + j, split into low and high words.
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(k));
  const __m256i k03 = _mm256_add_epi64(base, idx);
  const __m256i k47 = _mm256_add_epi64(base, _mm256_add_epi64(idx, _mm256_set1_epi64x(4)));
  const __m256i perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i a = _mm256_permutevar8x32_epi32(k03, perm);  // lo0..3 | hi0..3
  const __m256i b = _mm256_permutevar8x32_epi32(k47, perm);  // lo4..7 | hi4..7
  __m256i c0 = _mm256_permute2x128_si256(a, b, 0x20);
  __m256i c1 = _mm256_permute2x128_si256(a, b, 0x31);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i ra = _mm256_set1_epi32(static_cast<int>(kRoundA));
  const __m256i rb = _mm256_set1_epi32(static_cast<int>(kRoundB));
  for (int r = 0; r < kRounds; ++r) {
    __m256i hi_b, lo_b, hi_a, lo_a;
    mulhilo8(rb, c2, hi_b, lo_b);
    mulhilo8(ra, c0, hi_a, lo_a);
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), vk0);
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), vk1);
    c1 = lo_b;
    c3 = lo_a;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

inline __m256 to_uniform8(__m256i w) {
  const __m256i neg = _mm256_cmpgt_epi32(_mm256_setzero_si256(), w);
  const __m256i x = _mm256_xor_si256(w, neg);  // ~w where w < 0
  return _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(kUniformScale));
}

// Store lane j of v[l] at out[4 * j + l]: counter-major order, as the scalar path writes it.
inline void store_interleaved(const __m256 v[4], float* out) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]);
  const __m256 t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]);
  const __m256 t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

inline void normal_pair8(__m256 u1, __m256 u2, __m256& n1, __m256& n2) {
  u1 = _mm256_max_ps(_mm256_set1_ps(kMinUniform), u1);
  const __m256 th = _mm256_mul_ps(_mm256_set1_ps(kTwoPi), u2);
  const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), Sleef_logf8_u10(u1)));
  const Sleef___m256_2 sc = Sleef_sincosf8_u10(th);  // (sin, cos) in one call
  n1 = _mm256_mul_ps(r, sc.y);
  n2 = _mm256_mul_ps(r, sc.x);
}
#endif

// 32 uniforms in [0, 1) for counters k..k+7, element order.
inline void uniforms32(uint64_t seed, uint64_t k, float* out) {
#if EBJDAT_CPU_AVX2
  __m256i w[4];
  philox8(seed, k, w);
  const __m256 u[4] = {to_uniform8(w[0]), to_uniform8(w[1]), to_uniform8(w[2]), to_uniform8(w[3])};
  store_interleaved(u, out);
#else
  uniforms32_scalar(seed, k, out);
#endif
}

// 32 standard normals for counters k..k+7, element order (tl.randn4x lanes n1..n4).
inline void normals32(uint64_t seed, uint64_t k, float* out) {
#if EBJDAT_CPU_AVX2
  __m256i w[4];
  philox8(seed, k, w);
  __m256 n[4];
  normal_pair8(to_uniform8(w[0]), to_uniform8(w[1]), n[0], n[1]);
  normal_pair8(to_uniform8(w[2]), to_uniform8(w[3]), n[2], n[3]);
  store_interleaved(n, out);
#else
  normals32_scalar(seed, k, out);
#endif
}

}  // namespace philox
}  // namespace ebjdat
