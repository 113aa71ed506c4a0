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

// Streaming multiprocessors of the current device; 0 when there is none.
inline int device_sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// Whether the opt-in environment variable `name` is set to 1 (read each call;
// callers keep the answer in a function-local static).
inline bool env_is_one(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] == '1';
}

// Whether the default-on environment variable `name` is set to 0.
inline bool env_is_zero(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] == '0';
}

// How many of its `ring` stages a streaming GEMM (stream_m16, stream_linear)
// requests before it waits for its producer: `preferred`, unless
// MLLM_STREAM_PREWAIT=n (a number from 0 to ring) says otherwise. Requests
// made before the wait stream the weight while the kernel before runs, but
// they also queue ahead of that kernel's own memory accesses, which are on
// the step's critical path (docs/int8_mm_dispatch.md has the measurements).
inline int stream_prewait_stages(int ring, int preferred) {
  static const int asked = [] {
    const char* v = std::getenv("MLLM_STREAM_PREWAIT");
    if (v == nullptr || *v < '0' || *v > '9') return -1;
    return std::atoi(v);
  }();
  return asked < 0 || asked > ring ? preferred : asked;
}

// Whether kernels written for programmatic dependent launch are launched
// with it: on SM90+, unless MLLM_PDL=0 (to measure what it gives, or to rule
// it out when chasing a race). The kernels' griddepcontrol instructions are
// no-ops when launched without it.
inline bool pdl_enabled() {
  static const bool allowed = !env_is_zero("MLLM_PDL");
  return allowed && device_sm() >= 90;
}

// A cudaLaunchKernelEx configuration, with programmatic stream serialization
// (PDL) when asked, and thread-block clusters of `cluster_x` CTAs along x
// when that is above 1 (SM90+). `cfg.attrs` points into the object, so it is
// neither copied nor moved.
struct LaunchConfig {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[2] = {};
  LaunchConfig(dim3 grid, dim3 block, cudaStream_t stream, bool programmatic, size_t dynamic_smem = 0,
               unsigned cluster_x = 1) {
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = dynamic_smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    if (programmatic) {
      attr[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[cfg.numAttrs].val.programmaticStreamSerializationAllowed = 1;
      ++cfg.numAttrs;
    }
    if (cluster_x > 1) {
      attr[cfg.numAttrs].id = cudaLaunchAttributeClusterDimension;
      attr[cfg.numAttrs].val.clusterDim.x = cluster_x;
      attr[cfg.numAttrs].val.clusterDim.y = 1;
      attr[cfg.numAttrs].val.clusterDim.z = 1;
      ++cfg.numAttrs;
    }
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
};

}  // namespace mllm
