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
  /* M <= 16 with the weight streamed by TMA bulk copies (SM90+), 8 output
   * columns per block. (4 was stream_m16_n32, removed: 2x slower.) */
  MLLM_INT8_MM_STREAM_M16 = 3,
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
  /* Swap-AB Pingpong for M <= 16 / 32 / 64 / 128: the weight's rows on
   * wgmma's 64-row side, the tokens on the 16-, 32-, 64- or 128-wide side. */
  MLLM_INT8_MM_SM90_SWAP_P64x16x256 = 25,
  MLLM_INT8_MM_SM90_SWAP_P64x32x256 = 26,
  MLLM_INT8_MM_SM90_SWAP_P64x64x256 = 27,
  MLLM_INT8_MM_SM90_SWAP_P64x128x256 = 28,
  /* Swap-AB Pingpong for M <= 32 with K folded into the weight rows (2 or 4
   * ways, on a 16- or 32-token tile), when that fills more SMs; else the
   * plain swap-AB tile. The fold is picked per problem (sm90_fold.cuh). */
  MLLM_INT8_MM_SM90_SWAPK = 29,
} mllm_int8_mm_config_t;

/* Skinny and SM80 configurations (kernel build `int8_scaled_mm[sm80]`). */
MLLM_API mllm_result_t mllm_int8_scaled_mm_sm80(const mllm_int8_mm_args_t* args, int32_t config,
                                                mllm_stream_t stream);

/* Dynamic-activation W8A8: quantizes x ([m, k] of x_dtype) per row into the
 * caller's q ([m, k] int8) and q_scales ([m] f32), then runs `config` with
 * a = q, scales_a = q_scales (per row). The GEMM is launched with programmatic
 * dependent launch where supported, so it streams weights while the
 * quantization runs. args->a and args->scales_a are ignored. With
 * MLLM_INT8_MM_FUSED_QUANT=1, the STREAM_M16 config, m <= 4 and x_dtype ==
 * out_dtype, the GEMM quantizes x itself (same rounding) and q / q_scales are
 * left unwritten (measured slower, so opt-in). */
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

/* Dense linear at decode batch sizes, SM90+ (kernel `stream_linear`): out[m, n]
 * = sum_k x[m, k] w[n, k] (+ bias[n]) with f32 accumulation, the weight
 * streamed by TMA bulk copies. x [m, k] and w [n, k] row-major of `dtype`
 * (F16 or BF16), bias [n] of `dtype` or NULL, out [m, n] of out_dtype (dtype
 * or F32). m <= MLLM_STREAM_LINEAR_MAX_M, n and k multiples of 8; x and w
 * 16-byte aligned, out 8-byte, bias 4-byte. Launched with programmatic
 * dependent launch: the weight streams while the kernel before it finishes. */
#define MLLM_STREAM_LINEAR_MAX_M 16

typedef struct mllm_stream_linear_args_t {
  const void* x;
  const void* w;
  const void* bias;
  void* out;
  int64_t m;
  int64_t n;
  int64_t k;
  mllm_dtype_t dtype;
  mllm_dtype_t out_dtype;
} mllm_stream_linear_args_t;

MLLM_API mllm_result_t mllm_stream_linear(const mllm_stream_linear_args_t* args, mllm_stream_t stream);

/* The gated MLP block of one decode row in W8A8, SM90+ (kernel `decode_mlp`),
 * as one persistent kernel:
 *   residual += x;  n = rms_norm(residual) * norm_weight;  (qn, s1) = per-token int8 of n
 *   gu = s1 * s_gate_up * (qn . w_gate_upT);  act = silu(gu[:inter]) * gu[inter:]
 *   (qa, s2) = per-token int8 of act;  out = s2 * s_down * (qa . w_downT)
 * with the roundings of fused_add_rms_norm_quant, int8_scaled_mm and
 * silu_and_mul_quant. x, residual, norm_weight, out: [hidden] of `dtype` (BF16
 * or F16); act: [inter] of `dtype` (written); w_gate_up: [2 inter, hidden] int8
 * (gate rows, then up rows), s_gate_up [2 inter] f32; w_down: [hidden, inter]
 * int8, s_down [hidden] f32. hidden and inter multiples of 16; every buffer
 * but out 16-byte aligned. scratch: MLLM_DECODE_MLP_SCRATCH_BYTES of device memory, zeroed
 * before its first use and then owned by one stream (a grid barrier lives
 * there). No buffer may alias another. Launched with programmatic dependent
 * launch: the weights stream while the kernel before finishes. */
#define MLLM_DECODE_MLP_SCRATCH_BYTES 8192

typedef struct mllm_decode_mlp_args_t {
  const void* x;
  void* residual;
  const void* norm_weight;
  const int8_t* w_gate_up;
  const float* s_gate_up;
  const int8_t* w_down;
  const float* s_down;
  void* act;
  void* out;
  void* scratch;
  int64_t scratch_bytes;
  int64_t hidden;
  int64_t inter;
  float eps;
  mllm_dtype_t dtype;
} mllm_decode_mlp_args_t;

MLLM_API mllm_result_t mllm_decode_mlp(const mllm_decode_mlp_args_t* args, mllm_stream_t stream);

/* Paged attention over a page-size-1 KV pool (FlashInfer FA2 kernels).
 *
 * k_cache, v_cache: [capacity, num_kv_heads, head_dim] (NHD) of `dtype`.
 * Sequence i has qo_len_i = qo_indptr[i+1] - qo_indptr[i] new query rows and
 * kv_len_i = kv_indptr[i+1] - kv_indptr[i] context slots, whose slot ids are
 * kv_indices[kv_indptr[i] .. kv_indptr[i+1]]. Query j of sequence i sits at
 * position kv_len_i - qo_len_i + j and sees context 0 ..= that position.
 *
 * Planning runs on the host once per batch (every layer reuses the plan): it
 * writes the schedule into the pinned buffer `int_host` and copies it to
 * `int_workspace` on `stream`. The caller must not rewrite `int_host` before
 * that copy has run. Builds carry one (head_dim, dtype) variant each; a
 * variant not in this build returns MLLM_STATUS_UNSUPPORTED. */
typedef struct mllm_attention_plan_args_t {
  void* float_workspace; /* device scratch for split-KV partial outputs */
  int64_t float_workspace_bytes;
  void* int_workspace; /* device schedule; 16-byte aligned */
  void* int_host;      /* pinned host mirror, as large as int_workspace */
  int64_t int_workspace_bytes;
  const int32_t* qo_indptr; /* host, [batch_size + 1] */
  const int32_t* kv_indptr; /* host, [batch_size + 1] */
  int32_t batch_size;
  int32_t num_qo_heads;
  int32_t num_kv_heads;
  int32_t head_dim; /* 64 or 128 */
  mllm_dtype_t dtype; /* F16 or BF16: q, caches and out */
  int32_t cuda_graph; /* 1: fixed grid sizes, so decode launches can be captured */
  int32_t decode_kernel; /* mllm_decode_kernel_t: what runs a batch whose every qo_len is 1 */
} mllm_attention_plan_args_t;

/* Decode-batch kernels: FlashInfer's CUDA-core decode kernel, its prefill
 * kernel with one query row per sequence (tensor cores over the packed GQA
 * group, FlashInfer's `use_tensor_cores`), or our split-KV kernel (GQA groups
 * up to 8; the K/V of every token but each sequence's newest is requested
 * before the kernel waits on the one before it, and the chunks merge inside
 * the kernel: csrc/attention/split_decode.cuh), merging through global memory
 * or (SPLIT_KV_CLUSTER, SM90+; the global form below SM90) through the
 * distributed shared memory of a thread-block cluster. The caller picks; see
 * the Rust `DecodeKernel`. */
typedef enum mllm_decode_kernel_t {
  MLLM_DECODE_KERNEL_CUDA_CORES = 0,
  MLLM_DECODE_KERNEL_TENSOR_CORES = 1,
  MLLM_DECODE_KERNEL_SPLIT_KV = 2,
  MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER = 3,
} mllm_decode_kernel_t;

/* What mllm_attention_plan chose; opaque to the caller, passed back to run. */
typedef struct mllm_attention_plan_t {
  int32_t prefill; /* 0: decode kernel (every qo_len is 1); 1: prefill kernel */
  int32_t batch_size;
  int32_t total_q;
  int32_t num_qo_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
  mllm_dtype_t dtype;
  int32_t cuda_graph;
  int64_t qo_indptr_offset;    /* device copies inside int_workspace */
  int64_t kv_indptr_offset;
  int64_t last_page_len_offset;
  int64_t counters_offset;  /* split-KV kernel: [batch_size * num_kv_heads] u32, zero between launches */
  int64_t scheduler_offset; /* where FlashInfer's schedule starts */
  int32_t split_chunks;     /* > 0: the split-KV decode kernel, this many chunks per (sequence, KV head) */
  int32_t split_cluster;    /* 1: those chunks form one cluster and merge through DSMEM */
  int32_t info_len;
  int64_t info[16]; /* FlashInfer's DecodePlanInfo / PrefillPlanInfo */
} mllm_attention_plan_t;

typedef struct mllm_attention_run_args_t {
  const void* q;        /* [total_q, num_qo_heads, head_dim] */
  const void* k_cache;  /* [capacity, num_kv_heads, head_dim] */
  const void* v_cache;  /* [capacity, num_kv_heads, head_dim] */
  const int32_t* kv_indices; /* device, [kv_indptr[batch_size]], each < capacity */
  void* out;            /* [total_q, num_qo_heads, head_dim] */
  void* float_workspace; /* the buffers the plan was made with */
  void* int_workspace;
  float sm_scale;
} mllm_attention_run_args_t;

/* Plans one batch (see mllm_attention_plan_args_t). */
MLLM_API mllm_result_t mllm_attention_plan(const mllm_attention_plan_args_t* args, mllm_attention_plan_t* plan,
                                           mllm_stream_t stream);

/* Runs one layer with a plan from mllm_attention_plan. */
MLLM_API mllm_result_t mllm_attention_run(const mllm_attention_run_args_t* args, const mllm_attention_plan_t* plan,
                                          mllm_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* MLLM_KERNEL_H_ */
