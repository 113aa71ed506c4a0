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
// Fast path (a row with a filter on): (A) one pass over the raw logits
// for the max, NaN/+inf, the finite count and each thread's two largest
// logits; the k-th largest of those is a pivot with at least k tokens at
// or above it, usually few more (top-k: k; top-p alone: 1.5 x threads,
// about the top 2k tokens of a 152k row); min-p alone pivots at
// max + log(min_p) less a margin. (C) one pass compacting the
// tokens at or above the pivot into shared memory (at most kCap) and
// summing the row's softmax. Then, in shared memory: sort by rank, top-k,
// top-p by a prefix scan, min-p, sort the survivors by id and pick by a
// prefix scan. It falls back to the full-row path below when the pivot
// set overflows, or (top-p without top-k) when the nucleus does not fit
// in it, or top-k > 2 x threads, or no filter is on.
//
// Full-row path: (1) max, online softmax sum, min, finite count and
// NaN/+inf check; (2) per active filter, a search for the rank threshold
// over the 64-bit composite key (order_key(x) << 32 | ~id): each probe
// counts the tokens at or above a pivot, sums their exp(x - max), and
// returns the nearest keys on both sides, so the interval snaps to real
// tokens (pivots bisect values first, then keys); (3) the kept mass when
// min-p is on; (4) a block-wide prefix scan in id order up to the token
// where the kept mass crosses u x (kept mass).
//
// Output: ids[b] and, with a non-null `logprob`, log_softmax(x)[id] over
// the whole row (before truncation, vLLM's default). A row holding NaN or
// +inf after scaling, with no finite logit, or with out-of-range params
// (temperature not finite > 0, top_p outside (0, 1], min_p outside [0, 1])
// gets id -1 and logprob NaN: the host reports it, never a silent token.
// Sums are f32 in a fixed order (the two paths round differently, both
// within the tests' margins of the f64 reference), and which path a row
// takes depends only on the row and its params, so a (row, params) pair
// always gives the same token.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"

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

// ---------------------------------------------------------------- full-row path

// What a path drew: a token (or -1 for a bad row), the row max and softmax sum.
struct Drawn {
  int id;
  float m;
  float s;
};

constexpr int kFallback = -2;  // Drawn::id of a fast path that cannot decide the row

template <typename D>
__device__ Drawn sample_full(const Row<D>& row, int vocab, const Params& p) {
  const Summary sum = summarize(row, vocab);
  if (sum.bad || sum.finite == 0) return Drawn{-1, 0.f, 0.f};
  // Below every finite token (a token's low word is ~id > 0), and above all.
  Cut cut{static_cast<u64>(order_key(sum.lo)) << 32, sum.finite, sum.s};
  const u64 top = static_cast<u64>(order_key(sum.m) + 1u) << 32;
  if (p.top_k > 0 && p.top_k < sum.finite) cut = search(row, vocab, sum.m, cut, top, true, p.top_k, 0.f);
  if (p.top_p < 1.f && cut.cnt > 1) cut = search(row, vocab, sum.m, cut, top, false, 0, p.top_p * cut.mass);
  const float mass = p.min_p > 0.f ? kept_mass(row, vocab, sum.m, cut.key, p.min_p) : cut.mass;
  return Drawn{scan_pick(row, vocab, sum.m, cut.key, p.min_p, uniform(p) * mass), sum.m, sum.s};
}

// ---------------------------------------------------------------- fast path

constexpr unsigned int kFull = 0xffffffffu;
constexpr unsigned int kKeyNegInf = 0x007fffffu;  // order_key(-inf)
constexpr unsigned int kKeyPosInf = 0xff800000u;  // order_key(+inf)
constexpr int kNoHit = 0x7fffffff;
// Candidates compacted into shared memory: 32 KB of keys, at most kItems
// per thread of a 1024-thread block (the host gives V > 992 1024 threads,
// and a smaller V at least V threads).
constexpr int kCap = 4096;
constexpr int kItems = 4;

// Pass A over the raw logits.
struct KeyScan {
  unsigned int hi;  // largest order key (a NaN lies above +inf's)
  unsigned int lo;  // smallest (a NaN with the sign bit lies below -inf's)
  int finite;       // keys strictly between -inf's and +inf's
  int dropped;      // finite logits that scale to -inf
  static __device__ __forceinline__ KeyScan identity() { return KeyScan{0u, 0xffffffffu, 0, 0}; }
};

__device__ __forceinline__ KeyScan merge(const KeyScan& a, const KeyScan& b) {
  return KeyScan{a.hi > b.hi ? a.hi : b.hi, a.lo < b.lo ? a.lo : b.lo, a.finite + b.finite, a.dropped + b.dropped};
}

__device__ __forceinline__ KeyScan shfl_xor(const KeyScan& v, int o) {
  return KeyScan{__shfl_xor_sync(kFull, v.hi, o), __shfl_xor_sync(kFull, v.lo, o), __shfl_xor_sync(kFull, v.finite, o),
                 __shfl_xor_sync(kFull, v.dropped, o)};
}

// This thread's exclusive prefix of v (threads in order) and the block's
// total (the last thread's inclusive sum). May be called again at once.
struct Prefix {
  float before;
  float total;
};

__device__ __forceinline__ Prefix block_prefix(float v) {
  __shared__ float warp_sum[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  float incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += y;
  }
  float excl = __shfl_up_sync(kFull, incl, 1);
  if (lane == 0) excl = 0.f;
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  float before = 0.f;
  for (int w = 0; w < warp; ++w) before += warp_sum[w];
  if (threadIdx.x == blockDim.x - 1) total = before + incl;
  __syncthreads();
  return Prefix{before + excl, total};
}

// Sorts a[0, n) in shared memory, n a power of two; the caller has synced
// the writes. Ends with a barrier.
template <typename K, bool kDescending>
__device__ void bitonic_sort(K* a, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int q = threadIdx.x; q < (n >> 1); q += blockDim.x) {
        const int i = 2 * q - (q & (stride - 1));
        const int j = i + stride;
        const bool up = ((i & size) == 0) != kDescending;  // this pair ascending
        const K x = a[i];
        const K y = a[j];
        if (x != y && (x > y) == up) {
          a[i] = y;
          a[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

__device__ __forceinline__ int pow2_at_least(int n) {
  int r = 1;
  while (r < n) r <<= 1;
  return r;
}

// Every raw logit v whose scaled value v / t is >= ps (finite) is >= this:
// ps x t less a margin for both roundings; -inf where that is unsure.
__device__ __forceinline__ float raw_floor(float ps, float t) {
  if (t == 1.f) return ps;
  const float r = ps * t;
  const float lo = r - fabsf(r) * 0x1p-20f - 0x1p-120f;
  return (t < 0x1p29f && fabsf(lo) <= 3.0e38f) ? lo : neg_inf();
}

// Calls f(v[VEC], first index, valid) for every pack of the row, UNROLL
// loads in flight per thread; the calls are warp-uniform (invalid packs at
// the tail), so f may use warp collectives.
template <typename D, int VEC, typename F>
__device__ __forceinline__ void for_each_pack(const typename D::storage* row, int vocab, F& f) {
  using P = mllm::Pack<typename D::storage, VEC>;
  constexpr int UNROLL = 4;
  const P* packs = reinterpret_cast<const P*>(row);
  const int n = vocab / VEC;
  const int threads = blockDim.x;
  for (int base = 0; base < n; base += threads * UNROLL) {
    P x[UNROLL] = {};
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = base + u * threads + threadIdx.x;
      if (p < n) x[u] = packs[p];
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int p = base + u * threads + threadIdx.x;
      float v[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = D::to_float(x[u].v[j]);
      f(v, p * VEC, p < n);
    }
  }
}

// The row through passes A and C and shared memory (see the top), or
// kFallback. `cand` is the block's kCap-key buffer; `want_s`: the caller
// needs the softmax sum (for the logprob).
template <typename D, int VEC>
__device__ Drawn sample_compact(const typename D::storage* x, int vocab, const Params& p, bool want_s, u64* cand) {
  __shared__ int cand_count;
  __shared__ float z_shared;
  const Drawn fallback{kFallback, 0.f, 0.f};
  const float t = p.temperature;
  const bool scaled = t != 1.f;
  const int lane = threadIdx.x & 31;

  // Pass A. A finite logit scales to -inf only when t < 1 and it is below
  // -FLT_MAX x t; the exact division runs for those alone.
  const float neg_lim = t < 1.f ? -1.7e38f * t : neg_inf();
  KeyScan a = KeyScan::identity();
  unsigned int second = 0u;  // this thread's second largest key (a.hi the largest)
  auto pass_a = [&](const float* v, int, bool ok) {
    if (!ok) return;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const unsigned int k = order_key(v[j]);
      const unsigned int below = k < a.hi ? k : a.hi;
      second = below > second ? below : second;
      a.hi = k > a.hi ? k : a.hi;
      a.lo = k < a.lo ? k : a.lo;
      a.finite += (k > kKeyNegInf && k < kKeyPosInf) ? 1 : 0;
      if (v[j] < neg_lim && k > kKeyNegInf && v[j] / t == neg_inf()) ++a.dropped;
    }
  };
  for_each_pack<D, VEC>(x, vocab, pass_a);
  const unsigned int thread_max = a.hi;
  a = block_reduce(a);
  const int finite = a.finite - a.dropped;
  const float m_raw = key_value(a.hi);
  const float m = scaled ? m_raw / t : m_raw;
  if (a.hi >= kKeyPosInf || a.lo < kKeyNegInf || finite == 0 || m == pos_inf()) return Drawn{-1, 0.f, 0.f};

  const bool topk = p.top_k > 0 && p.top_k < finite;
  const bool topp = p.top_p < 1.f;
  const bool minp = p.min_p > 0.f;
  if (!topk && !topp && !minp) return fallback;  // nothing to cut: the full-row path is two passes

  // The pivot: candidates are the finite tokens with key(x) >= key(ps).
  float ps = neg_inf();
  bool covers_minp = minp;  // the candidates hold every token min-p keeps
  if (finite > kCap) {
    if (topk || topp) {
      const int keys = 2 * static_cast<int>(blockDim.x);  // each a distinct token's
      const int kth = topk ? p.top_k : (3 * keys) / 4;
      if (kth > keys) return fallback;
      unsigned int* tkeys = reinterpret_cast<unsigned int*>(cand);
      const int n2 = pow2_at_least(keys);
      tkeys[2 * threadIdx.x] = thread_max;
      tkeys[2 * threadIdx.x + 1] = second;
      for (int i = keys + threadIdx.x; i < n2; i += blockDim.x) tkeys[i] = 0u;
      __syncthreads();
      bitonic_sort<unsigned int, true>(tkeys, n2);
      // kth tokens lie at or above it (scaling keeps the order).
      const unsigned int tk = tkeys[kth - 1];
      if (tk > kKeyNegInf) ps = scaled ? key_value(tk) / t : key_value(tk);
      __syncthreads();  // all have read tkeys before the compaction reuses it
    }
    if (minp) {
      float pm = neg_inf();
      if (!topk && p.min_p >= 1e-30f) {
        // exp(x - m) < min_p below pm, with room for expf/logf/rounding errors.
        const float lm = logf(p.min_p);
        pm = m + lm - (1e-3f + 4e-6f * (fabsf(m) + fabsf(lm)));
        if (!topp || pm > ps) ps = pm;
      }
      covers_minp = ps <= pm;
    }
    if (ps == neg_inf()) return fallback;  // more than kCap candidates
  }

  // Pass C: compact the candidates (warp-aggregated slots) and sum the
  // softmax. The sum's x / t is a reciprocal product with one correction
  // (q + (x - q t) / t): the IEEE quotient but in rare last-ulp cases, so
  // each term is the reference's exp(x / t - m) to a few ulp, without the
  // division's cost (an ulp of x / t matters: scaled logits reach the
  // thousands at tiny temperatures).
  const unsigned int pkey = ps == neg_inf() ? kKeyNegInf + 1u : order_key(ps);
  const float r_lo = raw_floor(ps, t);
  const bool need_s = want_s || (topp && !topk);
  const float inv_t = 1.f / t;
  if (threadIdx.x == 0) cand_count = 0;
  __syncthreads();
  float s_part = 0.f;
  auto pass_c = [&](const float* v, int i0, bool ok) {
    unsigned int bits = 0u;
    if (ok) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (need_s) {
          const float q = v[j] * inv_t;  // +-inf stays (a -inf term is 0)
          s_part += expf((fabsf(q) <= 3.4e38f ? fmaf(fmaf(-q, t, v[j]), inv_t, q) : q) - m);
        }
        if (v[j] >= r_lo) {
          const unsigned int k = order_key(scaled ? v[j] / t : v[j]);
          if (k >= pkey && k > kKeyNegInf && k < kKeyPosInf) bits |= 1u << j;
        }
      }
    }
    if (__any_sync(kFull, bits != 0u)) {
      const int c = __popc(bits);
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += y;
      }
      int base = 0;
      if (lane == 31) base = atomicAdd(&cand_count, incl);
      int slot = __shfl_sync(kFull, base, 31) + incl - c;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (bits & (1u << j)) {
          if (slot < kCap) cand[slot] = composite(scaled ? v[j] / t : v[j], i0 + j);
          ++slot;
        }
      }
    }
  };
  for_each_pack<D, VEC>(x, vocab, pass_c);
  __syncthreads();
  const int nc = cand_count;
  const float s = need_s ? block_reduce(Sum{s_part}).v : 0.f;
  const int n2 = pow2_at_least(nc);
  if (nc > kCap || n2 > kItems * static_cast<int>(blockDim.x) || (topk && nc < p.top_k)) return fallback;

  // Rank order: (x descending, id ascending). Zero pads sort last.
  for (int i = nc + threadIdx.x; i < n2; i += blockDim.x) cand[i] = 0ull;
  __syncthreads();
  bitonic_sort<u64, true>(cand, n2);

  // Thread i owns ranks [kItems i, kItems (i + 1)): weights and prefix mass.
  const int j0 = threadIdx.x * kItems;
  u64 key[kItems];
  float w[kItems];
  float cum[kItems];
  float local = 0.f;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    key[q] = j0 + q < nc ? cand[j0 + q] : 0ull;
    w[q] = j0 + q < nc ? expf(key_value(static_cast<unsigned int>(key[q] >> 32)) - m) : 0.f;
    local += w[q];
  }
  float run = block_prefix(local).before;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    run += w[q];
    cum[q] = run;
  }

  int len = topk ? p.top_k : nc;  // kept so far: the first `len` ranks
  if (topp && (topk ? p.top_k : finite) > 1) {
    float z = s;  // the mass top-p is relative to: the top-k's, else the row's
    if (topk) {
#pragma unroll
      for (int q = 0; q < kItems; ++q)
        if (j0 + q == len - 1) z_shared = cum[q];
      __syncthreads();
      z = z_shared;
    }
    const float target = p.top_p * z;
    int hit = kNoHit;
#pragma unroll
    for (int q = 0; q < kItems; ++q)
      if (hit == kNoHit && j0 + q < len && cum[q] >= target) hit = j0 + q;
    const int first = block_reduce(MinInt{hit}).v;
    if (first != kNoHit) {
      len = first + 1;
    } else if (!topk && !covers_minp && nc < finite) {
      return fallback;  // the nucleus reaches below the candidates
    }
  }

  // Survivors (min-p too) re-keyed by id, in place: each thread rewrites
  // only the ranks it owns, then one sort by id.
  const int n2k = pow2_at_least(len);
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    const int j = j0 + q;
    if (j < n2k) {
      const bool keep = j < len && w[q] >= p.min_p;
      const unsigned int id = 0xffffffffu - static_cast<unsigned int>(key[q]);
      cand[j] = keep ? (static_cast<u64>(id) << 32 | __float_as_uint(w[q])) : ~0ull;
    }
  }
  __syncthreads();
  bitonic_sort<u64, false>(cand, n2k);

  // Inverse CDF in id order, as scan_pick.
  int ids_q[kItems];
  float local2 = 0.f;
  int last = -1;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    const u64 e = j0 + q < n2k ? cand[j0 + q] : ~0ull;
    w[q] = e == ~0ull ? 0.f : __uint_as_float(static_cast<unsigned int>(e));
    ids_q[q] = static_cast<int>(e >> 32);
    local2 += w[q];
    if (w[q] > 0.f) last = ids_q[q];
  }
  const Prefix pre = block_prefix(local2);
  const float target = uniform(p) * pre.total;
  run = pre.before;
  int hit = kNoHit;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    run += w[q];
    if (hit == kNoHit && w[q] > 0.f && run > target) hit = ids_q[q];
  }
  const int found = block_reduce(MinInt{hit}).v;
  return Drawn{found != kNoHit ? found : block_reduce(MaxInt{last}).v, m, s};
}

template <typename D>
__device__ __forceinline__ void sample_row(const typename D::storage* logits, int vocab, const unsigned int* params,
                                           int* ids, float* logprob) {
  __shared__ u64 cand[kCap];  // one buffer for both pack widths' fast paths
  const int b = blockIdx.x;
  const Params p = load_params(params + 8 * b);
  const typename D::storage* x = logits + static_cast<long long>(b) * vocab;
  const Row<D> row{x, p.temperature, p.temperature != 1.f};
  const bool params_ok = p.temperature > 0.f && p.temperature < pos_inf() && p.top_p > 0.f && p.top_p <= 1.f &&
                         p.min_p >= 0.f && p.min_p <= 1.f;  // NaN fails every comparison
  Drawn d{-1, 0.f, 0.f};
  if (params_ok) {
    constexpr int VEC = mllm::PackWidth<typename D::storage>::value;
    d.id = kFallback;
    if (p.top_k > 0 || p.top_p < 1.f || p.min_p > 0.f) {
      d = vocab % VEC == 0 ? sample_compact<D, VEC>(x, vocab, p, logprob != nullptr, cand)
                           : sample_compact<D, 1>(x, vocab, p, logprob != nullptr, cand);
    }
    if (d.id == kFallback) d = sample_full(row, vocab, p);
  }
  if (threadIdx.x == 0) {
    ids[b] = d.id;
    if (logprob != nullptr) logprob[b] = d.id < 0 ? __int_as_float(0x7fc00000) : row.at(d.id) - d.m - logf(d.s);
  }
}

}  // namespace

// Symbols: sample_<dtype>(logits, vocab, params [B, 8] words, ids, logprob
// or null); grid = rows, blockDim a multiple of 32 (<= 1024), 1024 when
// vocab > 992 and at least vocab otherwise.
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
