// Dynamic symmetric per-token (per-row) int8 quantization, built by nvcc
// into a shared object (CUB block reduction, host launcher, C ABI).
// Rows that are a multiple of 16 bytes move as 16-byte packs kept in
// registers, so x is read once; other rows use 1-element packs.
//
// Same numerics as pymllm's Triton kernel: absmax = max(max|x|, 1e-10),
// scale = absmax / 127, q = round_half_away(x * (127 / absmax)).
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "mllm_dtype.cuh"
#include "mllm_kernel.h"
#include "mllm_reduce.cuh"

namespace {

// 16-byte packs a thread keeps in registers between the absmax reduction
// and the quantized write, so x is read from memory once.
constexpr int CACHED = 4;

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// One block per row; VEC elements per pack (1 for rows not a multiple of 16 bytes).
template <typename D, int BLOCK, int VEC>
__device__ __forceinline__ void quant_row(const typename D::storage* __restrict__ x, int8_t* __restrict__ out,
                                          float* __restrict__ scales, int64_t cols) {
  using P = mllm::Pack<typename D::storage, VEC>;
  using Q = mllm::QuantPack<VEC>;
  using Reduce = cub::BlockReduce<float, BLOCK>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float row_absmax;

  const int64_t row = blockIdx.x;
  const int64_t packs = cols / VEC;
  const P* xr = reinterpret_cast<const P*>(x + row * cols);
  Q* qr = reinterpret_cast<Q*>(out + row * cols);

  P kept[CACHED];
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int64_t i = threadIdx.x + k * BLOCK;
    if (i < packs) kept[k] = xr[i];
  }
  float local = 0.f;
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    if (threadIdx.x + k * BLOCK < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) local = fmaxf(local, fabsf(D::to_float(kept[k].v[j])));
    }
  }
  for (int64_t i = threadIdx.x + CACHED * BLOCK; i < packs; i += BLOCK) {
    const P p = xr[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) local = fmaxf(local, fabsf(D::to_float(p.v[j])));
  }
  // CUB's reduction leaves the result in thread 0 only; it shares it.
  const float absmax = Reduce(tmp).Reduce(local, MaxOp{});
  if (threadIdx.x == 0) {
    row_absmax = absmax;
    scales[row] = mllm::RowQuant::scale(absmax);
  }
  __syncthreads();
  const mllm::RowQuant quant(row_absmax);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int64_t i = threadIdx.x + k * BLOCK;
    if (i < packs) qr[i] = mllm::quantize_pack<D>(kept[k], quant);
  }
  for (int64_t i = threadIdx.x + CACHED * BLOCK; i < packs; i += BLOCK) qr[i] = mllm::quantize_pack<D>(xr[i], quant);
}

template <typename D, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    per_token_quant_int8_kernel(const typename D::storage* __restrict__ x, int8_t* __restrict__ out,
                                float* __restrict__ scales, int64_t cols) {
  constexpr int VEC = 16 / sizeof(typename D::storage);
  if (cols % VEC == 0) {
    quant_row<D, BLOCK, VEC>(x, out, scales, cols);
  } else {
    quant_row<D, BLOCK, 1>(x, out, scales, cols);
  }
}

// Smallest block (a power of two, 32..1024) whose threads cover the row
// with CACHED packs each.
template <typename D>
cudaError_t launch(const void* x, int8_t* out, float* scales, int64_t rows, int64_t cols, cudaStream_t s) {
  const auto* xt = static_cast<const typename D::storage*>(x);
  constexpr int VEC = 16 / sizeof(typename D::storage);
  const int64_t units = cols % VEC == 0 ? cols / VEC : cols;
  const int64_t want = (units + CACHED - 1) / CACHED;
  const dim3 grid(static_cast<unsigned>(rows));
  if (want <= 32) {
    per_token_quant_int8_kernel<D, 32><<<grid, 32, 0, s>>>(xt, out, scales, cols);
  } else if (want <= 64) {
    per_token_quant_int8_kernel<D, 64><<<grid, 64, 0, s>>>(xt, out, scales, cols);
  } else if (want <= 128) {
    per_token_quant_int8_kernel<D, 128><<<grid, 128, 0, s>>>(xt, out, scales, cols);
  } else if (want <= 256) {
    per_token_quant_int8_kernel<D, 256><<<grid, 256, 0, s>>>(xt, out, scales, cols);
  } else if (want <= 512) {
    per_token_quant_int8_kernel<D, 512><<<grid, 512, 0, s>>>(xt, out, scales, cols);
  } else {
    per_token_quant_int8_kernel<D, 1024><<<grid, 1024, 0, s>>>(xt, out, scales, cols);
  }
  return cudaGetLastError();
}

mllm_result_t result(mllm_status_t status, const char* message, int32_t cuda_error = 0) {
  return mllm_result_t{status, cuda_error, message};
}

}  // namespace

extern "C" MLLM_API mllm_result_t mllm_per_token_quant_int8(const void* x, int8_t* out, float* scales, int64_t rows,
                                                            int64_t cols, mllm_dtype_t dtype, mllm_stream_t stream) {
  if (rows < 0 || cols <= 0) return result(MLLM_STATUS_INVALID_ARGUMENT, "rows must be >= 0 and cols > 0");
  if (rows > 0x7fffffff) return result(MLLM_STATUS_INVALID_ARGUMENT, "rows exceeds the grid limit 2^31-1");
  if (rows == 0) return result(MLLM_STATUS_OK, "ok");
  if (x == nullptr || out == nullptr || scales == nullptr)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "null pointer argument");
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (dtype) {
    case MLLM_DTYPE_F32:
      err = launch<mllm::F32>(x, out, scales, rows, cols, s);
      break;
    case MLLM_DTYPE_F16:
      err = launch<mllm::F16>(x, out, scales, rows, cols, s);
      break;
    case MLLM_DTYPE_BF16:
      err = launch<mllm::BF16>(x, out, scales, rows, cols, s);
      break;
    default:
      return result(MLLM_STATUS_UNSUPPORTED_DTYPE, "dtype must be f32, f16 or bf16");
  }
  if (err != cudaSuccess) return result(MLLM_STATUS_CUDA_ERROR, cudaGetErrorString(err), static_cast<int32_t>(err));
  return result(MLLM_STATUS_OK, "ok");
}
