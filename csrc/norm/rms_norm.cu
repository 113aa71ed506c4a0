// RMSNorm and fused residual-add + RMSNorm, compiled by NVRTC.
//
// One block per row. Rows whose length is a multiple of 16 bytes move as
// 16-byte packs and stay in registers between the reduction and the write
// (up to CACHED packs per thread), so each byte is read once and written
// once; other rows take the scalar path with a second read.
//
// Numerics follow HF transformers: the residual sum is rounded to the
// element type before normalizing, x * rsqrt(mean(x^2) + eps) is rounded to
// the element type, then multiplied by the weight and rounded again.
#include "mllm_dtype.cuh"
#include "mllm_reduce.cuh"

namespace {

constexpr int CACHED = 4;

template <typename S, int VEC>
struct alignas(sizeof(S) * VEC) Pack {
  S v[VEC];
};

template <typename D, bool ADD, int VEC>
__device__ __forceinline__ void rms_norm_row(typename D::storage* out,  // may alias x (fused form)
                                             const typename D::storage* x,
                                             typename D::storage* __restrict__ residual,
                                             const typename D::storage* __restrict__ w, int cols, float eps) {
  using S = typename D::storage;
  using P = Pack<S, VEC>;
  const long long row = blockIdx.x;
  const int packs = cols / VEC;
  const P* xr = reinterpret_cast<const P*>(x + row * cols);
  P* rr = ADD ? reinterpret_cast<P*>(residual + row * cols) : nullptr;
  P* orow = reinterpret_cast<P*>(out + row * cols);
  const P* wp = reinterpret_cast<const P*>(w);

  // Pass 1: (optionally add the residual,) keep packs, sum squares.
  P kept[CACHED];
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) {
      P p = xr[i];
      if (ADD) {
        const P r = rr[i];
#pragma unroll
        for (int j = 0; j < VEC; ++j) p.v[j] = D::from_float(D::to_float(p.v[j]) + D::to_float(r.v[j]));
        rr[i] = p;
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float f = D::to_float(p.v[j]);
        acc += f * f;
      }
      kept[k] = p;
    }
  }
  for (int i = threadIdx.x + CACHED * blockDim.x; i < packs; i += blockDim.x) {
    P p = xr[i];
    if (ADD) {
      const P r = rr[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) p.v[j] = D::from_float(D::to_float(p.v[j]) + D::to_float(r.v[j]));
      rr[i] = p;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float f = D::to_float(p.v[j]);
      acc += f * f;
    }
  }
  const float total = mllm::block_sum(acc);
  const float inv = 1.f / sqrtf(total / static_cast<float>(cols) + eps);

  // Pass 2: scale and write.
  auto emit = [&](int i, const P& p) {
    const P wv = wp[i];
    P o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float n = mllm::round_to<D>(D::to_float(p.v[j]) * inv);
      o.v[j] = D::from_float(n * D::to_float(wv.v[j]));
    }
    orow[i] = o;
  };
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) emit(i, kept[k]);
  }
  // Packs past the cached ones are re-read (from the residual when fused;
  // this thread wrote those, so it sees its own writes).
  const P* again = ADD ? rr : xr;
  for (int i = threadIdx.x + CACHED * blockDim.x; i < packs; i += blockDim.x) emit(i, again[i]);
}

template <typename D, bool ADD>
__device__ __forceinline__ void rms_norm_dispatch(typename D::storage* out, const typename D::storage* x,
                                                  typename D::storage* residual, const typename D::storage* w,
                                                  int cols, float eps) {
  constexpr int VEC = 16 / sizeof(typename D::storage);
  if (cols % VEC == 0) {
    rms_norm_row<D, ADD, VEC>(out, x, residual, w, cols, eps);
  } else {
    rms_norm_row<D, ADD, 1>(out, x, residual, w, cols, eps);
  }
}

}  // namespace

// Symbols: rms_norm_<dtype>(x, w, out, cols, eps) and
// fused_add_rms_norm_<dtype>(x, residual, w, cols, eps) where the fused form
// updates residual <- x + residual and x <- rmsnorm(residual) * w in place.
#define MLLM_RMS_NORM_KERNELS(SUFFIX, D)                                                                  \
  extern "C" __global__ void rms_norm_##SUFFIX(const D::storage* x, const D::storage* w, D::storage* out, \
                                               int cols, float eps) {                                     \
    rms_norm_dispatch<D, false>(out, x, nullptr, w, cols, eps);                                           \
  }                                                                                                       \
  extern "C" __global__ void fused_add_rms_norm_##SUFFIX(D::storage* x, D::storage* residual,             \
                                                         const D::storage* w, int cols, float eps) {      \
    rms_norm_dispatch<D, true>(x, x, residual, w, cols, eps);                                             \
  }

MLLM_RMS_NORM_KERNELS(f32, mllm::F32)
MLLM_RMS_NORM_KERNELS(f16, mllm::F16)
MLLM_RMS_NORM_KERNELS(bf16, mllm::BF16)
