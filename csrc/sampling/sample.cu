// Seeded sampling over logits [B, V] with per-row temperature, top-k, top-p
// and min-p, compiled by NVRTC. One block per row; the row stays in global
// memory (L1/L2) and is read once per pass.
//
// Order (as engine/src/executor/sampler.rs): x = logit / temperature; the
// finite tokens ranked by (x descending, id ascending) — a strict order, so
// ties need no special case; top-k keeps the first k; top-p keeps the
// shortest prefix of those whose mass reaches top_p x (their mass); min-p
// keeps tokens with exp(x - max) >= min_p; one token is drawn from the
// renormalized survivors by inverse CDF in ascending id order with
// u = Philox4x32-10(counter = (offset, 0), key = seed), 24 bits.
//
// Passes: (1) max, online softmax sum, min, finite count and NaN/+inf check;
// (2) per active filter, a search for the rank threshold over the 64-bit
// composite key (order_key(x) << 32 | ~id): each probe counts the tokens at
// or above a pivot, sums their exp(x - max), and returns the nearest keys on
// both sides, so the interval snaps to real tokens (pivots bisect values
// first, then keys); (3) the kept mass when min-p is on; (4) a block-wide
// prefix scan in id order up to the token where the kept mass crosses
// u x (kept mass).
//
// Output: ids[b] and, with a non-null `logprob`, log_softmax(x)[id] over
// the whole row (before truncation, vLLM's default). A row holding NaN or
// +inf after scaling, with no finite logit, or with out-of-range params
// (temperature not finite > 0, top_p outside (0, 1], min_p outside [0, 1])
// gets id -1 and logprob NaN: the host reports it, never a silent token.
// Sums are f32 in a fixed order, so a (row, params) pair always gives the
// same token.
#include "mllm_dtype.cuh"

namespace {

typedef unsigned long long u64;

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// One row's parameters: 8 words, as ops::SampleParams::to_words.
struct Params {
  float temperature;
  int top_k;  // <= 0: off
  float top_p;
  float min_p;
  unsigned int seed_lo, seed_hi, offset_lo, offset_hi;
};

__device__ __forceinline__ Params load_params(const unsigned int* w) {
  Params p;
  p.temperature = __uint_as_float(w[0]);
  p.top_k = static_cast<int>(w[1]);
  p.top_p = __uint_as_float(w[2]);
  p.min_p = __uint_as_float(w[3]);
  p.seed_lo = w[4];
  p.seed_hi = w[5];
  p.offset_lo = w[6];
  p.offset_hi = w[7];
  return p;
}

// Philox4x32-10 (Salmon et al., SC'11; as Random123 and curand).
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const unsigned int lo0 = 0xD2511F53u * c[0], hi0 = __umulhi(0xD2511F53u, c[0]);
    const unsigned int lo1 = 0xCD9E8D57u * c[2], hi1 = __umulhi(0xCD9E8D57u, c[2]);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// u in [0, 1) with 24 random bits (exact in f32).
__device__ __forceinline__ float uniform(const Params& p) {
  unsigned int c[4] = {p.offset_lo, p.offset_hi, 0u, 0u};
  philox4x32_10(c, p.seed_lo, p.seed_hi);
  return static_cast<float>(c[0] >> 8) * 5.9604644775390625e-8f;  // 2^-24
}

// Monotone map of non-NaN floats to u32 (-0 < +0, as Rust's total_cmp).
__device__ __forceinline__ unsigned int order_key(float x) {
  const unsigned int b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned int k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// Rank key: larger is better; equal x ranks the lower id higher.
__device__ __forceinline__ u64 composite(float x, int id) {
  return (static_cast<u64>(order_key(x)) << 32) | (0xffffffffu - static_cast<unsigned int>(id));
}

template <typename D>
struct Row {
  const typename D::storage* p;
  float temperature;
  bool scaled;
  __device__ __forceinline__ float at(int i) const {
    const float x = D::to_float(p[i]);
    return scaled ? x / temperature : x;  // IEEE division, as the CPU sampler's `l /= t`
  }
};

// ---------------------------------------------------------------- reductions

// Pass-1 view of (part of) a row.
struct Summary {
  float m;     // max finite x, -inf if none
  float s;     // sum exp(x - m) over finite x
  float lo;    // min finite x, +inf if none
  int finite;  // finite tokens
  int bad;     // a NaN or +inf was seen
  static __device__ __forceinline__ Summary identity() { return Summary{neg_inf(), 0.f, pos_inf(), 0, 0}; }
};

__device__ __forceinline__ float rescale(float from, float to) { return from == to ? 1.f : expf(from - to); }

__device__ __forceinline__ Summary merge(const Summary& a, const Summary& b) {
  const float m = fmaxf(a.m, b.m);
  return Summary{m, a.s * rescale(a.m, m) + b.s * rescale(b.m, m), fminf(a.lo, b.lo), a.finite + b.finite,
                 a.bad | b.bad};
}

__device__ __forceinline__ Summary shfl_xor(const Summary& v, int o) {
  return Summary{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o),
                 __shfl_xor_sync(0xffffffffu, v.lo, o), __shfl_xor_sync(0xffffffffu, v.finite, o),
                 __shfl_xor_sync(0xffffffffu, v.bad, o)};
}

// Tokens at or above a pivot.
struct Probe {
  int cnt;     // how many
  float mass;  // sum exp(x - max)
  u64 above;   // smallest key >= pivot (~0 if none)
  u64 below;   // largest key < pivot (0 if none)
  static __device__ __forceinline__ Probe identity() { return Probe{0, 0.f, ~0ull, 0ull}; }
};

__device__ __forceinline__ Probe merge(const Probe& a, const Probe& b) {
  return Probe{a.cnt + b.cnt, a.mass + b.mass, a.above < b.above ? a.above : b.above,
               a.below > b.below ? a.below : b.below};
}

__device__ __forceinline__ Probe shfl_xor(const Probe& v, int o) {
  return Probe{__shfl_xor_sync(0xffffffffu, v.cnt, o), __shfl_xor_sync(0xffffffffu, v.mass, o),
               __shfl_xor_sync(0xffffffffu, v.above, o), __shfl_xor_sync(0xffffffffu, v.below, o)};
}

struct MinInt {
  int v;
  static __device__ __forceinline__ MinInt identity() { return MinInt{0x7fffffff}; }
};
__device__ __forceinline__ MinInt merge(const MinInt& a, const MinInt& b) { return MinInt{a.v < b.v ? a.v : b.v}; }
__device__ __forceinline__ MinInt shfl_xor(const MinInt& v, int o) {
  return MinInt{__shfl_xor_sync(0xffffffffu, v.v, o)};
}

struct MaxInt {
  int v;
  static __device__ __forceinline__ MaxInt identity() { return MaxInt{-1}; }
};
__device__ __forceinline__ MaxInt merge(const MaxInt& a, const MaxInt& b) { return MaxInt{a.v > b.v ? a.v : b.v}; }
__device__ __forceinline__ MaxInt shfl_xor(const MaxInt& v, int o) {
  return MaxInt{__shfl_xor_sync(0xffffffffu, v.v, o)};
}

struct Sum {
  float v;
  static __device__ __forceinline__ Sum identity() { return Sum{0.f}; }
};
__device__ __forceinline__ Sum merge(const Sum& a, const Sum& b) { return Sum{a.v + b.v}; }
__device__ __forceinline__ Sum shfl_xor(const Sum& v, int o) { return Sum{__shfl_xor_sync(0xffffffffu, v.v, o)}; }

template <typename T>
__device__ __forceinline__ T warp_reduce(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_xor(v, o));
  return v;
}

// Reduces over the block (blockDim.x a multiple of 32). Thread 0's result
// is broadcast, so every thread holds the same bits even where the compiler
// fuses a merge into an FMA (which breaks its symmetry across lanes) and
// control flow on it stays uniform. May be called again at once: the next
// call writes part[] and result only after barriers every reader passed.
template <typename T>
__device__ __forceinline__ T block_reduce(T v) {
  __shared__ T part[32];
  __shared__ T result;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < static_cast<int>(blockDim.x >> 5) ? part[lane] : T::identity());
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

// ---------------------------------------------------------------- passes

template <typename D>
__device__ Summary summarize(const Row<D>& row, int vocab) {
  Summary t = Summary::identity();
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = row.at(i);
    if (x != x || x == pos_inf()) {
      t.bad = 1;
    } else if (x != neg_inf()) {
      ++t.finite;
      t.lo = fminf(t.lo, x);
      if (x > t.m) {
        t.s = t.s * rescale(t.m, x) + 1.f;
        t.m = x;
      } else {
        t.s += expf(x - t.m);
      }
    }
  }
  return block_reduce(t);
}

template <typename D>
__device__ Probe probe(const Row<D>& row, int vocab, float m, u64 pivot) {
  Probe t = Probe::identity();
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = row.at(i);
    if (x == neg_inf()) continue;
    const u64 c = composite(x, i);
    if (c >= pivot) {
      ++t.cnt;
      t.mass += expf(x - m);
      t.above = c < t.above ? c : t.above;
    } else {
      t.below = c > t.below ? c : t.below;
    }
  }
  return block_reduce(t);
}

// The kept set so far: tokens with key >= `key`, `cnt` of them, of mass `mass`.
struct Cut {
  u64 key;
  int cnt;
  float mass;
};

// Pivots bisect values (logits are spread evenly, keys are not) for this
// many probes, then keys, so a search takes at most ~100 probes.
constexpr int kValueProbes = 24;

// A key strictly inside (lo, hi), with hi - lo >= 2.
__device__ __forceinline__ u64 pivot(u64 lo, u64 hi, int probe_no) {
  const unsigned int klo = static_cast<unsigned int>(lo >> 32);
  const unsigned int khi = static_cast<unsigned int>((hi - 1) >> 32);
  if (khi - klo >= 2) {
    unsigned int k = klo + (khi - klo) / 2;
    if (probe_no < kValueProbes) {
      const unsigned int kv = order_key(0.5f * key_value(klo) + 0.5f * key_value(khi));
      if (kv > klo && kv < khi) k = kv;
    }
    return static_cast<u64>(k) << 32;
  }
  return lo + (hi - lo) / 2;  // within one value: bisect the ids
}

// The largest key t in [lo.key, hi) with keep(t), where keep holds at
// lo.key and fails at hi: by_count keeps while cnt >= k, else while
// mass >= target. Uniform across the block.
template <typename D>
__device__ Cut search(const Row<D>& row, int vocab, float m, Cut lo, u64 hi, bool by_count, int k, float target) {
  for (int n = 0; hi - lo.key > 1; ++n) {
    const Probe p = probe(row, vocab, m, pivot(lo.key, hi, n));
    if (by_count ? p.cnt >= k : p.mass >= target) {
      lo = Cut{p.above, p.cnt, p.mass};  // no token between the pivot and `above`
    } else {
      // No token between `below` and the pivot. (Below lo.key only when
      // lo's mass, the online sum, rounds above the same set's probe sum.)
      hi = p.below >= lo.key ? p.below + 1 : lo.key + 1;
    }
  }
  return lo;
}

__device__ __forceinline__ bool kept(float x, int i, float m, u64 cut, float min_p, float* w) {
  if (x == neg_inf() || composite(x, i) < cut) return false;
  *w = expf(x - m);
  return *w >= min_p;
}

template <typename D>
__device__ float kept_mass(const Row<D>& row, int vocab, float m, u64 cut, float min_p) {
  float s = 0.f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float w;
    if (kept(row.at(i), i, m, cut, min_p, &w)) s += w;
  }
  return block_reduce(Sum{s}).v;
}

// The first token in id order where the running kept mass exceeds `target`
// (or, if rounding never gets there, the last kept token of non-zero mass).
template <typename D>
__device__ int scan_pick(const Row<D>& row, int vocab, float m, u64 cut, float min_p, float target) {
  constexpr int kItems = 4;
  __shared__ float warp_total[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  float carry = 0.f;
  int last = -1;
  for (int base = 0; base < vocab; base += blockDim.x * kItems) {
    const int first = base + threadIdx.x * kItems;
    float w[kItems];
    float local = 0.f;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      w[j] = 0.f;
      const int i = first + j;
      if (i < vocab && kept(row.at(i), i, m, cut, min_p, &w[j]) && w[j] > 0.f) last = i;
      else w[j] = 0.f;
      local += w[j];
    }
    float incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    float run = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    float before = carry, total = carry;
    for (int v = 0; v < warps; ++v) {
      if (v < warp) before += warp_total[v];
      total += warp_total[v];
    }
    run = lane == 0 ? before : before + run;
    int hit = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      run += w[j];
      if (hit == 0x7fffffff && w[j] > 0.f && run > target) hit = first + j;
    }
    const int found = block_reduce(MinInt{hit}).v;  // its barriers also free warp_total
    if (found != 0x7fffffff) return found;
    carry = total;
  }
  return block_reduce(MaxInt{last}).v;
}

template <typename D>
__device__ __forceinline__ void sample_row(const typename D::storage* logits, int vocab, const unsigned int* params,
                                           int* ids, float* logprob) {
  const int b = blockIdx.x;
  const Params p = load_params(params + 8 * b);
  const Row<D> row{logits + static_cast<long long>(b) * vocab, p.temperature, p.temperature != 1.f};
  const bool params_ok = p.temperature > 0.f && p.temperature < pos_inf() && p.top_p > 0.f && p.top_p <= 1.f &&
                         p.min_p >= 0.f && p.min_p <= 1.f;  // NaN fails every comparison
  if (!params_ok) {
    if (threadIdx.x == 0) {
      ids[b] = -1;
      if (logprob != nullptr) logprob[b] = __int_as_float(0x7fc00000);
    }
    return;
  }
  const Summary sum = summarize(row, vocab);
  if (sum.bad || sum.finite == 0) {
    if (threadIdx.x == 0) {
      ids[b] = -1;
      if (logprob != nullptr) logprob[b] = __int_as_float(0x7fc00000);
    }
    return;
  }
  // Below every finite token (a token's low word is ~id > 0), and above all.
  Cut cut{static_cast<u64>(order_key(sum.lo)) << 32, sum.finite, sum.s};
  const u64 top = static_cast<u64>(order_key(sum.m) + 1u) << 32;
  if (p.top_k > 0 && p.top_k < sum.finite) cut = search(row, vocab, sum.m, cut, top, true, p.top_k, 0.f);
  if (p.top_p < 1.f && cut.cnt > 1) cut = search(row, vocab, sum.m, cut, top, false, 0, p.top_p * cut.mass);
  const float mass = p.min_p > 0.f ? kept_mass(row, vocab, sum.m, cut.key, p.min_p) : cut.mass;
  const int id = scan_pick(row, vocab, sum.m, cut.key, p.min_p, uniform(p) * mass);
  if (threadIdx.x == 0) {
    ids[b] = id;
    if (logprob != nullptr) logprob[b] = row.at(id) - sum.m - logf(sum.s);
  }
}

}  // namespace

// Symbols: sample_<dtype>(logits, vocab, params [B, 8] words, ids, logprob
// or null); grid = rows, blockDim a multiple of 32 (<= 1024).
#define MLLM_SAMPLE_KERNEL(SUFFIX, D)                                                                \
  extern "C" __global__ void __launch_bounds__(1024)                                                 \
      sample_##SUFFIX(const D::storage* logits, int vocab, const unsigned int* params, int* ids,    \
                      float* logprob) {                                                              \
    sample_row<D>(logits, vocab, params, ids, logprob);                                              \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_SAMPLE_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_SAMPLE_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_SAMPLE_KERNEL(bf16, mllm::BF16)
#endif
