// One (head dim, dtype) specialization of paged attention: FlashInfer's
// planning and launch calls with this project's fixed choices. Included by
// attention.cu only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <flashinfer/attention/decode.cuh>
#include <flashinfer/attention/default_decode_params.cuh>
#include <flashinfer/attention/default_prefill_params.cuh>
#include <flashinfer/attention/prefill.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/attention/variants.cuh>

#include "mllm_device.cuh"

// Which variants this translation unit carries: the JIT defines
// MLLM_VARIANT_<V> for one; the AOT build (no MLLM_VARIANT) takes all.
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_D64_BF16)
#define MLLM_ATTENTION_D64_BF16 1
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_D128_BF16)
#define MLLM_ATTENTION_D128_BF16 1
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_D64_F16)
#define MLLM_ATTENTION_D64_F16 1
#endif
#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_D128_F16)
#define MLLM_ATTENTION_D128_F16 1
#endif

namespace mllm::attention {

namespace fi = flashinfer;

// No custom mask, sliding window, soft-cap or ALiBi.
using Softmax = fi::DefaultAttention<false, false, false, false>;
constexpr auto kNoRope = fi::PosEncodingMode::kNone;

// Device pointers of one layer's launch.
struct RunPointers {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* kv_indices;
  void* out;
  void* float_ws;
  void* sched; // FlashInfer's schedule inside the int workspace
  int32_t* qo_indptr;
  int32_t* kv_indptr;
  int32_t* last_page_len;
};

struct RunShape {
  uint32_t batch_size;
  uint32_t num_qo_heads;
  uint32_t num_kv_heads;
  float sm_scale;
};

// Programmatic dependent launch, on SM90 and newer: FlashInfer's kernels run
// griddepcontrol.wait before reading anything the kernel before them writes
// (q, the K/V pool, partial states), so their launch and prologue overlap
// that kernel's tail instead of following it.
inline bool use_pdl() { return pdl_enabled(); }

template <typename T>
T* ws_ptr(void* base, int64_t offset) {
  return fi::GetPtrFromBaseOffset<T>(base, offset);
}

template <uint32_t HEAD_DIM, typename T>
struct Variant {
  static constexpr int kHeadDim = int(HEAD_DIM);
  using Elem = T;
  using DecodeParams = fi::BatchDecodeParams<T, T, T, int32_t>;
  using PrefillParams = fi::BatchPrefillPagedParams<T, T, T, int32_t>;
  using PagedKV = fi::paged_kv_t<T, int32_t>;

  // GQA group sizes the decode kernel is instantiated for (Qwen3: 2, 4, 8;
  // MHA: 1). Other groups decode on the prefill kernel, which the plan then
  // picks, so every group works and the instantiations stay few.
  static bool decode_supports_group(uint32_t g) { return g == 1 || g == 2 || g == 4 || g == 8; }

  // FlashInfer's decode kernel shape for one group size (as its
  // BatchDecodeWithPagedKVCacheDispatched lays it out), fixed to SM80+: two
  // shared-memory stages, no positional encoding.
  template <uint32_t GROUP>
  struct Decode {
    static constexpr uint32_t kStages = 2;
    static constexpr uint32_t kVec = std::max<uint32_t>(16 / sizeof(T), HEAD_DIM / 32);
    static constexpr uint32_t kBdx = HEAD_DIM / kVec;
    static constexpr uint32_t kBdy = GROUP;
    static constexpr uint32_t kThreads = std::max<uint32_t>(128, kBdx * kBdy);
    static constexpr uint32_t kBdz = kThreads / (kBdx * kBdy);
    static constexpr uint32_t kTile = GROUP == 1 ? 4 : 1;
    static_assert(kBdx <= 32, "head dim too large for the decode kernel");
    // K/V stages (also holding the merge's float state) plus pointer/state scratch.
    static constexpr size_t kSmem =
        std::max<size_t>(2 * kStages * kTile * kBdy * kBdz * HEAD_DIM * sizeof(T), kBdz * kBdy * HEAD_DIM * sizeof(float)) +
        std::max<size_t>(kTile * kThreads * sizeof(T*), 2 * kBdy * kBdz * sizeof(float));

    static auto kernel() {
      return fi::BatchDecodeWithPagedKVCacheKernel<kNoRope, kStages, kTile, kVec, kBdx, kBdy, kBdz, Softmax,
                                                   DecodeParams>;
    }

    // FlashInfer's work estimation: split the KV of long sequences into
    // chunks when the batch alone cannot fill the GPU.
    static cudaError_t estimate(bool& split_kv, uint32_t& max_grid_size, uint32_t& max_pages, uint32_t& new_batch,
                                uint32_t& gdy, uint32_t batch, const int32_t* indptr, uint32_t num_qo_heads,
                                bool cuda_graph) {
      gdy = num_qo_heads / GROUP;
      int dev = 0, num_sm = 0, blocks_per_sm = 0;
      cudaError_t e = cudaGetDevice(&dev);
      if (e == cudaSuccess) e = cudaDeviceGetAttribute(&num_sm, cudaDevAttrMultiProcessorCount, dev);
      if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel(), cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel(), kThreads, kSmem);
      if (e != cudaSuccess) return e;
      max_grid_size = uint32_t(blocks_per_sm) * uint32_t(num_sm);
      std::vector<int32_t> pages(batch);
      for (uint32_t i = 0; i < batch; ++i) pages[i] = indptr[i + 1] - indptr[i];
      if (batch * gdy >= max_grid_size) {
        split_kv = false;
        max_pages = 1;
        for (int32_t n : pages) max_pages = std::max<uint32_t>(max_pages, uint32_t(n));
        new_batch = batch;
      } else {
        // Page size 1: chunks of at least 128 tokens.
        std::tie(max_pages, new_batch) = fi::PartitionPagedKVCacheBinarySearchMinNumPagePerBatch(
            max_grid_size, gdy, pages, /*min_num_pages_per_batch=*/128u);
        // CUDA graphs need one grid size whatever the lengths: always split.
        split_kv = cuda_graph || new_batch != batch;
      }
      return cudaSuccess;
    }

    static cudaError_t launch(DecodeParams& p, T* tmp_v, float* tmp_s, cudaStream_t stream) {
      cudaError_t e = cudaFuncSetAttribute(kernel(), cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (e != cudaSuccess) return e;
      const dim3 grid(p.padded_batch_size, p.paged_kv.num_heads);
      const dim3 block(kBdx, kBdy, kBdz);
      T* out = p.o;
      float* lse = p.lse;
      p.partition_kv = tmp_v != nullptr;
      if (p.partition_kv) {
        // Partial outputs per KV chunk, merged below.
        p.o = tmp_v;
        p.lse = tmp_s;
      }
      void* args[] = {static_cast<void*>(&p)};
      const bool pdl = use_pdl();
      const LaunchConfig l(grid, block, stream, pdl, kSmem);
      e = cudaLaunchKernelExC(&l.cfg, reinterpret_cast<const void*>(kernel()), args);
      if (e != cudaSuccess || !p.partition_kv) return e;
      return fi::VariableLengthMergeStates(tmp_v, tmp_s, p.o_indptr, out, lse, p.paged_kv.batch_size,
                                           /*seq_len=*/nullptr, p.num_qo_heads, HEAD_DIM, pdl, stream);
    }
  };

  template <typename F>
  static cudaError_t with_group(uint32_t group, F&& f) {
    switch (group) {
      case 1:
        return f(Decode<1>{});
      case 2:
        return f(Decode<2>{});
      case 4:
        return f(Decode<4>{});
      case 8:
        return f(Decode<8>{});
      default:
        return cudaErrorInvalidConfiguration;
    }
  }

  static PagedKV paged_kv(const RunPointers& r, const RunShape& s) {
    // Page size 1: a page is one token slot, [capacity, num_kv_heads, head_dim].
    return PagedKV(s.num_kv_heads, 1, HEAD_DIM, s.batch_size, fi::QKVLayout::kNHD,
                   const_cast<T*>(static_cast<const T*>(r.k)), const_cast<T*>(static_cast<const T*>(r.v)),
                   const_cast<int32_t*>(r.kv_indices), r.kv_indptr, r.last_page_len);
  }

  static cudaError_t decode_plan(void* float_ws, size_t float_bytes, void* int_ws, void* int_host, size_t int_bytes,
                                 fi::DecodePlanInfo& info, int32_t* kv_indptr_h, uint32_t batch_size,
                                 uint32_t num_qo_heads, uint32_t group, bool cuda_graph, cudaStream_t stream) {
    auto estimate = [group](bool& split_kv, uint32_t& max_grid_size, uint32_t& max_pages, uint32_t& new_batch,
                            uint32_t& gdy, uint32_t batch, int32_t* indptr, uint32_t qo_heads, uint32_t /*page_size*/,
                            bool graph, cudaStream_t /*stream*/) -> cudaError_t {
      return with_group(group, [&](auto d) {
        return decltype(d)::estimate(split_kv, max_grid_size, max_pages, new_batch, gdy, batch, indptr, qo_heads,
                                     graph);
      });
    };
    return fi::DecodePlan<HEAD_DIM, kNoRope, Softmax, DecodeParams>(float_ws, float_bytes, int_ws, int_host, int_bytes,
                                                                     info, kv_indptr_h, batch_size, num_qo_heads,
                                                                     /*page_size=*/1, cuda_graph, stream, estimate);
  }

  static cudaError_t prefill_plan(void* float_ws, size_t float_bytes, void* int_ws, void* int_host, size_t int_bytes,
                                  fi::PrefillPlanInfo& info, int32_t* qo_indptr_h, int32_t* kv_indptr_h,
                                  uint32_t total_q, uint32_t batch_size, uint32_t num_qo_heads, uint32_t num_kv_heads,
                                  bool cuda_graph, int64_t uniform_q_len, cudaStream_t stream) {
    return fi::PrefillPlan<int32_t>(float_ws, float_bytes, int_ws, int_host, int_bytes, info, qo_indptr_h, kv_indptr_h,
                                    total_q, batch_size, num_qo_heads, num_kv_heads, HEAD_DIM, HEAD_DIM,
                                    /*page_size=*/1, cuda_graph, sizeof(T), /*window_left=*/-1,
                                    /*fixed_split_size=*/-1, /*disable_split_kv=*/false,
                                    /*num_colocated_ctas=*/0, uniform_q_len, stream, sizeof(T));
  }

  static cudaError_t decode_run(const RunPointers& r, const RunShape& s, const std::vector<int64_t>& v,
                                cudaStream_t stream) {
    fi::DecodePlanInfo info;
    info.FromVector(v);
    DecodeParams p(const_cast<T*>(static_cast<const T*>(r.q)), /*q_rope_offset=*/nullptr, paged_kv(r, s),
                   static_cast<T*>(r.out), /*lse=*/nullptr, /*alibi=*/nullptr, s.num_qo_heads,
                   int32_t(s.num_qo_heads * HEAD_DIM), int32_t(HEAD_DIM), /*window_left=*/-1,
                   /*logits_soft_cap=*/0.f, s.sm_scale, /*rope_scale=*/1.f, /*rope_theta=*/1e4f);
    p.padded_batch_size = uint32_t(info.padded_batch_size);
    p.request_indices = ws_ptr<int32_t>(r.sched, info.request_indices_offset);
    p.kv_tile_indices = ws_ptr<int32_t>(r.sched, info.kv_tile_indices_offset);
    p.o_indptr = ws_ptr<int32_t>(r.sched, info.o_indptr_offset);
    p.kv_chunk_size_ptr = ws_ptr<int32_t>(r.sched, info.kv_chunk_size_ptr_offset);
    T* tmp_v = nullptr;
    float* tmp_s = nullptr;
    if (info.split_kv) {
      tmp_v = ws_ptr<T>(r.float_ws, info.v_offset);
      tmp_s = ws_ptr<float>(r.float_ws, info.s_offset);
      p.block_valid_mask = ws_ptr<bool>(r.sched, info.block_valid_mask_offset);
    }
    return with_group(s.num_qo_heads / s.num_kv_heads,
                      [&](auto d) { return decltype(d)::launch(p, tmp_v, tmp_s, stream); });
  }

  template <uint32_t CTA_TILE_Q>
  static cudaError_t prefill_launch(PrefillParams& p, T* tmp_v, float* tmp_s, cudaStream_t stream) {
    return fi::BatchPrefillWithPagedKVCacheDispatched</*SAME_KV_STRIDES=*/true, CTA_TILE_Q, HEAD_DIM, HEAD_DIM,
                                                      kNoRope, /*USE_FP16_QK_REDUCTION=*/false,
                                                      fi::MaskMode::kCausal, Softmax>(p, tmp_v, tmp_s,
                                                                                      use_pdl(), stream);
  }

  static cudaError_t prefill_run(const RunPointers& r, const RunShape& s, const std::vector<int64_t>& v,
                                 cudaStream_t stream) {
    fi::PrefillPlanInfo info;
    info.FromVector(v);
    PrefillParams p(const_cast<T*>(static_cast<const T*>(r.q)), paged_kv(r, s), /*custom_mask=*/nullptr,
                    r.qo_indptr, /*mask_indptr=*/nullptr, /*q_rope_offset=*/nullptr, static_cast<T*>(r.out),
                    /*lse=*/nullptr, /*alibi=*/nullptr, s.num_qo_heads, int32_t(s.num_qo_heads * HEAD_DIM),
                    int32_t(HEAD_DIM), /*window_left=*/-1, /*logits_soft_cap=*/0.f, s.sm_scale,
                    /*rope_scale=*/1.f, /*rope_theta=*/1e4f);
    p.request_indices = ws_ptr<int32_t>(r.sched, info.request_indices_offset);
    p.qo_tile_indices = ws_ptr<int32_t>(r.sched, info.qo_tile_indices_offset);
    p.kv_tile_indices = ws_ptr<int32_t>(r.sched, info.kv_tile_indices_offset);
    p.o_indptr = ws_ptr<int32_t>(r.sched, info.o_indptr_offset);
    p.kv_chunk_size_ptr = ws_ptr<int32_t>(r.sched, info.kv_chunk_size_ptr_offset);
    p.padded_batch_size = uint32_t(info.padded_batch_size);
    p.max_total_num_rows = uint32_t(info.total_num_rows);
    T* tmp_v = nullptr;
    float* tmp_s = nullptr;
    if (info.split_kv) {
      p.merge_indptr = ws_ptr<int32_t>(r.sched, info.merge_indptr_offset);
      tmp_v = ws_ptr<T>(r.float_ws, info.v_offset);
      tmp_s = ws_ptr<float>(r.float_ws, info.s_offset);
    }
    if (info.enable_cuda_graph) {
      p.total_num_rows = ws_ptr<uint32_t>(r.sched, info.total_num_rows_offset);
      p.block_valid_mask = ws_ptr<bool>(r.sched, info.block_valid_mask_offset);
    }
    // The scheduler picks 128 (long queries), 64 or 16 rows per CTA for head
    // dims below 256; 32 is only for head dim 512.
    switch (info.cta_tile_q) {
      case 128:
        return prefill_launch<128>(p, tmp_v, tmp_s, stream);
      case 64:
        return prefill_launch<64>(p, tmp_v, tmp_s, stream);
      case 16:
        return prefill_launch<16>(p, tmp_v, tmp_s, stream);
      default:
        return cudaErrorInvalidConfiguration;
    }
  }
};

}  // namespace mllm::attention
