// Greedy sampling and token log-probabilities over logits [B, V], compiled
// by NVRTC. grid = (rows, chunks): each block streams one chunk of a row,
// keeping per thread the best (value, index) seen and an online softmax sum
// s = sum exp(x - best), rescaled when best grows, then merges its threads'
// triples. With one chunk per row that block writes the result; else it
// leaves its triple in device scratch and the row's last block to arrive
// merges them all (one launch; a lone block per row is latency-bound on one
// SM). 16-byte loads when V is a multiple of a pack.
//
// argmax: the largest logit, ties to the lowest index (as torch.argmax);
// NaN logits are skipped (a row of only NaN gives id 0). With a non-null
// `logprob`, also writes log_softmax(row)[id] = -log(s) (NaN when the row
// holds a NaN, or holds no value above -inf: the model output is broken,
// say so).
// token_logprob: log_softmax(row)[ids[b]] = x[id] - max - log(s) for given
// ids (a sampled token); an id outside [0, V) gets NaN.
//
// The sum is f32 (per-thread sums, a tree per block, then the chunks in
// index order), so it differs from an f64 reference in the last bits only;
// the same shape always sums in the same order.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"

namespace {

constexpr int kNone = 0x7fffffff;

// Scratch for split rows. The host (ops::sampling::argmax_grid) splits a
// row only while rows <= kMaxSplitRows and rows x chunks <= kMaxPartials.
// Module globals: allocated once at load, at fixed addresses (CUDA-graph
// safe); each row's counter is back to 0 when a launch ends. Launches of
// one module must not overlap (a Gpu runs all ops on one stream).
constexpr int kMaxSplitRows = 512;
constexpr int kMaxPartials = 1024;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// A thread's (or a merged group's) view of part of a row.
struct Best {
  float v;  // largest non-NaN value, -inf if none
  int i;    // its lowest index, kNone if none
  float s;  // sum of exp(x - v) over the part (NaN if it held a NaN)
};

__device__ Best g_partials[kMaxPartials];
__device__ unsigned int g_arrivals[kMaxSplitRows];

// exp(from - to) for to >= from, with exp(-inf - -inf) = 1.
__device__ __forceinline__ float rescale(float from, float to) { return from == to ? 1.f : expf(from - to); }

__device__ __forceinline__ void push(Best& b, float x, int i) {
  if (x > b.v) {
    b.s = b.s * rescale(b.v, x) + 1.f;
    b.v = x;
    b.i = i;
  } else if (!(x == neg_inf())) {
    b.s += expf(x - b.v);  // NaN x makes s NaN
  }
}

__device__ __forceinline__ Best merge(const Best& a, const Best& b) {
  const bool b_wins = b.v > a.v || (b.v == a.v && b.i < a.i);
  const float m = b_wins ? b.v : a.v;
  Best r;
  r.v = m;
  r.i = b_wins ? b.i : a.i;
  r.s = a.s * rescale(a.v, m) + b.s * rescale(b.v, m);
  return r;
}

__device__ __forceinline__ Best warp_merge(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other;
    other.v = __shfl_xor_sync(0xffffffffu, b.v, o);
    other.i = __shfl_xor_sync(0xffffffffu, b.i, o);
    other.s = __shfl_xor_sync(0xffffffffu, b.s, o);
    b = merge(b, other);
  }
  return b;
}

// Merges every thread's Best; all threads get the result. A second call
// needs a barrier after the first (both use sv/si/ss).
__device__ __forceinline__ Best block_merge(Best b) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float ss[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  b = warp_merge(b);
  if (lane == 0) {
    sv[warp] = b.v;
    si[warp] = b.i;
    ss[warp] = b.s;
  }
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  b.v = lane < warps ? sv[lane] : neg_inf();
  b.i = lane < warps ? si[lane] : kNone;
  b.s = lane < warps ? ss[lane] : 0.f;
  return warp_merge(b);
}

// Elements [begin, end) of a row, both multiples of VEC, each times `scale`.
template <typename D, int VEC>
__device__ __forceinline__ Best scan_range(const typename D::storage* row, int begin, int end, float scale) {
  using P = mllm::Pack<typename D::storage, VEC>;
  const P* packs = reinterpret_cast<const P*>(row);
  Best b{neg_inf(), kNone, 0.f};
  // UNROLL packs per thread are loaded before any is used (a block that
  // streams a long row is latency-bound; measured on H200, f32 V = 151936
  // in one block: 34 us with one in flight, 28 with four).
  constexpr int UNROLL = 4;
  const int first = begin / VEC;
  const int n = end / VEC;
  const int stride = blockDim.x;
  for (int p0 = first + threadIdx.x; p0 < n; p0 += stride * UNROLL) {
    P x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (p0 + u * stride < n) x[u] = packs[p0 + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * stride;
      if (p >= n) break;
#pragma unroll
      for (int j = 0; j < VEC; ++j) push(b, D::to_float(x[u].v[j]) * scale, p * VEC + j);
    }
  }
  return block_merge(b);
}

__device__ __forceinline__ Best load_partial(const Best* p) {
  Best b;  // L2 loads: L1 is not coherent with the other blocks' stores
  b.v = __ldcg(&p->v);
  b.i = __ldcg(&p->i);
  b.s = __ldcg(&p->s);
  return b;
}

// The whole row's Best, in every thread of the block that completes the
// row (returns true there; false in the other blocks of a split row).
// Row blockIdx.x, chunk blockIdx.y of gridDim.y, `chunk` elements each.
template <typename D>
__device__ __forceinline__ bool row_best(const typename D::storage* logits, int vocab, int chunk, Best* out) {
  constexpr int VEC = mllm::PackWidth<typename D::storage>::value;
  const int row = blockIdx.x;
  const int c = blockIdx.y;
  const int chunks = gridDim.y;
  const typename D::storage* x = logits + static_cast<long long>(row) * vocab;
  const int begin = c * chunk;
  const int end = static_cast<int>(min(static_cast<long long>(vocab), static_cast<long long>(begin) + chunk));
  Best b = (vocab % VEC == 0 && chunk % VEC == 0) ? scan_range<D, VEC>(x, begin, end, 1.f)
                                                  : scan_range<D, 1>(x, begin, end, 1.f);
  if (chunks == 1) {
    *out = b;
    return true;
  }
  if (gridDim.x > kMaxSplitRows || gridDim.x * chunks > kMaxPartials) __trap();  // a host planning bug: be loud
  __shared__ int last;
  if (threadIdx.x == 0) {
    g_partials[row * chunks + c] = b;
    __threadfence();  // the partial is visible before the arrival counts
    last = atomicAdd(&g_arrivals[row], 1u) == static_cast<unsigned int>(chunks - 1);
    if (last) __threadfence();  // and every counted partial before we read them
  }
  __syncthreads();  // also ends block_merge's reads of its shared arrays
  if (!last) return false;
  Best m{neg_inf(), kNone, 0.f};
  for (int k = threadIdx.x; k < chunks; k += blockDim.x) m = merge(m, load_partial(&g_partials[row * chunks + k]));
  *out = block_merge(m);
  if (threadIdx.x == 0) g_arrivals[row] = 0;  // ready for the next launch
  return true;
}

// One candidate of a top-n round: value (scaled), index; kNone if none.
struct Pick {
  float v;
  int i;
};

// Whether (x, i) comes before `b` in (value desc, index asc) order.
__device__ __forceinline__ bool before(float x, int i, const Pick& b) {
  return b.i == kNone || x > b.v || (x == b.v && i < b.i);
}

// Merges every thread's Pick; all threads get the result. Callers put a
// barrier between two calls (shared arrays).
__device__ __forceinline__ Pick block_pick(Pick p) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  auto warp_pick = [](Pick q) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, q.v, o);
      const int i = __shfl_xor_sync(0xffffffffu, q.i, o);
      if (i != kNone && before(v, i, q)) q = Pick{v, i};
    }
    return q;
  };
  p = warp_pick(p);
  if (lane == 0) {
    sv[warp] = p.v;
    si[warp] = p.i;
  }
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  p = lane < warps ? Pick{sv[lane], si[lane]} : Pick{neg_inf(), kNone};
  return warp_pick(p);
}

// The best element of `row` strictly after `prev` in (value desc, index
// asc) order, values scaled by `scale`; NaN skipped, -inf kept (so a row
// with few finite values still yields n picks, as the host sampler's).
template <typename D>
__device__ __forceinline__ Pick next_pick(const typename D::storage* row, int vocab, float scale, Pick prev) {
  Pick b{neg_inf(), kNone};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = D::to_float(row[i]) * scale;
    const bool after = prev.i == kNone || x < prev.v || (x == prev.v && i > prev.i);
    if (after && x == x && before(x, i, b)) b = Pick{x, i};  // x == x: not NaN
  }
  return block_pick(b);
}

}  // namespace

// top_logprobs_<dtype>(logits, vocab, scale_or_null, n, ids, logprobs):
// grid = rows, one block per row (blockDim a multiple of 32, <= 1024). The
// n best elements of the row scaled by scale[row] (1 / temperature; 1 when
// null), most likely first with ties to the lowest index, and their
// log_softmax over the scaled row: ids [rows, n] i32, logprobs [rows, n]
// f32. Round r picks the best element after round r - 1's pick, so nothing
// is picked twice and no candidate list is kept. A row of only NaN gives
// ids -1 and NaN logprobs; a NaN anywhere makes the logprobs NaN (as
// argmax's).
#define MLLM_TOP_LOGPROBS_KERNEL(SUFFIX, D)                                                                \
  extern "C" __global__ void __launch_bounds__(1024)                                                       \
      top_logprobs_##SUFFIX(const D::storage* logits, int vocab, const float* scale, int n, int* ids,      \
                            float* logprobs) {                                                             \
    const D::storage* row = logits + static_cast<long long>(blockIdx.x) * vocab;                           \
    const float k = scale == nullptr ? 1.f : scale[blockIdx.x];                                            \
    /* log-sum-exp of the scaled row: max v and sum of exp(x - v) */                                       \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                \
    const Best b = vocab % VEC == 0 ? scan_range<D, VEC>(row, 0, vocab, k)                                 \
                                    : scan_range<D, 1>(row, 0, vocab, k);                                  \
    const float lse = b.i == kNone ? __int_as_float(0x7fc00000) : b.v + logf(b.s);                         \
    Pick prev{neg_inf(), kNone};                                                                           \
    for (int r = 0; r < n; ++r) {                                                                          \
      __syncthreads(); /* the previous reduction's shared arrays are read */                               \
      const Pick p = next_pick<D>(row, vocab, k, prev);                                                    \
      if (p.i == kNone) { /* only NaN left: this and the later slots get -1 / NaN */                       \
        for (int q = r + threadIdx.x; q < n; q += blockDim.x) {                                            \
          ids[blockIdx.x * n + q] = -1;                                                                    \
          logprobs[blockIdx.x * n + q] = __int_as_float(0x7fc00000);                                       \
        }                                                                                                  \
        break;                                                                                             \
      }                                                                                                    \
      if (threadIdx.x == 0) {                                                                              \
        ids[blockIdx.x * n + r] = p.i;                                                                     \
        logprobs[blockIdx.x * n + r] = p.v - lse;                                                          \
      }                                                                                                    \
      prev = p;                                                                                            \
    }                                                                                                      \
  }

// Symbols: argmax_<dtype>(logits, vocab, chunk, ids, logprob_or_null) and
// token_logprob_<dtype>(logits, vocab, chunk, ids, logprob); grid = (rows,
// chunks = ceil(vocab / chunk)), blockDim a multiple of 32 (<= 256).
#define MLLM_ARGMAX_KERNELS(SUFFIX, D)                                                                     \
  extern "C" __global__ void __launch_bounds__(256)                                                        \
      argmax_##SUFFIX(const D::storage* logits, int vocab, int chunk, int* ids, float* logprob) {           \
    Best b;                                                                                                \
    if (row_best<D>(logits, vocab, chunk, &b) && threadIdx.x == 0) {                                       \
      ids[blockIdx.x] = b.i == kNone ? 0 : b.i;                                                            \
      if (logprob != nullptr) logprob[blockIdx.x] = b.i == kNone ? __int_as_float(0x7fc00000) : -logf(b.s); \
    }                                                                                                      \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                                        \
      token_logprob_##SUFFIX(const D::storage* logits, int vocab, int chunk, const int* ids, float* logprob) { \
    Best b;                                                                                                \
    if (row_best<D>(logits, vocab, chunk, &b) && threadIdx.x == 0) {                                       \
      const int id = ids[blockIdx.x];                                                                      \
      const D::storage* row = logits + static_cast<long long>(blockIdx.x) * vocab;                         \
      logprob[blockIdx.x] =                                                                                \
          (id < 0 || id >= vocab) ? __int_as_float(0x7fc00000) : D::to_float(row[id]) - b.v - logf(b.s);   \
    }                                                                                                      \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_ARGMAX_KERNELS(f32, mllm::F32)
MLLM_TOP_LOGPROBS_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_ARGMAX_KERNELS(f16, mllm::F16)
MLLM_TOP_LOGPROBS_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_ARGMAX_KERNELS(bf16, mllm::BF16)
MLLM_TOP_LOGPROBS_KERNEL(bf16, mllm::BF16)
#endif
