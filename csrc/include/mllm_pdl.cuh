// Programmatic dependent launch (SM90+; no-ops on older GPUs and on kernels
// launched without the attribute).
//
// A kernel launched with programmaticStreamSerializationAllowed may start
// while the kernel before it on the stream still runs, once every block of
// that kernel has called allow_dependents() (or exited). It must call
// wait_for_producer() before reading anything the earlier kernel writes;
// work before that (e.g. streaming a weight) overlaps the earlier kernel.
//
// A kernel that is itself launched with PDL lets its dependents launch only
// after its own wait (wait_then_allow_dependents): in an H100 timeline of a
// decode step, no kernel started before the end of a PDL-launched kernel that
// had called allow_dependents() before waiting, while the GEMM after the
// plainly launched quantization kernel (which allows at its start) started
// ~1.2 us before it ended.
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

// For a kernel launched with PDL: waits for its producer, then lets the next
// kernel launch (the order the header comment explains).
__device__ __forceinline__ void wait_then_allow_dependents() {
  wait_for_producer();
  allow_dependents();
}

}  // namespace mllm
