// RMSNorm and fused residual-add + RMSNorm, compiled by NVRTC.
//
// One block per row, CACHED (= 2) 16-byte packs per thread held in
// registers, so each byte is read once and written once. Rows and outputs
// are touched once, so they load and store with the streaming (evict-first)
// cache hint; the weight stays cached.
//
// Two forms. The resident form (the whole row in registers, exactly CACHED
// packs per thread) fetches the weight together with x and is capped at 40
// registers, so six 256-thread blocks fit an SM. The wide form takes any row:
// packs past the cached ones, and rows whose length is not a multiple of 16
// bytes (1-element packs), are re-read for the write, and the weight is read
// after the reduction.
//
// Measured on H200 at hidden 4096 bf16, as % of a D2D copy of the same
// bytes (1024 / 2048 / 4096 / 8192 rows): the wide form (the weight's L2
// latency on every block's critical path) 78 / 85 / 88 / 90; the weight read
// with x at six 256-thread blocks per SM 91 / 96 / 98 / 99.5; at eight (32
// registers, spilling) 97 / 93 / 93 / 93. Earlier: 128
// threads x 4 packs 70-81%, 64 x 8 55-67%, a warp per row 61-82%; the
// streaming hints add 2-3 points. A persistent grid prefetching each block's
// next row (cp.async into shared memory, or registers) reached 87-99% but
// no more than the resident form.
//
// Numerics follow HF transformers: the residual sum is rounded to the
// element type before normalizing, x * rsqrt(mean(x^2) + eps) is rounded to
// the element type, then multiplied by the weight and rounded again.
#include "mllm_dtype.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace {

using mllm::Pack;

// Loads and stores of data touched once: 16-byte packs use the streaming
// cache hint (ld.global.cs / st.global.cs), 1-element packs plain accesses.
template <typename P>
__device__ __forceinline__ P load_once(const P* p) {
  if constexpr (sizeof(P) == 16) {
    const int4 v = __ldcs(reinterpret_cast<const int4*>(p));
    return *reinterpret_cast<const P*>(&v);
  } else {
    return *p;
  }
}

template <typename P>
__device__ __forceinline__ void store_once(P* p, const P& v) {
  if constexpr (sizeof(P) == 16) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&v));
  } else {
    *p = v;
  }
}

// The packs of one row this thread holds (and its residual packs when fused).
template <typename S, int VEC, int CACHED, bool ADD>
struct RowRegs {
  Pack<S, VEC> x[CACHED];
  Pack<S, VEC> r[ADD ? CACHED : 1];
};

template <typename S, int VEC, int CACHED, bool ADD, bool RESIDENT>
__device__ __forceinline__ void load_row(RowRegs<S, VEC, CACHED, ADD>& regs, const S* x, const S* residual,
                                         long long row, int cols) {
  using P = Pack<S, VEC>;
  const int packs = cols / VEC;
  const P* xr = reinterpret_cast<const P*>(x + row * cols);
  const P* rr = reinterpret_cast<const P*>(residual + row * cols);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (RESIDENT || i < packs) {
      regs.x[k] = load_once(xr + i);
      if (ADD) regs.r[k] = load_once(rr + i);
    }
  }
}

template <typename D, int VEC, bool ADD>
__device__ __forceinline__ float add_and_square(Pack<typename D::storage, VEC>& p,
                                                const Pack<typename D::storage, VEC>& r) {
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (ADD) p.v[j] = D::from_float(D::to_float(p.v[j]) + D::to_float(r.v[j]));
    const float f = D::to_float(p.v[j]);
    acc += f * f;
  }
  return acc;
}

template <typename D, int VEC>
__device__ __forceinline__ Pack<typename D::storage, VEC> scale(const Pack<typename D::storage, VEC>& p,
                                                               const Pack<typename D::storage, VEC>& w, float inv) {
  Pack<typename D::storage, VEC> o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float n = mllm::round_to<D>(D::to_float(p.v[j]) * inv);
    o.v[j] = D::from_float(n * D::to_float(w.v[j]));
  }
  return o;
}

// Normalizes one row whose first CACHED packs per thread are already in
// `regs`. RESIDENT: that is the whole row and `wk` holds the matching weight
// packs; otherwise the rest of the row is streamed and the weight read after
// the reduction.
template <typename D, bool ADD, bool RESIDENT, int VEC, int CACHED>
__device__ __forceinline__ void rms_norm_one_row(RowRegs<typename D::storage, VEC, CACHED, ADD>& regs,
                                                 const Pack<typename D::storage, VEC> (&wk)[CACHED],
                                                 typename D::storage* out,  // may alias x (fused form)
                                                 const typename D::storage* x, typename D::storage* residual,
                                                 const typename D::storage* __restrict__ w, long long row,
                                                 int cols, float eps) {
  using P = Pack<typename D::storage, VEC>;
  const int packs = cols / VEC;
  const P* wp = reinterpret_cast<const P*>(w);
  const P* xr = reinterpret_cast<const P*>(x + row * cols);
  P* rr = reinterpret_cast<P*>(residual + row * cols);
  P* orow = reinterpret_cast<P*>(out + row * cols);
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (RESIDENT || i < packs) {
      acc += add_and_square<D, VEC, ADD>(regs.x[k], regs.r[ADD ? k : 0]);
      if (ADD) store_once(rr + i, regs.x[k]);
    }
  }
  if (!RESIDENT) {
    for (int i = threadIdx.x + CACHED * blockDim.x; i < packs; i += blockDim.x) {
      P p = xr[i];
      acc += add_and_square<D, VEC, ADD>(p, ADD ? rr[i] : p);
      if (ADD) rr[i] = p;
    }
  }
  const float inv = 1.f / sqrtf(mllm::block_sum(acc) / static_cast<float>(cols) + eps);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (RESIDENT || i < packs) store_once(orow + i, scale<D, VEC>(regs.x[k], RESIDENT ? wk[k] : wp[i], inv));
  }
  if (!RESIDENT) {
    // Uncached packs are re-read (from the residual when fused: this thread
    // wrote those, so it sees its own writes).
    const P* again = ADD ? rr : xr;
    for (int i = threadIdx.x + CACHED * blockDim.x; i < packs; i += blockDim.x)
      orow[i] = scale<D, VEC>(again[i], wp[i], inv);
  }
}

template <typename D, bool ADD, bool RESIDENT, int VEC, int CACHED>
__device__ __forceinline__ void rms_norm_block_row(typename D::storage* out, const typename D::storage* x,
                                                   typename D::storage* residual, const typename D::storage* w,
                                                   int cols, float eps) {
  using P = Pack<typename D::storage, VEC>;
  RowRegs<typename D::storage, VEC, CACHED, ADD> regs;
  const long long row = blockIdx.x;
  load_row<typename D::storage, VEC, CACHED, ADD, RESIDENT>(regs, x, residual, row, cols);
  // Resident rows fetch the weight with x: it is an L2 hit, but read after
  // the reduction it sat on every block's critical path.
  P wk[CACHED];
  if (RESIDENT) {
    const P* wp = reinterpret_cast<const P*>(w);
#pragma unroll
    for (int k = 0; k < CACHED; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      wk[k] = wp[i];
    }
  }
  rms_norm_one_row<D, ADD, RESIDENT, VEC, CACHED>(regs, wk, out, x, residual, w, row, cols, eps);
}

template <typename D, bool ADD, bool RESIDENT>
__device__ __forceinline__ void rms_norm_dispatch(typename D::storage* out, const typename D::storage* x,
                                                  typename D::storage* residual, const typename D::storage* w,
                                                  int cols, float eps) {
  constexpr int VEC = 16 / sizeof(typename D::storage);
  constexpr int CACHED = 2;
  if (RESIDENT || cols % VEC == 0) {
    rms_norm_block_row<D, ADD, RESIDENT, VEC, CACHED>(out, x, residual, w, cols, eps);
  } else {
    rms_norm_block_row<D, ADD, RESIDENT, 1, CACHED>(out, x, residual, w, cols, eps);
  }
}

// After the fused form: quantizes the normalized row x per token into q and
// scales[row]. Each thread re-reads only the packs it wrote, so the row needs
// no extra barrier beyond the block reduction.
template <typename D>
__device__ __forceinline__ void quantize_own_packs(const typename D::storage* x, signed char* q, float* scales,
                                                   int cols) {
  using S = typename D::storage;
  constexpr int VEC = 16 / sizeof(S);
  const long long row = blockIdx.x;
  const int vec = cols % VEC == 0 ? VEC : 1;
  const S* xr = x + row * cols;
  signed char* qr = q + row * cols;
  float local = 0.f;
  for (int i = threadIdx.x * vec; i < cols; i += blockDim.x * vec)
    for (int j = 0; j < vec; ++j) local = fmaxf(local, fabsf(D::to_float(xr[i + j])));
  const float absmax = mllm::block_max(local);
  if (threadIdx.x == 0) scales[row] = mllm::RowQuant::scale(absmax);
  const mllm::RowQuant quant(absmax);
  for (int i = threadIdx.x * vec; i < cols; i += blockDim.x * vec)
    for (int j = 0; j < vec; ++j) qr[i + j] = quant(D::to_float(xr[i + j]));
}

// The quantizing form when the whole row fits the cached packs (16-byte packs,
// at most CACHED per thread), as for a decode token at hidden 4096: the
// normalized packs stay in registers, so the absmax needs no re-read and q
// leaves as one VEC-byte store per pack; the weight is fetched with x instead
// of after the reduction. At batch 1 the kernel is one block whose time is
// its chain of dependent steps (ncu, H100: 6.1 us for this form's work done
// by the general path).
template <typename D, int VEC, int CACHED>
__device__ __forceinline__ void fused_add_rms_norm_quant_resident(typename D::storage* x,
                                                                  typename D::storage* residual,
                                                                  const Pack<typename D::storage, VEC> (&wk)[CACHED],
                                                                  signed char* q, float* scales, int cols,
                                                                  float eps) {
  using S = typename D::storage;
  using P = Pack<S, VEC>;
  const long long row = blockIdx.x;
  const int packs = cols / VEC;
  RowRegs<S, VEC, CACHED, true> regs;
  load_row<S, VEC, CACHED, true, false>(regs, x, residual, row, cols);
  P* rr = reinterpret_cast<P*>(residual + row * cols);
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) {
      acc += add_and_square<D, VEC, true>(regs.x[k], regs.r[k]);
      store_once(rr + i, regs.x[k]);
    }
  }
  const float inv = 1.f / sqrtf(mllm::block_sum(acc) / static_cast<float>(cols) + eps);
  P* orow = reinterpret_cast<P*>(x + row * cols);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) {
      regs.x[k] = scale<D, VEC>(regs.x[k], wk[k], inv);
      store_once(orow + i, regs.x[k]);
    }
  }
  mllm::quantize_held_row<D>(regs.x, packs, q + row * cols, scales + row);
}

// The weight packs this thread's CACHED packs of a row meet (zeros past the row).
template <typename S, int VEC, int CACHED>
__device__ __forceinline__ void load_weight(Pack<S, VEC> (&wk)[CACHED], const S* __restrict__ w, int cols) {
  const Pack<S, VEC>* wp = reinterpret_cast<const Pack<S, VEC>*>(w);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < cols / VEC) wk[k] = wp[i];
  }
}

// Decode rows of the fused forms (launched with PDL behind a GEMM): the
// weight is loaded and this block's residual row pulled into L2 before the
// wait. Both are DRAM misses by then (a layer streams ~200 MB through L2
// between two uses), and after the wait they would queue behind the weight
// the next GEMM starts streaming. The residual is only prefetched: the
// kernel that wrote it is not the one waited for, and a prefetch reads no
// value (the load after the wait does).
template <typename D, int VEC>
__device__ __forceinline__ void preload_decode_row(Pack<typename D::storage, VEC> (&wk)[1],
                                                   const typename D::storage* __restrict__ w,
                                                   const typename D::storage* residual, int cols) {
  load_weight<typename D::storage, VEC, 1>(wk, w, cols);
  const int at = threadIdx.x * VEC;  // one pack per thread (decode_launch)
  constexpr int kLine = 128 / sizeof(typename D::storage);
  if (at % kLine == 0) mllm::prefetch_line_l2(residual + static_cast<long long>(blockIdx.x) * cols + at);
  mllm::wait_then_allow_dependents();
}

}  // namespace

// Symbols, each launched with one block per row (grid = rows):
// rms_norm_<dtype>(x, w, out, cols, eps) needs the row resident, exactly 2
// packs per thread (cols % VEC == 0 and blockDim.x * 2 == cols / VEC);
// rms_norm_wide_<dtype> (same arguments) takes any row and streams what does
// not fit. fused_add_rms_norm_<dtype>(x, residual, w, cols, eps) updates
// residual <- x + residual and x <- rmsnorm(residual) * w in place;
// fused_add_rms_norm_quant_<dtype>(x, residual, w, q, scales, cols, eps)
// does the same, then writes x's per-token int8 quantization (q, scales) for
// a W8A8 GEMM, exactly as per_token_quant_int8 would. The fused forms take
// any row: holding x, the residual and the weight would cost them the
// occupancy the plain form keeps (measured 91-94% of copy without it). The
// quantizing form does hold all three when the row fits two packs per
// thread: it serves decode, where one block's latency is what counts.
//
// The decode launch (a few rows, see src/ops/norm.rs): one 8-byte pack per
// thread, blockDim.x == cols / (VEC / 2), e.g. 1024 threads at hidden 4096
// bf16. At batch 1 the kernel is one block on one SM, and ncu (H100) showed
// 256 threads x 16 elements bound by each warp's chain of ~1,200 dependent
// instructions (8,757 cycles for add + RMSNorm + quant), not by memory; a
// quarter of the elements per thread shortens that chain.
template <typename D>
__device__ __forceinline__ bool decode_launch(int cols) {
  constexpr int HALF = 8 / sizeof(typename D::storage);
  return cols == HALF * static_cast<int>(blockDim.x);
}

// The resident form's bound keeps it at <= 40 registers, so six 256-thread
// blocks fit an SM as for the wide form; unbounded it takes 49 (nvcc, sm_90a)
// and only four would fit.
#define MLLM_RMS_NORM_KERNELS(SUFFIX, D)                                                                    \
  extern "C" __global__ void __launch_bounds__(512, 3)                                                      \
      rms_norm_##SUFFIX(const D::storage* x, const D::storage* w, D::storage* out, int cols, float eps) {   \
    rms_norm_dispatch<D, false, true>(out, x, nullptr, w, cols, eps);                                       \
  }                                                                                                         \
  extern "C" __global__ void rms_norm_wide_##SUFFIX(const D::storage* x, const D::storage* w,              \
                                                    D::storage* out, int cols, float eps) {                 \
    rms_norm_dispatch<D, false, false>(out, x, nullptr, w, cols, eps);                                      \
  }                                                                                                         \
  extern "C" __global__ void fused_add_rms_norm_##SUFFIX(D::storage* x, D::storage* residual,              \
                                                         const D::storage* w, int cols, float eps) {      \
    /* Launched with PDL on SM90+: x is the GEMM's output. */                                               \
    constexpr int HALF = 8 / sizeof(D::storage);                                                            \
    if (decode_launch<D>(cols)) {                                                                           \
      Pack<D::storage, HALF> wk[1];                                                                         \
      preload_decode_row<D, HALF>(wk, w, residual, cols);                                                   \
      RowRegs<D::storage, HALF, 1, true> regs;                                                              \
      load_row<D::storage, HALF, 1, true, true>(regs, x, residual, blockIdx.x, cols);                       \
      rms_norm_one_row<D, true, true, HALF, 1>(regs, wk, x, x, residual, w, blockIdx.x, cols, eps);         \
    } else {                                                                                                \
      mllm::wait_then_allow_dependents();                                                                   \
      rms_norm_dispatch<D, true, false>(x, x, residual, w, cols, eps);                                      \
    }                                                                                                       \
  }                                                                                                         \
  extern "C" __global__ void fused_add_rms_norm_quant_##SUFFIX(D::storage* x, D::storage* residual,        \
                                                               const D::storage* w, signed char* q,         \
                                                               float* scales, int cols, float eps) {       \
    /* Launched with PDL on SM90+: x is the GEMM's output. */                                               \
    constexpr int VEC = 16 / sizeof(D::storage);                                                            \
    if (decode_launch<D>(cols)) {                                                                           \
      Pack<D::storage, VEC / 2> wk[1];                                                                      \
      preload_decode_row<D, VEC / 2>(wk, w, residual, cols);                                                \
      fused_add_rms_norm_quant_resident<D, VEC / 2, 1>(x, residual, wk, q, scales, cols, eps);              \
    } else if (cols % VEC == 0 && cols / VEC <= 2 * static_cast<int>(blockDim.x)) {                         \
      mllm::wait_then_allow_dependents();                                                                   \
      Pack<D::storage, VEC> wk[2];                                                                          \
      load_weight<D::storage, VEC, 2>(wk, w, cols);                                                         \
      fused_add_rms_norm_quant_resident<D, VEC, 2>(x, residual, wk, q, scales, cols, eps);                  \
    } else {                                                                                                \
      mllm::wait_then_allow_dependents();                                                                   \
      rms_norm_dispatch<D, true, false>(x, x, residual, w, cols, eps);                                      \
      quantize_own_packs<D>(x, q, scales, cols);                                                            \
    }                                                                                                       \
  }

// The JIT builds one dtype per cache entry (kernels.list variants); AOT all.
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_RMS_NORM_KERNELS(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_RMS_NORM_KERNELS(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_RMS_NORM_KERNELS(bf16, mllm::BF16)
#endif
