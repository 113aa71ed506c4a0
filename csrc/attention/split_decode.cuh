// Split-KV decode attention for small batches: ours, beside FlashInfer's
// decode kernels (page size 1, one query row per sequence).
//
// At batch 1 FlashInfer's kernels pay ~10 us whatever the context
// (docs/decode_attention.md): a chain of dependent memory round trips (the
// sequence's indptr, its slot ids, the K/V rows, then a merge kernel) that
// starts only once the kernel before it, the q/k norm + RoPE + KV store, has
// finished. This kernel moves the chain in front of griddepcontrol.wait:
// * every context token but a sequence's last was stored by earlier steps,
//   so a CTA reads its chunk's slot ids and requests the K/V rows of its
//   first kStages tiles into shared memory (cp.async) before waiting; under
//   programmatic dependent launch that overlaps the KV-store kernel, which
//   lets this one launch as soon as it starts;
// * after the wait it reads q and the last token's K/V row, which that
//   kernel has just written, and computes;
// * the chunks of a (sequence, KV head) are merged by the last of its CTAs
//   to finish (threadfence + atomic counter, which that CTA resets for the
//   next launch), so there is no merge kernel and a CUDA graph can replay it.
//   That merge is one CTA walking every chunk's partial state through L2,
//   a chain of round trips on the critical path. The cluster form (SM90)
//   instead makes the chunks of a (sequence, KV head) one thread-block
//   cluster (up to 16 CTAs): each CTA keeps its partial state in its own
//   shared memory and, after one cluster barrier, merges a 1/chunks slice
//   of the outputs by reading its peers' shared memory (DSMEM): no global
//   partials, no atomics, all CTAs merging at once.
//
// One CTA per (chunk, KV head, sequence) serves the KV head's whole GQA group
// (up to kMaxGroup query heads): 128 threads, tiles of 64 tokens.
// * Scores: two threads per token, one per half of the head dim, with q as
//   floats in shared memory (broadcast reads); one shuffle adds the halves.
// * Softmax: one warp per query head (online, base 2, q pre-scaled).
// * P.V: one thread per output dim (two query heads' sets at head dim 64).
// Shared-memory rows are padded after each half so that the two threads of a
// token and the tokens of a quarter-warp land on distinct banks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "mllm_cluster.cuh"
#include "mllm_device.cuh"
#include "mllm_dtype.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace mllm::attention::split {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;     // tokens per tile (two threads per token)
constexpr int kStages = 2;    // tiles of a CTA in flight at once
constexpr int kMaxGroup = 8;  // query heads per KV head
constexpr int kMinChunk = 16; // chunk lengths are multiples of this many tokens
constexpr int kMaxChunks = 64;
constexpr int kMaxClusterChunks = 16;  // the largest (non-portable) cluster on SM90
constexpr int kMaxDevices = 64;        // devices whose cluster limit is remembered
static_assert(kTile * 2 == kThreads, "two threads per token");
static_assert(kMaxGroup <= 2 * kWarps, "each warp runs the softmax of at most two query heads");

// Tokens per chunk when a sequence of `len` tokens is cut into `chunks`.
// Every CTA of the sequence, the merging one included, derives the same split.
__host__ __device__ inline int chunk_tokens(int len, int chunks) {
  const int per = (len + chunks - 1) / chunks;
  const int rounded = (per + kMinChunk - 1) / kMinChunk * kMinChunk;
  return rounded < kMinChunk ? kMinChunk : rounded;
}

// Floats of partial state per (sequence, KV head, chunk): the group's
// unnormalized outputs, then (running max, sum of exponentials) per head,
// rounded up to 4 so the merge reads each chunk's outputs as aligned float4s.
__host__ __device__ inline int64_t partial_floats(int group, int head_dim) {
  return (int64_t(group) * (head_dim + 2) + 3) / 4 * 4;
}

struct Params {
  const void* q;  // [batch, num_kv_heads * group, D]
  const void* k;  // [capacity, num_kv_heads, D]
  const void* v;
  const int32_t* kv_indices;
  const int32_t* kv_indptr;  // device, [batch + 1]
  void* out;                 // [batch, num_kv_heads * group, D]
  float* partial;            // [batch, num_kv_heads, chunks, partial_floats]
  uint32_t* counters;        // [batch, num_kv_heads], zero between launches
  int num_kv_heads;
  int group;
  int chunks;
  float scale_log2;  // softmax scale * log2(e)
};

template <typename T>
struct Bits;
template <>
struct Bits<nv_bfloat16> {
  using D = mllm::BF16;
};
template <>
struct Bits<half> {
  using D = mllm::F16;
};

// Byte layout of one cached head row in shared memory: [half 0][16 pad]
// [half 1][16 pad]; a half is D / 2 16-bit elements, i.e. D bytes.
template <int D>
struct Row {
  static constexpr int kBytes = 2 * (D + 16);
  static constexpr int kPieces = D / 8;  // 16-byte pieces of a row
  static __device__ __forceinline__ int piece(int p) {
    return (p / (kPieces / 2)) * (D + 16) + (p % (kPieces / 2)) * 16;
  }
  static __device__ __forceinline__ int element(int e) { return (e / (D / 2)) * (D + 16) + (e % (D / 2)) * 2; }
};

template <int D>
struct Smem {
  alignas(16) unsigned char kv[kStages][2][kTile * Row<D>::kBytes];
  // q per head and half, 4 floats of padding so both halves' reads are
  // conflict-free broadcasts.
  alignas(16) float q[kMaxGroup][2][D / 2 + 4];
  alignas(16) float p[kMaxGroup][kTile];  // scores, then probabilities
  float alpha[kMaxGroup];     // rescale of the running output per tile
  float m[kMaxGroup];
  float l[kMaxGroup];
  int last;
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// 8 16-bit floats of a 16-byte word, widened.
template <typename T>
__device__ __forceinline__ void widen8(const uint4& w, float* f) {
  const unsigned short* h = reinterpret_cast<const unsigned short*>(&w);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = Bits<T>::D::to_float(h[i]);
}

// The cluster form's merge, in every CTA of the cluster (rank == chunk, the
// cluster spanning the grid's x): publishes this chunk's unnormalized
// outputs `acc` in the free K/V stages (an empty chunk's are zeros, with
// max -inf and sum 0 in s.m / s.l), then after a cluster barrier merges
// outputs [chunk * per, (chunk + 1) * per) of the group from every chunk's
// shared memory into `out`. Each output takes 3 * chunks remote reads, all
// independent, so they overlap.
template <int D, typename Dt, int kHeadsPerThread>
__device__ __forceinline__ void merge_in_cluster(Smem<D>& s, const float (&acc)[kHeadsPerThread],
                                                 typename Dt::storage* out, int group, int chunks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kHeadSets = kThreads / D;
  const int tid = threadIdx.x;
  const int dim = tid % D, head_set = tid / D;
  static_assert(kMaxGroup * D * sizeof(float) <= sizeof(s.kv), "partial outputs fit the K/V stages");
  float* mine = reinterpret_cast<float*>(s.kv);  // [group][D]
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) {
    const int g = head_set + i * kHeadSets;
    if (g < group) mine[g * D + dim] = acc[i];
  }
  mllm::cluster::sync();  // every chunk's outputs, max and sum are published
  const int total = group * D;
  const int per = (total + chunks - 1) / chunks;
  const int chunk = static_cast<int>(mllm::cluster::rank());
  const int stop = min(total, (chunk + 1) * per);
  for (int e = chunk * per + tid; e < stop; e += kThreads) {
    const int g = e / D;
    float m[kMaxClusterChunks];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < kMaxClusterChunks; ++c) {
      m[c] = c < chunks ? mllm::cluster::load_remote(&s.m[g], c) : -INFINITY;
      mx = fmaxf(mx, m[c]);
    }
    // The chunk holding the newest token is never empty, so mx is finite.
    float l = 0.f, o = 0.f;
#pragma unroll
    for (int c = 0; c < kMaxClusterChunks; ++c) {
      if (c < chunks) {
        const float w = exp2f(m[c] - mx);
        l += mllm::cluster::load_remote(&s.l[g], c) * w;
        o += mllm::cluster::load_remote(&mine[e], c) * w;
      }
    }
    out[e] = Dt::from_float(o / l);
  }
  mllm::cluster::sync();  // no CTA exits while a peer still reads its shared memory
#else
  __trap();  // the host plans the cluster form on SM90+ only
#endif
}

// CLUSTER: the grid's x (chunks) is one cluster, merged through DSMEM;
// else through global partials and an arrival counter.
template <int D, typename T, bool CLUSTER>
__global__ void __launch_bounds__(kThreads) decode_kernel(const Params prm) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<D>& s = *reinterpret_cast<Smem<D>*>(smem_raw);
  using R = Row<D>;
  using Dt = typename Bits<T>::D;
  constexpr int kHeadSets = kThreads / D;  // P.V: query-head sets (1 at D 128, 2 at D 64)
  constexpr int kHeadsPerThread = kMaxGroup / kHeadSets;
  const int chunk = blockIdx.x, kh = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = prm.group, hkv = prm.num_kv_heads, chunks = prm.chunks;

  // The indptr and slot ids come from the batch's plan, copied before this
  // step's kernels: safe to read before the wait.
  const int kv_begin = prm.kv_indptr[b];
  const int len = prm.kv_indptr[b + 1] - kv_begin;
  const int chunk_len = chunk_tokens(len, chunks);
  const int begin = chunk * chunk_len;
  const int end = min(len, begin + chunk_len);
  const int tiles = begin < len ? (end - begin + kTile - 1) / kTile : 0;
  const int newest = len - 1;  // the token whose K/V the kernel before this one stores
  const int32_t* slots = prm.kv_indices + kv_begin;
  const T* k_cache = static_cast<const T*>(prm.k);
  const T* v_cache = static_cast<const T*>(prm.v);

  // One 16-byte piece of token `tok`'s K (which 0) or V (1) row into tile
  // slot `stage`, row `row`.
  auto copy_piece = [&](int stage, int row, int tok, int which, int piece) {
    const int64_t slot = slots[tok];
    const T* src = (which == 0 ? k_cache : v_cache) + (slot * hkv + kh) * D + piece * 8;
    cp_async16(s.kv[stage][which] + row * R::kBytes + R::piece(piece), src);
  };
  // Every row of tile `tile`, except the newest token's when `skip_newest`.
  auto request_tile = [&](int tile, bool skip_newest) {
    const int t0 = begin + tile * kTile;
    const int n = min(kTile, end - t0);
    for (int i = tid; i < n * 2 * R::kPieces; i += kThreads) {
      const int row = i / (2 * R::kPieces);
      const int which = i / R::kPieces % 2;
      if (skip_newest && t0 + row == newest) continue;
      copy_piece(tile % kStages, row, t0 + row, which, i % R::kPieces);
    }
  };

  const int prefetched = min(kStages, tiles);
  for (int t = 0; t < prefetched; ++t) {
    request_tile(t, /*skip_newest=*/true);
    cp_async_commit();
  }

  mllm::wait_for_producer();  // q and the newest token's K/V are written now
  // o_proj's GEMM may launch now and stream its weight while this runs (after
  // the wait: mllm_pdl.cuh).
  mllm::allow_dependents();

  if (newest >= begin && newest < end && (newest - begin) / kTile < prefetched && tid < 2 * R::kPieces) {
    const int tile = (newest - begin) / kTile;
    copy_piece(tile % kStages, newest - begin - tile * kTile, newest, tid / R::kPieces, tid % R::kPieces);
  }
  cp_async_commit();

  // The group's q rows, widened and pre-scaled into the base-2 softmax domain.
  const int64_t head0 = (int64_t(b) * hkv + kh) * group;
  const T* q = static_cast<const T*>(prm.q) + head0 * D;
  for (int i = tid; i < group * D / 8; i += kThreads) {
    float f[8];
    widen8<T>(*reinterpret_cast<const uint4*>(q + i * 8), f);
    const int g = i * 8 / D, e = i * 8 % D;
#pragma unroll
    for (int j = 0; j < 8; ++j) s.q[g][e / (D / 2)][e % (D / 2) + j] = f[j] * prm.scale_log2;
  }

  float m_run[2] = {-INFINITY, -INFINITY};  // this warp's query heads warp, warp + kWarps
  float l_run[2] = {0.f, 0.f};
  float acc[kHeadsPerThread];
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) acc[i] = 0.f;
  const int dim = tid % D, head_set = tid / D;

  for (int tile = 0; tile < tiles; ++tile) {
    // The next tile's copy may stay in flight (it is the newest group).
    if (tile == 0 || tile + 1 >= tiles) {
      cp_async_wait<0>();
    } else {
      cp_async_wait<1>();
    }
    __syncthreads();
    const int stage = tile % kStages;
    const int n = min(kTile, end - (begin + tile * kTile));

    // Scores of token `row` against every query head of the group.
    {
      const int row = tid / 2, half = tid % 2;
      float sc[kMaxGroup];
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) sc[g] = 0.f;
      if (row < n) {
        const uint4* kr = reinterpret_cast<const uint4*>(s.kv[stage][0] + row * R::kBytes + half * (D + 16));
#pragma unroll
        for (int j = 0; j < D / 16; ++j) {
          float kf[8];
          widen8<T>(kr[j], kf);
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g) {
            if (g < group) {
              const float4 a = *reinterpret_cast<const float4*>(&s.q[g][half][j * 8]);
              const float4 c = *reinterpret_cast<const float4*>(&s.q[g][half][j * 8 + 4]);
              sc[g] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + c.x * kf[4] + c.y * kf[5] +
                       c.z * kf[6] + c.w * kf[7];
            }
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < group) {  // uniform over the block: every lane shuffles
          const float v = sc[g] + __shfl_xor_sync(0xffffffffu, sc[g], 1);
          if (half == 0) s.p[g][row] = row < n ? v : -INFINITY;
        }
      }
    }
    __syncthreads();

    // Online softmax, one warp per query head; a tile has >= 1 real token,
    // so the new max is finite.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int g = warp + i * kWarps;
      if (g < group) {
        const float x0 = s.p[g][lane], x1 = s.p[g][lane + 32];
        const float m_new = fmaxf(m_run[i], mllm::warp_max(fmaxf(x0, x1)));
        const float p0 = exp2f(x0 - m_new), p1 = exp2f(x1 - m_new);
        const float alpha = exp2f(m_run[i] - m_new);  // 0 on the first tile
        l_run[i] = l_run[i] * alpha + mllm::warp_sum(p0 + p1);
        m_run[i] = m_new;
        s.p[g][lane] = p0;
        s.p[g][lane + 32] = p1;
        if (lane == 0) s.alpha[g] = alpha;
      }
    }
    __syncthreads();

    // P.V for output dim `dim` of the thread's query heads.
#pragma unroll
    for (int i = 0; i < kHeadsPerThread; ++i) {
      const int g = head_set + i * kHeadSets;
      if (g < group) acc[i] *= s.alpha[g];
    }
    // Rows past n hold stale bytes (maybe NaN patterns): never read, even
    // with a zero weight. Four rows at a time share one float4 of weights.
    const unsigned char* vcol = s.kv[stage][1] + R::element(dim);
    auto v_at = [&](int r) { return Dt::to_float(*reinterpret_cast<const unsigned short*>(vcol + r * R::kBytes)); };
    int r = 0;
    for (; r + 4 <= n; r += 4) {
      const float v0 = v_at(r), v1 = v_at(r + 1), v2 = v_at(r + 2), v3 = v_at(r + 3);
#pragma unroll
      for (int i = 0; i < kHeadsPerThread; ++i) {
        const int g = head_set + i * kHeadSets;
        if (g < group) {
          const float4 w = *reinterpret_cast<const float4*>(&s.p[g][r]);
          acc[i] += w.x * v0 + w.y * v1 + w.z * v2 + w.w * v3;
        }
      }
    }
    for (; r < n; ++r) {
      const float vf = v_at(r);
#pragma unroll
      for (int i = 0; i < kHeadsPerThread; ++i) {
        const int g = head_set + i * kHeadSets;
        if (g < group) acc[i] += s.p[g][r] * vf;
      }
    }
    __syncthreads();  // the stage is free again
    if (tile + kStages < tiles) {
      request_tile(tile + kStages, /*skip_newest=*/false);
      cp_async_commit();
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int g = warp + i * kWarps;
    if (g < group && lane == 0) {
      s.m[g] = m_run[i];
      s.l[g] = l_run[i];
    }
  }
  __syncthreads();

  using Out = typename Dt::storage;
  Out* out = static_cast<Out*>(prm.out) + head0 * D;
  if (chunks == 1) {
#pragma unroll
    for (int i = 0; i < kHeadsPerThread; ++i) {
      const int g = head_set + i * kHeadSets;
      if (g < group) out[g * D + dim] = Dt::from_float(acc[i] / s.l[g]);
    }
    return;
  }

  if constexpr (CLUSTER) {
    merge_in_cluster<D, Dt>(s, acc, out, group, chunks);
    return;
  }

  // Publish this chunk's state; the last CTA of the (sequence, KV head) to
  // arrive merges them all.
  const int64_t stride = partial_floats(group, D);
  float* part = prm.partial + (int64_t(b) * hkv + kh) * chunks * stride;
  if (tiles > 0) {
    float* mine = part + chunk * stride;
#pragma unroll
    for (int i = 0; i < kHeadsPerThread; ++i) {
      const int g = head_set + i * kHeadSets;
      if (g < group) mine[g * D + dim] = acc[i];
    }
    if (tid < group) {
      mine[group * D + 2 * tid] = s.m[tid];
      mine[group * D + 2 * tid + 1] = s.l[tid];
    }
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    uint32_t* counter = prm.counters + int64_t(b) * hkv + kh;
    const bool last = atomicAdd(counter, 1u) == static_cast<uint32_t>(chunks - 1);
    if (last) *counter = 0;  // every CTA of this pair has arrived
    s.last = last;
  }
  __syncthreads();
  if (!s.last) return;
  __threadfence();

  // The merge is a chain of L2 round trips, so each step issues all its
  // loads at once: every chunk's (max, sum) into shared memory (the K/V
  // stages are free now), one warp per query head turns them into the
  // chunks' normalized weights, then each thread sums the chunks' float4s
  // of one (head, 4 dims) slice.
  const int active = (len + chunk_len - 1) / chunk_len;
  static_assert(3 * kMaxChunks * kMaxGroup * sizeof(float) <= sizeof(s.kv), "merge scratch fits the K/V stages");
  float* ml = reinterpret_cast<float*>(s.kv);  // [active][group][2]
  float* weight = ml + kMaxChunks * kMaxGroup * 2;  // [group][active]
  for (int i = tid; i < active * group * 2; i += kThreads) {
    const int c = i / (group * 2);
    ml[i] = __ldcg(part + c * stride + group * D + i % (group * 2));
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int g = warp + i * kWarps;
    if (g >= group) continue;
    float mx = -INFINITY;
    for (int c = lane; c < active; c += 32) mx = fmaxf(mx, ml[(c * group + g) * 2]);
    mx = mllm::warp_max(mx);
    float lsum = 0.f;
    for (int c = lane; c < active; c += 32) lsum += ml[(c * group + g) * 2 + 1] * exp2f(ml[(c * group + g) * 2] - mx);
    const float inv = 1.f / mllm::warp_sum(lsum);
    for (int c = lane; c < active; c += 32) weight[g * active + c] = exp2f(ml[(c * group + g) * 2] - mx) * inv;
  }
  __syncthreads();
  for (int slice = tid; slice < group * D / 4; slice += kThreads) {
    const int g = slice / (D / 4), d = slice % (D / 4) * 4;
    const float* w = weight + g * active;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int c = 0; c < active; ++c) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(part + c * stride + g * D + d));
      o.x += w[c] * v.x;
      o.y += w[c] * v.y;
      o.z += w[c] * v.z;
      o.w += w[c] * v.w;
    }
    out[g * D + d] = Dt::from_float(o.x);
    out[g * D + d + 1] = Dt::from_float(o.y);
    out[g * D + d + 2] = Dt::from_float(o.z);
    out[g * D + d + 3] = Dt::from_float(o.w);
  }
}

// How many chunks each (sequence, KV head) is cut into: enough CTAs for two
// per SM (each holds ~80 KiB of shared memory at head dim 128), at most
// kMaxChunks. `max_len` > 0 also caps it at one chunk per kMinChunk tokens;
// CUDA-graph plans pass 0, so the grid depends on the batch size only.
inline cudaError_t choose_chunks(int batch, int num_kv_heads, int max_len, int* chunks) {
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  const int pairs = batch * num_kv_heads;
  int c = (2 * sms + pairs - 1) / pairs;
  if (max_len > 0) c = min(c, (max_len + kMinChunk - 1) / kMinChunk);
  *chunks = max(1, min(c, kMaxChunks));
  return cudaSuccess;
}

// The largest cluster of the cluster form the current device schedules (16
// CTAs where non-portable sizes are allowed, else 8, 4, ..; 1 where none,
// e.g. below SM90). Queried once per device: plans run every decode step.
template <int D, typename T>
int max_cluster_chunks() {
  static std::atomic<int> known[kMaxDevices] = {};  // 0: not asked yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (dev < kMaxDevices && known[dev].load(std::memory_order_relaxed) > 0) return known[dev].load();
  int c = 1;
  if (mllm::device_sm() >= 90) {
    const auto kernel = decode_kernel<D, T, true>;
    const size_t smem = sizeof(Smem<D>);
    bool ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) == cudaSuccess &&
              cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
    for (c = ok ? kMaxClusterChunks : 1; c > 1; c /= 2) {
      const mllm::LaunchConfig l(dim3(unsigned(c), 1, 1), dim3(kThreads), nullptr, false, smem, unsigned(c));
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &l.cfg) == cudaSuccess && clusters > 0) break;
    }
    (void)cudaGetLastError();  // an unsupported size is an answer, not an error to keep
  }
  if (dev < kMaxDevices) known[dev].store(c);
  return c;
}

// The cluster form's chunk count: choose_chunks's, capped at the largest
// cluster the device runs; 0 where that is 1 (no clusters: the caller takes
// the global form).
template <int D, typename T>
cudaError_t choose_cluster_chunks(int batch, int num_kv_heads, int max_len, int* chunks) {
  *chunks = 0;
  const int most = max_cluster_chunks<D, T>();
  if (most <= 1) return cudaSuccess;
  int c = 1;
  const cudaError_t e = choose_chunks(batch, num_kv_heads, max_len, &c);
  if (e == cudaSuccess) *chunks = min(c, most);
  return e;
}

// p.chunks from choose_chunks (global merge) or choose_cluster_chunks
// (`cluster`: the chunks of a (sequence, KV head) form one cluster).
template <int D, typename T>
cudaError_t launch(const Params& p, int batch, bool cluster, cudaStream_t stream) {
  const auto kernel = cluster ? decode_kernel<D, T, true> : decode_kernel<D, T, false>;
  const size_t smem = sizeof(Smem<D>);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e == cudaSuccess && cluster) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (e != cudaSuccess) return e;
  const mllm::LaunchConfig l(dim3(unsigned(p.chunks), unsigned(p.num_kv_heads), unsigned(batch)), dim3(kThreads),
                             stream, mllm::pdl_enabled(), smem, cluster ? unsigned(p.chunks) : 1u);
  return cudaLaunchKernelEx(&l.cfg, kernel, p);
}

}  // namespace mllm::attention::split
