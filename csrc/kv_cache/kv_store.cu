// KV store into the token -> KV pool (SGLang's set_kv_buffer, page size 1),
// compiled by NVRTC:
//   k_cache[loc[t], :] = k[t, :]   and   v_cache[loc[t], :] = v[t, :]
// where a pool row is Hk * D elements and k / v rows are read from a
// strided buffer (row t at k + t * k_stride + k_col), so the fused qkv
// projection output is stored without a copy.
//
// Grid (T, chunks); 16-byte packs when the row length, both strides and
// both column offsets are multiples of one pack, else single elements.
// Slots are i32; a slot outside [0, num_slots) is skipped (nothing is
// written out of bounds). The scheduler hands out only valid slots.
#include "mllm_dtype.cuh"
#include "mllm_pack.cuh"

namespace {

template <typename S, int VEC>
__device__ __forceinline__ void store_row(const S* k, long long k_stride, int k_col, const S* v, long long v_stride,
                                          int v_col, const int* loc, S* k_cache, S* v_cache, int row_elems,
                                          long long num_slots) {
  using P = mllm::Pack<S, VEC>;
  const long long t = blockIdx.x;
  const long long slot = loc[t];
  if (slot < 0 || slot >= num_slots) return;
  const int packs = row_elems / VEC;
  const P* ks = reinterpret_cast<const P*>(k + t * k_stride + k_col);
  const P* vs = reinterpret_cast<const P*>(v + t * v_stride + v_col);
  P* kd = reinterpret_cast<P*>(k_cache + slot * row_elems);
  P* vd = reinterpret_cast<P*>(v_cache + slot * row_elems);
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < packs; i += gridDim.y * blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}

}  // namespace

// Symbol: kv_store_<dtype>(k, k_stride, k_col, v, v_stride, v_col, loc,
// k_cache, v_cache, row_elems, num_slots); grid (tokens, any), any block.
#define MLLM_KV_STORE_KERNEL(SUFFIX, D)                                                                        \
  extern "C" __global__ void kv_store_##SUFFIX(const D::storage* k, long long k_stride, int k_col,            \
                                               const D::storage* v, long long v_stride, int v_col,            \
                                               const int* loc, D::storage* k_cache, D::storage* v_cache,      \
                                               int row_elems, long long num_slots) {                          \
    constexpr int VEC = mllm::PackWidth<D::storage>::value;                                                   \
    const bool packed = row_elems % VEC == 0 && k_stride % VEC == 0 && v_stride % VEC == 0 &&                 \
                        k_col % VEC == 0 && v_col % VEC == 0;                                                 \
    if (packed) {                                                                                             \
      store_row<D::storage, VEC>(k, k_stride, k_col, v, v_stride, v_col, loc, k_cache, v_cache, row_elems,   \
                                 num_slots);                                                                  \
    } else {                                                                                                  \
      store_row<D::storage, 1>(k, k_stride, k_col, v, v_stride, v_col, loc, k_cache, v_cache, row_elems,     \
                               num_slots);                                                                    \
    }                                                                                                         \
  }

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F32)
MLLM_KV_STORE_KERNEL(f32, mllm::F32)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_F16)
MLLM_KV_STORE_KERNEL(f16, mllm::F16)
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_BF16)
MLLM_KV_STORE_KERNEL(bf16, mllm::BF16)
#endif
