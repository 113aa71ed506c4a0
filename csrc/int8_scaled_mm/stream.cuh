// The W8A8 int8 GEMM at M <= 16 on SM90, streaming the weight with TMA bulk
// copies (mma.sync m16n8k32, the skinny kernel's k permutation and epilogue:
// scales, then bias). Two forms:
//
// * stream_m16: a dedicated kernel, one 8-column n-tile per block, 1 KiB
//   stages, ~37 KiB of static shared memory (six blocks per SM). It is the
//   kernel as first measured (a97ddd1): written as an instance of the generic
//   loop in csrc/include/mllm_stream_gemm.cuh it ran 1.3-1.9x slower on an
//   H100 (graph-timed, Qwen3-8B decode shapes: down at M = 1 34.7 us against
//   22.7 for skinny_m16), for reasons not yet found, so the decode default
//   keeps this one.
// * stream_m16_n32: Int8Math<..., 4> on the generic loop, 32 columns per
//   block, each A fragment read once for 4 n-tiles (opt-in, not faster yet).
//
// For the dynamic W8A8 path at M <= kQuantRows, stream_m16's A can be the
// float activations themselves (QUANT_A): each block takes the rows' absmax
// while its first stages are in flight and quantizes A's fragments as it
// loads them, with per_token_quant_int8's rounding. Every block reads all of
// A, which is why the rows are capped; measured slower than the quantization
// kernel + GEMM (o_proj at M = 1 on an H200: 21.4 against ~12 us), so opt-in.
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


// ---- stream_m16: one n-tile per block, its own kernel ----

constexpr int kRows = 8;          // weight rows (output columns) per block
constexpr int kStageK = 1024;     // k per stage and row
constexpr int kStages = 4;        // stages in flight
constexpr int kRowPitch = kStageK + 64;  // rows g and g + 1 on disjoint banks

struct Smem {
  alignas(128) int8_t b[kStages][kRows][kRowPitch];
  alignas(8) uint64_t full[kStages];
  int partial[kWarps][4][32];
  float row_mult[kQuantRows];   // QUANT_A: 127 / absmax of each row of A
  float row_scale[kQuantRows];  // QUANT_A: absmax / 127, the epilogue's scales_a
};

// QUANT_A: `a` is [m, k] of Out (m <= kQuantRows) and `sa` is unused; else
// `a` is int8 with scales `sa`. A block owns 8 contiguous weight rows and
// walks K through the ring; warp w takes the 64-byte steps w, w + kWarps, ...
// of a stage, lane (g, t) the 16 bytes of row g at 16 t, fed to two mma steps
// with A's fragments in the same k order (read through L1).
template <typename Out, bool QUANT_A>
__global__ void __launch_bounds__(kWarps * 32)
    stream_kernel(const void* __restrict__ a, const int8_t* __restrict__ b, const float* __restrict__ sa,
                  const float* __restrict__ sb, const Out* __restrict__ bias, Out* __restrict__ out, int m, int n,
                  int k, int sa_per_row, int sb_per_col) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mllm::tma;
  __shared__ Smem s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kRows;
  const int stages = (k + kStageK - 1) / kStageK;
  const int8_t* rows = b + static_cast<int64_t>(n0) * k;

  // Only thread 0 touches the barriers' arrival side: one arrive (with the
  // byte count) per use of a slot.
  auto request = [&](int stage) {
    const int slot = stage % kStages;
    const int k0 = stage * kStageK;
    copy_rows<kRows>(&s.b[slot][0][0], kRowPitch, rows + k0, k, min(kStageK, k - k0), kRows, &s.full[slot]);
  };
  if (threadIdx.x == 0) {
    init_barriers(s.full);
    for (int st = 0; st < min(kStages, stages); ++st) request(st);
  }
  __syncthreads();
  // The weight is on its way; A is the previous kernel's output.
  mllm::wait_for_producer();

  const Out* x = static_cast<const Out*>(a);
  if constexpr (QUANT_A) {
    for (int r = 0; r < m; ++r) {
      const float absmax = row_absmax(x + static_cast<int64_t>(r) * k, k);
      if (threadIdx.x == 0) {
        s.row_mult[r] = mllm::RowQuant::multiplier(absmax);
        s.row_scale[r] = mllm::RowQuant::scale(absmax);
      }
    }
    __syncthreads();
  }
  // 16 bytes of int8 A: row `row`, k offset kk (zeros past the edges).
  auto load_a = [&](int row, int kk) {
    if (row >= m || kk >= k) return make_uint4(0, 0, 0, 0);
    const int64_t at = static_cast<int64_t>(row) * k + kk;
    if constexpr (QUANT_A) return quantize16(x + at, s.row_mult[row]);
    return *reinterpret_cast<const uint4*>(static_cast<const int8_t*>(a) + at);
  };
  int acc[4] = {0, 0, 0, 0};
  for (int st = 0; st < stages; ++st) {
    const int slot = st % kStages;
    const int k0 = st * kStageK;
    const int kn = min(kStageK, k - k0);
    barrier_wait(&s.full[slot], static_cast<uint32_t>((st / kStages) & 1));
    for (int c = warp * 64; c < kn; c += kWarps * 64) {
      // k % 16 == 0: a lane's 16 bytes are all in or all out. Lanes past the
      // end multiply zeros: mma.sync needs the whole warp.
      const int kk = c + t * 16;
      const uint4 bv = kk < kn ? *reinterpret_cast<const uint4*>(&s.b[slot][g][kk]) : make_uint4(0, 0, 0, 0);
      const uint4 lo = load_a(g, k0 + kk);
      const uint4 hi = load_a(g + 8, k0 + kk);
      skinny::mma_s8(acc, lo.x, hi.x, lo.y, hi.y, bv.x, bv.y);
      skinny::mma_s8(acc, lo.z, hi.z, lo.w, hi.w, bv.z, bv.w);
    }
    __syncthreads();  // the slot is free once every warp has read it
    if (threadIdx.x == 0 && st + kStages < stages) request(st + kStages);
  }
  // The next kernel may start its prologue while this one writes out.
  mllm::allow_dependents();

#pragma unroll
  for (int j = 0; j < 4; ++j) s.partial[warp][j][lane] = acc[j];
  __syncthreads();
  if constexpr (QUANT_A) {
    skinny::finish_tile<Out, kWarps, 1>(s.partial, s.row_scale, sb, bias, out, m, n, n0, 1, sb_per_col);
  } else {
    skinny::finish_tile<Out, kWarps, 1>(s.partial, sa, sb, bias, out, m, n, n0, sa_per_row, sb_per_col);
  }
#else
  __trap();  // the host side refuses this config below SM90
#endif
}

template <typename Out, bool QUANT_A>
cudaError_t launch_m16(const void* a, const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>(p.n / kRows)), dim3(kWarps * 32), stream, programmatic);
  return cudaLaunchKernelEx(&l.cfg, stream_kernel<Out, QUANT_A>, a, p.b, p.scales_a, p.scales_b,
                            static_cast<const Out*>(p.bias), static_cast<Out*>(p.out), static_cast<int>(p.m),
                            static_cast<int>(p.n), static_cast<int>(p.k), p.scales_a_per_row, p.scales_b_per_col);
}

// ---- stream_m16_n32: 4 n-tiles per block on the generic streaming loop ----

template <typename Out>
struct Int8Math {
  using Acc = int;
  static constexpr int kWeightBytes = 1;
  static constexpr int kTiles = 4;
  static constexpr int kStageBytes = 512;
  struct Args {
    const int8_t* a;
    const float* sa;
    const float* sb;
    const Out* bias;
    Out* out;
    int sa_per_row;
    int sb_per_col;
  };
  struct Shared {
    int partial[kTiles][kWarps][4][32];
  };

  const Args& args;
  int m, n, k;
  Shared& s;

  __device__ Int8Math(const Args& a, int m_, int n_, int k_, Shared& shared)
      : args(a), m(m_), n(n_), k(k_), s(shared) {}

  // 16 bytes of A: row `row`, k offset kk (zeros past the edges). Through
  // the read-only path (ld.global.nc), as stream_kernel's restrict pointers
  // get it; A is not written while the kernel runs.
  __device__ __forceinline__ uint4 load_a(int row, int kk) const {
    if (row >= m || kk >= k) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4*>(args.a + static_cast<int64_t>(row) * k + kk));
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
    for (int i = 0; i < kTiles; ++i)
      skinny::finish_tile<Out, kWarps, 1>(s.partial[i], args.sa, args.sb, args.bias, args.out, m, n, n0 + 8 * i,
                                          args.sa_per_row, args.sb_per_col);
  }
};

template <typename Out>
cudaError_t launch_n32(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  using Math = Int8Math<Out>;
  const typename Math::Args args{p.a, p.scales_a, p.scales_b, static_cast<const Out*>(p.bias), static_cast<Out*>(p.out),
                                 p.scales_a_per_row, p.scales_b_per_col};
  return mllm::stream_gemm::launch<Math>(p.b, static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k),
                                         args, stream, programmatic);
}

// n % 8 == 0 and k % 16 == 0 hold (check_args): every n-tile has 8 real
// rows and every bulk copy is a whole number of 16-byte units at 16-byte
// offsets. `tiles`: 1 (stream_m16) or 4 (stream_m16_n32).
inline cudaError_t launch(const mllm_int8_mm_args_t& p, int tiles, cudaStream_t stream, bool programmatic) {
  const bool bf16 = p.out_dtype == MLLM_DTYPE_BF16;
  if (tiles == 4)
    return bf16 ? launch_n32<__nv_bfloat16>(p, stream, programmatic) : launch_n32<__half>(p, stream, programmatic);
  return bf16 ? launch_m16<__nv_bfloat16, false>(p.a, p, stream, programmatic)
              : launch_m16<__half, false>(p.a, p, stream, programmatic);
}

// stream_m16 with A = x, float activations of out_dtype that the kernel
// quantizes per row itself; p.m <= kQuantRows, x 16-byte aligned, and
// p.a / p.scales_a are not read.
inline cudaError_t launch_quantizing(const void* x, const mllm_int8_mm_args_t& p, cudaStream_t stream,
                                     bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_m16<__nv_bfloat16, true>(x, p, stream, programmatic)
                                        : launch_m16<__half, true>(x, p, stream, programmatic);
}

}  // namespace mllm::int8_mm::stream
