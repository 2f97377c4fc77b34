// Philox4x32-10 + Box-Muller, bit-compatible with Triton's tl.randint4x / tl.rand4x / tl.randn4x.
//
// One scheme on every backend: element i of a call draws lane (i % 4) of the Philox block at
// counter k = offset + i / 4, split as c0 = low 32 bits of k, c1 = high 32 bits, c2 = c3 = 0,
// with key (low, high) 32 bits of the 64-bit seed. Triton's randint4x(seed, k) with an int64 k
// computes exactly this, so the CPU, CUDA and Triton kernels and the PyTorch reference all draw
// the same numbers for the same (seed, offset), up to libm rounding in log/sin/cos.
#pragma once
#include <cstdint>

#include "hd_math.h"  // EBJDAT_HD, EBJDAT_UNROLL

namespace ebjdat {
namespace philox {

constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr int kRounds = 10;
// Triton's uint_to_uniform_float scale: largest value with INT32_MAX * scale < 1 in float32.
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

struct Block {
  uint32_t v[4];
};

EBJDAT_HD uint32_t mulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Four 32-bit words for the 64-bit counter k under the 64-bit seed.
EBJDAT_HD Block philox4x32_10(uint64_t seed, uint64_t k) {
  uint32_t c0 = static_cast<uint32_t>(k), c1 = static_cast<uint32_t>(k >> 32), c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  EBJDAT_UNROLL
  for (int r = 0; r < kRounds; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi(kRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi(kRoundA, p0) ^ c3 ^ k1;
    c1 = kRoundB * p2;
    c3 = kRoundA * p0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return Block{{c0, c1, c2, c3}};
}

// Triton's uint_to_uniform_float for 32-bit words: [0, 1) in float32.
EBJDAT_HD float to_uniform(uint32_t u) {
  int32_t x = static_cast<int32_t>(u);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// Box-Muller on two uniforms, as tl.randn4x: the precise logf/cosf/sinf (glibc's on the host,
// CUDA's on the device; the AVX2 CPU path uses Sleef's, within an ulp).
EBJDAT_HD void normal_pair(float u1, float u2, float& n1, float& n2) {
  u1 = u1 < kMinUniform ? kMinUniform : u1;
  const float th = kTwoPi * u2;
  const float r = sqrtf(-2.0f * logf(u1));
  n1 = r * cosf(th);
  n2 = r * sinf(th);
}

// The four normals of counter k (tl.randn4x lanes n1..n4).
EBJDAT_HD void normals4(uint64_t seed, uint64_t k, float (&z)[4]) {
  const Block b = philox4x32_10(seed, k);
  normal_pair(to_uniform(b.v[0]), to_uniform(b.v[1]), z[0], z[1]);
  normal_pair(to_uniform(b.v[2]), to_uniform(b.v[3]), z[2], z[3]);
}

}  // namespace philox
}  // namespace ebjdat
