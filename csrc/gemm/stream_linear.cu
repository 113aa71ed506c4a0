// Dense linear layer at decode batch sizes on SM90: out = x W^T (+ bias) for
// bf16/f16 x [m <= 16, k] and weight [n, k], f32 accumulation, streaming the
// weight with TMA bulk copies instead of cuBLAS: at M = 1 cuBLAS reads
// Qwen3-8B's qkv / o weights at 60-75% of an H100's copy bandwidth (the
// README's ncu profile of a decode step), and its kernels cannot start
// streaming while the kernel before them finishes (they do not wait
// in-kernel), which this one does under programmatic dependent launch.
//
// The kernel is W8A8's stream_m16 (csrc/int8_scaled_mm/stream.cuh) with bf16
// mma: a block owns 8 weight rows (output columns) and walks their bytes in
// 1 KiB stages through a ring of 4 shared-memory slots, one mbarrier each,
// ~37 KiB in all (six blocks per SM). Warp w takes the 64-byte steps w,
// w + 4, .. of a stage, and requests a whole stage's x fragments before
// waiting for that stage's weight, so their L1/L2 latency overlaps the wait.
// (It first ran on a generic loop shared with stream_m16 that read x after
// each step's wait: 1.5-2x slower than cuBLAS in the model.)
//
// Math: mma.sync m16n8k16 with f32 accumulators. Lane (g, t)'s 16 bytes of
// weight row g are 8 consecutive k; the first 4 feed one mma as its b0/b1
// pairs, the last 4 a second, and x's fragments are read with the same k
// order, so each mma sums a permutation of 16 k (the sum is order-free).
// The epilogue adds the bias and rounds once to the output dtype (x's, or
// f32 for LM-head logits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mllm_device.cuh"
#include "mllm_kernel.h"
#include "mllm_pdl.cuh"
#include "mllm_tma.cuh"

namespace {

template <typename T>
__device__ __forceinline__ void mma16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1);

template <>
__device__ __forceinline__ void mma16<__nv_bfloat16>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                     uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16<__half>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void store2(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}
__device__ __forceinline__ void store2(__half* p, float x, float y) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
}
__device__ __forceinline__ void store2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }

constexpr int kWarps = 4;
constexpr int kRows = 8;                                 // weight rows (output columns) per block
constexpr int kStageBytes = 1024;                        // bytes per row and stage
constexpr int kStages = 4;                               // stages in flight
constexpr int kRowPitch = kStageBytes + 64;              // rows g and g + 1 on disjoint banks
constexpr int kStepsPerStage = kStageBytes / (kWarps * 64);  // 64-byte steps per warp and stage

struct Smem {
  alignas(128) int8_t b[kStages][kRows][kRowPitch];
  alignas(8) uint64_t full[kStages];
  float partial[kWarps][4][32];
};

// T: x, weight and bias; Out: T or float. HIGH_ROWS: x has rows 8-15 (else
// their fragments are zeros, neither loaded nor held).
template <typename T, typename Out, bool HIGH_ROWS>
__global__ void __launch_bounds__(kWarps * 32)
    stream_linear_kernel(const T* __restrict__ x, const int8_t* __restrict__ w, const T* __restrict__ bias,
                         Out* __restrict__ out, int m, int n, int k, int prewait) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mllm::tma;
  __shared__ Smem s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kRows;
  const int row_bytes = k * 2;
  const int stages = (row_bytes + kStageBytes - 1) / kStageBytes;
  const int8_t* rows = w + static_cast<int64_t>(n0) * row_bytes;

  // Only thread 0 touches the barriers' arrival side: one arrive (with the
  // byte count) per use of a slot. Its copies, one after another, measured
  // faster than warp 0 issuing a stage (or four) at once
  // (docs/int8_mm_dispatch.md).
  auto request = [&](int stage) {
    const int b0 = stage * kStageBytes;
    copy_rows<kRows>(&s.b[stage % kStages][0][0], kRowPitch, rows + b0, row_bytes,
                     min(kStageBytes, row_bytes - b0), kRows, &s.full[stage % kStages]);
  };
  // The first `prewait` stages are requested before the wait (the weight
  // streams while the kernel before runs), the rest of the ring after it.
  if (threadIdx.x == 0) {
    init_barriers(s.full);
    for (int st = 0; st < min(prewait, stages); ++st) request(st);
  }
  __syncthreads();
  // x is the previous kernel's output.
  mllm::wait_for_producer();
  if (threadIdx.x == 0)
    for (int st = prewait; st < min(kStages, stages); ++st) request(st);

  // 16 bytes (8 elements) of row `row` of x from byte offset `byte` (zeros
  // past the edges; rows are whole 16-byte units, so a lane's are all in or
  // all out).
  auto load_x = [&](int row, int byte) {
    if (row >= m || byte >= row_bytes) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(row) * k + byte / 2));
  };
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int st = 0; st < stages; ++st) {
    const int slot = st % kStages;
    const int b0 = st * kStageBytes;
    const int bn = min(kStageBytes, row_bytes - b0);
    uint4 lo[kStepsPerStage], hi[kStepsPerStage];
#pragma unroll
    for (int i = 0; i < kStepsPerStage; ++i) {
      const int kb = (warp + i * kWarps) * 64 + t * 16;
      lo[i] = load_x(g, b0 + kb);
      hi[i] = HIGH_ROWS ? load_x(g + 8, b0 + kb) : make_uint4(0, 0, 0, 0);
    }
    barrier_wait(&s.full[slot], static_cast<uint32_t>((st / kStages) & 1));
#pragma unroll
    for (int i = 0; i < kStepsPerStage; ++i) {
      // Lanes past the end multiply zeros: mma.sync needs the whole warp.
      const int kb = (warp + i * kWarps) * 64 + t * 16;
      const uint4 bv = kb < bn ? *reinterpret_cast<const uint4*>(&s.b[slot][g][kb]) : make_uint4(0, 0, 0, 0);
      mma16<T>(acc, lo[i].x, hi[i].x, lo[i].y, hi[i].y, bv.x, bv.y);
      mma16<T>(acc, lo[i].z, hi[i].z, lo[i].w, hi[i].w, bv.z, bv.w);
    }
    sync_before_refill();  // the slot is free once every warp has read it
    if (threadIdx.x == 0 && st + kStages < stages) request(st + kStages);
  }
  // The next kernel may start its prologue while this one writes out.
  mllm::allow_dependents();

#pragma unroll
  for (int j = 0; j < 4; ++j) s.partial[warp][j][lane] = acc[j];
  __syncthreads();
  // Warp 0 sums the warps' partials: c0/c1 are row g, c2/c3 row g + 8, at
  // columns n0 + 2t and n0 + 2t + 1.
  if (warp != 0) return;
  float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int v = 0; v < kWarps; ++v)
#pragma unroll
    for (int j = 0; j < 4; ++j) sum[j] += s.partial[v][j][lane];
  const int c = n0 + t * 2;
  const float b0 = bias ? static_cast<float>(bias[c]) : 0.f;
  const float b1 = bias ? static_cast<float>(bias[c + 1]) : 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = g + h * 8;
    if (row < m) store2(out + static_cast<int64_t>(row) * n + c, sum[h * 2] + b0, sum[h * 2 + 1] + b1);
  }
#else
  __trap();  // the host side refuses this kernel below SM90
#endif
}

// n % 8 == 0 and k % 8 == 0 hold (check): every block has 8 real rows and
// every bulk copy is a whole number of 16-byte units at 16-byte offsets.
// The whole ring is requested before the wait: unlike stream_m16 (which
// requests one stage), fewer did not pay for bf16 (Qwen3-8B at batch 1 on an
// H100: 6.13-6.14 ms a step with four, 6.12-6.14 with two, 6.15-6.16 with one).
template <typename T, typename Out>
cudaError_t launch_typed(const mllm_stream_linear_args_t& a, cudaStream_t stream) {
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>(a.n / kRows)), dim3(kWarps * 32), stream,
                             mllm::pdl_enabled());
  const auto kernel = a.m > 8 ? stream_linear_kernel<T, Out, true> : stream_linear_kernel<T, Out, false>;
  return cudaLaunchKernelEx(&l.cfg, kernel, static_cast<const T*>(a.x), static_cast<const int8_t*>(a.w),
                            static_cast<const T*>(a.bias), static_cast<Out*>(a.out), static_cast<int>(a.m),
                            static_cast<int>(a.n), static_cast<int>(a.k),
                            mllm::stream_prewait_stages(kStages, kStages));
}

template <typename T>
cudaError_t launch_out(const mllm_stream_linear_args_t& a, cudaStream_t stream) {
  return a.out_dtype == MLLM_DTYPE_F32 ? launch_typed<T, float>(a, stream) : launch_typed<T, T>(a, stream);
}

mllm_result_t result(mllm_status_t status, const char* message, int32_t cuda_error = 0) {
  return mllm_result_t{status, cuda_error, message};
}

bool aligned(const void* p, uintptr_t to) { return (reinterpret_cast<uintptr_t>(p) & (to - 1)) == 0; }

mllm_result_t check(const mllm_stream_linear_args_t* a) {
  if (a == nullptr) return result(MLLM_STATUS_INVALID_ARGUMENT, "args is NULL");
  if (a->m < 0 || a->m > MLLM_STREAM_LINEAR_MAX_M)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "m must be in 0..=16 (MLLM_STREAM_LINEAR_MAX_M)");
  if (a->n <= 0 || a->k <= 0 || a->n > 0x7fffffff || a->k > 0x3fffffff)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "need 0 < n < 2^31 and 0 < k < 2^30");
  if (a->n % 8 != 0 || a->k % 8 != 0)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "n and k must be multiples of 8 (16-byte weight rows)");
  if (a->dtype != MLLM_DTYPE_BF16 && a->dtype != MLLM_DTYPE_F16)
    return result(MLLM_STATUS_UNSUPPORTED_DTYPE, "x and the weight must be bf16 or f16");
  if (a->out_dtype != a->dtype && a->out_dtype != MLLM_DTYPE_F32)
    return result(MLLM_STATUS_UNSUPPORTED_DTYPE, "out must be x's dtype or f32");
  if (a->w == nullptr || a->out == nullptr || (a->m > 0 && a->x == nullptr))
    return result(MLLM_STATUS_INVALID_ARGUMENT, "x, w and out must be non-NULL");
  if (!aligned(a->x, 16) || !aligned(a->w, 16) || !aligned(a->out, 8) || !aligned(a->bias, 4))
    return result(MLLM_STATUS_INVALID_ARGUMENT, "x and w must be 16-byte aligned, out 8-byte, bias 4-byte");
  if (mllm::device_sm() < 90)
    return result(MLLM_STATUS_UNSUPPORTED, "stream_linear needs SM90 or newer (TMA bulk copies)");
  return result(MLLM_STATUS_OK, "ok");
}

}  // namespace

extern "C" MLLM_API mllm_result_t mllm_stream_linear(const mllm_stream_linear_args_t* args, mllm_stream_t stream) {
  const mllm_result_t r = check(args);
  if (r.status != MLLM_STATUS_OK || args->m == 0) return r;
  const auto s = static_cast<cudaStream_t>(stream);
  const cudaError_t e = args->dtype == MLLM_DTYPE_BF16 ? launch_out<__nv_bfloat16>(*args, s)
                                                       : launch_out<__half>(*args, s);
  if (e != cudaSuccess) return result(MLLM_STATUS_CUDA_ERROR, cudaGetErrorString(e), static_cast<int32_t>(e));
  return r;
}
