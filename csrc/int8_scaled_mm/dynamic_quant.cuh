// Per-row int8 quantization in front of the int8 GEMM (the dynamic W8A8
// path). Same numerics as csrc/quant/per_token_quant_int8.cu: absmax =
// max(max|x|, 1e-10), scale = absmax / 127, q = round_half_away(x * 127 /
// absmax). It lets dependents launch at once (griddepcontrol); the GEMM
// waits for its results only before reading A.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "common.cuh"
#include "mllm_dtype.cuh"
#include "mllm_pdl.cuh"

namespace mllm::int8_mm::dynamic_quant {

constexpr int BLOCK = 256;

struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Packs a thread holds in registers when the row fits them.
constexpr int HELD = 4;

template <typename S>
struct alignas(16) Pack {
  S v[8];
};
struct alignas(8) QPack {
  int8_t v[8];
};

// Thread 0's reduced absmax becomes the row's scale; every thread gets 127 / absmax.
__device__ __forceinline__ float row_mult(float absmax, float& row_absmax, float* scales) {
  if (threadIdx.x == 0) {
    row_absmax = fmaxf(absmax, 1e-10f);
    scales[blockIdx.x] = row_absmax / 127.f;
  }
  __syncthreads();
  return 127.f / row_absmax;
}

template <typename D>
__device__ __forceinline__ QPack quantize_pack(const Pack<typename D::storage>& p, float mult) {
  QPack o;
#pragma unroll
  for (int j = 0; j < 8; ++j) o.v[j] = static_cast<int8_t>(fminf(fmaxf(roundf(D::to_float(p.v[j]) * mult), -127.f), 127.f));
  return o;
}

// One block per row; 16-byte packs (k % 16 == 0 is checked by the caller).
template <typename D>
__global__ void __launch_bounds__(BLOCK)
    quant_kernel(const typename D::storage* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scales,
                 int64_t k) {
  mllm::allow_dependents();
  using Pack = dynamic_quant::Pack<typename D::storage>;
  using Reduce = cub::BlockReduce<float, BLOCK>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float row_absmax;
  const Pack* xr = reinterpret_cast<const Pack*>(x + blockIdx.x * k);
  QPack* qr = reinterpret_cast<QPack*>(q + blockIdx.x * k);
  const int64_t packs = k / 8;
  float local = 0.f;
  if (packs <= HELD * BLOCK) {
    // The row fits HELD packs per thread (k <= 8192): one read, quantized
    // from registers. At decode this block sits between attention and o_proj.
    Pack held[HELD];
#pragma unroll
    for (int h = 0; h < HELD; ++h) {
      const int64_t i = threadIdx.x + h * BLOCK;
      if (i < packs) held[h] = xr[i];
    }
#pragma unroll
    for (int h = 0; h < HELD; ++h) {
      if (threadIdx.x + h * BLOCK < packs) {
#pragma unroll
        for (int j = 0; j < 8; ++j) local = fmaxf(local, fabsf(D::to_float(held[h].v[j])));
      }
    }
    const float mult = row_mult(Reduce(tmp).Reduce(local, Max{}), row_absmax, scales);
#pragma unroll
    for (int h = 0; h < HELD; ++h) {
      const int64_t i = threadIdx.x + h * BLOCK;
      if (i < packs) qr[i] = quantize_pack<D>(held[h], mult);
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < packs; i += BLOCK) {
    const Pack p = xr[i];
#pragma unroll
    for (int j = 0; j < 8; ++j) local = fmaxf(local, fabsf(D::to_float(p.v[j])));
  }
  const float mult = row_mult(Reduce(tmp).Reduce(local, Max{}), row_absmax, scales);
  for (int64_t i = threadIdx.x; i < packs; i += BLOCK) qr[i] = quantize_pack<D>(xr[i], mult);
}

inline cudaError_t launch(const void* x, mllm_dtype_t dtype, int8_t* q, float* scales, int64_t m, int64_t k,
                          cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(m));
  if (dtype == MLLM_DTYPE_BF16) {
    quant_kernel<mllm::BF16><<<grid, BLOCK, 0, s>>>(static_cast<const unsigned short*>(x), q, scales, k);
  } else {
    quant_kernel<mllm::F16><<<grid, BLOCK, 0, s>>>(static_cast<const unsigned short*>(x), q, scales, k);
  }
  return cudaGetLastError();
}

}  // namespace mllm::int8_mm::dynamic_quant
