// The W8A8 int8 GEMM at M <= 16 on SM90: csrc/include/mllm_stream_gemm.cuh's
// weight-streaming kernel with an int8 math policy (mma.sync m16n8k32, the
// skinny kernel's k permutation and epilogue: scales, then bias).
//
// For the dynamic W8A8 path at M <= kQuantRows, A can be the float
// activations themselves (QUANT_A): each block takes the rows' absmax while
// its first stages are in flight and quantizes A's fragments as it loads
// them, with per_token_quant_int8's rounding, so the separate quantization
// kernel (3.5 us at M = 1 on an H100, ncu) and its launch leave the step.
// Every block reads all of A, which is why the rows are capped.
#pragma once

#include "mllm_reduce.cuh"
#include "mllm_stream_gemm.cuh"
#include "skinny.cuh"

namespace mllm::int8_mm::stream {

using mllm::stream_gemm::kWarps;
// Rows of float A a block quantizes itself (QUANT_A).
constexpr int kQuantRows = 4;

// The absmax of one row of k 16-bit floats (k % 8 == 0) over the block.
template <typename Out>
__device__ __forceinline__ float row_absmax(const Out* row, int k) {
  float local = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + i);
    const Out* e = reinterpret_cast<const Out*>(&v);
#pragma unroll
    for (int j = 0; j < 8; ++j) local = fmaxf(local, fabsf(static_cast<float>(e[j])));
  }
  return mllm::block_max(local);
}

// 16 consecutive elements of A (16-byte aligned) as the 16 int8 bytes that
// per_token_quant_int8 would store for them (mllm::RowQuant's rounding).
template <typename Out>
__device__ __forceinline__ uint4 quantize16(const Out* p, float mult) {
  const uint4 packs[2] = {*reinterpret_cast<const uint4*>(p), *reinterpret_cast<const uint4*>(p + 8)};
  const Out* e = reinterpret_cast<const Out*>(packs);
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const signed char q = mllm::RowQuant::quantize(static_cast<float>(e[i * 4 + j]), mult);
      word |= (static_cast<uint32_t>(q) & 0xffu) << (8 * j);
    }
    w[i] = word;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}


// QUANT_A: `a` is [m, k] of Out (m <= kQuantRows) and `sa` is unused; else
// `a` is int8 with scales `sa`. TILES n-tiles of 8 columns per block: 1 for
// stream_m16 (1 KiB stages, six blocks per SM), 4 for stream_m16_n32 (512-byte
// stages, two blocks per SM, each A fragment read once for 32 columns).
template <typename Out, bool QUANT_A, int TILES = 1>
struct Int8Math {
  using Acc = int;
  static constexpr int kWeightBytes = 1;
  static constexpr int kTiles = TILES;
  static constexpr int kStageBytes = TILES == 1 ? 1024 : 512;
  struct Args {
    const void* a;
    const float* sa;
    const float* sb;
    const Out* bias;
    Out* out;
    int sa_per_row;
    int sb_per_col;
  };
  struct Shared {
    int partial[kTiles][kWarps][4][32];
    float row_mult[kQuantRows];   // QUANT_A: 127 / absmax of each row of A
    float row_scale[kQuantRows];  // QUANT_A: absmax / 127, the epilogue's scales_a
  };

  const Args& args;
  int m, n, k;
  Shared& s;

  __device__ Int8Math(const Args& a, int m_, int n_, int k_, Shared& shared)
      : args(a), m(m_), n(n_), k(k_), s(shared) {
    if constexpr (QUANT_A) {
      const Out* x = static_cast<const Out*>(args.a);
      for (int r = 0; r < m; ++r) {
        const float absmax = row_absmax(x + static_cast<int64_t>(r) * k, k);
        if (threadIdx.x == 0) {
          s.row_mult[r] = mllm::RowQuant::multiplier(absmax);
          s.row_scale[r] = mllm::RowQuant::scale(absmax);
        }
      }
      __syncthreads();
    }
  }

  // 16 bytes of int8 A: row `row`, k offset kk (zeros past the edges).
  __device__ __forceinline__ uint4 load_a(int row, int kk) const {
    if (row >= m || kk >= k) return make_uint4(0, 0, 0, 0);
    const int64_t at = static_cast<int64_t>(row) * k + kk;
    if constexpr (QUANT_A) return quantize16(static_cast<const Out*>(args.a) + at, s.row_mult[row]);
    return *reinterpret_cast<const uint4*>(static_cast<const int8_t*>(args.a) + at);
  }

  // One byte of weight is one k: the byte offset is A's k offset.
  __device__ __forceinline__ void step(int (&acc)[kTiles][4], int g, int kk, const uint4 (&bv)[kTiles]) const {
    const uint4 lo = load_a(g, kk);
    const uint4 hi = load_a(g + 8, kk);
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
      skinny::mma_s8(acc[i], lo.x, hi.x, lo.y, hi.y, bv[i].x, bv[i].y);
      skinny::mma_s8(acc[i], lo.z, hi.z, lo.w, hi.w, bv[i].z, bv[i].w);
    }
  }

  // Tile i holds columns n0 + 8 i ..; finish_tile skips those past n.
  __device__ __forceinline__ void finish(int n0) const {
#pragma unroll
    for (int i = 0; i < kTiles; ++i) {
      if constexpr (QUANT_A) {
        skinny::finish_tile<Out, kWarps, 1>(s.partial[i], s.row_scale, args.sb, args.bias, args.out, m, n,
                                            n0 + 8 * i, 1, args.sb_per_col);
      } else {
        skinny::finish_tile<Out, kWarps, 1>(s.partial[i], args.sa, args.sb, args.bias, args.out, m, n, n0 + 8 * i,
                                            args.sa_per_row, args.sb_per_col);
      }
    }
  }
};

template <typename Out, bool QUANT_A, int TILES = 1>
cudaError_t launch_typed(const void* a, const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  using Math = Int8Math<Out, QUANT_A, TILES>;
  const typename Math::Args args{a,           p.scales_a, p.scales_b, static_cast<const Out*>(p.bias),
                                 static_cast<Out*>(p.out), p.scales_a_per_row, p.scales_b_per_col};
  return mllm::stream_gemm::launch<Math>(p.b, static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k),
                                         args, stream, programmatic);
}

// n % 8 == 0 and k % 16 == 0 hold (check_args): every n-tile has 8 real
// rows and every bulk copy is a whole number of 16-byte units at 16-byte
// offsets. `tiles`: 1 (stream_m16) or 4 (stream_m16_n32).
inline cudaError_t launch(const mllm_int8_mm_args_t& p, int tiles, cudaStream_t stream, bool programmatic) {
  const bool bf16 = p.out_dtype == MLLM_DTYPE_BF16;
  if (tiles == 4)
    return bf16 ? launch_typed<__nv_bfloat16, false, 4>(p.a, p, stream, programmatic)
                : launch_typed<__half, false, 4>(p.a, p, stream, programmatic);
  return bf16 ? launch_typed<__nv_bfloat16, false>(p.a, p, stream, programmatic)
              : launch_typed<__half, false>(p.a, p, stream, programmatic);
}

// The same GEMM with A = x, float activations of out_dtype that the kernel
// quantizes per row itself; p.m <= kQuantRows, x 16-byte aligned, and
// p.a / p.scales_a are not read.
inline cudaError_t launch_quantizing(const void* x, const mllm_int8_mm_args_t& p, cudaStream_t stream,
                                     bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_typed<__nv_bfloat16, true>(x, p, stream, programmatic)
                                        : launch_typed<__half, true>(x, p, stream, programmatic);
}

}  // namespace mllm::int8_mm::stream
