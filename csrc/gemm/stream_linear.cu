// Dense linear layer at decode batch sizes on SM90: out = x W^T (+ bias) for
// bf16/f16 x [m <= 16, k] and weight [n, k], f32 accumulation, streaming the
// weight with TMA bulk copies (csrc/include/mllm_stream_gemm.cuh) instead of
// cuBLAS: at M = 1 cuBLAS reads Qwen3-8B's qkv / o weights at 60-75% of an
// H100's copy bandwidth (the README's ncu profile of a decode step), and its
// kernels cannot start streaming while the kernel before them finishes (they
// do not wait in-kernel), which this one does under programmatic dependent
// launch.
//
// Math: mma.sync m16n8k16 with f32 accumulators. Lane (g, t)'s 16 bytes of
// weight row g are 8 consecutive k; the first 4 feed one mma as its b0/b1
// pairs, the last 4 a second, and A's fragments are read with the same k
// order, so each mma sums a permutation of 16 k (the sum is order-free).
// The epilogue adds the bias and rounds once to the output dtype (x's, or
// f32 for LM-head logits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mllm_device.cuh"
#include "mllm_kernel.h"
#include "mllm_stream_gemm.cuh"

namespace {

using mllm::stream_gemm::kWarps;

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

// T: x, weight and bias; Out: T or float.
template <typename T, typename Out>
struct FloatMath {
  using Acc = float;
  static constexpr int kWeightBytes = 2;
  static constexpr int kTiles = 1;
  static constexpr int kStageBytes = 1024;
  struct Args {
    const T* x;
    const T* bias;
    Out* out;
  };
  struct Shared {
    float partial[kTiles][kWarps][4][32];
  };

  const Args& args;
  int m, n, k;
  Shared& s;

  __device__ FloatMath(const Args& a, int m_, int n_, int k_, Shared& shared)
      : args(a), m(m_), n(n_), k(k_), s(shared) {}

  // 16 bytes (8 elements) of row `row` of x from byte offset `byte` (zeros
  // past the edges), through the read-only path (x is not written meanwhile).
  __device__ __forceinline__ uint4 load_x(int row, int byte) const {
    if (row >= m || byte >= k * 2) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4*>(args.x + static_cast<int64_t>(row) * k + byte / 2));
  }

  __device__ __forceinline__ void step(float (&acc)[kTiles][4], int g, int byte, const uint4 (&bv)[kTiles]) const {
    const uint4 lo = load_x(g, byte);
    const uint4 hi = load_x(g + 8, byte);
    mma16<T>(acc[0], lo.x, hi.x, lo.y, hi.y, bv[0].x, bv[0].y);
    mma16<T>(acc[0], lo.z, hi.z, lo.w, hi.w, bv[0].z, bv[0].w);
  }

  // Warp 0 sums the warps' partials: c0/c1 are row g, c2/c3 row g + 8, at
  // columns n0 + 2t and n0 + 2t + 1.
  __device__ __forceinline__ void finish(int n0) const {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
#pragma unroll
      for (int j = 0; j < 4; ++j) sum[j] += s.partial[0][w][j][lane];
    const int c = n0 + t * 2;
    const float b0 = args.bias ? static_cast<float>(args.bias[c]) : 0.f;
    const float b1 = args.bias ? static_cast<float>(args.bias[c + 1]) : 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = g + h * 8;
      if (row < m) store2(args.out + static_cast<int64_t>(row) * n + c, sum[h * 2] + b0, sum[h * 2 + 1] + b1);
    }
  }
};

template <typename T, typename Out>
cudaError_t launch_typed(const mllm_stream_linear_args_t& a, cudaStream_t stream) {
  using Math = FloatMath<T, Out>;
  const typename Math::Args args{static_cast<const T*>(a.x), static_cast<const T*>(a.bias), static_cast<Out*>(a.out)};
  return mllm::stream_gemm::launch<Math>(static_cast<const int8_t*>(a.w), static_cast<int>(a.m),
                                         static_cast<int>(a.n), static_cast<int>(a.k), args, stream,
                                         mllm::pdl_enabled());
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
