// Swap-AB with K folded into the weight rows, for a few tokens on Hopper.
//
// The swap-AB tiles give each CTA one 64-row slab of the weight, so a layer
// with N = 4096 outputs runs on 64 CTAs of the H100's 132, and at one token
// those do not saturate HBM (the same bytes cut into 128 slabs stream 5-11%
// faster: docs/int8_mm_dispatch.md, session 30). wgmma's M side cannot be
// narrower than 64, so instead of thinner slabs the problem is folded: with
// a fold F, the weight [N, K] is read as [F*N, K/F] and the activations
// [M, K] as [F*M, K/F] (both free views of row-major storage: folded row
// F*i + h is the h-th K/F-chunk of row i), and the kernel computes
//   D'[F*n + h, F*m + g] = sum over the h-th / g-th chunks,
// of which the diagonal g == h terms add up to D[n, m]:
//   D[n, m] = sum_h D'[F*n + h, F*m + h].
// Those F terms lie in one CTA's accumulator tile (64 rows and the tile's
// token columns are multiples of F), so the split-K reduction happens in the
// epilogue, in shared memory, exactly (int32), with no workspace, no second
// kernel and no cross-CTA synchronization. The off-diagonal products are
// wasted tensor-core work, free while the weight stream is the bound. A
// fold of F gives the layer F times the CTAs, each streaming 1/F of a slab's
// bytes; it needs F*M tokens to fit the tile and K/F to stay 16-byte aligned.
#pragma once

#include <cutlass/arch/barrier.h>
#include <cutlass/epilogue/collective/detail.hpp>

#include "pass_through.cuh"

namespace mllm::int8_mm::sm90 {

// The unfolded problem the folded epilogue writes: out[m, n] for m < m_rows,
// n < n_cols, with the same scales and bias as every other config.
template <class Out>
struct FoldedArgs {
  const float* scales_a = nullptr;
  const float* scales_b = nullptr;
  const Out* bias = nullptr;  // NULL: no bias
  Out* out = nullptr;
  int m_rows = 0;
  int n_cols = 0;
  int fold = 2;  // 2 or 4 (a fold of 1 is the plain swap-AB tile)
  bool a_per_row = false;
  bool b_per_col = false;
};

// A CUTLASS collective epilogue (the DefaultEpilogue interface, run through
// Sm90TmaWarpSpecializedAdapter) that folds the accumulator tile back:
// each thread parks the diagonal accumulators it holds in shared memory,
// then the warpgroup sums each output's F terms and applies
// round(scale_a * (scale_b * acc) + bias), as the visitor tree of the other
// configs does. Pingpong runs one warpgroup's epilogue at a time, so the
// two consumer warpgroups share the staging tile.
template <class Out, int kTileM, int kTileN>
class FoldedEpilogue : public PassThroughArguments<FoldedArgs<Out>> {
 public:
  using ElementC = Out;
  using ElementD = Out;
  using StrideC = cute::Stride<int64_t, cute::_1, int64_t>;  // unused: D is written by hand
  using StrideD = StrideC;
  using ThreadEpilogueOp = void;  // GemmUniversalAdapter names it; nothing uses it
  using Arguments = FoldedArgs<Out>;
  using Params = Arguments;
  struct SharedStorage {
    int32_t acc[kTileM][kTileN + 1];  // +1: rows start in different banks
  };

  static constexpr int kThreads = 128;  // one consumer warpgroup
  // Tokens a thread writes at a fold of 2 (64 / 2 channels x kTileN / 2
  // tokens over the warpgroup); a fold of 4 needs fewer.
  static constexpr int kTokensPerThread = kTileM * kTileN / (4 * kThreads);

  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.fold == 2 || args.fold == 4;
  }

  CUTLASS_HOST_DEVICE explicit FoldedEpilogue(Params const& params) : params_(params) {}

  CUTLASS_DEVICE bool is_source_needed() { return false; }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL, BlockShapeMNK, BlockCoordMNKL blk_coord,
                                 cute::Tensor<FrgEngine, FrgLayout> const& accumulators, TiledMma tiled_mma,
                                 ResidueMNK, int thread_idx, char* smem) {
    using namespace cute;
    auto& tile = reinterpret_cast<SharedStorage*>(smem)->acc;
    const int fold = params_.fold;
    const int shift = fold == 4 ? 2 : 1;

    // Each thread writes one output channel (rows = 64 / F divides the
    // warpgroup) for every `stride`-th token of the tile. Its scales and bias
    // are loaded first, before anything is stored (a store would order the
    // loads after it: `out` might alias them as far as the compiler knows),
    // so their latency overlaps the staging and the barrier below.
    const int rows = kTileM >> shift, tokens = kTileN >> shift;
    const int r = thread_idx % rows, first = thread_idx / rows, stride = kThreads / rows;
    const int n = static_cast<int>(get<0>(blk_coord)) * rows + r;
    const int m0 = static_cast<int>(get<1>(blk_coord)) * tokens;
    const bool n_in = n < params_.n_cols;
    const float sb = n_in ? params_.scales_b[params_.b_per_col ? n : 0] : 0.0f;
    const float bias = n_in && params_.bias != nullptr ? static_cast<float>(params_.bias[n]) : 0.0f;
    float sa[kTokensPerThread];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kTokensPerThread; ++j) {
      const int t = first + j * stride, m = m0 + t;
      sa[j] = t < tokens && m < params_.m_rows ? params_.scales_a[params_.a_per_row ? m : 0] : 0.0f;
    }

    // Park the diagonal accumulators (folded row and column in the same K
    // chunk) at their place in the tile.
    Tensor coord = tiled_mma.get_thread_slice(thread_idx)
                       .partition_C(make_identity_tensor(Shape<Int<kTileM>, Int<kTileN>>{}));
    CUTE_STATIC_ASSERT_V(size(coord) == size(accumulators));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accumulators); ++i) {
      const int row = get<0>(coord(i)), col = get<1>(coord(i));
      if (((row ^ col) & (fold - 1)) == 0) tile[row][col] = accumulators(i);
    }
    cutlass::arch::NamedBarrier::sync(kThreads, cutlass::arch::ReservedNamedBarriers::EpilogueBarrier);

    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kTokensPerThread; ++j) {
      const int t = first + j * stride, m = m0 + t;
      if (!n_in || t >= tokens || m >= params_.m_rows) continue;
      int32_t sum = 0;
      for (int h = 0; h < fold; ++h) sum += tile[(r << shift) + h][(t << shift) + h];
      params_.out[static_cast<int64_t>(m) * params_.n_cols + n] = Out(sa[j] * (sb * static_cast<float>(sum)) + bias);
    }
    // The other consumer warpgroup's epilogue reuses the tile.
    cutlass::arch::NamedBarrier::sync(kThreads, cutlass::arch::ReservedNamedBarriers::EpilogueBarrier);
  }

 private:
  Params params_;
};

// The fold for an m x n x k problem of at most 32 tokens: MLLM_INT8_MM_FOLD
// (1, 2 or 4) where it fits, else the fold that leaves the busiest SM the
// fewest weight bytes (persistent CTAs, one an SM, each walking 64-row slabs
// of K / F). A fold of F needs F * m <= 32 tokens and K / F 16-byte aligned.
// On a tie a fold of 2 on the 16-token tile wins over none (one H100, graph
// replays: gate_up 33.1 / 33.8 us at 1 / 8 rows against 33.5 / 34.1), but over
// the 32-token tile none wins (Qwen3-8B W8A8 at batch 16: 4.76-4.80 ms a
// step with every layer folded in two, 4.72-4.76 with the tie unfolded);
// otherwise the smaller fold. On 132 SMs: o and down (N = 4096) fold 2 up to
// 16 tokens, qkv (6144) 4 up to 8, gate_up (24576) 2 up to 8.
inline int choose_fold(int m, int n, int k, int sm_count) {
  const auto fits = [&](int f) { return f * m <= 32 && k % (16 * f) == 0; };
  static const int asked = [] {
    const char* v = std::getenv("MLLM_INT8_MM_FOLD");
    return v == nullptr ? 0 : std::atoi(v);
  }();
  if ((asked == 1 || asked == 2 || asked == 4) && fits(asked)) return asked;
  const int sms = sm_count > 0 ? sm_count : 1;
  // In quarter slabs of K on the busiest SM: waves x 4 / F.
  const auto cost = [&](int f) { return ((f * n + 63) / 64 + sms - 1) / sms * (4 / f); };
  int best = 1;
  if (fits(2) && (cost(2) < cost(1) || (cost(2) == cost(1) && 2 * m <= 16))) best = 2;
  if (fits(4) && cost(4) < cost(best)) best = 4;
  return best;
}

// The swap-AB Pingpong tile with `Tokens` tokens and the folded epilogue.
template <class Out, class Tokens>
struct FoldedSwapGemm {
  using TileShape = Shape<_64, Tokens, _256>;
  using One = Shape<_1, _1, _1>;
  using Epilogue =
      cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<FoldedEpilogue<Out, 64, Tokens::value>>;
  using Mainloop = Int8Mainloop<TileShape, One, Pingpong,
                                static_cast<int>(sizeof(typename Epilogue::SharedStorage)), kSwapPrefetchTiles>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::PersistentScheduler>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static mllm_result_t run(const mllm_int8_mm_args_t& p, int fold, cudaStream_t stream, bool programmatic) {
    const int m = static_cast<int>(p.m), n = static_cast<int>(p.n), k = static_cast<int>(p.k);
    // The kernel's problem: (F*N weight rows) x (F*M token rows) x K/F.
    const int km = fold * n, kn = fold * m, kk = k / fold;
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(km, kk, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(kn, kk, 1));
    FoldedArgs<Out> epilogue{p.scales_a, p.scales_b, static_cast<const Out*>(p.bias), static_cast<Out*>(p.out),
                             m, n, fold, p.scales_a_per_row != 0, p.scales_b_per_col != 0};
    typename Op::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {km, kn, kk, 1},
                                {static_cast<const int8_t*>(p.b), sa, static_cast<const int8_t*>(p.a), sb},
                                epilogue};
    args.scheduler.max_swizzle_size = tile_swizzle();
    return run_op<Op>(args, stream, programmatic);
  }
};

// MLLM_INT8_MM_SM90_SWAPK: up to 32 tokens, folded by `choose_fold` on the
// narrowest tile that holds F * m tokens; unfolded, the plain swap-AB tile
// (at a fold of 1 the folded epilogue's first form measured ~0.5 us slower
// than its TMA epilogue).
template <class Out>
mllm_result_t run_swap_folded(const mllm_int8_mm_args_t& p, cudaStream_t stream, bool pdl) {
  const int m = static_cast<int>(p.m);
  const int fold = choose_fold(m, static_cast<int>(p.n), static_cast<int>(p.k), mllm::device_sm_count());
  if (fold == 1) return m <= 16 ? run_swap<Out, _16>(p, stream, pdl) : run_swap<Out, _32>(p, stream, pdl);
  return fold * m <= 16 ? FoldedSwapGemm<Out, _16>::run(p, fold, stream, pdl)
                        : FoldedSwapGemm<Out, _32>::run(p, fold, stream, pdl);
}

}  // namespace mllm::int8_mm::sm90
