// Paged attention over a page-size-1 KV pool: the C ABI entry points of
// mllm_kernel.h (mllm_attention_plan / mllm_attention_run), built on
// FlashInfer's FA2-style (SM80+) batch decode and batch prefill kernels, and
// our split-KV decode kernel for small batches (split_decode.cuh).
//
// Builds: one variant per (head dim, dtype): `attention[d64_bf16]`,
// `[d128_bf16]`, `[d64_f16]`, `[d128_f16]`; the AOT build compiles all four.
// Fixed choices keep the instantiations few: no positional encoding (RoPE is
// applied before), no logits soft-cap, no sliding window, no ALiBi, no LSE
// output, NHD layout, page size 1, causal mask for prefill.
//
// Planning follows FlashInfer's scheduler (DecodePlan / PrefillPlan): it runs
// on the host once per batch, fills a pinned buffer and copies it to the
// device; every layer then launches with the same schedule.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "attention_variants.cuh"
#include "mllm_kernel.h"
#include "split_decode.cuh"

namespace {
using namespace mllm::attention;

// Messages handed across the ABI must outlive the call: exceptions' texts are
// kept per thread until that thread's next failure.
thread_local std::string g_error_text;

mllm_result_t ok() { return {MLLM_STATUS_OK, 0, nullptr}; }

mllm_result_t fail(mllm_status_t status, const char* message) { return {status, 0, message}; }

mllm_result_t cuda_result(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return ok();
  g_error_text = std::string(what) + ": " + cudaGetErrorString(e);
  return {MLLM_STATUS_CUDA_ERROR, static_cast<int32_t>(e), g_error_text.c_str()};
}

mllm_result_t exception_result(const std::exception& e) {
  g_error_text = std::string("FlashInfer: ") + e.what();
  return {MLLM_STATUS_INVALID_ARGUMENT, 0, g_error_text.c_str()};
}

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

char* at(void* base, int64_t offset) { return static_cast<char*>(base) + offset; }

// Host-side checks; the Rust op validates the same before calling, these
// keep the ABI safe on its own.
mllm_result_t check_plan_args(const mllm_attention_plan_args_t* a) {
  if (a == nullptr) return fail(MLLM_STATUS_INVALID_ARGUMENT, "plan args are NULL");
  if (a->batch_size < 1) return fail(MLLM_STATUS_INVALID_ARGUMENT, "batch_size must be >= 1");
  if (a->qo_indptr == nullptr || a->kv_indptr == nullptr)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "qo_indptr and kv_indptr must be host arrays of batch_size + 1");
  if (a->float_workspace == nullptr || a->int_workspace == nullptr || a->int_host == nullptr)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "workspace pointers must be non-NULL");
  if (a->num_kv_heads < 1 || a->num_qo_heads < a->num_kv_heads || a->num_qo_heads % a->num_kv_heads != 0)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "num_qo_heads must be a positive multiple of num_kv_heads");
  if (a->qo_indptr[0] != 0 || a->kv_indptr[0] != 0)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "qo_indptr[0] and kv_indptr[0] must be 0");
  for (int32_t i = 0; i < a->batch_size; ++i) {
    const int64_t qo = int64_t(a->qo_indptr[i + 1]) - a->qo_indptr[i];
    const int64_t kv = int64_t(a->kv_indptr[i + 1]) - a->kv_indptr[i];
    if (qo < 1 || kv < qo)
      return fail(MLLM_STATUS_INVALID_ARGUMENT, "every sequence needs 1 <= qo_len <= kv_len");
  }
  if (a->decode_kernel < MLLM_DECODE_KERNEL_CUDA_CORES || a->decode_kernel > MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "decode_kernel must be one of MLLM_DECODE_KERNEL_*");
  if (mllm::device_sm() < 80) return fail(MLLM_STATUS_UNSUPPORTED, "FlashInfer's FA2 kernels need SM80 or newer");
  return ok();
}

bool all_single_queries(const mllm_attention_plan_args_t* a) {
  for (int32_t i = 0; i < a->batch_size; ++i)
    if (a->qo_indptr[i + 1] - a->qo_indptr[i] != 1) return false;
  return true;
}

// Our own device arrays sit at the start of the int workspace: qo_indptr,
// kv_indptr, last_page_len (all ones: page size 1) and the split-KV kernel's
// arrival counters (zeros). FlashInfer's schedule follows. Offsets depend on
// the batch size and head count only, so a replayed CUDA graph of one batch
// size always finds them at the same addresses.
mllm_result_t layout_metadata(const mllm_attention_plan_args_t* a, mllm_attention_plan_t* p) {
  const int64_t indptr_bytes = align16(int64_t(a->batch_size + 1) * sizeof(int32_t));
  const int64_t per_seq_bytes = align16(int64_t(a->batch_size) * sizeof(int32_t));
  const int64_t counter_bytes = align16(int64_t(a->batch_size) * a->num_kv_heads * sizeof(uint32_t));
  p->qo_indptr_offset = 0;
  p->kv_indptr_offset = indptr_bytes;
  p->last_page_len_offset = 2 * indptr_bytes;
  p->counters_offset = p->last_page_len_offset + per_seq_bytes;
  p->scheduler_offset = p->counters_offset + counter_bytes;
  if (p->scheduler_offset >= a->int_workspace_bytes)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "int workspace too small for the batch's indptr arrays");
  auto* qo = reinterpret_cast<int32_t*>(at(a->int_host, p->qo_indptr_offset));
  auto* kv = reinterpret_cast<int32_t*>(at(a->int_host, p->kv_indptr_offset));
  auto* last = reinterpret_cast<int32_t*>(at(a->int_host, p->last_page_len_offset));
  for (int32_t i = 0; i <= a->batch_size; ++i) {
    qo[i] = a->qo_indptr[i];
    kv[i] = a->kv_indptr[i];
  }
  for (int32_t i = 0; i < a->batch_size; ++i) last[i] = 1;
  std::memset(at(a->int_host, p->counters_offset), 0, size_t(counter_bytes));
  return ok();
}

// The upload of our metadata region (indptr arrays, counters), after any
// copy FlashInfer's planner queued on the same stream.
mllm_result_t upload_metadata(const mllm_attention_plan_args_t* a, const mllm_attention_plan_t* p,
                              cudaStream_t stream) {
  return cuda_result(cudaMemcpyAsync(a->int_workspace, a->int_host, size_t(p->scheduler_offset),
                                     cudaMemcpyHostToDevice, stream),
                     "attention plan: copy indptr arrays");
}

// A decode batch on the split-KV kernel: picks the chunk count (the cluster
// form's where asked and the device runs it, else the global-merge form's)
// and checks the float workspace holds the global form's partial states.
// Returns false in `*taken` when the kernel does not serve this group (then
// FlashInfer's kernels do).
template <typename Tag>
mllm_result_t plan_split(const mllm_attention_plan_args_t* a, mllm_attention_plan_t* p, bool* taken) {
  const int32_t group = a->num_qo_heads / a->num_kv_heads;
  *taken = group <= split::kMaxGroup;
  if (!*taken) return ok();
  int32_t max_len = 0;
  for (int32_t i = 0; i < a->batch_size; ++i) max_len = std::max(max_len, a->kv_indptr[i + 1] - a->kv_indptr[i]);
  const int plan_len = a->cuda_graph ? 0 : max_len;
  int chunks = 0;
  if (a->decode_kernel == MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER) {
    const cudaError_t e = split::choose_cluster_chunks<Tag::kHeadDim, typename Tag::Elem>(
        a->batch_size, a->num_kv_heads, plan_len, &chunks);
    if (e != cudaSuccess) return cuda_result(e, "attention plan: cluster size");
  }
  p->split_cluster = chunks > 0;
  if (chunks == 0) {
    const cudaError_t e = split::choose_chunks(a->batch_size, a->num_kv_heads, plan_len, &chunks);
    if (e != cudaSuccess) return cuda_result(e, "attention plan: device attributes");
    const int64_t need = int64_t(a->batch_size) * a->num_kv_heads * chunks *
                         split::partial_floats(group, a->head_dim) * int64_t(sizeof(float));
    if (chunks > 1 && need > a->float_workspace_bytes)
      return fail(MLLM_STATUS_INVALID_ARGUMENT, "float workspace too small for the split-KV decode partial states");
  }
  p->prefill = 0;
  p->split_chunks = chunks;
  p->info_len = 1;
  p->info[0] = chunks;
  return ok();
}

template <typename Tag>
mllm_result_t plan_variant(const mllm_attention_plan_args_t* a, mllm_attention_plan_t* p, cudaStream_t stream) {
  std::vector<int32_t> qo(a->qo_indptr, a->qo_indptr + a->batch_size + 1);
  std::vector<int32_t> kv(a->kv_indptr, a->kv_indptr + a->batch_size + 1);
  const uint32_t group = a->num_qo_heads / a->num_kv_heads;
  void* sched_dev = at(a->int_workspace, p->scheduler_offset);
  void* sched_host = at(a->int_host, p->scheduler_offset);
  const size_t sched_bytes = size_t(a->int_workspace_bytes - p->scheduler_offset);
  const bool single = all_single_queries(a);
  const bool split_kernel =
      a->decode_kernel == MLLM_DECODE_KERNEL_SPLIT_KV || a->decode_kernel == MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER;
  if (single && split_kernel) {
    bool taken = false;
    const mllm_result_t r = plan_split<Tag>(a, p, &taken);
    if (r.status != MLLM_STATUS_OK) return r;
    if (taken) return upload_metadata(a, p, stream);
  }
  p->prefill = !(single && Tag::decode_supports_group(group) && a->decode_kernel == MLLM_DECODE_KERNEL_CUDA_CORES);
  std::vector<int64_t> info;
  cudaError_t e;
  if (p->prefill) {
    flashinfer::PrefillPlanInfo pi;
    e = Tag::prefill_plan(a->float_workspace, size_t(a->float_workspace_bytes), sched_dev, sched_host, sched_bytes,
                          pi, qo.data(), kv.data(), uint32_t(qo.back()), uint32_t(a->batch_size),
                          uint32_t(a->num_qo_heads), uint32_t(a->num_kv_heads), a->cuda_graph != 0,
                          /*uniform_q_len=*/single ? 1 : 0, stream);
    info = pi.ToVector();
  } else {
    flashinfer::DecodePlanInfo di;
    e = Tag::decode_plan(a->float_workspace, size_t(a->float_workspace_bytes), sched_dev, sched_host, sched_bytes,
                         di, kv.data(), uint32_t(a->batch_size), uint32_t(a->num_qo_heads), group,
                         a->cuda_graph != 0, stream);
    info = di.ToVector();
  }
  if (e != cudaSuccess) return cuda_result(e, "attention plan");
  if (info.size() > sizeof(p->info) / sizeof(p->info[0]))
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "FlashInfer plan info larger than mllm_attention_plan_t holds");
  p->info_len = int32_t(info.size());
  for (size_t i = 0; i < info.size(); ++i) p->info[i] = info[i];
  // The metadata region goes after FlashInfer's copy, on the same stream.
  return upload_metadata(a, p, stream);
}

template <typename Tag>
mllm_result_t run_split(const mllm_attention_run_args_t* a, const mllm_attention_plan_t* p, cudaStream_t stream) {
  split::Params s;
  s.q = a->q;
  s.k = a->k_cache;
  s.v = a->v_cache;
  s.kv_indices = a->kv_indices;
  s.kv_indptr = reinterpret_cast<const int32_t*>(at(a->int_workspace, p->kv_indptr_offset));
  s.out = a->out;
  s.partial = static_cast<float*>(a->float_workspace);
  s.counters = reinterpret_cast<uint32_t*>(at(a->int_workspace, p->counters_offset));
  s.num_kv_heads = p->num_kv_heads;
  s.group = p->num_qo_heads / p->num_kv_heads;
  s.chunks = p->split_chunks;
  s.scale_log2 = a->sm_scale * 1.4426950408889634f;
  return cuda_result(split::launch<Tag::kHeadDim, typename Tag::Elem>(s, p->batch_size, p->split_cluster != 0, stream),
                     "split-KV decode attention kernel");
}

template <typename Tag>
mllm_result_t run_variant(const mllm_attention_run_args_t* a, const mllm_attention_plan_t* p, cudaStream_t stream) {
  RunPointers r;
  r.q = a->q;
  r.k = a->k_cache;
  r.v = a->v_cache;
  r.kv_indices = a->kv_indices;
  r.out = a->out;
  r.float_ws = a->float_workspace;
  r.sched = at(a->int_workspace, p->scheduler_offset);
  r.qo_indptr = reinterpret_cast<int32_t*>(at(a->int_workspace, p->qo_indptr_offset));
  r.kv_indptr = reinterpret_cast<int32_t*>(at(a->int_workspace, p->kv_indptr_offset));
  r.last_page_len = reinterpret_cast<int32_t*>(at(a->int_workspace, p->last_page_len_offset));
  if (p->split_chunks > 0) return run_split<Tag>(a, p, stream);
  std::vector<int64_t> info(p->info, p->info + p->info_len);
  const RunShape s{uint32_t(p->batch_size), uint32_t(p->num_qo_heads), uint32_t(p->num_kv_heads), a->sm_scale};
  const cudaError_t e = p->prefill ? Tag::prefill_run(r, s, info, stream) : Tag::decode_run(r, s, info, stream);
  return cuda_result(e, p->prefill ? "attention prefill kernel" : "attention decode kernel");
}

// Calls f.template operator()<Tag>() for the variant this build carries.
template <typename F>
mllm_result_t with_variant(int32_t head_dim, mllm_dtype_t dtype, F&& f) {
#if MLLM_ATTENTION_D64_BF16
  if (head_dim == 64 && dtype == MLLM_DTYPE_BF16) return f(Variant<64, nv_bfloat16>{});
#endif
#if MLLM_ATTENTION_D128_BF16
  if (head_dim == 128 && dtype == MLLM_DTYPE_BF16) return f(Variant<128, nv_bfloat16>{});
#endif
#if MLLM_ATTENTION_D64_F16
  if (head_dim == 64 && dtype == MLLM_DTYPE_F16) return f(Variant<64, half>{});
#endif
#if MLLM_ATTENTION_D128_F16
  if (head_dim == 128 && dtype == MLLM_DTYPE_F16) return f(Variant<128, half>{});
#endif
  (void)f;
  if ((head_dim != 64 && head_dim != 128) || (dtype != MLLM_DTYPE_BF16 && dtype != MLLM_DTYPE_F16))
    return fail(MLLM_STATUS_UNSUPPORTED, "attention supports head_dim 64 or 128 with dtype bf16 or f16");
  return fail(MLLM_STATUS_UNSUPPORTED, "this build of `attention` lacks the requested (head_dim, dtype) variant");
}
}  // namespace

extern "C" MLLM_API mllm_result_t mllm_attention_plan(const mllm_attention_plan_args_t* args,
                                                      mllm_attention_plan_t* plan, mllm_stream_t stream) {
  mllm_result_t r = check_plan_args(args);
  if (r.status != MLLM_STATUS_OK) return r;
  if (plan == nullptr) return fail(MLLM_STATUS_INVALID_ARGUMENT, "plan is NULL");
  *plan = mllm_attention_plan_t{};
  plan->batch_size = args->batch_size;
  plan->total_q = args->qo_indptr[args->batch_size];
  plan->num_qo_heads = args->num_qo_heads;
  plan->num_kv_heads = args->num_kv_heads;
  plan->head_dim = args->head_dim;
  plan->dtype = args->dtype;
  plan->cuda_graph = args->cuda_graph;
  try {
    return with_variant(args->head_dim, args->dtype, [&](auto tag) -> mllm_result_t {
      mllm_result_t m = layout_metadata(args, plan);
      if (m.status != MLLM_STATUS_OK) return m;
      return plan_variant<decltype(tag)>(args, plan, static_cast<cudaStream_t>(stream));
    });
  } catch (const std::exception& e) {
    return exception_result(e);
  }
}

extern "C" MLLM_API mllm_result_t mllm_attention_run(const mllm_attention_run_args_t* args,
                                                     const mllm_attention_plan_t* plan, mllm_stream_t stream) {
  if (args == nullptr || plan == nullptr) return fail(MLLM_STATUS_INVALID_ARGUMENT, "run args or plan are NULL");
  if (args->q == nullptr || args->k_cache == nullptr || args->v_cache == nullptr || args->kv_indices == nullptr ||
      args->out == nullptr || args->float_workspace == nullptr || args->int_workspace == nullptr)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "q, caches, kv_indices, out and workspaces must be non-NULL");
  if (plan->batch_size < 1 || plan->info_len < 1 || plan->info_len > 16)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "plan was not made by mllm_attention_plan");
  try {
    return with_variant(plan->head_dim, plan->dtype, [&](auto tag) -> mllm_result_t {
      return run_variant<decltype(tag)>(args, plan, static_cast<cudaStream_t>(stream));
    });
  } catch (const std::exception& e) {
    return exception_result(e);
  }
}
