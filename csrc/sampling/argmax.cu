// Greedy sampling and token log-probabilities over logits [B, V], compiled
// by NVRTC. One block per row and one pass over it: each thread keeps the
// best (value, index) it has seen and an online softmax sum
// s = sum exp(x - best), rescaled when best grows; the block then merges
// the threads' triples. 16-byte loads when V is a multiple of a pack.
//
// argmax: the largest logit, ties to the lowest index (as torch.argmax);
// NaN logits are skipped (a row of only NaN gives id 0). With a non-null
// `logprob`, also writes log_softmax(row)[id] = -log(s) (NaN when the row
// holds a NaN: the model output is broken, say so).
// token_logprob: log_softmax(row)[ids[b]] = x[id] - max - log(s) for given
// ids (a sampled token); an id outside [0, V) gets NaN.
//
// The sum is f32 (per-thread sums, then a tree), so it differs from an f64
// reference in the last bits only.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"

namespace {

constexpr int kNone = 0x7fffffff;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// A thread's (or a merged group's) view of part of a row.
struct Best {
  float v;  // largest non-NaN value, -inf if none
  int i;    // its lowest index, kNone if none
  float s;  // sum of exp(x - v) over the part (NaN if it held a NaN)
};

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

// Merges every thread's Best; all threads get the result.
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

template <typename D, int VEC>
__device__ __forceinline__ Best scan_row(const typename D::storage* row, int vocab) {
  using P = mllm::Pack<typename D::storage, VEC>;
  const P* packs = reinterpret_cast<const P*>(row);
  Best b{neg_inf(), kNone, 0.f};
  // One block streams the whole row, so it is latency-bound: UNROLL packs per thread are
  // loaded before any is used (measured on H200, f32 V = 151936: 34 us with one in flight).
  // The kernels' __launch_bounds__(1024) keeps the registers this needs within a 1024-thread
  // block's budget.
  constexpr int UNROLL = 4;
  const int n = vocab / VEC;
  const int stride = blockDim.x;
  for (int p0 = threadIdx.x; p0 < n; p0 += stride * UNROLL) {
    P x[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (p0 + u * stride < n) x[u] = packs[p0 + u * stride];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = p0 + u * stride;
      if (p >= n) break;
#pragma unroll
      for (int j = 0; j < VEC; ++j) push(b, D::to_float(x[u].v[j]), p * VEC + j);
    }
  }
  return block_merge(b);
}

template <typename D>
__device__ __forceinline__ Best scan(const typename D::storage* logits, int vocab) {
  constexpr int VEC = mllm::PackWidth<typename D::storage>::value;
  const typename D::storage* row = logits + static_cast<long long>(blockIdx.x) * vocab;
  return vocab % VEC == 0 ? scan_row<D, VEC>(row, vocab) : scan_row<D, 1>(row, vocab);
}

}  // namespace

// Symbols: argmax_<dtype>(logits, vocab, ids, logprob_or_null) and
// token_logprob_<dtype>(logits, vocab, ids, logprob); grid = rows, blockDim
// a multiple of 32 (<= 1024).
#define MLLM_ARGMAX_KERNELS(SUFFIX, D)                                                                     \
  extern "C" __global__ void __launch_bounds__(1024)                                                       \
      argmax_##SUFFIX(const D::storage* logits, int vocab, int* ids, float* logprob) {                       \
    const Best b = scan<D>(logits, vocab);                                                                 \
    if (threadIdx.x == 0) {                                                                                \
      ids[blockIdx.x] = b.i == kNone ? 0 : b.i;                                                            \
      if (logprob != nullptr) logprob[blockIdx.x] = -logf(b.s);                                            \
    }                                                                                                      \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(1024)                                                       \
      token_logprob_##SUFFIX(const D::storage* logits, int vocab, const int* ids, float* logprob) {          \
    const Best b = scan<D>(logits, vocab);                                                                 \
    if (threadIdx.x == 0) {                                                                                \
      const int id = ids[blockIdx.x];                                                                      \
      const D::storage* row = logits + static_cast<long long>(blockIdx.x) * vocab;                         \
      logprob[blockIdx.x] =                                                                                \
          (id < 0 || id >= vocab) ? __int_as_float(0x7fc00000) : D::to_float(row[id]) - b.v - logf(b.s);   \
    }                                                                                                      \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_ARGMAX_KERNELS(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_ARGMAX_KERNELS(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_ARGMAX_KERNELS(bf16, mllm::BF16)
#endif
