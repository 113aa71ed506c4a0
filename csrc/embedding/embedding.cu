// Embedding lookup: out[t, :] = table[ids[t], :], and its inverse, the row
// scatter dst[rows[i], :] = (or +=) src[i, :]; compiled by NVRTC.
//
// Grid (T, chunks), 16-byte packs when H is a multiple of one. Token ids
// are i32. An id outside [0, vocab) never reads the table: its output row
// is zero-filled and, when `bad` is non-null, *bad is set (once, first
// writer wins) to 1 + the row index, so the caller can report it after a
// sync. The engine validates ids on the host where they come from the
// request; ids sampled on the device are < vocab by construction.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"

namespace {

template <typename S, int VEC>
__device__ __forceinline__ void gather_row(const int* ids, const S* table, S* out, int hidden, int vocab, int* bad) {
  using P = mllm::Pack<S, VEC>;
  const long long row = blockIdx.x;
  const int packs = hidden / VEC;
  const int id = ids[row];
  P* o = reinterpret_cast<P*>(out + row * hidden);
  const int first = blockIdx.y * blockDim.x + threadIdx.x;
  const int step = gridDim.y * blockDim.x;
  if (id < 0 || id >= vocab) {
    if (bad != nullptr && first == 0) atomicCAS(bad, 0, static_cast<int>(row) + 1);
    P zero;
#pragma unroll
    for (int j = 0; j < VEC; ++j) zero.v[j] = S(0);
    for (int i = first; i < packs; i += step) o[i] = zero;
    return;
  }
  const P* src = reinterpret_cast<const P*>(table + static_cast<long long>(id) * hidden);
  for (int i = first; i < packs; i += step) o[i] = src[i];
}


// dst[rows[i]] = src[i] (replace) or dst[rows[i]] += src[i] (the sum in f32,
// rounded once to the element type, as torch's bf16 add). Rows outside
// [0, dst_rows) are skipped and reported through `bad` like bad ids.
template <typename D, int VEC>
__device__ __forceinline__ void scatter_row(const int* rows, const typename D::storage* src, typename D::storage* dst,
                                            int hidden, int dst_rows, int accumulate, int* bad) {
  using S = typename D::storage;
  using P = mllm::Pack<S, VEC>;
  const long long i = blockIdx.x;
  const int r = rows[i];
  const int first = blockIdx.y * blockDim.x + threadIdx.x;
  if (r < 0 || r >= dst_rows) {
    if (bad != nullptr && first == 0) atomicCAS(bad, 0, static_cast<int>(i) + 1);
    return;
  }
  const int packs = hidden / VEC;
  const P* s = reinterpret_cast<const P*>(src + i * hidden);
  P* d = reinterpret_cast<P*>(dst + static_cast<long long>(r) * hidden);
  const int step = gridDim.y * blockDim.x;
  for (int k = first; k < packs; k += step) {
    P v = s[k];
    if (accumulate) {
      const P old = d[k];
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = D::from_float(D::to_float(old.v[j]) + D::to_float(v.v[j]));
    }
    d[k] = v;
  }
}

}  // namespace

// Symbol: embedding_<dtype>(ids, table, out, hidden, vocab, bad); grid
// (tokens, any), any block size; `bad` may be null.
#define MLLM_EMBEDDING_KERNEL(SUFFIX, D)                                                                     \
  extern "C" __global__ void embedding_##SUFFIX(const int* ids, const D::storage* table, D::storage* out,   \
                                                int hidden, int vocab, int* bad) {                          \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                 \
    if (hidden % VEC == 0) {                                                                                \
      gather_row<D::storage, VEC>(ids, table, out, hidden, vocab, bad);                                     \
    } else {                                                                                                \
      gather_row<D::storage, 1>(ids, table, out, hidden, vocab, bad);                                       \
    }                                                                                                       \
  }

// Symbol: scatter_rows_<dtype>(rows, src, dst, hidden, dst_rows, accumulate,
// bad); grid (n, any), any block size; `bad` may be null. Rows must be
// distinct when accumulating (no atomics).
#define MLLM_SCATTER_KERNEL(SUFFIX, D)                                                                         \
  extern "C" __global__ void scatter_rows_##SUFFIX(const int* rows, const D::storage* src, D::storage* dst,   \
                                                   int hidden, int dst_rows, int accumulate, int* bad) {      \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                   \
    if (hidden % VEC == 0) {                                                                                  \
      scatter_row<D, VEC>(rows, src, dst, hidden, dst_rows, accumulate, bad);                                 \
    } else {                                                                                                  \
      scatter_row<D, 1>(rows, src, dst, hidden, dst_rows, accumulate, bad);                                   \
    }                                                                                                         \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_EMBEDDING_KERNEL(f32, mllm::F32)
MLLM_SCATTER_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_EMBEDDING_KERNEL(f16, mllm::F16)
MLLM_SCATTER_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_EMBEDDING_KERNEL(bf16, mllm::BF16)
MLLM_SCATTER_KERNEL(bf16, mllm::BF16)
#endif
