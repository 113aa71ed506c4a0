// SiLU-and-mul (SwiGLU's gate): x [T, 2I] -> out [T, I] with
// out = silu(x[:, :I]) * x[:, I:], compiled by NVRTC.
//
// Grid (T, chunks): blockIdx.x is the row, blockIdx.y a slice of its
// columns, so a single decode token still spreads over several SMs. When
// I is a multiple of a 16-byte pack, each thread moves whole packs; else
// single elements.
//
// Numerics follow HF transformers (`act_fn(gate) * up` in the element
// type): silu(g) = g / (1 + exp(-g)) in f32, rounded to the element type,
// then multiplied by up in f32 and rounded again.
#include "mllm_cluster.cuh"
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"
#include "mllm_pdl.cuh"
#include "mllm_reduce.cuh"

namespace {

template <typename D>
__device__ __forceinline__ typename D::storage silu_mul(typename D::storage g, typename D::storage u) {
  const float gf = D::to_float(g);
  const float s = mllm::round_to<D>(gf / (1.f + expf(-gf)));
  return D::from_float(s * D::to_float(u));
}

template <typename D, int VEC>
__device__ __forceinline__ void silu_and_mul_row(const typename D::storage* x, typename D::storage* out, int inter) {
  using P = mllm::Pack<typename D::storage, VEC>;
  const long long row = blockIdx.x;
  const int packs = inter / VEC;
  const P* gate = reinterpret_cast<const P*>(x + row * 2 * inter);
  const P* up = reinterpret_cast<const P*>(x + row * 2 * inter + inter);
  P* o = reinterpret_cast<P*>(out + row * inter);
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < packs; i += gridDim.y * blockDim.x) {
    const P g = gate[i];
    const P u = up[i];
    P r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) r.v[j] = silu_mul<D>(g.v[j], u.v[j]);
    o[i] = r;
  }
}

// One block per row: out as silu_and_mul_row writes it, then its per-token
// int8 quantization (q, scales[row]) from the packs this thread wrote.
template <typename D, int VEC>
__device__ __forceinline__ void silu_and_mul_quant_row(const typename D::storage* x, typename D::storage* out,
                                                       signed char* q, float* scales, int inter) {
  using P = mllm::Pack<typename D::storage, VEC>;
  const long long row = blockIdx.x;
  const int packs = inter / VEC;
  const P* gate = reinterpret_cast<const P*>(x + row * 2 * inter);
  const P* up = reinterpret_cast<const P*>(x + row * 2 * inter + inter);
  P* o = reinterpret_cast<P*>(out + row * inter);
  float local = 0.f;
  for (int i = threadIdx.x; i < packs; i += blockDim.x) {
    const P g = gate[i];
    const P u = up[i];
    P r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      r.v[j] = silu_mul<D>(g.v[j], u.v[j]);
      local = fmaxf(local, fabsf(D::to_float(r.v[j])));
    }
    o[i] = r;
  }
  const float absmax = mllm::block_max(local);
  if (threadIdx.x == 0) scales[row] = mllm::RowQuant::scale(absmax);
  const mllm::RowQuant quant(absmax);
  signed char* qr = q + row * inter;
  for (int i = threadIdx.x; i < packs; i += blockDim.x) {
    const P r = o[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) qr[i * VEC + j] = quant(D::to_float(r.v[j]));
  }
}

// silu_and_mul_quant_row when the row fits CACHED packs per thread (Qwen3-8B's
// 12288-wide rows at 1024 threads): the products stay in registers for the
// absmax and the quantization, so out is not re-read and q leaves as one
// VEC-byte store per pack. At decode this is one block on the critical path
// between two GEMMs (ncu, H100: 7.2 us through the general row loop).
template <typename D, int VEC, int CACHED>
__device__ __forceinline__ void silu_and_mul_quant_resident(const typename D::storage* x, typename D::storage* out,
                                                            signed char* q, float* scales, int inter) {
  using P = mllm::Pack<typename D::storage, VEC>;
  const long long row = blockIdx.x;
  const int packs = inter / VEC;
  const P* gate = reinterpret_cast<const P*>(x + row * 2 * inter);
  const P* up = reinterpret_cast<const P*>(x + row * 2 * inter + inter);
  P g[CACHED], u[CACHED];
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) {
      g[k] = gate[i];
      u[k] = up[i];
    }
  }
  P* o = reinterpret_cast<P*>(out + row * inter);
#pragma unroll
  for (int k = 0; k < CACHED; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[k].v[j] = silu_mul<D>(g[k].v[j], u[k].v[j]);
      o[i] = g[k];
    }
  }
  mllm::quantize_held_row<D>(g, packs, q + row * inter, scales + row);
}

// The decode form of silu_and_mul_quant on SM90: a row per cluster of
// kClusterCtas CTAs, each CTA one 16-byte pack per thread of its slice,
// the row's absmax combined through distributed shared memory. One
// 1024-thread block per row was bound by its SM's instruction issue (the
// SiLU's expf and division on 12 elements per thread; 4.7 us a row in a
// Qwen3-8B decode step on an H100); eight SMs share that work.
constexpr int kClusterCtas = 8;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MLLM_SILU_CLUSTER __cluster_dims__(kClusterCtas, 1, 1)
#else
#define MLLM_SILU_CLUSTER
#endif

// blockDim.x * kClusterCtas packs of VEC make the row exactly (the host
// checks); grid.x = rows * kClusterCtas.
template <typename D, int VEC>
__device__ __forceinline__ void silu_and_mul_quant_cluster_row(const typename D::storage* x,
                                                               typename D::storage* out, signed char* q,
                                                               float* scales, int inter) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using P = mllm::Pack<typename D::storage, VEC>;
  __shared__ float cta_max;
  const unsigned rank = mllm::cluster::rank();
  const long long row = blockIdx.x / kClusterCtas;
  const int i = static_cast<int>(rank * blockDim.x + threadIdx.x);
  const P g = reinterpret_cast<const P*>(x + row * 2 * inter)[i];
  const P u = reinterpret_cast<const P*>(x + row * 2 * inter + inter)[i];
  P r;
  float local = 0.f;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    r.v[j] = silu_mul<D>(g.v[j], u.v[j]);
    local = fmaxf(local, fabsf(D::to_float(r.v[j])));
  }
  reinterpret_cast<P*>(out + row * inter)[i] = r;
  const float block = mllm::block_max(local);
  if (threadIdx.x == 0) cta_max = block;
  mllm::cluster::sync();  // every CTA's cta_max is written
  float absmax = 0.f;
#pragma unroll
  for (unsigned c = 0; c < kClusterCtas; ++c) absmax = fmaxf(absmax, mllm::cluster::load_remote(&cta_max, c));
  mllm::cluster::sync();  // no CTA exits while another still reads its cta_max
  if (rank == 0 && threadIdx.x == 0) scales[row] = mllm::RowQuant::scale(absmax);
  reinterpret_cast<mllm::QuantPack<VEC>*>(q + row * inter)[i] = mllm::quantize_pack<D>(r, mllm::RowQuant(absmax));
#else
  __trap();  // the host launches this form on SM90+ only
#endif
}

}  // namespace

// Symbols: silu_and_mul_<dtype>(x, out, inter), grid (rows, any), any
// block size; silu_and_mul_quant_<dtype>(x, out, q, scales, inter), grid
// (rows, 1), which also writes out's per-token int8 quantization;
// silu_and_mul_quant_cluster_<dtype> (same arguments, SM90+), grid
// (rows * 8), clusters of 8, inter == 8 * blockDim.x * the pack width.
#define MLLM_SILU_AND_MUL_KERNEL(SUFFIX, D)                                                                 \
  extern "C" __global__ void silu_and_mul_##SUFFIX(const D::storage* x, D::storage* out, int inter) {      \
    mllm::wait_then_allow_dependents(); /* launched with PDL on SM90+: x is the GEMM's output */           \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                 \
    if (inter % VEC == 0) {                                                                                 \
      silu_and_mul_row<D, VEC>(x, out, inter);                                                              \
    } else {                                                                                                \
      silu_and_mul_row<D, 1>(x, out, inter);                                                                \
    }                                                                                                       \
  }                                                                                                         \
  extern "C" __global__ void silu_and_mul_quant_##SUFFIX(const D::storage* x, D::storage* out,             \
                                                         signed char* q, float* scales, int inter) {       \
    mllm::wait_then_allow_dependents(); /* launched with PDL on SM90+: x is the GEMM's output */           \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                 \
    if (inter % VEC == 0 && inter / VEC <= 2 * static_cast<int>(blockDim.x)) {                              \
      silu_and_mul_quant_resident<D, VEC, 2>(x, out, q, scales, inter);                                     \
    } else if (inter % VEC == 0) {                                                                          \
      silu_and_mul_quant_row<D, VEC>(x, out, q, scales, inter);                                             \
    } else {                                                                                                \
      silu_and_mul_quant_row<D, 1>(x, out, q, scales, inter);                                               \
    }                                                                                                       \
  }                                                                                                         \
  extern "C" __global__ void MLLM_SILU_CLUSTER silu_and_mul_quant_cluster_##SUFFIX(                         \
      const D::storage* x, D::storage* out, signed char* q, float* scales, int inter) {                     \
    mllm::wait_then_allow_dependents(); /* launched with PDL on SM90+: x is the GEMM's output */           \
    silu_and_mul_quant_cluster_row<D, mllm::PackWidth<D::storage>::value>(x, out, q, scales, inter);        \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_SILU_AND_MUL_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_SILU_AND_MUL_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_SILU_AND_MUL_KERNEL(bf16, mllm::BF16)
#endif
