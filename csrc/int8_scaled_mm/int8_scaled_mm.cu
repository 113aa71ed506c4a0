// W8A8 int8 scaled matmul: the C ABI entry points (see mllm_kernel.h).
//
// Builds: `int8_scaled_mm[sm80]` (skinny mma.sync kernels, CUTLASS 2.x
// configs and the dynamic-quant path; any SM80+ arch) and
// `int8_scaled_mm[sm90]` (CUTLASS 3.x; sm_90a). The AOT build compiles each
// as its own object too: every entry point below is in exactly one of them.
// Which config runs is the caller's choice (the Rust dispatch table); each
// entry point checks its arguments and the GPU.
#include "common.cuh"
#include "dynamic_quant.cuh"

namespace {
using namespace mllm::int8_mm;

// The dynamic path's own arguments; returns the GEMM args with A = q.
mllm_result_t dynamic_args(const void* x, mllm_dtype_t x_dtype, int8_t* q, float* q_scales,
                           const mllm_int8_mm_args_t* args, mllm_int8_mm_args_t* p) {
  if (args == nullptr) return fail(MLLM_STATUS_INVALID_ARGUMENT, "args is NULL");
  if (x_dtype != MLLM_DTYPE_F16 && x_dtype != MLLM_DTYPE_BF16)
    return fail(MLLM_STATUS_UNSUPPORTED_DTYPE, "x must be f16 or bf16");
  if ((args->m > 0 && (x == nullptr || q == nullptr || q_scales == nullptr)) || !aligned16(x) || !aligned16(q))
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "x, q and q_scales must be non-NULL and x, q 16-byte aligned");
  *p = *args;
  p->a = q;
  p->scales_a = q_scales;
  p->scales_a_per_row = 1;
  return check_args(p);
}

// The static entry points' shared body: `check(args)`, then `run(args, stream)`.
template <typename Check, typename Run>
mllm_result_t run_static(const mllm_int8_mm_args_t* args, mllm_stream_t stream, Check check, Run run) {
  mllm_result_t r = check(args);
  if (r.status != MLLM_STATUS_OK || args->m == 0) return r;
  return run(*args, static_cast<cudaStream_t>(stream));
}

// The dynamic entry points' shared body: the GEMM args with A = q, `check`,
// the per-token quantization of x into (q, q_scales), then `run`.
template <typename Check, typename Run>
mllm_result_t run_dynamic(const void* x, mllm_dtype_t x_dtype, int8_t* q, float* q_scales,
                          const mllm_int8_mm_args_t* args, mllm_stream_t stream, Check check, Run run) {
  mllm_int8_mm_args_t p;
  mllm_result_t r = dynamic_args(x, x_dtype, q, q_scales, args, &p);
  if (r.status != MLLM_STATUS_OK) return r;
  r = check(&p);
  if (r.status != MLLM_STATUS_OK || p.m == 0) return r;
  const auto s = static_cast<cudaStream_t>(stream);
  r = cuda_result(dynamic_quant::launch(x, x_dtype, q, q_scales, p.m, p.k, s));
  if (r.status != MLLM_STATUS_OK) return r;
  return run(p, s);
}
}  // namespace

#if !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_SM80)
#include "skinny.cuh"
#include "sm80.cuh"
#include "stream.cuh"

namespace {

mllm_result_t check_sm80(const mllm_int8_mm_args_t* args, int32_t config) {
  mllm_result_t r = check_args(args);
  if (r.status != MLLM_STATUS_OK) return r;
  if (device_sm() < 80) return fail(MLLM_STATUS_UNSUPPORTED, "int8 tensor cores need SM80 or newer");
  if (skinny::max_rows(config) == 0 && !sm80::is_config(config))
    return fail(MLLM_STATUS_UNSUPPORTED, "unknown int8_scaled_mm config for the sm80 build");
  if (skinny::max_rows(config) != 0 && args->m > skinny::max_rows(config))
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "m exceeds the rows this skinny config covers");
  if (config == MLLM_INT8_MM_STREAM_M16 && device_sm() < 90)
    return fail(MLLM_STATUS_UNSUPPORTED, "stream_m16 needs SM90 or newer (TMA bulk copies)");
  return ok();
}

mllm_result_t run_sm80(const mllm_int8_mm_args_t& p, int32_t config, cudaStream_t stream, bool programmatic) {
  if (config == MLLM_INT8_MM_STREAM_M16) return cuda_result(stream::launch(p, stream, programmatic));
  if (skinny::max_rows(config) != 0) return cuda_result(skinny::launch(p, config, stream, programmatic));
  return sm80::run(p, config, stream, programmatic);
}

auto check_sm80_for(int32_t config) {
  return [config](const mllm_int8_mm_args_t* a) { return check_sm80(a, config); };
}

// On SM90 the skinny/stream kernels start streaming the weight while the
// kernel before them (the dynamic quantization, or the norm that quantized
// A) finishes: they read nothing else before griddepcontrol.wait. CUTLASS
// 2.x kernels use it only with MLLM_INT8_MM_SM80_PDL=1 (sm80.cuh);
// programmatic dependent launch exists from SM90 on.
auto run_sm80_for(int32_t config) {
  return [config](const mllm_int8_mm_args_t& p, cudaStream_t s) { return run_sm80(p, config, s, mllm::pdl_enabled()); };
}
}  // namespace

extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_sm80(const mllm_int8_mm_args_t* args, int32_t config,
                                                           mllm_stream_t stream) {
  return run_static(args, stream, check_sm80_for(config), run_sm80_for(config));
}

extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_dynamic_sm80(const void* x, mllm_dtype_t x_dtype, int8_t* q,
                                                                   float* q_scales,
                                                                   const mllm_int8_mm_args_t* args,
                                                                   int32_t config, mllm_stream_t stream) {
  // A few rows on the streaming kernel may quantize x themselves (q, q_scales
  // unused), opt-in with MLLM_INT8_MM_FUSED_QUANT=1: on an H200 (ncu, Qwen3-8B
  // o_proj at M = 1) it took 21.4 us against ~12 for quantization kernel + GEMM.
  static const bool fused_quant = mllm::env_is_one("MLLM_INT8_MM_FUSED_QUANT");
  if (fused_quant && config == MLLM_INT8_MM_STREAM_M16 && args != nullptr && args->m <= stream::kQuantRows &&
      x_dtype == args->out_dtype) {
    mllm_int8_mm_args_t p;
    mllm_result_t r = dynamic_args(x, x_dtype, q, q_scales, args, &p);
    if (r.status == MLLM_STATUS_OK) r = check_sm80(&p, config);
    if (r.status != MLLM_STATUS_OK || p.m == 0) return r;
    // check_sm80 passed: an SM90+ GPU (programmatic dependent launch unless MLLM_PDL=0).
    return cuda_result(stream::launch_quantizing(x, p, static_cast<cudaStream_t>(stream), mllm::pdl_enabled()));
  }
  return run_dynamic(x, x_dtype, q, q_scales, args, stream, check_sm80_for(config), run_sm80_for(config));
}
#endif

#if defined(MLLM_VARIANT_SM90) && defined(MLLM_VARIANT_STUB)
// An AOT build without sm_90a (build.rs): the entry points the bindings link, and no
// CUTLASS 3.x. The loader uses the AOT library only on the archs it was built for, where
// these configs never dispatch; should one be called anyway, it says why.
namespace {
mllm_result_t no_sm90a() {
  return fail(MLLM_STATUS_UNSUPPORTED, "this build has no sm_90a int8_scaled_mm code (MLLM_CUDA_ARCHS lacks 90a)");
}
}  // namespace

extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_sm90(const mllm_int8_mm_args_t*, int32_t, mllm_stream_t) {
  return no_sm90a();
}

extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_dynamic_sm90(const void*, mllm_dtype_t, int8_t*, float*,
                                                                   const mllm_int8_mm_args_t*, int32_t,
                                                                   mllm_stream_t) {
  return no_sm90a();
}
#elif !defined(MLLM_VARIANT) || defined(MLLM_VARIANT_SM90)
#include "sm90.cuh"

namespace {
mllm_result_t check_sm90(const mllm_int8_mm_args_t* args) {
  mllm_result_t r = check_args(args);
  if (r.status != MLLM_STATUS_OK) return r;
  if (device_sm() != 90) return fail(MLLM_STATUS_UNSUPPORTED, "the SM90 int8_scaled_mm configs need an sm_90 GPU");
  return ok();
}

auto run_sm90_for(int32_t config) {
  return [config](const mllm_int8_mm_args_t& p, cudaStream_t s) { return sm90::run(p, config, s, mllm::pdl_enabled()); };
}
}  // namespace

// Built with CUTLASS_ENABLE_GDC_FOR_SM90: the prologue overlaps the previous
// kernel and waits for it before reading A.
extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_sm90(const mllm_int8_mm_args_t* args, int32_t config,
                                                           mllm_stream_t stream) {
  return run_static(args, stream, check_sm90, run_sm90_for(config));
}

extern "C" MLLM_API mllm_result_t mllm_int8_scaled_mm_dynamic_sm90(const void* x, mllm_dtype_t x_dtype, int8_t* q,
                                                                   float* q_scales,
                                                                   const mllm_int8_mm_args_t* args,
                                                                   int32_t config, mllm_stream_t stream) {
  return run_dynamic(x, x_dtype, q, q_scales, args, stream, check_sm90, run_sm90_for(config));
}
#endif
