// Shared by every int8_scaled_mm path: argument checks and results.
#pragma once

#include <cuda_runtime.h>

#include "mllm_device.cuh"
#include "mllm_kernel.h"

namespace mllm::int8_mm {

using mllm::device_sm;

inline mllm_result_t ok() { return mllm_result_t{MLLM_STATUS_OK, 0, "ok"}; }

inline mllm_result_t fail(mllm_status_t status, const char* message, int32_t cuda_error = 0) {
  return mllm_result_t{status, cuda_error, message};
}

inline mllm_result_t cuda_result(cudaError_t e) {
  if (e == cudaSuccess) return ok();
  return fail(MLLM_STATUS_CUDA_ERROR, cudaGetErrorString(e), static_cast<int32_t>(e));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The checks the Rust op also makes: the C ABI must not trust its caller.
inline mllm_result_t check_args(const mllm_int8_mm_args_t* a) {
  if (a == nullptr) return fail(MLLM_STATUS_INVALID_ARGUMENT, "args is NULL");
  if (a->m < 0 || a->n <= 0 || a->k <= 0) return fail(MLLM_STATUS_INVALID_ARGUMENT, "need m >= 0, n > 0, k > 0");
  if (a->m > 0x7fffffff || a->n > 0x7fffffff || a->k > 0x7fffffff)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "m, n and k must each fit in 31 bits");
  if (a->k % 16 != 0) return fail(MLLM_STATUS_INVALID_ARGUMENT, "k must be a multiple of 16");
  if (a->n % 8 != 0) return fail(MLLM_STATUS_INVALID_ARGUMENT, "n must be a multiple of 8");
  if (a->out_dtype != MLLM_DTYPE_F16 && a->out_dtype != MLLM_DTYPE_BF16)
    return fail(MLLM_STATUS_UNSUPPORTED_DTYPE, "out_dtype must be f16 or bf16");
  if (a->b == nullptr || a->scales_a == nullptr || a->scales_b == nullptr || a->out == nullptr ||
      (a->m > 0 && a->a == nullptr))
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "a, b, scales and out must be non-NULL");
  if (!aligned16(a->a) || !aligned16(a->b) || !aligned16(a->out) || !aligned16(a->bias))
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "a, b, out and bias must be 16-byte aligned");
  return ok();
}


}  // namespace mllm::int8_mm
