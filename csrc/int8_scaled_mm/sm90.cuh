// CUTLASS 3.x int8 GEMM for Hopper (sm_90a): TMA loads, wgmma, warp-
// specialized Pingpong or Cooperative mainloops, persistent tile scheduler,
// and the same fused epilogue as SM80 as a visitor tree:
//   D = round(scale_a (col) * (scale_b (row) * acc) + bias (row)).
// The broadcasts take a `bool` stride, so per-row/per-column vs scalar
// scales are a run-time choice in one instantiation.
//
// Swap-AB configs (`SwapAB`) run the transposed problem D^T = B A^T for a
// few rows of A: wgmma's M side is at least 64, so with M <= 32 tokens the
// weight's rows take it and the tokens the narrow N side (16 or 32). Each
// CTA then streams a 64-row slab of the weight once through TMA and reads
// only its tokens' A tile beside it, where a 64-row token tile would be
// mostly padding. D^T is written column-major, i.e. D row-major.
#pragma once

// The kernels wait on griddepcontrol before reading A, so the dynamic path
// can launch them with programmatic dependent launch behind the quant kernel.
#ifndef CUTLASS_ENABLE_GDC_FOR_SM90
#define CUTLASS_ENABLE_GDC_FOR_SM90 1
#endif

#include <cstdlib>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

#include "common.cuh"

namespace mllm::int8_mm::sm90 {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// The persistent tile scheduler's swizzle: output tiles are walked in
// groups of this many along the raster, so tiles running at once share more
// A and B rows in L2 (CUTLASS's default is 1). MLLM_INT8_MM_SWIZZLE (1, 2,
// 4 or 8) overrides it, to measure.
inline int tile_swizzle() {
  static const int swizzle = [] {
    const char* v = std::getenv("MLLM_INT8_MM_SWIZZLE");
    const int s = v == nullptr ? 1 : std::atoi(v);
    return s == 2 || s == 4 || s == 8 ? s : 1;
  }();
  return swizzle;
}

// Whether the swap-AB tiles pull their first weight k-tiles into L2 before
// the kernel's griddepcontrol.wait (WeightPrefetchMainloop). On unless
// MLLM_INT8_MM_SWAP_PREFETCH=0: Qwen3-8B W8A8 at batch 1, 3.90-3.93 against
// 4.04-4.06 ms a step on an H100 and 3.13-3.15 against 3.18-3.20 on an H200.
inline bool swap_prefetch_requested() {
  static const bool on = !mllm::env_is_zero("MLLM_INT8_MM_SWAP_PREFETCH");
  return on;
}

// Weight k-tiles (16 KiB each) a swap-AB CTA prefetches when on. Qwen3-8B
// W8A8 on an H100, three or four rounds: 3.90-3.93 ms a step at batch 1 with
// four, 3.94-3.98 with two, 3.91-3.93 with eight; 4.13-4.16 / 4.17-4.20 at
// batch 4 with four / two.
constexpr int kSwapPrefetchTiles = 4;

// A mainloop that, before any wait, asks the TMA unit to pull the first
// `kTiles` k-tiles of this CTA's A tile (in a swapped problem, the weight)
// into L2. The kernel's producer waits on the previous kernel (programmatic
// dependent launch) before its first load, because B (the activations) is
// that kernel's output; the weight is not, so its first bytes can stream
// while the previous kernel finishes, as stream_m16's first stage does.
// `load_init` runs in every thread at the kernel's start, before the roles
// split and before that wait.
template <class Base, int kTiles>
struct WeightPrefetchMainloop : Base {
  template <class ProblemShapeMNKL>
  CUTLASS_DEVICE auto load_init(ProblemShapeMNKL const& problem, typename Base::Params const& params) const {
    auto inputs = Base::load_init(problem, params);
    if constexpr (kTiles > 0) {
      if (threadIdx.x == 0) {
        Tensor g_a = get<0>(inputs);  // (BLK_M, BLK_K, m, k, l)
        // The persistent scheduler's first tile for this CTA. With one tile
        // along N (a few tokens) its linear index is the M tile; a wrong
        // guess would only prefetch bytes another CTA reads.
        const int m_tile = static_cast<int>(blockIdx.x + blockIdx.y * gridDim.x);
        if (m_tile < size<2>(g_a)) {
          Tensor t_a = params.tma_load_a.get_slice(0).partition_S(g_a(_, _, m_tile, _, 0));  // (TMA, M, K, k)
          const int tiles = cute::min(kTiles, static_cast<int>(size<3>(t_a)));
          for (int k = 0; k < tiles; ++k) cute::prefetch(params.tma_load_a, t_a(_, _, _, k));
        }
      }
    }
    return inputs;
  }
};

// The int8 x int8 -> int32 mainloop the CUTLASS builder makes for a tile,
// with as many stages as leave `kEpilogueSmem` bytes to the epilogue, and the
// swap-AB weight prefetch when `kPrefetchTiles` > 0.
template <class TileShape, class ClusterShape, class KernelSchedule, int kEpilogueSmem, int kPrefetchTiles>
using Int8Mainloop = WeightPrefetchMainloop<
    typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, 16, int8_t,
        cutlass::layout::ColumnMajor, 16, int32_t, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<kEpilogueSmem>, KernelSchedule>::CollectiveOp,
    kPrefetchTiles>;

// Checks, initializes and launches a CUTLASS 3.x GEMM (none needs a workspace).
template <class Op>
mllm_result_t run_op(typename Op::Arguments const& args, cudaStream_t stream, bool programmatic) {
  Op op;
  if (op.can_implement(args) != cutlass::Status::kSuccess)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "CUTLASS SM90 int8 GEMM cannot implement this problem");
  if (Op::get_workspace_size(args) != 0)
    return fail(MLLM_STATUS_INVALID_ARGUMENT, "CUTLASS SM90 int8 GEMM unexpectedly needs a workspace");
  cutlass::Status s = op.initialize(args, nullptr, stream);
  if (s == cutlass::Status::kSuccess) s = op.run(stream, nullptr, programmatic);
  if (s != cutlass::Status::kSuccess) {
    cudaError_t e = cudaGetLastError();
    return e != cudaSuccess ? cuda_result(e) : fail(MLLM_STATUS_CUDA_ERROR, cutlassGetStatusString(s));
  }
  return cuda_result(cudaGetLastError());
}

template <class Out, class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule,
          bool SwapAB = false, int kPrefetchTiles = 0>
struct Gemm {
  // WeightPrefetchMainloop slices the TMA copy for cluster rank 0 only.
  static_assert(kPrefetchTiles == 0 || cute::size(ClusterShape{}) == 1,
                "the swap-AB weight prefetch assumes a 1x1x1 cluster");
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<Out>::value;
  // Per-token (A) and per-channel (B) vectors run along the kernel's M and N
  // sides, or the other way round when the problem is swapped.
  template <class Element, class Stride>
  using AlongM = fusion::Sm90ColBroadcast<0, TileShape, Element, Element, Stride>;
  template <class Element, class Stride>
  using AlongN = fusion::Sm90RowBroadcast<0, TileShape, Element, Element, Stride>;
  using TokenScale = cute::conditional_t<SwapAB, AlongN<float, Stride<_0, bool, _0>>, AlongM<float, Stride<bool, _0, _0>>>;
  using ChannelScale =
      cute::conditional_t<SwapAB, AlongM<float, Stride<bool, _0, _0>>, AlongN<float, Stride<_0, bool, _0>>>;
  // A null bias pointer reads as 0.
  using Bias = cute::conditional_t<SwapAB, AlongM<Out, Stride<_1, _0, _0>>, AlongN<Out, Stride<_0, _1, _0>>>;
  using Acc = fusion::Sm90AccFetch;
  using TimesB = fusion::Sm90Compute<cutlass::multiplies, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using TimesAPlusBias =
      fusion::Sm90Compute<cutlass::multiply_add, Out, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using Tree = fusion::Sm90EVT<TimesAPlusBias, TokenScale, fusion::Sm90EVT<TimesB, ChannelScale, Acc>, Bias>;
  using LayoutD = cute::conditional_t<SwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, LayoutD, kAlignOut, Out, LayoutD,
      kAlignOut, EpilogueSchedule, Tree>::CollectiveOp;

  using Mainloop = Int8Mainloop<TileShape, ClusterShape, KernelSchedule,
                                static_cast<int>(sizeof(typename Epilogue::SharedStorage)), kPrefetchTiles>;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // The vector broadcasts' arguments: a pointer, its value when null, and
  // whether it is a vector (true) or one scalar, on the side it runs along.
  template <class Broadcast, class T>
  static typename Broadcast::Arguments along(const T* ptr, bool vector) {
    typename Broadcast::Arguments a{ptr, T(0), {}};
    if constexpr (cute::is_same_v<Broadcast, AlongM<T, Stride<bool, _0, _0>>>)
      get<0>(a.dCol) = vector;
    else if constexpr (cute::is_same_v<Broadcast, AlongN<T, Stride<_0, bool, _0>>>)
      get<1>(a.dRow) = vector;
    return a;
  }

  static mllm_result_t run(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool programmatic) {
    const int m = static_cast<int>(p.m), n = static_cast<int>(p.n), k = static_cast<int>(p.k);
    // The kernel's (M, N) and operands: (m, n, A, B), or (n, m, B, A) swapped.
    const int km = SwapAB ? n : m, kn = SwapAB ? m : n;
    const int8_t* ka = static_cast<const int8_t*>(SwapAB ? p.b : p.a);
    const int8_t* kb = static_cast<const int8_t*>(SwapAB ? p.a : p.b);
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(km, k, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(kn, k, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(km, kn, 1));
    typename Op::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {km, kn, k, 1},
                                {ka, sa, kb, sb},
                                {{}, nullptr, sd, static_cast<Out*>(p.out), sd}};
    args.epilogue.thread = {
        along<TokenScale>(p.scales_a, p.scales_a_per_row != 0),
        {along<ChannelScale>(p.scales_b, p.scales_b_per_col != 0), {}, {}},
        along<Bias>(static_cast<const Out*>(p.bias), true),
        {},
    };
    args.scheduler.max_swizzle_size = tile_swizzle();
    return run_op<Op>(args, stream, programmatic);
  }
};

using Pingpong = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using Cooperative = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using EpiPingpong = cutlass::epilogue::TmaWarpSpecialized;
using EpiCooperative = cutlass::epilogue::TmaWarpSpecializedCooperative;

// A swap-AB tile with `Tokens` tokens, with the weight prefetch if asked.
template <class Out, class Tokens>
mllm_result_t run_swap(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool pdl) {
  using Tile = Shape<_64, Tokens, _256>;
  using One = Shape<_1, _1, _1>;
  using Plain = Gemm<Out, Tile, One, Pingpong, EpiPingpong, true>;
  using Prefetching = Gemm<Out, Tile, One, Pingpong, EpiPingpong, true, kSwapPrefetchTiles>;
  return swap_prefetch_requested() ? Prefetching::run(p, stream, pdl) : Plain::run(p, stream, pdl);
}

}  // namespace mllm::int8_mm::sm90

#include "sm90_fold.cuh"

namespace mllm::int8_mm::sm90 {

template <class Out>
mllm_result_t run_typed(const mllm_int8_mm_args_t& p, int config, cudaStream_t stream, bool pdl) {
  switch (config) {
    case MLLM_INT8_MM_SM90_P64x128x128:
      return Gemm<Out, Shape<_64, _128, _128>, Shape<_1, _1, _1>, Pingpong, EpiPingpong>::run(p, stream, pdl);
    case MLLM_INT8_MM_SM90_P128x128x128:
      return Gemm<Out, Shape<_128, _128, _128>, Shape<_1, _2, _1>, Pingpong, EpiPingpong>::run(p, stream, pdl);
    case MLLM_INT8_MM_SM90_C128x256x128:
      return Gemm<Out, Shape<_128, _256, _128>, Shape<_2, _1, _1>, Cooperative, EpiCooperative>::run(p, stream, pdl);
    case MLLM_INT8_MM_SM90_C256x128x128:
      return Gemm<Out, Shape<_256, _128, _128>, Shape<_1, _2, _1>, Cooperative, EpiCooperative>::run(p, stream, pdl);
    case MLLM_INT8_MM_SM90_C256x128x128_CL2x1:
      return Gemm<Out, Shape<_256, _128, _128>, Shape<_2, _1, _1>, Cooperative, EpiCooperative>::run(p, stream, pdl);
    case MLLM_INT8_MM_SM90_SWAP_P64x16x256:
      return run_swap<Out, _16>(p, stream, pdl);
    case MLLM_INT8_MM_SM90_SWAP_P64x32x256:
      return run_swap<Out, _32>(p, stream, pdl);
    case MLLM_INT8_MM_SM90_SWAP_P64x64x256:
      return run_swap<Out, _64>(p, stream, pdl);
    case MLLM_INT8_MM_SM90_SWAP_P64x128x256:
      return run_swap<Out, _128>(p, stream, pdl);
    case MLLM_INT8_MM_SM90_SWAPK:
      if (p.m > 32) return fail(MLLM_STATUS_INVALID_ARGUMENT, "sm90_swapk covers at most 32 rows");
      return run_swap_folded<Out>(p, stream, pdl);
    default:
      return fail(MLLM_STATUS_UNSUPPORTED, "not an SM90 int8_scaled_mm config");
  }
}

inline mllm_result_t run(const mllm_int8_mm_args_t& p, int config, cudaStream_t stream, bool pdl) {
  return p.out_dtype == MLLM_DTYPE_BF16 ? run_typed<cutlass::bfloat16_t>(p, config, stream, pdl)
                                        : run_typed<cutlass::half_t>(p, config, stream, pdl);
}

}  // namespace mllm::int8_mm::sm90
