// Row softmax of scaled scores, in place, compiled by NVRTC: the middle step
// of the dense (non-causal) attention over image segments, between two cuBLAS
// batched GEMMs. p = exp(s * scale - max) / sum, in f32, rounded once to the
// element type (HF's eager attention: softmax in f32, cast back).
#include "mllm_dtype.cuh"
#include "mllm_reduce.cuh"

namespace {

template <typename D>
__device__ __forceinline__ void softmax_row(typename D::storage* x, int cols, float scale) {
  typename D::storage* r = x + static_cast<long long>(blockIdx.x) * cols;
  float m = __int_as_float(0xff800000);  // -inf (NVRTC has no INFINITY macro)
  for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, D::to_float(r[i]) * scale);
  m = mllm::block_max(m);
  float sum = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) sum += __expf(D::to_float(r[i]) * scale - m);
  const float inv = 1.f / mllm::block_sum(sum);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) r[i] = D::from_float(__expf(D::to_float(r[i]) * scale - m) * inv);
}

}  // namespace

// Symbol: softmax_rows_<dtype>(x, cols, scale); grid (rows), block a
// multiple of 32 up to 1024.
#define MLLM_SOFTMAX_KERNEL(SUFFIX, D)                                                               \
  extern "C" __global__ void softmax_rows_##SUFFIX(D::storage* x, int cols, float scale) {          \
    softmax_row<D>(x, cols, scale);                                                                  \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_SOFTMAX_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_SOFTMAX_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_SOFTMAX_KERNEL(bf16, mllm::BF16)
#endif
