// Per-row int8 quantization in front of the int8 GEMM (the dynamic W8A8
// path), with mllm::RowQuant's numerics (those of
// csrc/quant/per_token_quant_int8.cu). It lets dependents launch at once (griddepcontrol); the GEMM
// waits for its results only before reading A.
#pragma once

#include "common.cuh"
#include "mllm_dtype.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace mllm::int8_mm::dynamic_quant {

// Rows up to which the launch takes the decode shape: at batch 1 the kernel is
// one block between attention and o_proj, and 256 threads of 16 elements
// each spend their time in each warp's chain of dependent instructions (ncu,
// H100), so there 1024 threads take 4 elements each.
constexpr int64_t kDecodeRows = 64;

// One block of THREADS per row; packs of VEC elements (16-byte packs need
// k % 8 == 0, 8-byte ones k % 4; the caller checks k % 16 == 0). A row of at
// most HELD packs per thread is read once and quantized from registers.
template <typename D, int THREADS, int VEC, int HELD>
__global__ void __launch_bounds__(THREADS)
    quant_kernel(const typename D::storage* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scales,
                 int64_t k) {
  mllm::allow_dependents();
  using Pack = mllm::Pack<typename D::storage, VEC>;
  const Pack* xr = reinterpret_cast<const Pack*>(x + blockIdx.x * k);
  signed char* qrow = reinterpret_cast<signed char*>(q + blockIdx.x * k);
  auto* qr = reinterpret_cast<mllm::QuantPack<VEC>*>(qrow);
  const int64_t packs = k / VEC;
  if (packs <= HELD * THREADS) {
    Pack held[HELD];
#pragma unroll
    for (int h = 0; h < HELD; ++h) {
      const int64_t i = threadIdx.x + h * THREADS;
      if (i < packs) held[h] = xr[i];
    }
    mllm::quantize_held_row<D>(held, static_cast<int>(packs), qrow, scales + blockIdx.x);
    return;
  }
  float local = 0.f;
  for (int64_t i = threadIdx.x; i < packs; i += THREADS) {
    const Pack p = xr[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) local = fmaxf(local, fabsf(D::to_float(p.v[j])));
  }
  const float absmax = mllm::block_max(local);
  if (threadIdx.x == 0) scales[blockIdx.x] = mllm::RowQuant::scale(absmax);
  const mllm::RowQuant quant(absmax);
  for (int64_t i = threadIdx.x; i < packs; i += THREADS) qr[i] = mllm::quantize_pack<D>(xr[i], quant);
}

template <typename D>
void launch_typed(const void* x, int8_t* q, float* scales, int64_t m, int64_t k, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(m));
  const auto* xs = static_cast<const unsigned short*>(x);
  if (m <= kDecodeRows && k <= 1024 * 4 * 2) {
    quant_kernel<D, 1024, 4, 2><<<grid, 1024, 0, s>>>(xs, q, scales, k);
  } else {
    // Up to k = 8192 held in registers, streamed above.
    quant_kernel<D, 256, 8, 4><<<grid, 256, 0, s>>>(xs, q, scales, k);
  }
}

inline cudaError_t launch(const void* x, mllm_dtype_t dtype, int8_t* q, float* scales, int64_t m, int64_t k,
                          cudaStream_t s) {
  if (dtype == MLLM_DTYPE_BF16) {
    launch_typed<mllm::BF16>(x, q, scales, m, k, s);
  } else {
    launch_typed<mllm::F16>(x, q, scales, m, k, s);
  }
  return cudaGetLastError();
}

}  // namespace mllm::int8_mm::dynamic_quant
