// stream_m16: the W8A8 int8 GEMM at M <= 16 on SM90, streaming the weight
// with TMA bulk copies (mma.sync m16n8k32, the skinny kernel's k permutation
// and epilogue: scales, then bias). One 8-column n-tile per block, 1 KiB
// stages, ~37 KiB of static shared memory (six blocks per SM), so a
// 4096-wide layer is resident in one wave with its whole weight requested.
//
// Written instead as an instance of a generic streaming loop (the deleted
// csrc/include/mllm_stream_gemm.cuh), it measured 1.2-2x slower on an H100,
// and a 32-column variant on that loop (each A fragment read once for 4
// n-tiles) 2x slower (docs/int8_mm_dispatch.md); neither is kept.
// stream_linear (csrc/gemm/stream_linear.cu) is this kernel with bf16 mma.
//
// For the dynamic W8A8 path at M <= kQuantRows, A can be the float
// activations themselves (QUANT_A): each block takes the rows' absmax while
// its first stages are in flight and quantizes A's fragments as it loads
// them, with per_token_quant_int8's rounding. Every block reads all of A,
// which is why the rows are capped; measured slower than the quantization
// kernel + GEMM (o_proj at M = 1 on an H200: 21.4 against ~12 us), so opt-in.
#pragma once

#include "mllm_device.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"
#include "mllm_tma.cuh"
#include "skinny.cuh"

namespace mllm::int8_mm::stream {

constexpr int kWarps = 4;
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

constexpr int kRows = 8;          // weight rows (output columns) per block
constexpr int kStageK = 1024;     // k per stage and row
constexpr int kStages = 4;        // stages in flight
constexpr int kRowPitch = kStageK + 64;  // rows g and g + 1 on disjoint banks
constexpr int kStepsPerStage = kStageK / (kWarps * 64);  // 64-byte steps per warp and stage
// Stages requested before the wait for A. One, not the whole ring: Qwen3-8B
// W8A8 at batch 1 on an H100 took 3.93-3.95 ms a step against 3.98-3.99 with
// four (two rounds, same machine; batch 4 equal), the norm or SiLU kernel
// before each GEMM being slowed by ~25 MB of weight requests queued ahead of
// its own loads.
constexpr int kPrewaitStages = 1;

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
template <typename Out, bool QUANT_A, bool HIGH_ROWS>
__global__ void __launch_bounds__(kWarps * 32)
    stream_kernel(const void* __restrict__ a, const int8_t* __restrict__ b, const float* __restrict__ sa,
                  const float* __restrict__ sb, const Out* __restrict__ bias, Out* __restrict__ out, int m, int n,
                  int k, int sa_per_row, int sb_per_col, int prewait) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mllm::tma;
  __shared__ Smem s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kRows;
  const int stages = (k + kStageK - 1) / kStageK;
  const int8_t* rows = b + static_cast<int64_t>(n0) * k;

  // Only thread 0 touches the barriers' arrival side: one arrive (with the
  // byte count) per use of a slot. Its copies, one after another, measured
  // faster than warp 0 issuing a stage (or four) at once
  // (docs/int8_mm_dispatch.md).
  auto request = [&](int stage) {
    const int slot = stage % kStages;
    const int k0 = stage * kStageK;
    copy_rows<kRows>(&s.b[slot][0][0], kRowPitch, rows + k0, k, min(kStageK, k - k0), kRows, &s.full[slot]);
  };
  // The first `prewait` stages are requested before the wait (the weight
  // streams while the kernel before runs), the rest of the ring after it.
  if (threadIdx.x == 0) {
    init_barriers(s.full);
    for (int st = 0; st < min(prewait, stages); ++st) request(st);
  }
  __syncthreads();
  // A is the previous kernel's output.
  mllm::wait_for_producer();
  if (threadIdx.x == 0)
    for (int st = prewait; st < min(kStages, stages); ++st) request(st);

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
    // A does not depend on the weight: request the stage's fragments before
    // waiting for it, so their L1/L2 latency overlaps the wait instead of
    // following it step by step. Warp w takes the 64-byte steps w,
    // w + kWarps, ..; k % 16 == 0, so a lane's 16 bytes are all in or all
    // out, and lanes past the end multiply zeros (mma.sync needs the whole
    // warp). Rows 8-15 are loaded only when A has them (HIGH_ROWS).
    uint4 lo[kStepsPerStage], hi[kStepsPerStage];
#pragma unroll
    for (int i = 0; i < kStepsPerStage; ++i) {
      const int kk = (warp + i * kWarps) * 64 + t * 16;
      lo[i] = load_a(g, k0 + kk);
      hi[i] = HIGH_ROWS ? load_a(g + 8, k0 + kk) : make_uint4(0, 0, 0, 0);
    }
    barrier_wait(&s.full[slot], static_cast<uint32_t>((st / kStages) & 1));
#pragma unroll
    for (int i = 0; i < kStepsPerStage; ++i) {
      const int kk = (warp + i * kWarps) * 64 + t * 16;
      const uint4 bv = kk < kn ? *reinterpret_cast<const uint4*>(&s.b[slot][g][kk]) : make_uint4(0, 0, 0, 0);
      skinny::mma_s8(acc, lo[i].x, hi[i].x, lo[i].y, hi[i].y, bv.x, bv.y);
      skinny::mma_s8(acc, lo[i].z, hi[i].z, lo[i].w, hi[i].w, bv.z, bv.w);
    }
    sync_before_refill();  // the slot is free once every warp has read it
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
  // Up to 8 rows of A, the fragments of rows 8-15 are zeros: not loaded, no
  // registers held. QUANT_A never has more than 8 rows.
  static_assert(kQuantRows <= 8);
  const auto kernel = p.m > 8 ? stream_kernel<Out, QUANT_A, !QUANT_A> : stream_kernel<Out, QUANT_A, false>;
  return cudaLaunchKernelEx(&l.cfg, kernel, a, p.b, p.scales_a, p.scales_b,
                            static_cast<const Out*>(p.bias), static_cast<Out*>(p.out), static_cast<int>(p.m),
                            static_cast<int>(p.n), static_cast<int>(p.k), p.scales_a_per_row, p.scales_b_per_col,
                            mllm::stream_prewait_stages(kStages, kPrewaitStages));
}

// n % 8 == 0 and k % 16 == 0 hold (check_args): every n-tile has 8 real
// rows and every bulk copy is a whole number of 16-byte units at 16-byte
// offsets.
inline cudaError_t launch(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_m16<__nv_bfloat16, false>(p.a, p, stream, programmatic)
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
