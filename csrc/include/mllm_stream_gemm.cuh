// Small-M GEMM on SM90 (M <= 16) that streams an [N, K] row-major weight with
// TMA bulk copies: out[m, n] = sum_k A[m, k] W[n, k], in whatever element
// type a math policy says. stream_linear (bf16/f16 layers) runs on it; the
// int8 stream_m16 has its own kernel (csrc/int8_scaled_mm/stream.cuh), which
// measured faster than its instance of this loop.
//
// At decode the weight read is the whole cost. Per-lane vector loads (the
// skinny kernel) keep 64 registers per thread busy holding bytes in flight,
// which caps residency at two 512-thread blocks per SM. Here one thread asks
// the copy engine for each 1 KiB run of a weight row and the bytes land in
// shared memory, so a block is 4 warps and ~37 KiB: six fit on an SM, and
// each has its whole stage ring (32 KiB) in flight from its first cycle.
//
// * a block owns Math::kTiles mma n-tiles of 8 output columns, i.e. 8 x
//   kTiles contiguous weight rows (a column group), and walks their bytes in
//   stages of Math::kStageBytes per row through a ring of kStages
//   shared-memory slots, one mbarrier per slot. One tile keeps
//   a block small (six per SM); more tiles read each fragment of A once for
//   all of them, which matters once A has 16 rows and every block reads it;
// * rows sit kStageBytes + 64 bytes apart in a slot, so the 16-byte reads of
//   rows g and g + 1 by one quarter-warp fall on disjoint banks;
// * warp w takes the 64-byte steps w, w + kWarps, ... of a stage; lane (g, t)
//   reads 16 bytes of row g of each tile at 16 t, and the policy's `step`
//   feeds them to two mma.sync steps per tile with A's fragments in the same
//   (permuted) k order, read through L1 (the reduction over k is order-free);
// * the first stages are requested before griddepcontrol.wait, so under
//   programmatic dependent launch the weight is already on its way while the
//   kernel that writes A finishes;
// * a layer wider than one wave of blocks (e.g. gate_up's 3072 column groups
//   against 6 x 132 block slots on an H100) runs persistent blocks that walk
//   groups blockIdx.x, + gridDim.x, ...: the ring flows on from one group
//   into the next, so no slot waits for a new block and no wave ends with a
//   tail. Narrower layers get one group per block.
//
// A math policy `Math` provides:
//   Acc                   accumulator type of the mma (int or float)
//   Args                  its kernel arguments (A, scales, bias, out, ...)
//   Shared                its shared memory; holds Acc partial[kTiles][kWarps][4][32]
//   kWeightBytes          bytes per weight element
//   kTiles, kStageBytes   n-tiles per block, bytes per row per stage
//   Math(args, m, n, k, shared)     run by every thread after the wait
//   step(acc, g, byte, bv)          one 64-byte step at byte offset `byte`
//                                   of the rows; bv[t] is the lane's 16
//                                   bytes of tile t
//   finish(n0)                      writes the group's columns from partial
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "mllm_device.cuh"
#include "mllm_pdl.cuh"
#include "mllm_tma.cuh"

namespace mllm::stream_gemm {

constexpr int kWarps = 4;
constexpr int kStages = 4;

// Weight rows of a column group (one block's share of N at a time).
template <typename Math>
__host__ __device__ constexpr int group_rows() {
  return 8 * Math::kTiles;
}

template <typename Math>
struct Smem {
  alignas(128) int8_t b[kStages][group_rows<Math>()][Math::kStageBytes + 64];
  alignas(8) uint64_t full[kStages];
  typename Math::Shared math;
};

// Column groups of an n-column output (the last may be partial).
template <typename Math>
__host__ __device__ inline int column_groups(int n) {
  return (n + group_rows<Math>() - 1) / group_rows<Math>();
}

// b: [n, k] elements of Math::kWeightBytes; n % 8 == 0 and each row a
// multiple of 16 bytes (the host side checks), so every n-tile has 8 real
// rows and every bulk copy is a whole number of 16-byte units at 16-byte
// offsets. Tiles of a partial last group past n are never copied: their
// (stale) shared rows only feed output columns that finish() skips.
template <typename Math>
__global__ void __launch_bounds__(kWarps * 32)
    kernel(const int8_t* __restrict__ b, int m, int n, int k, const typename Math::Args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mllm::tma;
  constexpr int kRows = group_rows<Math>();
  constexpr int kStageBytes = Math::kStageBytes;
  // Dynamic: a ring of several tiles outgrows the 48 KiB of static shared memory.
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem<Math>& s = *reinterpret_cast<Smem<Math>*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int row_bytes = k * Math::kWeightBytes;
  // Stages per column group, and this block's groups: blockIdx.x, + gridDim.x, ...
  const int stages = (row_bytes + kStageBytes - 1) / kStageBytes;
  const int blocks = static_cast<int>(gridDim.x), block = static_cast<int>(blockIdx.x);
  const int steps = (column_groups<Math>(n) - block + blocks - 1) / blocks * stages;
  auto group_n0 = [&](int step) { return (block + step / stages * blocks) * kRows; };

  // Only thread 0 touches the barriers' arrival side: one arrive (with the
  // byte count) per use of a slot.
  auto request = [&](int step) {
    const int slot = step % kStages;
    const int b0 = step % stages * kStageBytes;
    const int bytes = min(kStageBytes, row_bytes - b0);
    const int n0 = group_n0(step);
    const int8_t* rows = b + static_cast<int64_t>(n0) * row_bytes;
    copy_rows<kRows>(&s.b[slot][0][0], kStageBytes + 64, rows + b0, row_bytes, bytes, min(kRows, n - n0),
                     &s.full[slot]);
  };
  if (threadIdx.x == 0) {
    init_barriers(s.full);
    for (int st = 0; st < min(kStages, steps); ++st) request(st);
  }
  __syncthreads();
  mllm::wait_for_producer();

  // The stages requested above stream in while the policy sets up.
  const Math math(args, m, n, k, s.math);
  typename Math::Acc acc[Math::kTiles][4] = {};
  for (int step = 0; step < steps; ++step) {
    const int slot = step % kStages;
    const int b0 = step % stages * kStageBytes;
    const int bn = min(kStageBytes, row_bytes - b0);
    barrier_wait(&s.full[slot], static_cast<uint32_t>((step / kStages) & 1));
    for (int c = warp * 64; c < bn; c += kWarps * 64) {
      // Rows are whole 16-byte units: a lane's 16 bytes are all in or all
      // out. Lanes past the end multiply zeros: mma.sync needs the warp.
      const int kb = c + t * 16;
      uint4 bv[Math::kTiles];
#pragma unroll
      for (int i = 0; i < Math::kTiles; ++i)
        bv[i] = kb < bn ? *reinterpret_cast<const uint4*>(&s.b[slot][i * 8 + g][kb]) : make_uint4(0, 0, 0, 0);
      math.step(acc, g, b0 + kb, bv);
    }
    __syncthreads();  // the slot is free once every warp has read it
    if (threadIdx.x == 0 && step + kStages < steps) request(step + kStages);
    if (b0 + bn < row_bytes) continue;  // the group's K goes on

    // The group is done. After the last one, the next kernel may start its
    // prologue while this one writes out.
    if (step + 1 == steps) mllm::allow_dependents();
#pragma unroll
    for (int i = 0; i < Math::kTiles; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s.math.partial[i][warp][j][lane] = acc[i][j];
        acc[i][j] = 0;
      }
    __syncthreads();
    // The next group's partials are written after at least one more stage's
    // __syncthreads, so finish's reads are done by then.
    math.finish(group_n0(step));
  }
#else
  __trap();  // the host side refuses these kernels below SM90
#endif
}

// Blocks for `groups` column groups: one per group while they fit one wave of
// resident blocks, else the fewest persistent blocks that take the groups in
// equal shares (e.g. 3072 groups on 792 slots: 768 blocks of 4). The blocks
// an SM holds is the kernel's (and the arch's), asked once per process:
// eager decode launches these kernels ~100 times a step.
template <typename Math>
cudaError_t grid_blocks(int groups, int* blocks) {
  static std::atomic<int> cached_per_sm{0};
  int dev = 0, sms = 0, per_sm = cached_per_sm.load(std::memory_order_relaxed);
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess && per_sm == 0) {
    e = cudaFuncSetAttribute(kernel<Math>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(sizeof(Smem<Math>)));
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel<Math>, kWarps * 32, sizeof(Smem<Math>));
    cached_per_sm.store(per_sm, std::memory_order_relaxed);
  }
  if (e != cudaSuccess) return e;
  const int slots = max(1, sms * per_sm);
  const int shares = (groups + slots - 1) / slots;
  *blocks = (groups + shares - 1) / shares;
  return cudaSuccess;
}

// Launches kernel<Math> on `stream`, with programmatic dependent launch when
// `programmatic` (SM90+).
template <typename Math>
cudaError_t launch(const int8_t* b, int m, int n, int k, const typename Math::Args& args, cudaStream_t stream,
                   bool programmatic) {
  int blocks = 0;
  cudaError_t e = grid_blocks<Math>(column_groups<Math>(n), &blocks);
  // Per launch: the attribute is per device, and a process may use several.
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(kernel<Math>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(sizeof(Smem<Math>)));
  if (e != cudaSuccess) return e;
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), stream, programmatic,
                             sizeof(Smem<Math>));
  return cudaLaunchKernelEx(&l.cfg, kernel<Math>, b, m, n, k, args);
}

}  // namespace mllm::stream_gemm
