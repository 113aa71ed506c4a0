// Host-side facts about the current CUDA device, shared by the nvcc kernels'
// entry points.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>

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

// Whether kernels written for programmatic dependent launch are launched
// with it: on SM90+, unless MLLM_PDL=0 (to measure what it gives, or to rule
// it out when chasing a race). The kernels' griddepcontrol instructions are
// no-ops when launched without it.
inline bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("MLLM_PDL");
    return v == nullptr || v[0] != '0';
  }();
  return allowed && device_sm() >= 90;
}

// A cudaLaunchKernelEx configuration, with programmatic stream serialization
// (PDL) when asked. `cfg.attrs` points into the object, so it is neither
// copied nor moved.
struct LaunchConfig {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1] = {};
  LaunchConfig(dim3 grid, dim3 block, cudaStream_t stream, bool programmatic, size_t dynamic_smem = 0) {
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = dynamic_smem;
    cfg.stream = stream;
    if (programmatic) {
      attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
    }
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
};

}  // namespace mllm
