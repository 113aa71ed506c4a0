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
  MLLM_STATUS_UNSUPPORTED = 4, /* config or arch not in this build or not on this GPU */
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


/* W8A8 int8 scaled matmul.
 * out[m, n] = scales_a[m or 0] * scales_b[n or 0] * sum_k a[m, k] * b[n, k] (+ bias[n])
 * with int32 accumulation and a float epilogue rounded once to out_dtype.
 * a: [m, k] int8 row-major; b: [n, k] int8 row-major (B is k x n column-major,
 * the layout a checkpoint's [out, in] weight has); out: [m, n] row-major.
 * Alignment: k % 16 == 0, n % 8 == 0, every pointer 16-byte aligned. */
typedef struct mllm_int8_mm_args_t {
  const int8_t* a;
  const int8_t* b;
  const float* scales_a;
  const float* scales_b;
  const void* bias; /* [n] of out_dtype, or NULL */
  void* out;
  int64_t m;
  int64_t n;
  int64_t k;
  int32_t scales_a_per_row; /* 1: scales_a is [m]; 0: [1] */
  int32_t scales_b_per_col; /* 1: scales_b is [n]; 0: [1] */
  mllm_dtype_t out_dtype;   /* F16 or BF16 */
} mllm_int8_mm_args_t;

/* Kernel configurations. Names say tile MxNxK; the Rust dispatch picks one. */
typedef enum mllm_int8_mm_config_t {
  /* Hand-written mma.sync kernels for small M (SM80+): 16/32/64 rows. */
  MLLM_INT8_MM_SKINNY_M16 = 0,
  MLLM_INT8_MM_SKINNY_M32 = 1,
  MLLM_INT8_MM_SKINNY_M64 = 2,
  /* CUTLASS 2.x tensor-op kernels (SM80+; PTX runs on newer GPUs). */
  MLLM_INT8_MM_SM80_32x64x128 = 10,
  MLLM_INT8_MM_SM80_64x128x128 = 11,
  MLLM_INT8_MM_SM80_128x128x64 = 12,
  MLLM_INT8_MM_SM80_256x128x64 = 13,
  /* CUTLASS 3.x TMA + wgmma kernels (sm_90a only). P = Pingpong, C = Cooperative. */
  MLLM_INT8_MM_SM90_P64x128x128 = 20,
  MLLM_INT8_MM_SM90_P128x128x128 = 21,
  MLLM_INT8_MM_SM90_C128x256x128 = 22,
  MLLM_INT8_MM_SM90_C256x128x128 = 23,
  MLLM_INT8_MM_SM90_C256x128x128_CL2x1 = 24,
} mllm_int8_mm_config_t;

/* Skinny and SM80 configurations (kernel build `int8_scaled_mm[sm80]`). */
MLLM_API mllm_result_t mllm_int8_scaled_mm_sm80(const mllm_int8_mm_args_t* args, int32_t config,
                                                mllm_stream_t stream);

/* Dynamic-activation W8A8: quantizes x ([m, k] of x_dtype) per row into the
 * caller's q ([m, k] int8) and q_scales ([m] f32), then runs `config` with
 * a = q, scales_a = q_scales (per row). The GEMM is launched with programmatic
 * dependent launch where supported, so it streams weights while the
 * quantization runs. args->a and args->scales_a are ignored. */
MLLM_API mllm_result_t mllm_int8_scaled_mm_dynamic_sm80(const void* x, mllm_dtype_t x_dtype, int8_t* q,
                                                        float* q_scales, const mllm_int8_mm_args_t* args,
                                                        int32_t config, mllm_stream_t stream);

/* SM90 configurations (kernel build `int8_scaled_mm[sm90]`, sm_90a). */
MLLM_API mllm_result_t mllm_int8_scaled_mm_sm90(const mllm_int8_mm_args_t* args, int32_t config,
                                                mllm_stream_t stream);

/* mllm_int8_scaled_mm_dynamic_sm80 for the SM90 configurations. */
MLLM_API mllm_result_t mllm_int8_scaled_mm_dynamic_sm90(const void* x, mllm_dtype_t x_dtype, int8_t* q,
                                                        float* q_scales, const mllm_int8_mm_args_t* args,
                                                        int32_t config, mllm_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* MLLM_KERNEL_H_ */
