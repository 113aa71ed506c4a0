// decode_mlp: a gated MLP block of one decode row in W8A8, as one persistent
// kernel on SM90 (`mllm_decode_mlp` in mllm_kernel.h):
//
//   residual += x;  n = rms_norm(residual) * w;  (qn, s1) = quant(n)
//   gu = s1 * s_gu * (qn . W_guᵀ);  act = silu(gate) * up;  (qa, s2) = quant(act)
//   out = s2 * s_d * (qa . W_dᵀ)
//
// with each rounding of the unfused kernels (fused_add_rms_norm_quant,
// int8_scaled_mm's epilogue, silu_and_mul_quant), so the result matches them
// up to the order of the norm's sum of squares.
//
// Why one kernel: at batch 1 every GEMM here streams its weight at HBM speed,
// but each kernel boundary (norm -> gate_up -> SiLU -> down) drains the memory
// pipe: the next grid cannot request its weight until the short kernel before
// it has run. Here every block walks one sequence of weight stages (its
// gate_up tiles, then its down tiles) through a ring of TMA bulk copies, so
// the down projection's weight is already streaming while the gate_up tail,
// the grid barrier and the quantization of `act` run, and gate_up's while the
// norm runs. The two steps that need the whole row (the norm before gate_up,
// the absmax of `act` before down) are computed redundantly by every block
// from L2 (8 and 24 KiB at Qwen3-8B's sizes) and, for `act`, after one grid
// barrier on a counter in `scratch`.
//
// Layout: a gate_up tile is 8 gate rows and the 8 matching up rows (so its
// epilogue has both halves of SiLU x up), a down tile 16 rows; a stage is 8
// of those rows x 1 KiB of k. Warp specialized: a producer warp refills
// each slot as soon as the eight consumer warps have released it (an `empty`
// mbarrier per slot), so issuing copies never waits on compute and the
// consumers never meet at a block barrier per stage. Consumer warp w
// multiplies the 64-byte steps w and w + 8 of a stage (mma.sync m16n8k32,
// A = the int8 row in shared memory, zeros in rows 1-15), lane (g, t) the 16
// bytes of row g at 16 t. The ring is as deep as two blocks an SM allow.
//
// The grid is what the device holds at once (the barrier needs every block
// resident); a barrier that never opens traps after a few seconds instead of
// hanging.
//
// Measured (Qwen3-8B's block on an H100, docs/int8_mm_dispatch.md): the
// first form (thread 0 issuing each stage's copies after a block barrier)
// took 90 us against ~60 for the four kernels; with the producer warp but
// one lane issuing, 66-87 us; as here, 59.6 us against 60.9: on par, so the
// engine takes it only with MLLM_DECODE_MLP=on.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "mllm_device.cuh"
#include "mllm_dtype.cuh"
#include "mllm_kernel.h"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"
#include "mllm_tma.cuh"

namespace {

constexpr int kWarps = 8;                  // consumer warps
constexpr int kConsumers = kWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + one producer warp
constexpr int kStageK = 1024;            // k bytes per weight row and stage
constexpr int kPitch = kStageK + 64;     // rows g and g + 1 on disjoint banks
constexpr int kStageRows = 8;            // one mma n-tile
constexpr int kSteps = kStageK / 64 / kWarps;  // 64-byte steps per warp and stage
constexpr int kMaxStages = 32;
// Stages requested before the PDL wait (MLLM_STREAM_PREWAIT overrides): a
// few, as stream_m16 measured, since requests queued ahead of the kernel
// before slow it down.
constexpr int kPrewaitStages = 2;
constexpr int kStageBytes = kStageRows * kPitch;
constexpr int kMaxGrid = 1024;           // partial maxima the scratch holds
// Scratch: barrier counter and generation on their own 128-byte lines, then
// one f32 partial absmax per block.
constexpr int kScratchHeader = 256;
static_assert(MLLM_DECODE_MLP_SCRATCH_BYTES >= kScratchHeader + 4 * kMaxGrid, "scratch too small");

// The head of shared memory; the ring's stages follow it.
struct alignas(128) Ring {
  uint64_t full[kMaxStages];   // the stage's bytes have landed (one arrival + tx bytes)
  uint64_t empty[kMaxStages];  // every consumer warp is done with the slot (kWarps arrivals)
  int partial[2][kWarps][2][8];  // per tile parity: each warp's sums of the tile's 16 rows
  float reduce[kWarps];
  float up_vals[8];
};

// The consumer warps' own barrier (named barrier 1): the producer warp never
// joins, so nothing the consumers do waits on it or it on them.
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }

// Combines each consumer warp's already-reduced value (mllm::warp_sum /
// warp_max) across the consumer warps; every consumer thread gets the result.
template <typename Op>
__device__ __forceinline__ float across_consumers(float warp_value, float* slots, Op op) {
  if (threadIdx.x % 32 == 0) slots[threadIdx.x / 32] = warp_value;
  consumer_sync();
  float r = slots[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, slots[w]);
  consumer_sync();  // slots may be reused by the next call
  return r;
}

__device__ __forceinline__ void mma_s8(int (&c)[4], uint4 a, uint32_t b0, uint32_t b1, uint32_t b2, uint32_t b3) {
  // Rows 1-15 of A are zeros: only row 0 (lanes g == 0) is the token.
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a.x), "r"(0u), "r"(a.y), "r"(0u), "r"(b0), "r"(b1));
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a.z), "r"(0u), "r"(a.w), "r"(0u), "r"(b2), "r"(b3));
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Every block's consumers arrive before any leave; writes before it are
// visible after it. Sense-reversing (the last to arrive resets the count and
// bumps the generation), so it needs no reset between launches or replays.
__device__ void grid_barrier(unsigned* count, unsigned* generation) {
  consumer_sync();
  if (threadIdx.x == 0) {
    const unsigned gen = load_acquire(generation);
    __threadfence();
    if (atomicAdd(count, 1u) == gridDim.x - 1) {
      atomicExch(count, 0u);
      store_release(generation, gen + 1);
    } else {
      const long long start = clock64();
      while (load_acquire(generation) == gen) {
        // ~4 s at 1.98 GHz: a block that never became resident (a grid the
        // device cannot hold at once) ends the launch with an error.
        if (clock64() - start > (1ll << 33)) __trap();
      }
    }
    __threadfence();
  }
  consumer_sync();
}

template <typename D>
struct Args {
  using S = typename D::storage;
  const S* x;
  S* residual;
  const S* norm_w;
  const int8_t* w_gu;
  const float* s_gu;
  const int8_t* w_d;
  const float* s_d;
  S* act;
  S* out;
  unsigned* barrier;  // [0]: count, [32]: generation
  float* block_max;   // [gridDim.x]
  int hidden, inter;
  float eps;
  int stages;   // ring depth, <= kMaxStages
  int prewait;  // stages requested before the wait, <= stages
};

template <typename D>
__global__ void __launch_bounds__(kThreads) decode_mlp_kernel(const Args<D> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace mllm::tma;
  using S = typename D::storage;
  extern __shared__ __align__(128) unsigned char smem[];
  Ring& ring = *reinterpret_cast<Ring*>(smem);
  const int nst = p.stages;
  int8_t* stages = reinterpret_cast<int8_t*>(smem + sizeof(Ring));
  auto stage_row = [&](int slot, int r) { return stages + slot * kStageBytes + r * kPitch; };
  int8_t* xq = stages + nst * kStageBytes;  // [hidden]
  // The quantized act [inter]; before that, the residual row (block 0 keeps it
  // until every block has read the old one).
  unsigned char* region = reinterpret_cast<unsigned char*>(xq) + p.hidden;
  int8_t* aq = reinterpret_cast<int8_t*>(region);
  S* row = reinterpret_cast<S*>(region);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int G = gridDim.x, b = blockIdx.x;
  const int gu_tiles = p.inter / 8, d_tiles = p.hidden / 16;
  // A tile is two 8-row groups (gate and up rows; the down tile's two
  // halves), each `chunks` stages of 1 KiB along k.
  const int gu_chunks = (p.hidden + kStageK - 1) / kStageK;
  const int d_chunks = (p.inter + kStageK - 1) / kStageK;
  const int gu_stages = 2 * gu_chunks, d_stages = 2 * d_chunks;
  const int my_gu = b < gu_tiles ? (gu_tiles - b + G - 1) / G : 0;
  const int my_d = b < d_tiles ? (d_tiles - b + G - 1) / G : 0;
  const int n_gu = my_gu * gu_stages, total = n_gu + my_d * d_stages;

  if (threadIdx.x == 0) {
    for (int i = 0; i < nst; ++i) {
      barrier_init(&ring.full[i]);
      barrier_init_count(&ring.empty[i], kWarps);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp == kWarps) {
    // The producer warp: stage q of this block's sequence is 8 weight rows x
    // up to 1 KiB, one bulk copy per row, lane r issuing row r's, into slot
    // q % nst once every consumer warp has released that slot's previous
    // use. One lane issuing all eight, with the stage's index arithmetic
    // (six divisions) in the same thread, capped a block at ~1 stage per us.
    if (lane >= kStageRows) return;
    bool gu = n_gu > 0;
    int slot = 0, round = 0, tile = b, group = 0, k0 = 0;
    for (int q = 0; q < total; ++q) {
      if (q == n_gu) gu = false, tile = b, group = 0, k0 = 0;
      if (round > 0) barrier_wait(&ring.empty[slot], static_cast<uint32_t>((round - 1) & 1));
      // The weights are constants: the first stages stream while the kernel
      // before (o_proj) finishes, the rest once it has.
      if (q == p.prewait) mllm::wait_for_producer();
      const int ld = gu ? p.hidden : p.inter;
      // gate_up: rows 8 tile (gate) or inter + 8 tile (up); down: 16 tile + 8 group.
      const int64_t row0 = gu ? (group ? p.inter : 0) + static_cast<int64_t>(tile) * 8
                              : static_cast<int64_t>(tile) * 16 + group * 8;
      const int kn = min(kStageK, ld - k0);
      if (lane == 0) barrier_expect(&ring.full[slot], static_cast<uint32_t>(kn * kStageRows));
      __syncwarp(0xffu);
      bulk_copy(stage_row(slot, lane), (gu ? p.w_gu : p.w_d) + (row0 + lane) * ld + k0, kn, &ring.full[slot]);
      if ((k0 += kStageK) >= ld) {
        k0 = 0;
        if (++group == 2) group = 0, tile += G;
      }
      if (++slot == nst) slot = 0, ++round;
    }
    return;
  }

  // The consumer warps. x and residual are the previous kernel's output.
  mllm::wait_for_producer();
  auto sum_all = [&](float v) {
    return across_consumers(mllm::warp_sum(v), ring.reduce, [](float x, float y) { return x + y; });
  };
  auto max_all = [&](float v) {
    return across_consumers(mllm::warp_max(v), ring.reduce, [](float x, float y) { return fmaxf(x, y); });
  };

  // residual + x, RMSNorm, per-token quantization into xq (every block), in
  // 16-byte packs of 8 elements.
  using Pack8 = mllm::Pack<S, 8>;
  const int packs = p.hidden / 8;
  const Pack8* x8 = reinterpret_cast<const Pack8*>(p.x);
  const Pack8* r8 = reinterpret_cast<const Pack8*>(p.residual);
  const Pack8* w8 = reinterpret_cast<const Pack8*>(p.norm_w);
  Pack8* row8 = reinterpret_cast<Pack8*>(row);
  float s1;
  {
    float ss = 0.f;
    for (int i = threadIdx.x; i < packs; i += kConsumers) {
      const Pack8 xv = x8[i], rv = r8[i];
      Pack8 sum;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        sum.v[j] = D::from_float(D::to_float(xv.v[j]) + D::to_float(rv.v[j]));
        const float f = D::to_float(sum.v[j]);
        ss += f * f;
      }
      row8[i] = sum;
    }
    const float inv = 1.f / sqrtf(sum_all(ss) / static_cast<float>(p.hidden) + p.eps);
    // Normalized in place (block 0 writes the sums out after the barrier, so
    // they are kept: normalized values go to registers only).
    auto normalized = [&](const Pack8& r, const Pack8& w, int j) {
      const float n = mllm::round_to<D>(D::to_float(r.v[j]) * inv);
      return D::to_float(D::from_float(n * D::to_float(w.v[j])));
    };
    float local = 0.f;
    for (int i = threadIdx.x; i < packs; i += kConsumers) {
      const Pack8 rv = row8[i], wv = w8[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) local = fmaxf(local, fabsf(normalized(rv, wv, j)));
    }
    const float absmax = max_all(local);
    const mllm::RowQuant quant(absmax);
    s1 = mllm::RowQuant::scale(absmax);
    for (int i = threadIdx.x; i < packs; i += kConsumers) {
      const Pack8 rv = row8[i], wv = w8[i];
      mllm::QuantPack<8> q;
#pragma unroll
      for (int j = 0; j < 8; ++j) q.v[j] = quant(normalized(rv, wv, j));
      reinterpret_cast<mllm::QuantPack<8>*>(xq)[i] = q;
    }
    consumer_sync();
  }

  // Multiplies the next `n` stages of the sequence (`per` to a tile) by the
  // int8 row `a` of k bytes. After tile i, thread c < 16 calls
  // `epilogue(i, the tile's sum for weight row c, scale)` with `scale` =
  // `*scale_of(i, c)`, a per-channel weight scale loaded one tile ahead so
  // that its DRAM miss does not stall warp 0 (and with it every slot's
  // release) at each tile. `slot` / `phase` and `tiles` (which picks the
  // partial buffer) carry over from one walk to the next.
  int tiles = 0, slot = 0;
  uint32_t phase = 0;
  auto walk = [&](int n, int per, const int8_t* a, int k, auto&& scale_of, auto&& epilogue) {
    const int chunks = per / 2;
    int acc0[4] = {0, 0, 0, 0}, acc1[4] = {0, 0, 0, 0};
    const int row = threadIdx.x;  // < 16: the weight row whose epilogue it runs
    float scale = n > 0 && row < 16 ? *scale_of(0, row) : 0.f;
    for (int q = 0, s = 0, k0 = 0, tile = 0; q < n; ++q) {
      const int kn = min(kStageK, k - k0);
      uint4 av[kSteps];
#pragma unroll
      for (int i = 0; i < kSteps; ++i) {
        const int kk = (warp + i * kWarps) * 64 + t * 16;
        av[i] = kk < kn && g == 0 ? *reinterpret_cast<const uint4*>(a + k0 + kk) : make_uint4(0, 0, 0, 0);
      }
      barrier_wait(&ring.full[slot], phase);
      uint4 bv[kSteps];
#pragma unroll
      for (int i = 0; i < kSteps; ++i) {
        const int kk = (warp + i * kWarps) * 64 + t * 16;
        bv[i] = kk < kn ? *reinterpret_cast<const uint4*>(stage_row(slot, g) + kk) : make_uint4(0, 0, 0, 0);
      }
      // The slot's reads are done (values in registers): each thread's reads
      // complete for the async proxy, then one lane per warp releases it.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane == 0) barrier_arrive(&ring.empty[slot]);
      if (++slot == nst) slot = 0, phase ^= 1u;
#pragma unroll
      for (int i = 0; i < kSteps; ++i) {
        if (s < chunks)
          mma_s8(acc0, av[i], bv[i].x, bv[i].y, bv[i].z, bv[i].w);
        else
          mma_s8(acc1, av[i], bv[i].x, bv[i].y, bv[i].z, bv[i].w);
      }
      k0 = k0 + kStageK < k ? k0 + kStageK : 0;
      if (++s < per) continue;
      s = 0;
      auto& part = ring.partial[tiles & 1];
      if (g == 0) {
        part[warp][0][2 * t] = acc0[0];
        part[warp][0][2 * t + 1] = acc0[1];
        part[warp][1][2 * t] = acc1[0];
        part[warp][1][2 * t + 1] = acc1[1];
      }
      // The buffer alternates by tile: the writes of tile i + 2 come after
      // this barrier of tile i + 1, which every reader of tile i passed.
      consumer_sync();
      if (row < 16) {
        int sum = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += part[w][row / 8][row % 8];
        const float this_scale = scale;
        if (q + per < n) scale = *scale_of(tile + 1, row);
        epilogue(tile, sum, this_scale);
      }
      ++tile;
      ++tiles;
      acc0[0] = acc0[1] = acc0[2] = acc0[3] = 0;
      acc1[0] = acc1[1] = acc1[2] = acc1[3] = 0;
    }
  };

  // gate_up, with SiLU x up in the epilogue: thread c < 8 has gate column c,
  // thread 8 + c the matching up column; they meet through shared memory.
  float act_max = 0.f;
  auto gu_scale = [&](int i, int r) {
    const int tile = b + i * G;
    return p.s_gu + (r < 8 ? tile * 8 + r : p.inter + tile * 8 + r - 8);
  };
  walk(n_gu, gu_stages, xq, p.hidden, gu_scale, [&](int i, int sum, float scale) {
    const int tile = b + i * G;
    const int c = threadIdx.x % 8;
    const float v = D::to_float(D::from_float(s1 * (scale * static_cast<float>(sum))));
    if (threadIdx.x >= 8) ring.up_vals[c] = v;
    // Threads 0-15 are warp 0's first half: a warp barrier orders the exchange.
    __syncwarp(0xffffu);
    if (threadIdx.x < 8) {
      const float silu = mllm::round_to<D>(v / (1.f + expf(-v)));
      const S a = D::from_float(silu * ring.up_vals[c]);
      p.act[tile * 8 + c] = a;
      act_max = fmaxf(act_max, fabsf(D::to_float(a)));
    }
    __syncwarp(0xffffu);
  });

  // Every block's act is written: the row's absmax, then its quantization.
  const float mine = max_all(act_max);
  if (threadIdx.x == 0) p.block_max[b] = mine;
  grid_barrier(p.barrier, p.barrier + 32);
  mllm::allow_dependents();
  if (b == 0)
    for (int i = threadIdx.x; i < packs; i += kConsumers) reinterpret_cast<Pack8*>(p.residual)[i] = row8[i];
  float m = 0.f;
  for (int i = threadIdx.x; i < G; i += kConsumers) m = fmaxf(m, __ldcg(p.block_max + i));
  const float absmax = max_all(m);  // also orders row's last reads before aq's writes
  const mllm::RowQuant quant(absmax);
  const float s2 = mllm::RowQuant::scale(absmax);
  // act was written by other blocks in this launch: read through L2 (.cg).
  const uint4* act16 = reinterpret_cast<const uint4*>(p.act);
  for (int i = threadIdx.x; i < p.inter / 8; i += kConsumers) {
    const uint4 v = __ldcg(act16 + i);
    const S* e = reinterpret_cast<const S*>(&v);
    mllm::QuantPack<8> q;
#pragma unroll
    for (int j = 0; j < 8; ++j) q.v[j] = quant(D::to_float(e[j]));
    reinterpret_cast<mllm::QuantPack<8>*>(aq)[i] = q;
  }
  consumer_sync();

  auto d_scale = [&](int i, int r) { return p.s_d + (b + i * G) * 16 + r; };
  walk(total - n_gu, d_stages, aq, p.inter, d_scale, [&](int i, int sum, float scale) {
    p.out[(b + i * G) * 16 + threadIdx.x] = D::from_float(s2 * (scale * static_cast<float>(sum)));
  });
#else
  __trap();  // the host side refuses this kernel below SM90
#endif
}

mllm_result_t result(mllm_status_t status, const char* message, int32_t cuda_error = 0) {
  return mllm_result_t{status, cuda_error, message};
}

bool aligned(const void* p, uintptr_t to) { return (reinterpret_cast<uintptr_t>(p) & (to - 1)) == 0; }

// Shared memory besides the ring: its head, the quantized input row and the
// region that holds the residual row, then the quantized act.
size_t fixed_smem(const mllm_decode_mlp_args_t& a) {
  const size_t row = static_cast<size_t>(a.hidden) * 2;
  const size_t region = static_cast<size_t>(a.inter) > row ? static_cast<size_t>(a.inter) : row;
  return sizeof(Ring) + static_cast<size_t>(a.hidden) + region;
}

// Ring depth on device `dev`: the deepest ring that still lets two blocks
// share an SM, else the deepest one block's shared memory holds, or
// MLLM_DECODE_MLP_STAGES (1-32; a tuning knob). 0 when not even two stages
// fit. Two blocks an SM won: Qwen3-8B's block on an H100 took 59.6 us with
// two blocks of 10 stages, 63.8 with one of 16 and 62.0 with one of 23 (the
// same bytes in flight: each block's consumers stall at its tile ends, and a
// second block keeps the SM's copies flowing meanwhile).
template <typename D>
int ring_stages(const mllm_decode_mlp_args_t& a, int dev) {
  static const int asked = [] {
    const char* v = std::getenv("MLLM_DECODE_MLP_STAGES");
    const int n = v ? std::atoi(v) : 0;
    return n >= 1 && n <= kMaxStages ? n : 0;
  }();
  if (asked > 0) return asked;
  int optin = 0, per_sm = 0, reserved = 0;
  cudaFuncAttributes attr{};
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev) != cudaSuccess ||
      cudaFuncGetAttributes(&attr, decode_mlp_kernel<D>) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  // Static shared memory (none today) comes out of the same budget.
  const size_t fixed = fixed_smem(a) + attr.sharedSizeBytes;
  const auto stages_in = [&](size_t budget) { return budget > fixed ? (budget - fixed) / kStageBytes : 0; };
  size_t fit = stages_in(static_cast<size_t>(per_sm) / 2 - static_cast<size_t>(reserved));
  if (fit < 2) fit = stages_in(static_cast<size_t>(optin));
  if (fit < 2) return 0;
  return static_cast<int>(fit < kMaxStages ? fit : kMaxStages);
}

mllm_result_t check(const mllm_decode_mlp_args_t* a) {
  if (a == nullptr) return result(MLLM_STATUS_INVALID_ARGUMENT, "args is NULL");
  if (a->hidden <= 0 || a->inter <= 0 || a->hidden % 16 != 0 || a->inter % 16 != 0 || a->hidden > (1 << 20) ||
      a->inter > (1 << 20))
    return result(MLLM_STATUS_INVALID_ARGUMENT, "hidden and inter must be positive multiples of 16, at most 2^20");
  if (a->dtype != MLLM_DTYPE_BF16 && a->dtype != MLLM_DTYPE_F16)
    return result(MLLM_STATUS_UNSUPPORTED_DTYPE, "x, residual, norm_weight, act and out must be bf16 or f16");
  if (!a->x || !a->residual || !a->norm_weight || !a->w_gate_up || !a->s_gate_up || !a->w_down || !a->s_down ||
      !a->act || !a->out || !a->scratch)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "every pointer must be non-NULL");
  if (!aligned(a->w_gate_up, 16) || !aligned(a->w_down, 16) || !aligned(a->scratch, 16) || !aligned(a->x, 16) ||
      !aligned(a->residual, 16) || !aligned(a->norm_weight, 16) || !aligned(a->act, 16) || !aligned(a->out, 4))
    return result(MLLM_STATUS_INVALID_ARGUMENT, "every buffer but out must be 16-byte aligned (out 4-byte)");
  if (a->scratch_bytes < MLLM_DECODE_MLP_SCRATCH_BYTES)
    return result(MLLM_STATUS_INVALID_ARGUMENT, "scratch must hold MLLM_DECODE_MLP_SCRATCH_BYTES");
  if (mllm::device_sm() < 90)
    return result(MLLM_STATUS_UNSUPPORTED, "decode_mlp needs SM90 or newer (TMA bulk copies)");
  return result(MLLM_STATUS_OK, "ok");
}

// Blocks of the kernel device `dev` holds at once with `smem` bytes each (0:
// it cannot run one).
template <typename D>
int resident_blocks(int dev, size_t smem) {
  const auto kernel = decode_mlp_kernel<D>;
  int sms = 0, per_sm = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return sms * per_sm;
}

// How a (hidden, inter) block launches on the current device; blocks == 0:
// it cannot.
struct Plan {
  int stages = 0;
  size_t smem = 0;
  int blocks = 0;
};

template <typename D>
Plan plan_launch(const mllm_decode_mlp_args_t& a) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  // Every layer of every step asks with the same (device, sizes): the device
  // queries run once per thread, not once per launch.
  thread_local int cached_dev = -1;
  thread_local int64_t cached_hidden = 0, cached_inter = 0;
  thread_local Plan cached;
  if (dev == cached_dev && a.hidden == cached_hidden && a.inter == cached_inter) return cached;
  Plan plan;
  plan.stages = ring_stages<D>(a, dev);
  if (plan.stages == 0) return {};
  plan.smem = fixed_smem(a) + static_cast<size_t>(plan.stages) * kStageBytes;
  plan.blocks = resident_blocks<D>(dev, plan.smem);
  if (plan.blocks == 0) return {};
  cached_dev = dev;
  cached_hidden = a.hidden;
  cached_inter = a.inter;
  cached = plan;
  return plan;
}

template <typename D>
mllm_result_t launch(const mllm_decode_mlp_args_t& a, cudaStream_t stream) {
  using S = typename D::storage;
  const Plan plan = plan_launch<D>(a);
  if (plan.blocks == 0)
    return result(MLLM_STATUS_UNSUPPORTED,
                  "decode_mlp: hidden + inter (or MLLM_DECODE_MLP_STAGES) too large for one block's shared memory");
  const int work = static_cast<int>(a.inter / 8 > a.hidden / 16 ? a.inter / 8 : a.hidden / 16);
  // MLLM_DECODE_MLP_BLOCKS (a tuning knob) caps the grid.
  static const int cap = [] {
    const char* v = std::getenv("MLLM_DECODE_MLP_BLOCKS");
    return v ? std::atoi(v) : 0;
  }();
  const int grid = min(min(plan.blocks, work), cap > 0 ? min(cap, kMaxGrid) : kMaxGrid);
  auto* scratch = static_cast<unsigned char*>(a.scratch);
  Args<D> p{static_cast<const S*>(a.x),
            static_cast<S*>(a.residual),
            static_cast<const S*>(a.norm_weight),
            a.w_gate_up,
            a.s_gate_up,
            a.w_down,
            a.s_down,
            static_cast<S*>(a.act),
            static_cast<S*>(a.out),
            reinterpret_cast<unsigned*>(scratch),
            reinterpret_cast<float*>(scratch + kScratchHeader),
            static_cast<int>(a.hidden),
            static_cast<int>(a.inter),
            a.eps,
            plan.stages,
            mllm::stream_prewait_stages(plan.stages, min(kPrewaitStages, plan.stages))};
  const mllm::LaunchConfig l(dim3(static_cast<unsigned>(grid)), dim3(kThreads), stream, mllm::pdl_enabled(), plan.smem);
  const cudaError_t e = cudaLaunchKernelEx(&l.cfg, decode_mlp_kernel<D>, p);
  if (e != cudaSuccess) return result(MLLM_STATUS_CUDA_ERROR, cudaGetErrorString(e), static_cast<int32_t>(e));
  return result(MLLM_STATUS_OK, "ok");
}

}  // namespace

extern "C" MLLM_API mllm_result_t mllm_decode_mlp(const mllm_decode_mlp_args_t* args, mllm_stream_t stream) {
  const mllm_result_t r = check(args);
  if (r.status != MLLM_STATUS_OK) return r;
  const auto s = static_cast<cudaStream_t>(stream);
  return args->dtype == MLLM_DTYPE_BF16 ? launch<mllm::BF16>(*args, s) : launch<mllm::F16>(*args, s);
}
