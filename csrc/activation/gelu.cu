// GELU, tanh-approximated (HF `gelu_pytorch_tanh`) or exact (erf, torch's
// default nn.GELU), elementwise out-of-place or in place, compiled by NVRTC
// (the Qwen3-VL vision MLP and patch mergers). The math runs in f32 and
// rounds once to the element type, as torch's gelu does for half types.
#include "mllm_dtype.cuh"

namespace {

__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.7071067811865476f)); }

template <typename D, bool TANH>
__device__ __forceinline__ void gelu_all(const typename D::storage* x, typename D::storage* out, long long n) {
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const float v = D::to_float(x[i]);
    out[i] = D::from_float(TANH ? gelu_tanh(v) : gelu_erf(v));
  }
}

}  // namespace

// Symbols: gelu_tanh_<dtype>(x, out, n), gelu_erf_<dtype>(x, out, n); any
// grid and block size (grid-stride); `out` may alias `x`.
#define MLLM_GELU_KERNELS(SUFFIX, D)                                                                          \
  extern "C" __global__ void gelu_tanh_##SUFFIX(const D::storage* x, D::storage* out, long long n) {          \
    gelu_all<D, true>(x, out, n);                                                                              \
  }                                                                                                            \
  extern "C" __global__ void gelu_erf_##SUFFIX(const D::storage* x, D::storage* out, long long n) {           \
    gelu_all<D, false>(x, out, n);                                                                             \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_GELU_KERNELS(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_GELU_KERNELS(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_GELU_KERNELS(bf16, mllm::BF16)
#endif
