// Thread-block clusters (SM90+): the CTA's rank, cluster-wide barriers and
// reads of another CTA's shared memory (distributed shared memory).
#pragma once

namespace mllm::cluster {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// This CTA's rank in its cluster.
__device__ __forceinline__ unsigned rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

// Arrives at the cluster barrier, releasing this thread's writes (shared
// memory included) to the cluster; `wait` completes it. Between the two the
// thread may keep working.
__device__ __forceinline__ void arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }

// Waits until every thread of the cluster has arrived, acquiring their writes.
__device__ __forceinline__ void wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

// Every thread of the cluster: writes before it are visible to reads after it.
__device__ __forceinline__ void sync() {
  arrive();
  wait();
}

// `*local` (an address in this CTA's shared memory) as CTA `rank` of the
// cluster holds it.
__device__ __forceinline__ float load_remote(const float* local, unsigned rank) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(local));
  unsigned remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
}
#endif

}  // namespace mllm::cluster
