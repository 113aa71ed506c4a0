// Bulk (TMA) copies into shared memory completed through an mbarrier, SM90+:
// one thread arms a barrier with the bytes it expects and issues the copies;
// consumers wait on the barrier's phase.
#pragma once

#include <cstdint>

namespace mllm::tma {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void barrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)));
}

// A barrier that completes a phase after `count` plain arrivals: consumers
// releasing a ring slot back to its producer.
__device__ __forceinline__ void barrier_init_count(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}

__device__ __forceinline__ void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Makes the initialized barriers visible to the copy engine.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void barrier_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// Ends a ring slot's reads before thread 0 refills it with a bulk copy:
// every thread calls it after its last read of the slot. bar.sync alone
// orders those reads only against generic-proxy writes: ptxas leaves a
// thread's last ld.shared of the slot in flight at the barrier (the mma that
// consumes it is scheduled after), and a bulk copy issued once the barrier
// opens is not queued behind that read, so it can land first (the SASS of
// both streaming kernels showed two or three LDS.128 outstanding at
// BAR.SYNC; gpu_stream_linear once got one wrong 16-byte weight piece). The
// proxy fence makes each thread's reads complete for the async proxy first.
__device__ __forceinline__ void sync_before_refill() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
}

// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to
// shared memory, counted against `bar`'s expected transaction bytes.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

// Thread 0's side of a stage: initializes N single-arrival barriers and makes
// them visible to the copy engine.
template <int N>
__device__ __forceinline__ void init_barriers(uint64_t (&bars)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) barrier_init(&bars[i]);
  fence_barrier_init();
}

// Arms `bar` for `rows` (<= kMaxRows) rows of `bytes` and copies them: row r
// from src + r * src_stride to dst + r * dst_pitch (16-byte multiples and
// alignments, as bulk_copy needs).
template <int kMaxRows>
__device__ __forceinline__ void copy_rows(int8_t* dst, int dst_pitch, const int8_t* src, int64_t src_stride,
                                          int bytes, int rows, uint64_t* bar) {
  barrier_expect(bar, static_cast<uint32_t>(bytes * rows));
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r)
    if (r < rows) bulk_copy(dst + r * dst_pitch, src + r * src_stride, static_cast<uint32_t>(bytes), bar);
}
#endif

}  // namespace mllm::tma
