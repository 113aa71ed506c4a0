// Block-wide reductions over warps (blockDim.x a multiple of 32, <= 1024).
#pragma once

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
  __device__ __forceinline__ explicit RowQuant(float absmax) : mult(127.f / fmaxf(absmax, 1e-10f)) {}
  __device__ __forceinline__ static float scale(float absmax) { return fmaxf(absmax, 1e-10f) / 127.f; }
  __device__ __forceinline__ signed char operator()(float v) const {
    return static_cast<signed char>(fminf(fmaxf(roundf(v * mult), -127.f), 127.f));
  }
};

}  // namespace mllm
