// What only the CUDA kernels need: grouped loads/stores, reductions, launch sizing and the
// generator draw. The arithmetic is not here: each op's formulas are in csrc/<op>.h, shared with the
// CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/ceil_div.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <type_traits>

#include "../common.h"

namespace ebjdat {
namespace cuda {

constexpr int kThreads = 256;  // block size of the flat (elementwise) kernels

// ---------------------------------------------------------------------------------------------
// Groups of four elements. Every kernel walks its buffer in aligned groups: group c covers flat
// elements 4c..4c+3, which is also the element set of Philox counter offset + c. A group that
// lies fully inside [lo, hi) is moved with one vector access when the base pointers are aligned;
// a group cut by the range (flat tail, sample or row boundary) goes lane by lane.

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <typename T>
inline bool aligned4(const T* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % sizeof(Pack4<T>) == 0;
}

__device__ __forceinline__ bool lane_on(int64_t c, int j, int64_t lo, int64_t hi) {
  const int64_t i = 4 * c + j;
  return i >= lo && i < hi;
}

__device__ __forceinline__ bool group_full(int64_t c, int64_t lo, int64_t hi) {
  return 4 * c >= lo && 4 * c + 4 <= hi;
}

// Lanes of group c inside [lo, hi) as A; the others read `fill`.
template <typename T, typename A>
__device__ __forceinline__ void load4(const T* p, int64_t c, int64_t lo, int64_t hi, bool vec,
                                      A (&out)[4], A fill = A(0)) {
  if (vec && group_full(c, lo, hi)) {
    const Pack4<T> pk = *reinterpret_cast<const Pack4<T>*>(p + 4 * c);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = static_cast<A>(pk.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = lane_on(c, j, lo, hi) ? static_cast<A>(p[4 * c + j]) : fill;
  }
}

// Writes the lanes of group c inside [lo, hi).
template <typename T, typename A>
__device__ __forceinline__ void store4(T* p, int64_t c, int64_t lo, int64_t hi, bool vec,
                                       const A (&v)[4]) {
  if (vec && group_full(c, lo, hi)) {
    Pack4<T> pk;
#pragma unroll
    for (int j = 0; j < 4; ++j) pk.v[j] = static_cast<T>(v[j]);
    *reinterpret_cast<Pack4<T>*>(p + 4 * c) = pk;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (lane_on(c, j, lo, hi)) p[4 * c + j] = static_cast<T>(v[j]);
    }
  }
}

// Grid-stride loop over the groups [0, groups) of a flat buffer.
#define EBJDAT_GROUP_LOOP(c, groups)                                                   \
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;       \
       c < (groups); c += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------------------------
// Reductions. Every lane/thread gets the result, so no broadcast step is needed.

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxNanOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return max_nan(a, b); }
};

// Butterfly over aligned groups of `width` lanes (a power of two <= 32); all lanes take part.
template <typename T, typename Op>
__device__ __forceinline__ T group_allreduce(T v, Op op, int width) {
  for (int m = width / 2; m > 0; m /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, m, width));
  return v;
}

// Whole-block reduce (blockDim.x a multiple of 32). buf: 32 shared slots, reusable right away.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op, T* buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = group_allreduce(v, op, 32);
  __syncthreads();  // the previous call's readers are done with buf
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  v = buf[0];
  for (int w = 1; w < warps; ++w) v = op(v, buf[w]);  // same order in every thread
  return v;
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Blocks for a grid-stride loop over `work` items: enough for a few waves, no more.
inline int flat_blocks(int64_t work, int threads = kThreads) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t waves = 4;
  const int64_t cap = static_cast<int64_t>(prop->multiProcessorCount) *
                      (prop->maxThreadsPerMultiProcessor / threads) * waves;
  return static_cast<int>(std::max<int64_t>(1, std::min(cap, at::ceil_div<int64_t>(work, threads))));
}

// Threads for one block per sample/row holding `groups` groups: about two groups per thread.
inline int per_item_threads(int64_t groups, int lo = 64, int hi = 512) {
  const int64_t t = at::ceil_div<int64_t>(at::ceil_div<int64_t>(groups, 2), 32) * 32;
  return static_cast<int>(std::min<int64_t>(hi, std::max<int64_t>(lo, t)));
}

// Grid size for one block per sample or row.
inline unsigned int item_grid(int64_t items) {
  TORCH_CHECK(items <= std::numeric_limits<int32_t>::max(), "ebjdat: ", items,
              " samples/rows exceed the CUDA grid limit");
  return static_cast<unsigned int>(items);
}

// Reserves `blocks` Philox counters of the generator, as PyTorch's own CUDA RNG kernels do, so
// the op is valid under CUDA-graph capture (seed and offset are read in the kernel via unpack).
// PyTorch counts the offset in 32-bit outputs (4 per counter, as curand does), so a call takes
// 4 * blocks of it and its counters start at offset / 4: ranges of successive calls, ours or
// PyTorch's, never overlap.
inline at::PhiloxCudaState philox_state(const OptGen& generator, uint64_t blocks) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(4 * blocks);
}

// (seed, first Philox counter) of a call, read on the device.
__device__ __forceinline__ void philox_seed_base(const at::PhiloxCudaState& st, uint64_t& seed,
                                                 uint64_t& base) {
  const auto so = at::cuda::philox::unpack(st);
  seed = std::get<0>(so);
  base = std::get<1>(so) / 4;
}

}  // namespace cuda
}  // namespace ebjdat
