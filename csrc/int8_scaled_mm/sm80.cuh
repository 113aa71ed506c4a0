// CUTLASS 2.x tensor-op int8 GEMM (SM80 and up) with the scales and bias
// fused into an epilogue visitor tree:
//   D = round(scale_a (col) * (scale_b (row) * acc) + bias (row)).
// Compiled with PTX for the arch it is built for, so SM89/SM90+ run it too.
#pragma once

// Order matters: the visitor headers assume these are already included.
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/gemm/gemm.h>
#include <cute/tensor.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>
#include <cutlass/gemm/kernel/default_gemm_universal_with_visitor.h>

#include "common.cuh"
#include "mllm_pdl.cuh"
#include "pass_through.cuh"

namespace mllm::int8_mm::sm80 {

using namespace cute;
namespace tb = cutlass::epilogue::threadblock;

// A row vector ([n], one value per column) or one scalar, chosen at run
// time: CUTLASS's row broadcast loads vectors and cannot take stride 0.
template <class Element, class StrideMNL>
struct RowOrScalarArgs {
  Element const* ptr = nullptr;
  bool per_col = true;
  StrideMNL stride = {};
};

template <class ThreadMap, class Element, class StrideMNL>
struct RowOrScalar : PassThroughArguments<RowOrScalarArgs<Element, StrideMNL>> {
  using Arguments = RowOrScalarArgs<Element, StrideMNL>;
  using Params = Arguments;
  struct SharedStorage {};

  static int constexpr kVecBits = ThreadMap::kElementsPerAccess * cutlass::sizeof_bits<Element>::value;
  using Vec = cutlass::uint_bit_t<cute::min(128, kVecBits)>;
  static int constexpr kVecLen = sizeof(Vec) / sizeof(Element);

  CUTLASS_HOST_DEVICE RowOrScalar() {}
  CUTLASS_HOST_DEVICE RowOrScalar(Params const& params, SharedStorage const&) : params(&params) {}
  Params const* params;

  template <class GTensor, class RTensor, class CTensor, class ProblemShape>
  struct Callbacks : tb::EmptyCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor&& g, RTensor&& r, CTensor&& c, ProblemShape shape, Params const* params)
        : gmem(cute::forward<GTensor>(g)),
          regs(cute::forward<RTensor>(r)),
          coords(cute::forward<CTensor>(c)),
          n(get<1>(shape)),
          params(params) {}
    GTensor gmem;
    RTensor regs;
    CTensor coords;
    int n;
    Params const* params;

    CUTLASS_DEVICE void begin_epilogue() {
      if (!params->per_col) {
        auto v = recast<cutlass::Array<Element, kVecLen>>(coalesce(regs));
        Element const s = *params->ptr;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(v); ++i) v[i].fill(s);
        return;
      }
      clear(regs);
      auto src = filter(gmem);
      auto crd = filter(coords);
      auto dst = filter(regs);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(src); ++i) {
        cutlass::arch::global_load<Vec, sizeof(Vec)>(dst(i), (void const*)&src(i), get<1>(crd(i)) < n);
      }
    }

    template <class Acc, int kFrag>
    CUTLASS_DEVICE auto visit(int, int, int column_idx, int, cutlass::Array<Acc, kFrag> const&) {
      Tensor frags = recast<cutlass::Array<Element, kFrag>>(coalesce(regs));
      return frags(column_idx);
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord tile_offset, int thread_idx, ProblemShape shape) {
    Tensor m_row = make_tensor(make_gmem_ptr(params->ptr), shape, params->stride);
    Tensor g = recast<Vec>(ThreadMap::partition(m_row, thread_idx, tile_offset))(_, _, _0{}, _0{}, _0{}, _0{});
    Tensor r = make_tensor_like(g);
    Tensor c_row = make_identity_tensor(m_row.shape());
    Tensor c = outer_partition(ThreadMap::partition(c_row, thread_idx, tile_offset)(_, _, _0{}, _0{}, _0{}, _0{}),
                               Shape<Int<kVecLen>>{}, (_0{}));
    return Callbacks<decltype(g), decltype(r), decltype(c), ProblemShape>(cute::move(g), cute::move(r),
                                                                          cute::move(c), shape, params);
  }
};

// CUTLASS 2.x launches its kernels plainly: no programmatic dependent launch.
// This entry waits for the kernel before it and then runs the same body
// (CUTLASS's Kernel2 otherwise), so it may be launched with PDL: its CTAs are
// resident and start as soon as their producer finishes instead of being
// launched then. Opt-in (MLLM_INT8_MM_SM80_PDL=1): correct, but no faster in
// Qwen3-8B W8A8 decode on an H100 (batch 4: 4.41 ms either way; batch 16:
// 6.20-6.22 against 6.22).
template <class Kernel>
__global__ void waiting_kernel(typename Kernel::Params params) {
  extern __shared__ int smem[];
  mllm::wait_for_producer();
  Kernel::invoke(params, *reinterpret_cast<typename Kernel::SharedStorage*>(smem));
}

inline bool sm80_pdl_requested() {
  static const bool on = mllm::env_is_one("MLLM_INT8_MM_SM80_PDL");
  return on;
}

// Launches `waiting_kernel<Kernel>` for `args` with PDL; the grid and
// parameters as GemmUniversalBase computes them. The SM count and occupancy
// are kept per thread and device, as GemmUniversalBase keeps its own.
template <class Kernel, class Arguments>
cudaError_t launch_waiting(const Arguments& args, cudaStream_t stream) {
  constexpr int kSmem = int(sizeof(typename Kernel::SharedStorage));
  static const cudaError_t configured =
      kSmem >= (48 << 10)
          ? cudaFuncSetAttribute(waiting_kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem)
          : cudaSuccess;
  if (configured != cudaSuccess) return configured;
  thread_local int cached_device = -1, sms = 0, occupancy = 0;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess && device != cached_device) {
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e == cudaSuccess)
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, waiting_kernel<Kernel>, Kernel::kThreadCount, kSmem);
    if (e == cudaSuccess) cached_device = device;
  }
  if (e != cudaSuccess) return e;
  const typename Kernel::Params params(args, sms, occupancy);
  const mllm::LaunchConfig l(params.get_grid_dims(), dim3(Kernel::kThreadCount), stream, true, kSmem);
  return cudaLaunchKernelEx(&l.cfg, waiting_kernel<Kernel>, params);
}

template <class Out, class TileShape, class WarpShape, int Stages>
struct Gemm {
  static constexpr int kEpilogueStages = 1;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<Out>::value;
  using ThreadMap = tb::OutputTileThreadLayout<TileShape, WarpShape, Out, kAlignOut, kEpilogueStages>;

  using Acc = tb::VisitorAccFetch;
  // scale_a: one value per row; stride (1 or 0, 0, 0) picks per-row or scalar.
  using ScaleA = tb::VisitorColBroadcast<ThreadMap, float, Stride<int64_t, _0, _0>>;
  using ScaleB = RowOrScalar<ThreadMap, float, Stride<_0, _1, _0>>;
  // A null bias pointer reads as 0.
  using Bias = tb::VisitorRowBroadcast<ThreadMap, Out, Stride<_0, _1, _0>>;
  using TimesB = tb::VisitorCompute<cutlass::multiplies, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using TimesAPlusBias =
      tb::VisitorCompute<cutlass::multiply_add, Out, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using Store =
      tb::VisitorAuxStore<ThreadMap, Out, cutlass::FloatRoundStyle::round_to_nearest, Stride<int64_t, _1, _0>>;
  using Tree = tb::Sm80EVT<Store, tb::Sm80EVT<TimesAPlusBias, ScaleA, tb::Sm80EVT<TimesB, ScaleB, Acc>, Bias>>;

  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      int8_t, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, 16, int8_t,
      cutlass::layout::ColumnMajor, cutlass::ComplexTransform::kNone, 16, Out, cutlass::layout::RowMajor,
      kAlignOut, int32_t, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TileShape, WarpShape,
      cutlass::gemm::GemmShape<16, 8, 32>, Tree, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>,
      Stages, cutlass::arch::OpMultiplyAddSaturate, kEpilogueStages>::GemmKernel;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static mllm_result_t run(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
    const int m = static_cast<int>(p.m), n = static_cast<int>(p.n), k = static_cast<int>(p.k);
    typename Tree::Arguments epilogue{
        {
            {p.scales_a, 0.f, {int64_t(p.scales_a_per_row ? 1 : 0), {}, {}}},
            {{p.scales_b, p.scales_b_per_col != 0, {}}, {}, {}},
            {static_cast<const Out*>(p.bias), Out(0), {}},
            {},
        },
        {static_cast<Out*>(p.out), {int64_t(n), {}, {}}},
    };
    typename Op::Arguments args(cutlass::gemm::GemmUniversalMode::kGemm, {m, n, k}, 1, epilogue, p.a, p.b,
                                nullptr, nullptr, 0, 0, 0, 0, k, k, n, n);
    Op op;
    if (op.can_implement(args) != cutlass::Status::kSuccess)
      return fail(MLLM_STATUS_INVALID_ARGUMENT, "CUTLASS SM80 int8 GEMM cannot implement this problem");
    if (Op::get_workspace_size(args) != 0)
      return fail(MLLM_STATUS_INVALID_ARGUMENT, "CUTLASS SM80 int8 GEMM unexpectedly needs a workspace");
    if (programmatic && sm80_pdl_requested())
      return cuda_result(launch_waiting<Kernel>(Op::to_underlying_arguments(args), stream));
    cutlass::Status s = op.initialize(args, nullptr, stream);
    if (s == cutlass::Status::kSuccess) s = op.run(stream);
    if (s != cutlass::Status::kSuccess) {
      cudaError_t e = cudaGetLastError();
      return e != cudaSuccess ? cuda_result(e) : fail(MLLM_STATUS_CUDA_ERROR, cutlassGetStatusString(s));
    }
    return cuda_result(cudaGetLastError());
  }
};

template <class Out>
mllm_result_t run_typed(const mllm_int8_mm_args_t& p, int config, cudaStream_t stream, bool programmatic) {
  using cutlass::gemm::GemmShape;
  switch (config) {
    case MLLM_INT8_MM_SM80_32x64x128:
      return Gemm<Out, GemmShape<32, 64, 128>, GemmShape<16, 64, 64>, 5>::run(p, stream, programmatic);
    case MLLM_INT8_MM_SM80_64x128x128:
      return Gemm<Out, GemmShape<64, 128, 128>, GemmShape<32, 64, 64>, 4>::run(p, stream, programmatic);
    case MLLM_INT8_MM_SM80_128x128x64:
      return Gemm<Out, GemmShape<128, 128, 64>, GemmShape<64, 64, 64>, 5>::run(p, stream, programmatic);
    case MLLM_INT8_MM_SM80_256x128x64:
      return Gemm<Out, GemmShape<256, 128, 64>, GemmShape<64, 64, 64>, 3>::run(p, stream, programmatic);
    default:
      return fail(MLLM_STATUS_UNSUPPORTED, "not an SM80 int8_scaled_mm config");
  }
}

inline bool is_config(int config) { return config >= MLLM_INT8_MM_SM80_32x64x128 && config <= MLLM_INT8_MM_SM80_256x128x64; }

// `programmatic`: the caller allows PDL (SM90+, not MLLM_PDL=0); used only
// with MLLM_INT8_MM_SM80_PDL=1 (above).
inline mllm_result_t run(const mllm_int8_mm_args_t& p, int config, cudaStream_t stream, bool programmatic) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? run_typed<cutlass::bfloat16_t>(p, config, stream, programmatic)
                                        : run_typed<cutlass::half_t>(p, config, stream, programmatic);
}

}  // namespace mllm::int8_mm::sm80
