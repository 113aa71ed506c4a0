// Optional per-head RMSNorm (Qwen3's q_norm / k_norm) then NeoX rotary
// embedding ("rotate halves"), in place on the q and k heads of a packed
// row buffer (e.g. the fused qkv projection output), compiled by NVRTC.
//
// Layout: row t of the buffer starts at qk + t * row_stride; its q heads
// are the q_heads * head_dim elements from column q_col, its k heads the
// k_heads * head_dim elements from column k_col. One warp per (token,
// head), all values in registers. For D = 64, 128, 256 with aligned
// heads, lane l owns the D/64 consecutive rotary pairs (i, i + D/2) from
// i = l * D/64, moved with one vector load per half; any other even
// D <= 256 uses pairs i = l, l + 32, ... with element loads.
//
// cos_sin is [max_pos, D] f32: row p holds cos(p * f_i) for i < D/2, then
// sin(p * f_i) (vLLM's cos_sin_cache layout); scaling schemes (linear,
// llama3, yarn) live in the host-side builder of that cache. Positions are
// i32 and are clamped to [0, max_pos) so a bad position never reads out of
// bounds (callers validate them; a clamped one gives a wrong but finite
// result).
//
// Numerics: the norm follows HF (n = T(x * rsqrt(mean(x^2) + eps)),
// y = T(n * w)); the rotation is computed in f32 from the (normed) element
// values and rounded once, as vLLM/SGLang do.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace {

constexpr int kMaxPairsPerLane = 4;  // D <= 256

// Which rotary pair slot j of this lane holds: with CONTIG, lane l owns
// the E = D/64 consecutive pairs from l * E (one E-element load per half);
// otherwise pairs l, l + 32, ... (any even D <= 256).
template <bool CONTIG, int E>
__device__ __forceinline__ int pair_index(int lane, int j) {
  return CONTIG ? lane * E + j : lane + 32 * j;
}

// The rotation with its roundings spelled out (fmaf, __fmul_rn): left to
// the compiler, contraction may differ between the in-place and the fused
// kernel and flip an output's last bit.
__device__ __forceinline__ float rotate_lo(float a, float b, float c, float s) { return fmaf(a, c, -__fmul_rn(b, s)); }
__device__ __forceinline__ float rotate_hi(float a, float b, float c, float s) { return fmaf(b, c, __fmul_rn(a, s)); }

// One head: optional RMSNorm with w, then the NeoX rotation by the angle
// row cs (cos then sin); reads x, writes y (y == x for in place).
template <typename D, bool CONTIG, int E>
__device__ __forceinline__ void norm_rope_head(const typename D::storage* x, typename D::storage* y,
                                               const float* cs, const typename D::storage* w, int head_dim,
                                               float eps) {
  using P = mllm::Pack<typename D::storage, E>;
  using F = mllm::Pack<float, E>;
  const int lane = threadIdx.x & 31;
  const int half = head_dim / 2;
  // Everything this head reads is requested before any of it is used, so
  // the loads (x, position -> cos/sin, weights) overlap.
  float a[E];
  float b[E];
  F c;
  F sn;
  P wa;
  P wb;
  if (CONTIG) {
    c = *reinterpret_cast<const F*>(cs + lane * E);
    sn = *reinterpret_cast<const F*>(cs + half + lane * E);
    if (w != nullptr) {
      wa = *reinterpret_cast<const P*>(w + lane * E);
      wb = *reinterpret_cast<const P*>(w + half + lane * E);
    }
    const P pa = *reinterpret_cast<const P*>(x + lane * E);
    const P pb = *reinterpret_cast<const P*>(x + half + lane * E);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      a[j] = D::to_float(pa.v[j]);
      b[j] = D::to_float(pb.v[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int i = pair_index<CONTIG, E>(lane, j);
      a[j] = i < half ? D::to_float(x[i]) : 0.f;
      b[j] = i < half ? D::to_float(x[i + half]) : 0.f;
    }
  }
  if (w != nullptr) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < E; ++j) ss = fmaf(b[j], b[j], fmaf(a[j], a[j], ss));
    const float inv = 1.f / sqrtf(mllm::warp_sum(ss) / static_cast<float>(head_dim) + eps);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int i = pair_index<CONTIG, E>(lane, j);
      if (CONTIG || i < half) {
        const float w1 = CONTIG ? D::to_float(wa.v[j]) : D::to_float(w[i]);
        const float w2 = CONTIG ? D::to_float(wb.v[j]) : D::to_float(w[i + half]);
        a[j] = mllm::round_to<D>(mllm::round_to<D>(a[j] * inv) * w1);
        b[j] = mllm::round_to<D>(mllm::round_to<D>(b[j] * inv) * w2);
      }
    }
  }
  if (CONTIG) {
    P oa;
    P ob;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      oa.v[j] = D::from_float(rotate_lo(a[j], b[j], c.v[j], sn.v[j]));
      ob.v[j] = D::from_float(rotate_hi(a[j], b[j], c.v[j], sn.v[j]));
    }
    *reinterpret_cast<P*>(y + lane * E) = oa;
    *reinterpret_cast<P*>(y + half + lane * E) = ob;
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int i = pair_index<CONTIG, E>(lane, j);
      if (i < half) {
        const float c = cs[i];
        const float sn = cs[half + i];
        y[i] = D::from_float(rotate_lo(a[j], b[j], c, sn));
        y[i + half] = D::from_float(rotate_hi(a[j], b[j], c, sn));
      }
    }
  }
}

// The cos/sin row of token t's position, clamped into the cache.
__device__ __forceinline__ const float* rotary_row(const int* pos, long long t, const float* cos_sin, int max_pos,
                                                   int head_dim) {
  int p = pos[t];
  p = p < 0 ? 0 : (p >= max_pos ? max_pos - 1 : p);
  return cos_sin + static_cast<long long>(p) * head_dim;
}

template <typename D, bool CONTIG, int E>
__device__ __forceinline__ void qk_norm_rope_head(typename D::storage* qk, long long row_stride, const int* pos,
                                                  const float* cos_sin, int max_pos,
                                                  const typename D::storage* q_w,
                                                  const typename D::storage* k_w, int tokens, int q_col,
                                                  int q_heads, int k_col, int k_heads, int head_dim, float eps) {
  const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int heads = q_heads + k_heads;
  if (warp >= static_cast<long long>(tokens) * heads) return;  // whole warps leave together
  const long long t = warp / heads;
  const int h = static_cast<int>(warp - t * heads);
  const bool is_q = h < q_heads;
  typename D::storage* x = qk + t * row_stride + (is_q ? q_col + h * head_dim : k_col + (h - q_heads) * head_dim);
  norm_rope_head<D, CONTIG, E>(x, x, rotary_row(pos, t, cos_sin, max_pos, head_dim), is_q ? q_w : k_w, head_dim,
                               eps);
}

// Fused: reads a packed qkv row (q heads, then k, then v), writes the normed
// and rotated q heads to q_out [T, q_heads, D], the k heads to
// k_cache[loc[t]] and copies the v heads to v_cache[loc[t]] (pool rows of
// kv_heads * D). One warp per (token, head) over q_heads + 2 * kv_heads
// heads. A slot outside [0, num_slots) skips that token's K/V writes.
template <typename D, bool CONTIG, int E>
__device__ __forceinline__ void qk_norm_rope_store_head(const typename D::storage* qkv, long long row_stride,
                                                        const int* pos, const float* cos_sin, int max_pos,
                                                        const typename D::storage* q_w,
                                                        const typename D::storage* k_w, int tokens, int q_heads,
                                                        int kv_heads, int head_dim, float eps,
                                                        typename D::storage* q_out, typename D::storage* k_cache,
                                                        typename D::storage* v_cache, const int* loc,
                                                        long long num_slots) {
  using S = typename D::storage;
  const long long warp = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int heads = q_heads + 2 * kv_heads;
  if (warp >= static_cast<long long>(tokens) * heads) return;
  const long long t = warp / heads;
  const int h = static_cast<int>(warp - t * heads);
  const S* x = qkv + t * row_stride + static_cast<long long>(h) * head_dim;
  if (h < q_heads) {
    S* y = q_out + (t * q_heads + h) * head_dim;
    norm_rope_head<D, CONTIG, E>(x, y, rotary_row(pos, t, cos_sin, max_pos, head_dim), q_w, head_dim, eps);
    return;
  }
  const long long slot = loc[t];
  if (slot < 0 || slot >= num_slots) return;
  const int hk = h - q_heads;
  if (hk < kv_heads) {
    S* y = k_cache + (slot * kv_heads + hk) * head_dim;
    norm_rope_head<D, CONTIG, E>(x, y, rotary_row(pos, t, cos_sin, max_pos, head_dim), k_w, head_dim, eps);
    return;
  }
  S* y = v_cache + (slot * kv_heads + hk - kv_heads) * head_dim;
  const int lane = threadIdx.x & 31;
  if (CONTIG) {
    using P = mllm::Pack<S, 2 * E>;  // a lane's D/32 elements
    reinterpret_cast<P*>(y)[lane] = reinterpret_cast<const P*>(x)[lane];
  } else {
    for (int i = lane; i < head_dim; i += 32) y[i] = x[i];
  }
}

// Contiguous per-lane pairs (vector loads) for D = 64, 128, 256 when every
// head start is E-aligned; the strided layout for any other even D.
template <typename D>
__device__ __forceinline__ void qk_norm_rope_dispatch(typename D::storage* qk, long long row_stride, const int* pos,
                                                      const float* cos_sin, int max_pos,
                                                      const typename D::storage* q_w,
                                                      const typename D::storage* k_w, int tokens, int q_col,
                                                      int q_heads, int k_col, int k_heads, int head_dim,
                                                      float eps) {
  const int e = head_dim / 64;
  const bool aligned = head_dim % 64 == 0 && e > 0 && row_stride % e == 0 && q_col % e == 0 && k_col % e == 0;
#define MLLM_ROPE_ARGS qk, row_stride, pos, cos_sin, max_pos, q_w, k_w, tokens, q_col, q_heads, k_col, k_heads, head_dim, eps
  if (aligned && e == 1) {
    qk_norm_rope_head<D, true, 1>(MLLM_ROPE_ARGS);
  } else if (aligned && e == 2) {
    qk_norm_rope_head<D, true, 2>(MLLM_ROPE_ARGS);
  } else if (aligned && e == 4) {
    qk_norm_rope_head<D, true, 4>(MLLM_ROPE_ARGS);
  } else {
    qk_norm_rope_head<D, false, kMaxPairsPerLane>(MLLM_ROPE_ARGS);
  }
#undef MLLM_ROPE_ARGS
}

}  // namespace

// Symbol: qk_norm_rope_<dtype>(qk, row_stride, pos, cos_sin, max_pos, q_w,
// k_w, tokens, q_col, q_heads, k_col, k_heads, head_dim, eps); q_w / k_w
// null skips that norm. Launch one warp per (token, head): blockDim a
// multiple of 32, grid covering tokens * (q_heads + k_heads) warps.
// Symbol: qk_norm_rope_store_<dtype>(qkv, row_stride, pos, cos_sin,
// max_pos, q_w, k_w, tokens, q_heads, kv_heads, head_dim, eps, q_out,
// k_cache, v_cache, loc, num_slots); one warp per (token, head) over
// tokens * (q_heads + 2 * kv_heads) warps.
template <typename D>
__device__ __forceinline__ void qk_norm_rope_store_dispatch(
    const typename D::storage* qkv, long long row_stride, const int* pos, const float* cos_sin, int max_pos,
    const typename D::storage* q_w, const typename D::storage* k_w, int tokens, int q_heads, int kv_heads,
    int head_dim, float eps, typename D::storage* q_out, typename D::storage* k_cache, typename D::storage* v_cache,
    const int* loc, long long num_slots) {
  const int e = head_dim / 64;
  const bool aligned = head_dim % 64 == 0 && e > 0 && row_stride % e == 0;
#define MLLM_ROPE_STORE_ARGS                                                                                   \
  qkv, row_stride, pos, cos_sin, max_pos, q_w, k_w, tokens, q_heads, kv_heads, head_dim, eps, q_out, k_cache, \
      v_cache, loc, num_slots
  if (aligned && e == 1) {
    qk_norm_rope_store_head<D, true, 1>(MLLM_ROPE_STORE_ARGS);
  } else if (aligned && e == 2) {
    qk_norm_rope_store_head<D, true, 2>(MLLM_ROPE_STORE_ARGS);
  } else if (aligned && e == 4) {
    qk_norm_rope_store_head<D, true, 4>(MLLM_ROPE_STORE_ARGS);
  } else {
    qk_norm_rope_store_head<D, false, kMaxPairsPerLane>(MLLM_ROPE_STORE_ARGS);
  }
#undef MLLM_ROPE_STORE_ARGS
}

#define MLLM_QK_NORM_ROPE_KERNEL(SUFFIX, D)                                                                  \
  extern "C" __global__ void qk_norm_rope_##SUFFIX(                                                        \
      D::storage* qk, long long row_stride, const int* pos, const float* cos_sin, int max_pos,             \
      const D::storage* q_w, const D::storage* k_w, int tokens, int q_col, int q_heads, int k_col,         \
      int k_heads, int head_dim, float eps) {                                                              \
    qk_norm_rope_dispatch<D>(qk, row_stride, pos, cos_sin, max_pos, q_w, k_w, tokens, q_col, q_heads, k_col,   \
                         k_heads, head_dim, eps);                                                          \
  }                                                                                                        \
  extern "C" __global__ void qk_norm_rope_store_##SUFFIX(                                                  \
      const D::storage* qkv, long long row_stride, const int* pos, const float* cos_sin, int max_pos,      \
      const D::storage* q_w, const D::storage* k_w, int tokens, int q_heads, int kv_heads, int head_dim,   \
      float eps, D::storage* q_out, D::storage* k_cache, D::storage* v_cache, const int* loc,              \
      long long num_slots) {                                                                               \
    /* Attention may launch once this has waited: its prologue (and the split-KV kernel's K/V */           \
    /* requests for every token but the one stored here) overlaps the rest of this kernel. */              \
    mllm::wait_then_allow_dependents(); /* launched with PDL on SM90+: qkv is the GEMM's output */         \
    qk_norm_rope_store_dispatch<D>(qkv, row_stride, pos, cos_sin, max_pos, q_w, k_w, tokens, q_heads,      \
                                   kv_heads, head_dim, eps, q_out, k_cache, v_cache, loc, num_slots);      \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_QK_NORM_ROPE_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_QK_NORM_ROPE_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_QK_NORM_ROPE_KERNEL(bf16, mllm::BF16)
#endif
