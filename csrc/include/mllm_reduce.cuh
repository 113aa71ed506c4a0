// Block-wide reductions over warps (blockDim.x a multiple of 32, <= 1024),
// and the per-row int8 quantization built on them.
#pragma once

#include "mllm_pack.cuh"

namespace mllm {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of `v` over the block; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();  // partial[] may be reused by a later call
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max of `v` over the block; every thread gets the result.
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  v = warp_max(v);
  __syncthreads();
  return v;
}

// Symmetric per-row int8 quantization of values whose |max| over the row is
// `absmax` (the numerics of csrc/quant/per_token_quant_int8.cu): the row's
// scale is max(absmax, 1e-10) / 127 and q = round_half_away(v * 127 / that).
struct RowQuant {
  float mult;
  __device__ __forceinline__ explicit RowQuant(float absmax) : mult(multiplier(absmax)) {}
  __device__ __forceinline__ static float multiplier(float absmax) { return 127.f / fmaxf(absmax, 1e-10f); }
  __device__ __forceinline__ static float scale(float absmax) { return fmaxf(absmax, 1e-10f) / 127.f; }
  __device__ __forceinline__ static signed char quantize(float v, float mult) {
    return static_cast<signed char>(fminf(fmaxf(roundf(v * mult), -127.f), 127.f));
  }
  __device__ __forceinline__ signed char operator()(float v) const { return quantize(v, mult); }
};

// VEC int8 values, stored with one access.
template <int VEC>
struct alignas(VEC) QuantPack {
  signed char v[VEC];
};

// One pack of a row quantized by `quant`.
template <typename D, int VEC>
__device__ __forceinline__ QuantPack<VEC> quantize_pack(const Pack<typename D::storage, VEC>& p,
                                                        const RowQuant& quant) {
  QuantPack<VEC> o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) o.v[j] = quant(D::to_float(p.v[j]));
  return o;
}

// Quantizes one row (blockIdx.x's) whose packs the block holds in registers:
// thread t holds packs t, t + blockDim.x, ... (those below `packs`) in
// `held`. Writes the row's scale to *scale and each pack's VEC int8 values to
// q_row with one store. Every thread of the block must call it.
template <typename D, int VEC, int HELD>
__device__ __forceinline__ void quantize_held_row(const Pack<typename D::storage, VEC> (&held)[HELD], int packs,
                                                  signed char* q_row, float* scale) {
  float local = 0.f;
#pragma unroll
  for (int h = 0; h < HELD; ++h) {
    if (static_cast<int>(threadIdx.x + h * blockDim.x) < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) local = fmaxf(local, fabsf(D::to_float(held[h].v[j])));
    }
  }
  const float absmax = block_max(local);
  if (threadIdx.x == 0) *scale = RowQuant::scale(absmax);
  const RowQuant quant(absmax);
  QuantPack<VEC>* q = reinterpret_cast<QuantPack<VEC>*>(q_row);
#pragma unroll
  for (int h = 0; h < HELD; ++h) {
    const int i = threadIdx.x + h * blockDim.x;
    if (i < packs) q[i] = quantize_pack<D>(held[h], quant);
  }
}

}  // namespace mllm
