// Small-M int8 GEMM on SM90 (M <= 16) that streams the weight with TMA bulk
// copies. The skinny kernel's per-lane vector loads keep 64 registers per
// thread busy holding bytes in flight, which caps residency at two 512-thread
// blocks per SM: N = 4096 then runs in two latency-bound waves. Here one
// thread asks the copy engine for each 1 KiB run of a weight row and the
// bytes land in shared memory, so a block is 4 warps and ~37 KiB: six fit on
// an SM, every block of a 4096-wide layer is resident at once, and each has
// its whole stage ring (32 KiB) in flight from its first cycle.
//
// * a block owns 8 output columns (one mma n-tile), i.e. 8 contiguous weight
//   rows, and walks K in stages of STAGE_K bytes per row through a ring of
//   STAGES shared-memory slots, one mbarrier per slot;
// * rows sit STAGE_K + 64 bytes apart in a slot, so the 16-byte reads of
//   rows g and g + 1 by one quarter-warp fall on disjoint banks;
// * the math is the skinny kernel's (mma.sync m16n8k32 with A read through
//   L1 and a lane's 16 bytes feeding two k-permuted mma steps), and so is the
//   epilogue;
// * the first stages are requested before griddepcontrol.wait, so under
//   programmatic dependent launch the weight is already on its way while the
//   kernel that writes A finishes;
// * for the dynamic W8A8 path at M <= QUANT_ROWS, A can be the float
//   activations themselves (QUANT_A): each block takes the rows' absmax while
//   its first stages are in flight and quantizes A's fragments as it loads
//   them, with per_token_quant_int8's rounding, so the separate quantization
//   kernel (3.5 us at M = 1 on an H100, ncu) and its launch leave the step.
//   Every block reads all of A, which is why the rows are capped.
// * a layer wider than one wave of blocks (gate_up's 3072 column groups
//   against 6 x 132 resident blocks on an H100) runs persistent blocks that
//   walk groups blockIdx.x, + gridDim.x, ...: the stage ring flows on from
//   one group into the next, so no block slot waits for a new block and no
//   wave ends with a tail. Narrower layers get one group per block, as before.
#pragma once

#include <atomic>

#include "mllm_reduce.cuh"
#include "skinny.cuh"

namespace mllm::int8_mm::stream {

constexpr int WARPS = 4;
constexpr int ROWS = 8;
constexpr int STAGE_K = 1024;
constexpr int STAGES = 4;
constexpr int ROW_PITCH = STAGE_K + 64;
// Rows of float A a block quantizes itself (QUANT_A).
constexpr int QUANT_ROWS = 4;

struct Smem {
  alignas(128) int8_t b[STAGES][ROWS][ROW_PITCH];
  alignas(8) uint64_t full[STAGES];
  int partial[WARPS][4][32];
  float row_mult[QUANT_ROWS];   // QUANT_A: 127 / absmax of each row of A
  float row_scale[QUANT_ROWS];  // QUANT_A: absmax / 127, the epilogue's scales_a
};

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

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void barrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)));
}

__device__ __forceinline__ void barrier_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
#endif

// QUANT_A: `a` is [m, k] of Out (m <= QUANT_ROWS) and `sa` is unused; else
// `a` is int8 with scales `sa`.
template <typename Out, bool QUANT_A>
__global__ void __launch_bounds__(WARPS * 32)
    stream_kernel(const void* __restrict__ a, const int8_t* __restrict__ b, const float* __restrict__ sa,
                  const float* __restrict__ sb, const Out* __restrict__ bias, Out* __restrict__ out, int m, int n,
                  int k, int sa_per_row, int sb_per_col) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ Smem s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // Stages per column group, and this block's groups: blockIdx.x, + gridDim.x, ...
  const int stages = (k + STAGE_K - 1) / STAGE_K;
  const int groups = (n / ROWS - static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) - 1) /
                     static_cast<int>(gridDim.x);
  const int steps = groups * stages;
  auto group_n0 = [&](int step) { return (static_cast<int>(blockIdx.x) + step / stages * static_cast<int>(gridDim.x)) * ROWS; };

  // Only thread 0 touches the barriers' arrival side: one arrive (with the
  // byte count) per use of a slot.
  auto request = [&](int step) {
    const int slot = step % STAGES;
    const int k0 = step % stages * STAGE_K;
    const int bytes = min(STAGE_K, k - k0);
    const int8_t* rows = b + static_cast<int64_t>(group_n0(step)) * k;
    barrier_expect(&s.full[slot], static_cast<uint32_t>(bytes * ROWS));
#pragma unroll
    for (int r = 0; r < ROWS; ++r) bulk_copy(&s.b[slot][r][0], rows + static_cast<int64_t>(r) * k + k0, bytes, &s.full[slot]);
  };
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < STAGES; ++i) barrier_init(&s.full[i]);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int st = 0; st < min(STAGES, steps); ++st) request(st);
  }
  __syncthreads();
  mllm::wait_for_producer();

  const Out* x = static_cast<const Out*>(a);
  if constexpr (QUANT_A) {
    // The stages requested above stream in meanwhile.
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
  for (int step = 0; step < steps; ++step) {
    const int slot = step % STAGES;
    const int k0 = step % stages * STAGE_K;
    const int kn = min(STAGE_K, k - k0);
    barrier_wait(&s.full[slot], static_cast<uint32_t>((step / STAGES) & 1));
    // Warp w takes the 64-byte steps w, w + WARPS, ... of the stage.
    for (int c = warp * 64; c < kn; c += WARPS * 64) {
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
    if (threadIdx.x == 0 && step + STAGES < steps) request(step + STAGES);
    if (k0 + kn < k) continue;  // the group's K goes on

    // The group is done. After the last one, the next kernel may start its
    // prologue while this one writes out.
    if (step + 1 == steps) mllm::allow_dependents();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s.partial[warp][j][lane] = acc[j];
      acc[j] = 0;
    }
    __syncthreads();
    // The next group's partials are written after at least one more stage's
    // __syncthreads, so finish_tile's reads are done by then.
    if constexpr (QUANT_A) {
      skinny::finish_tile<Out, WARPS, 1>(s.partial, s.row_scale, sb, bias, out, m, n, group_n0(step), 1, sb_per_col);
    } else {
      skinny::finish_tile<Out, WARPS, 1>(s.partial, sa, sb, bias, out, m, n, group_n0(step), sa_per_row, sb_per_col);
    }
  }
#else
  __trap();  // the host side refuses this config below SM90
#endif
}

// Blocks for `groups` column groups: one per group while they fit one wave of
// resident blocks, else the fewest persistent blocks that take the groups in
// equal shares (e.g. 3072 groups on 792 slots: 768 blocks of 4).
// The blocks an SM holds is the kernel's (and the arch's), asked once per
// process: eager decode launches this kernel ~100 times a step.
template <typename Out, bool QUANT_A>
cudaError_t grid_blocks(int groups, int* blocks) {
  static std::atomic<int> cached_per_sm{0};
  int dev = 0, sms = 0, per_sm = cached_per_sm.load(std::memory_order_relaxed);
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && per_sm == 0) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_kernel<Out, QUANT_A>, WARPS * 32, 0);
    cached_per_sm.store(per_sm, std::memory_order_relaxed);
  }
  if (e != cudaSuccess) return e;
  const int slots = max(1, sms * per_sm);
  const int shares = (groups + slots - 1) / slots;
  *blocks = (groups + shares - 1) / shares;
  return cudaSuccess;
}

template <typename Out, bool QUANT_A>
cudaError_t launch_typed(const void* a, const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  int blocks = 0;
  const cudaError_t e = grid_blocks<Out, QUANT_A>(static_cast<int>(p.n / ROWS), &blocks);
  if (e != cudaSuccess) return e;
  const skinny::LaunchConfig l(dim3(static_cast<unsigned>(blocks)), dim3(WARPS * 32), stream, programmatic);
  return cudaLaunchKernelEx(&l.cfg, stream_kernel<Out, QUANT_A>, a, p.b, p.scales_a, p.scales_b,
                            static_cast<const Out*>(p.bias), static_cast<Out*>(p.out), static_cast<int>(p.m),
                            static_cast<int>(p.n), static_cast<int>(p.k), p.scales_a_per_row, p.scales_b_per_col);
}

// n % 8 == 0 and k % 16 == 0 hold (check_args): every block has 8 real rows
// and every bulk copy is a whole number of 16-byte units at 16-byte offsets.
inline cudaError_t launch(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_typed<__nv_bfloat16, false>(p.a, p, stream, programmatic)
                                        : launch_typed<__half, false>(p.a, p, stream, programmatic);
}

// The same GEMM with A = x, float activations of out_dtype that the kernel
// quantizes per row itself; p.m <= QUANT_ROWS, x 16-byte aligned, and
// p.a / p.scales_a are not read.
inline cudaError_t launch_quantizing(const void* x, const mllm_int8_mm_args_t& p, cudaStream_t stream,
                                     bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? launch_typed<__nv_bfloat16, true>(x, p, stream, programmatic)
                                        : launch_typed<__half, true>(x, p, stream, programmatic);
}

}  // namespace mllm::int8_mm::stream
