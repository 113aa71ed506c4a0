// Programmatic dependent launch (SM90+; no-ops on older GPUs and on kernels
// launched without the attribute).
//
// A kernel launched with programmaticStreamSerializationAllowed may start
// while the kernel before it on the stream still runs, once every block of
// that kernel has called allow_dependents() (or exited). It must call
// wait_for_producer() before reading anything the earlier kernel writes;
// work before that (e.g. streaming a weight) overlaps the earlier kernel.
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

}  // namespace mllm
