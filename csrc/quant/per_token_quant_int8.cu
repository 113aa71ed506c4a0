// Dynamic symmetric per-token (per-row) int8 quantization, built by nvcc
// into a shared object (CUB block reduction, host launcher, C ABI).
//
// Same numerics as pymllm's Triton kernel: absmax = max(max|x|, 1e-10),
// scale = absmax / 127, q = round_half_away(x * (127 / absmax)).
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "mllm_dtype.cuh"
#include "mllm_kernel.h"

namespace {

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename D, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    per_token_quant_int8_kernel(const typename D::storage* __restrict__ x, int8_t* __restrict__ out,
                                float* __restrict__ scales, int64_t cols) {
  using Reduce = cub::BlockReduce<float, BLOCK>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float row_absmax;

  const int64_t row = blockIdx.x;
  const typename D::storage* xr = x + row * cols;
  int8_t* qr = out + row * cols;

  float local = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += BLOCK) local = fmaxf(local, fabsf(D::to_float(xr[i])));
  const float absmax = Reduce(tmp).Reduce(local, MaxOp{});
  if (threadIdx.x == 0) {
    row_absmax = fmaxf(absmax, 1e-10f);
    scales[row] = row_absmax / 127.f;
  }
  __syncthreads();
  const float mult = 127.f / row_absmax;
  for (int64_t i = threadIdx.x; i < cols; i += BLOCK) {
    const float q = fminf(fmaxf(roundf(D::to_float(xr[i]) * mult), -127.f), 127.f);
    qr[i] = static_cast<int8_t>(q);
  }
}

template <typename D>
cudaError_t launch(const void* x, int8_t* out, float* scales, int64_t rows, int64_t cols, cudaStream_t s) {
  const auto* xt = static_cast<const typename D::storage*>(x);
  const dim3 grid(static_cast<unsigned>(rows));
  // Wider blocks only pay off on long rows.
  if (cols >= 4096) {
    per_token_quant_int8_kernel<D, 512><<<grid, 512, 0, s>>>(xt, out, scales, cols);
  } else if (cols >= 1024) {
    per_token_quant_int8_kernel<D, 256><<<grid, 256, 0, s>>>(xt, out, scales, cols);
  } else {
    per_token_quant_int8_kernel<D, 128><<<grid, 128, 0, s>>>(xt, out, scales, cols);
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
