// Per-row int8 quantization in front of the int8 GEMM (the dynamic W8A8
// path), with mllm::RowQuant's numerics (those of
// csrc/quant/per_token_quant_int8.cu). Launched with PDL on SM90+ (it
// waits for the kernel before it, e.g. attention's merge, before reading x),
// it lets dependents launch right after that wait; the GEMM waits for its
// results only before reading A.
#pragma once

#include "common.cuh"
#include "mllm_dtype.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace mllm::int8_mm::dynamic_quant {

constexpr int BLOCK = 256;
// Packs a thread holds in registers when the row fits them.
constexpr int HELD = 4;

// One block per row; 16-byte packs (k % 16 == 0 is checked by the caller).
template <typename D>
__global__ void __launch_bounds__(BLOCK)
    quant_kernel(const typename D::storage* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scales,
                 int64_t k) {
  mllm::wait_then_allow_dependents();
  using Pack = mllm::Pack<typename D::storage, 8>;
  const Pack* xr = reinterpret_cast<const Pack*>(x + blockIdx.x * k);
  signed char* qrow = reinterpret_cast<signed char*>(q + blockIdx.x * k);
  auto* qr = reinterpret_cast<mllm::QuantPack<8>*>(qrow);
  const int64_t packs = k / 8;
  if (packs <= HELD * BLOCK) {
    // The row fits HELD packs per thread (k <= 8192): one read, quantized
    // from registers. At decode this block sits between attention and o_proj.
    Pack held[HELD];
#pragma unroll
    for (int h = 0; h < HELD; ++h) {
      const int64_t i = threadIdx.x + h * BLOCK;
      if (i < packs) held[h] = xr[i];
    }
    mllm::quantize_held_row<D>(held, static_cast<int>(packs), qrow, scales + blockIdx.x);
    return;
  }
  float local = 0.f;
  for (int64_t i = threadIdx.x; i < packs; i += BLOCK) {
    const Pack p = xr[i];
#pragma unroll
    for (int j = 0; j < 8; ++j) local = fmaxf(local, fabsf(D::to_float(p.v[j])));
  }
  const float absmax = mllm::block_max(local);
  if (threadIdx.x == 0) scales[blockIdx.x] = mllm::RowQuant::scale(absmax);
  const mllm::RowQuant quant(absmax);
  for (int64_t i = threadIdx.x; i < packs; i += BLOCK) qr[i] = mllm::quantize_pack<D>(xr[i], quant);
}

inline cudaError_t launch(const void* x, mllm_dtype_t dtype, int8_t* q, float* scales, int64_t m, int64_t k,
                          cudaStream_t s) {
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>(m)), dim3(BLOCK), s, mllm::pdl_enabled());
  const auto* xs = static_cast<const unsigned short*>(x);
  return dtype == MLLM_DTYPE_BF16 ? cudaLaunchKernelEx(&l.cfg, quant_kernel<mllm::BF16>, xs, q, scales, k)
                                  : cudaLaunchKernelEx(&l.cfg, quant_kernel<mllm::F16>, xs, q, scales, k);
}

}  // namespace mllm::int8_mm::dynamic_quant
