// Small-M int8 GEMM (M <= 64): memory-bound, so the goal is streaming the
// weight at copy bandwidth. CUTLASS tiles waste most of a 64/128-row tile
// here and give too few CTAs for N ~ 4096, so this kernel is hand-written:
//
// * a block owns 8 output columns (one mma n-tile) and splits K across its
//   WARPS warps (chunk c of 64 k goes to warp c % WARPS), so N = 4096 gives
//   512 blocks x 16 warps and every SM streams;
// * each lane loads 16 contiguous bytes of one weight row per chunk with
//   L1-bypassing vector loads, UNROLL chunks in flight;
// * mma.sync m16n8k32 s8 multiplies them with MT 16-row tiles of A (read
//   through L1, where all blocks of an SM share it). The reduction over k is
//   order-free, so a lane's 16 bytes serve as b0/b1 of two mma steps as long
//   as A's fragments use the same k permutation;
// * partial sums meet in shared memory; one warp applies scales and bias.
//
// Weight loads are issued before griddepcontrol.wait, so under programmatic
// dependent launch they overlap the preceding activation-quant kernel.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "mllm_pdl.cuh"

namespace mllm::int8_mm::skinny {

// 16 warps x 4 chunks in flight per lane put a 4096x4096 weight's every
// byte in flight at once (measured: 8 warps left M=1 at ~50% of copy BW).
constexpr int WARPS = 16;
constexpr int UNROLL = 4;
constexpr int CHUNK = 64;  // k per lane-quad per step: 4 lanes x 16 bytes

__device__ __forceinline__ uint4 load_stream(const int8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename Out>
__device__ __forceinline__ void store2(Out* p, float x, float y);
template <>
__device__ __forceinline__ void store2<__nv_bfloat16>(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}
template <>
__device__ __forceinline__ void store2<__half>(__half* p, float x, float y) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
}

// Sums the per-warp partial tiles (partial[w][i * 4 + j][lane] is warp w's
// accumulator j of m-tile i) and writes the block's 8 output columns. Warp w
// finishes m-tiles w, w + NWARPS, ...: c0/c1 are row g, c2/c3 row g + 8;
// columns t*2 and t*2 + 1 of the 8-column tile.
template <typename Out, int NWARPS, int MT>
__device__ __forceinline__ void finish_tile(const int (*partial)[MT * 4][32], const float* __restrict__ sa,
                                            const float* __restrict__ sb, const Out* __restrict__ bias,
                                            Out* __restrict__ out, int m, int n, int n0, int sa_per_row,
                                            int sb_per_col) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  for (int i = warp; i < MT; i += NWARPS) {
    int sum[4] = {0, 0, 0, 0};
#pragma unroll
    for (int w = 0; w < NWARPS; ++w)
#pragma unroll
      for (int j = 0; j < 4; ++j) sum[j] += partial[w][i * 4 + j][lane];
    const int c = n0 + t * 2;
    if (c >= n) continue;
    const float sb0 = sb_per_col ? sb[c] : sb[0];
    const float sb1 = sb_per_col ? sb[c + 1] : sb[0];
    const float b0 = bias ? static_cast<float>(bias[c]) : 0.f;
    const float b1 = bias ? static_cast<float>(bias[c + 1]) : 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = i * 16 + g + h * 8;
      if (row >= m) continue;
      const float s = sa_per_row ? sa[row] : sa[0];
      // scale_a * (scale_b * acc) + bias, the CUTLASS epilogue's order.
      store2(out + static_cast<int64_t>(row) * n + c, fmaf(s, sb0 * static_cast<float>(sum[h * 2]), b0),
             fmaf(s, sb1 * static_cast<float>(sum[h * 2 + 1]), b1));
    }
  }
}

template <typename Out, int MT>
__global__ void __launch_bounds__(WARPS * 32)
    skinny_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b, const float* __restrict__ sa,
                  const float* __restrict__ sb, const Out* __restrict__ bias, Out* __restrict__ out, int m, int n,
                  int k, int sa_per_row, int sb_per_col) {
  __shared__ int partial[WARPS][MT * 4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * 8;
  const int col = n0 + g;  // the weight row this lane streams
  const int chunks = k / CHUNK + (k % CHUNK != 0);
  const int8_t* brow = b + static_cast<int64_t>(col) * k + t * 16;

  int acc[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;

  auto load_b = [&](int c) {
    const int kk = c * CHUNK + t * 16;
    return (c < chunks && kk < k && col < n) ? load_stream(brow + c * CHUNK) : make_uint4(0, 0, 0, 0);
  };
  auto load_a = [&](int row, int c) {
    const int kk = c * CHUNK + t * 16;
    return (row < m && kk < k) ? *reinterpret_cast<const uint4*>(a + static_cast<int64_t>(row) * k + kk)
                               : make_uint4(0, 0, 0, 0);
  };

  uint4 bv[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) bv[u] = load_b(warp + u * WARPS);
  mllm::wait_for_producer();

  for (int c0 = warp; c0 < chunks; c0 += WARPS * UNROLL) {
    uint4 next[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) next[u] = load_b(c0 + (u + UNROLL) * WARPS);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + u * WARPS;
      if (c >= chunks) break;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint4 lo = load_a(i * 16 + g, c);
        const uint4 hi = load_a(i * 16 + g + 8, c);
        mma_s8(acc[i], lo.x, hi.x, lo.y, hi.y, bv[u].x, bv[u].y);
        mma_s8(acc[i], lo.z, hi.z, lo.w, hi.w, bv[u].z, bv[u].w);
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) bv[u] = next[u];
  }

#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) partial[warp][i * 4 + j][lane] = acc[i][j];
  __syncthreads();
  finish_tile<Out, WARPS, MT>(partial, sa, sb, bias, out, m, n, n0, sa_per_row, sb_per_col);
}

// Rows of A the config covers.
inline int max_rows(int config) {
  switch (config) {
    case MLLM_INT8_MM_SKINNY_M16: return 16;
    case MLLM_INT8_MM_STREAM_M16: return 16;
    case MLLM_INT8_MM_SKINNY_M32: return 32;
    case MLLM_INT8_MM_SKINNY_M64: return 64;
    default: return 0;
  }
}

template <typename Out, int MT>
cudaError_t launch_typed(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>((p.n + 7) / 8)), dim3(WARPS * 32), stream, programmatic);
  return cudaLaunchKernelEx(&l.cfg, skinny_kernel<Out, MT>, p.a, p.b, p.scales_a, p.scales_b,
                            static_cast<const Out*>(p.bias), static_cast<Out*>(p.out), static_cast<int>(p.m),
                            static_cast<int>(p.n), static_cast<int>(p.k), p.scales_a_per_row, p.scales_b_per_col);
}

template <int MT>
cudaError_t launch_mt(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_typed<__nv_bfloat16, MT>(p, stream, programmatic)
                                        : launch_typed<__half, MT>(p, stream, programmatic);
}

inline cudaError_t launch(const mllm_int8_mm_args_t& p, int config, cudaStream_t stream, bool programmatic) {
  switch (config) {
    case MLLM_INT8_MM_SKINNY_M16: return launch_mt<1>(p, stream, programmatic);
    case MLLM_INT8_MM_SKINNY_M32: return launch_mt<2>(p, stream, programmatic);
    default: return launch_mt<4>(p, stream, programmatic);
  }
}

}  // namespace mllm::int8_mm::skinny
