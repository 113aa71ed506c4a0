// LayerNorm with bias, optionally fused with the residual add before it,
// compiled by NVRTC (the Qwen3-VL vision tower's norms).
//
// out = (v - mean(v)) * rsqrt(var(v) + eps) * w + b over each row, where v
// is x, or (with `residual`) residual + x, rounded to the element type and
// stored back into `residual` first (torch's add, then LayerNorm). The
// statistics and the affine map run in f32 and round once, as torch's
// layer_norm does for half types. One block per row; the row is read three
// times (add + sum, variance, output) and stays in L1/L2 between passes:
// vision rows are 1-4 K elements and the tower is GEMM-bound.
//
// `out` may alias `x` (each element is read before it is written, by the
// thread that writes it).
#include "mllm_dtype.cuh"
#include "mllm_reduce.cuh"

namespace {

template <typename D>
__device__ __forceinline__ void layer_norm_row(const typename D::storage* x, typename D::storage* residual,
                                               const typename D::storage* w, const typename D::storage* b,
                                               typename D::storage* out, int cols, float eps) {
  using S = typename D::storage;
  const long long off = static_cast<long long>(blockIdx.x) * cols;
  const S* xr = x + off;
  S* rr = residual == nullptr ? nullptr : residual + off;
  float sum = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    float v = D::to_float(xr[i]);
    if (rr != nullptr) {
      const S s = D::from_float(D::to_float(rr[i]) + v);
      rr[i] = s;
      v = D::to_float(s);
    }
    sum += v;
  }
  const S* src = rr != nullptr ? rr : xr;
  const float mean = mllm::block_sum(sum) / cols;
  float sq = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    const float d = D::to_float(src[i]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(mllm::block_sum(sq) / cols + eps);
  S* o = out + off;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    const float n = (D::to_float(src[i]) - mean) * rstd;
    o[i] = D::from_float(n * D::to_float(w[i]) + D::to_float(b[i]));
  }
}

}  // namespace

// Symbol: layer_norm_<dtype>(x, residual, w, b, out, cols, eps); grid
// (rows), block a multiple of 32 up to 1024; `residual` may be null.
#define MLLM_LAYER_NORM_KERNEL(SUFFIX, D)                                                                    \
  extern "C" __global__ void layer_norm_##SUFFIX(const D::storage* x, D::storage* residual,                 \
                                                 const D::storage* w, const D::storage* b, D::storage* out, \
                                                 int cols, float eps) {                                      \
    layer_norm_row<D>(x, residual, w, b, out, cols, eps);                                                    \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_LAYER_NORM_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_LAYER_NORM_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_LAYER_NORM_KERNEL(bf16, mllm::BF16)
#endif
