// Programmatic dependent launch (SM90+; no-ops on older GPUs and on kernels
// launched without the attribute).
//
// A kernel launched with programmaticStreamSerializationAllowed may start
// while the kernel before it on the stream still runs, once every block of
// that kernel has called allow_dependents() (or exited). It must call
// wait_for_producer() before reading anything the earlier kernel writes;
// work before that (e.g. streaming a weight) overlaps the earlier kernel.
//
// A kernel that is itself launched with PDL lets its dependents launch after
// its own wait (wait_then_allow_dependents), so that the next GEMM streams its
// weight while this kernel computes rather than while the producer before it
// still runs: Qwen3-8B W8A8 at batch 1 on an H100, 3.95 ms a step against
// 4.10-4.11 with the norm, SiLU, q/k norm and quantization kernels allowing
// before their wait (bf16 6.11-6.12 either way; same machine, two rounds).
// Either order lets the dependent launch early; a CUDA-graph memory node
// between two kernels does not (the engine allocates a forward's activations
// before its first kernel, engine/src/executor/cuda/forward.rs).
#pragma once

namespace mllm {

// Lets the next kernel launch now; its wait_for_producer() still waits for
// this whole grid to finish and its writes to be visible.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Blocks until the kernels this one depends on have finished.
__device__ __forceinline__ void wait_for_producer() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Pulls the 128-byte line holding p into L2. A hint that reads no value, so a
// kernel may issue it before wait_for_producer() even for data that an earlier
// kernel writes: the load after the wait sees the written value.
__device__ __forceinline__ void prefetch_line_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// For a kernel launched with PDL: waits for its producer, then lets the next
// kernel launch (the order the header comment explains).
__device__ __forceinline__ void wait_then_allow_dependents() {
  wait_for_producer();
  allow_dependents();
}

}  // namespace mllm
