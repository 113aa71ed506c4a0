// Host-side facts about the current CUDA device, shared by the nvcc kernels'
// entry points.
#pragma once

#include <cuda_runtime.h>

namespace mllm {

// Compute capability of the current device as major * 10 + minor; 0 when
// there is none.
inline int device_sm() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major * 10 + minor;
}

}  // namespace mllm
