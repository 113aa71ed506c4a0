/* mllm_kernel.h: the C ABI every nvcc-built kernel of mllm-kernel exports.
 *
 * Rust binds this header with bindgen (build.rs): as a libloading struct for
 * JIT-built shared objects and as extern declarations for the AOT static
 * library. Only plain C types appear here, so bindgen needs no CUDA headers.
 * Device pointers are passed as raw pointers; the stream is a CUstream.
 */
#ifndef MLLM_KERNEL_H_
#define MLLM_KERNEL_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MLLM_API __attribute__((visibility("default")))
#else
#define MLLM_API
#endif

/* Element types of kernel inputs. */
typedef enum mllm_dtype_t {
  MLLM_DTYPE_F32 = 0,
  MLLM_DTYPE_F16 = 1,
  MLLM_DTYPE_BF16 = 2,
} mllm_dtype_t;

typedef enum mllm_status_t {
  MLLM_STATUS_OK = 0,
  MLLM_STATUS_INVALID_ARGUMENT = 1,
  MLLM_STATUS_UNSUPPORTED_DTYPE = 2,
  MLLM_STATUS_CUDA_ERROR = 3,
} mllm_status_t;

/* What a launcher returns. `message` points to static storage. */
typedef struct mllm_result_t {
  mllm_status_t status;
  int32_t cuda_error;
  const char* message;
} mllm_result_t;

/* A CUstream / cudaStream_t. */
typedef void* mllm_stream_t;

/* Dynamic symmetric per-row int8 quantization.
 * x: [rows, cols] of `dtype`, row-major, contiguous.
 * out: [rows, cols] int8; scales: [rows] f32.
 * absmax = max(max_k |x[r,k]|, 1e-10); scales[r] = absmax / 127;
 * out[r,k] = round_half_away_from_zero(x[r,k] * (127 / absmax)). */
MLLM_API mllm_result_t mllm_per_token_quant_int8(const void* x, int8_t* out, float* scales, int64_t rows,
                                                 int64_t cols, mllm_dtype_t dtype, mllm_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* MLLM_KERNEL_H_ */
