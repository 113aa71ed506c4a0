// Element-type traits for kernels compiled by NVRTC or nvcc. No system
// headers: 16-bit floats are handled as raw bits with PTX conversions, so
// NVRTC needs no include path to the CUDA toolkit.
#pragma once

namespace mllm {

struct F32 {
  using storage = float;
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

struct F16 {
  using storage = unsigned short;
  static __device__ __forceinline__ float to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  }
  static __device__ __forceinline__ unsigned short from_float(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
  }
};

struct BF16 {
  using storage = unsigned short;
  static __device__ __forceinline__ float to_float(unsigned short b) {
    return __uint_as_float(static_cast<unsigned int>(b) << 16);
  }
  // Round to nearest even, as torch's bf16 cast. SM80+ has it in one
  // instruction; the integer version costs ~7 and made RMSNorm compute-bound.
  static __device__ __forceinline__ unsigned short from_float(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
#else
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays quiet
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<unsigned short>(u >> 16);
#endif
  }
};

// Rounds a float to D's precision and back (for bit-faithful intermediates).
template <typename D>
__device__ __forceinline__ float round_to(float v) {
  return D::to_float(D::from_float(v));
}

}  // namespace mllm
