//! `x · wᵀ` for bf16 weights on CPUs with AVX512-BF16 (Zen 4 and later, Sapphire Rapids and
//! later). The f32 activations are rounded to bf16 once, round-to-nearest-even (the inputs a bf16
//! GPU GEMM sees), and each `vdpbf16ps` does 32 multiply-adds into f32 accumulators: twice the
//! work per instruction of the f32 FMA path and no widening of weights in the loop. On SmolLM2's
//! shapes (Zen 5) prefill-sized products take 0.55x the time of the f32 gemm and decode-sized
//! ones 0.7x that of the f32 GEMV (`benches/cpu_linear.rs`).
//!
//! Below `PANEL_MIN_ROWS` rows, tiles of 16 dot products (4 x rows × 4 weight rows, 2 × 8 or
//! 1 × 16 by row count) keep one 16-lane accumulator each; a shuffle tree folds the 16 into one
//! vector at the end. From there on, `bf16_panel` packs the weights into column panels and keeps
//! output columns in the lanes: at 160 rows on SmolLM2's shapes it takes 0.72–0.80x the time of
//! the dot tiles (~700–820 GFLOP/s on two Zen 5 cores, whose `vdpbf16ps` peak is ~1.09 TFLOP/s).

// The SIMD kernels here are `unsafe fn`s whose safety contract (target features, slice
// lengths) is the function's own `# Safety`, and whose bodies are raw-pointer intrinsics
// throughout: an `unsafe {}` around each call would wrap every line (edition 2024 lint).
#![allow(unsafe_op_in_unsafe_fn)]

use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::bf16_panel;
use super::ops::{bf16_bits, nt_dims, SendPtr};
use super::{DType, Result, Tensor, TensorError};

/// Rows of `x` from which packing weight panels (see `bf16_panel`) beats the dot-product tiles:
/// measured crossover between 32 and 64 rows on SmolLM2's shapes (packing streams the weights at
/// about half the speed the dot tiles do, which small `m` cannot amortize).
const PANEL_MIN_ROWS: usize = 48;

/// Whether this CPU runs [`matmul_bf16_t`] (detected once).
///
/// ```
/// // False on CPUs without AVX512-BF16; callers then take the f32 path.
/// let _ = mllm_engine::tensor::bf16_dot_available();
/// ```
pub fn bf16_dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        });
        *HAS
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x · wᵀ` with `x` `[..., K]` (any float dtype) rounded to bf16 and `w` `[N, K]` bf16; f32
/// accumulation, f32 `[..., N]` result. Errors on other weight dtypes and on CPUs without
/// AVX512-BF16 (check [`bf16_dot_available`] first).
///
/// ```
/// use mllm_engine::tensor::{bf16_dot_available, matmul_bf16_t, DType, Tensor};
/// if bf16_dot_available() {
///     let x = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap();
///     let w = Tensor::from_f32(&[1.0, 0.0, 3.0, 4.0, 0.5, 0.5], &[3, 2], DType::BF16).unwrap();
///     assert_eq!(matmul_bf16_t(&x, &w).unwrap().to_f32_vec().unwrap(), vec![1.0, 11.0, 1.5]);
/// }
/// ```
pub fn matmul_bf16_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "matmul_bf16_t";
    if w.dtype() != DType::BF16 {
        return Err(TensorError::DType {
            op: OP,
            arg: "w",
            expected: "bf16".into(),
            got: w.dtype(),
        });
    }
    if !bf16_dot_available() {
        return Err(TensorError::Invalid {
            op: OP,
            msg: "this CPU lacks AVX512-BF16; use matmul_t".into(),
        });
    }
    let d = nt_dims(OP, x, w)?;
    if d.m == 0 || d.n == 0 || d.k == 0 {
        return Tensor::from_vec(vec![0f32; d.out_shape.iter().product()], &d.out_shape);
    }
    let (m, n, k) = (d.m, d.n, d.k);
    let panels = m >= PANEL_MIN_ROWS && k.is_multiple_of(2);
    // The rows of `x` in bf16: packed for the panel kernel, row-major for the dot tiles.
    let rows = if panels && x.dtype() == DType::BF16 {
        XRows::Packed(bf16_panel::pack_rows(bf16_bits(x.as_slice::<bf16>()?), m, k))
    } else if panels {
        // SAFETY: the CPU has AVX512-BF16 (checked above).
        XRows::Packed(unsafe { bf16_panel::pack_rows_f32(&x.to_f32_cow()?, m, k) })
    } else {
        let mut xb = vec![bf16::ZERO; m * k];
        match x.dtype() {
            DType::BF16 => xb.copy_from_slice(x.as_slice::<bf16>()?),
            _ => xb.convert_from_f32_slice(&x.to_f32_cow()?),
        }
        XRows::RowMajor(xb)
    };
    let wb = bf16_bits(w.as_slice::<bf16>()?);
    // Decode-sized inputs are bandwidth-bound: about eight blocks per thread keep every core
    // streaming without paying a task per few rows. Prefill blocks keep their weights in L2.
    let block = if panels {
        // Two runs of consecutive panels per thread: each run prefetches its next panel.
        let tasks = 2 * rayon::current_num_threads();
        n.div_ceil(bf16_panel::NR).div_ceil(tasks) * bf16_panel::NR
    } else if m <= 8 {
        (n / (8 * rayon::current_num_threads())).next_multiple_of(16).max(16)
    } else {
        64
    };
    Ok(Tensor::f32_filled(&d.out_shape, |out| {
        let dst = SendPtr(out.as_mut_ptr());
        (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
            let cols = b * block..((b + 1) * block).min(n);
            // SAFETY: the CPU has the features (checked above); this task writes only columns
            // `cols` of the [m, n] output, disjoint from every other task.
            unsafe {
                match &rows {
                    XRows::Packed(xp) => bf16_panel::columns(xp, wb, m, n, k, cols, dst.get()),
                    XRows::RowMajor(xb) => kernel::block(bf16_bits(xb), wb, m, n, k, cols, dst.get()),
                }
            }
        });
    }))
}

/// `x` as the kernel of its row count reads it.
enum XRows {
    /// [`bf16_panel::pack_rows`] layout.
    Packed(Vec<u32>),
    /// `[m, k]` bf16.
    RowMajor(Vec<bf16>),
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::tensor::simd::{as_bh, reduce16};

    /// Output columns `cols` of `out[m, n] = x[m, k] · w[n, k]ᵀ`, tile by tile.
    ///
    /// # Safety
    /// The CPU must have AVX512F/BW/BF16; `out` must hold `m * n` f32 and no other thread may
    /// write columns `cols`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn block(x: &[u16], w: &[u16], m: usize, n: usize, k: usize, cols: Range<usize>, out: *mut f32) {
        match m {
            1 => tiles::<1, 16>(x, w, m, n, k, cols, out),
            2 => tiles::<2, 8>(x, w, m, n, k, cols, out),
            _ => tiles::<4, 4>(x, w, m, n, k, cols, out),
        }
    }

    /// Rows of `x` per pass over a block's weights: with `k` ≤ 1536, 64 bf16 rows (≤ 192 KiB)
    /// stay in L2 while every weight tile of the block passes them.
    const X_CHUNK: usize = 64;

    /// Walks `RW` weight rows at a time (kept in L1) past every `RX`-row tile of a chunk of `x`.
    /// Rows past the end of `x` or of `cols` repeat the last valid row; their results are dropped.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tiles<const RX: usize, const RW: usize>(
        x: &[u16],
        w: &[u16],
        m: usize,
        n: usize,
        k: usize,
        cols: Range<usize>,
        out: *mut f32,
    ) {
        for chunk in (0..m).step_by(X_CHUNK) {
            let rows = chunk..(chunk + X_CHUNK).min(m);
            let mut j0 = cols.start;
            while j0 < cols.end {
                let mut wp = [w.as_ptr(); RW];
                for (jj, p) in wp.iter_mut().enumerate() {
                    *p = w.as_ptr().add((j0 + jj).min(cols.end - 1) * k);
                }
                let mut i0 = rows.start;
                while i0 < rows.end {
                    let mut xp = [x.as_ptr(); RX];
                    for (ii, p) in xp.iter_mut().enumerate() {
                        *p = x.as_ptr().add((i0 + ii).min(m - 1) * k);
                    }
                    let mut sums = [0f32; 16];
                    let v = if i0 == 0 {
                        tile::<RX, RW, true>(xp, wp, k)
                    } else {
                        tile::<RX, RW, false>(xp, wp, k)
                    };
                    _mm512_storeu_ps(sums.as_mut_ptr(), v);
                    for ii in 0..RX.min(m - i0) {
                        for jj in 0..RW.min(cols.end - j0) {
                            *out.add((i0 + ii) * n + j0 + jj) = sums[ii * RW + jj];
                        }
                    }
                    i0 += RX;
                }
                j0 += RW;
            }
        }
    }

    /// Weight rows ahead of the current ones that the first pass over a tile prefetches: the
    /// hardware prefetcher alone leaves decode (few x rows, little compute per byte) waiting on
    /// memory.
    const PREFETCH_ROWS: usize = 16;

    /// The `RX × RW = 16` dot products of length `k`, lane `i * RW + j` = `x_i · w_j`; with
    /// `PREFETCH`, also pulls the weight rows `PREFETCH_ROWS` ahead into L1.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn tile<const RX: usize, const RW: usize, const PREFETCH: bool>(
        x: [*const u16; RX],
        w: [*const u16; RW],
        k: usize,
    ) -> __m512 {
        let mut acc = [[_mm512_setzero_ps(); RW]; RX];
        let mut kk = 0;
        while kk + 32 <= k {
            if PREFETCH {
                for p in w {
                    // A hint only (never faults), hence `wrapping_add` past the end of the weights.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(kk + PREFETCH_ROWS * k) as *const i8);
                }
            }
            let mut xv = [_mm512_setzero_si512(); RX];
            for i in 0..RX {
                // The next x tile's rows, from L2: prefill passes many x tiles per weight tile.
                _mm_prefetch::<_MM_HINT_T0>(x[i].wrapping_add(kk + RX * k) as *const i8);
                xv[i] = _mm512_loadu_epi16(x[i].add(kk) as *const i16);
            }
            for j in 0..RW {
                let wv = as_bh(_mm512_loadu_epi16(w[j].add(kk) as *const i16));
                for i in 0..RX {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(xv[i]), wv);
                }
            }
            kk += 32;
        }
        if kk < k {
            // Zero-filled tail: the missing pairs contribute 0 · 0.
            let mask: __mmask32 = (1u32 << (k - kk)) - 1;
            for j in 0..RW {
                let wv = as_bh(_mm512_maskz_loadu_epi16(mask, w[j].add(kk) as *const i16));
                for i in 0..RX {
                    let xv = as_bh(_mm512_maskz_loadu_epi16(mask, x[i].add(kk) as *const i16));
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv);
                }
            }
        }
        let mut flat = [_mm512_setzero_ps(); 16];
        for i in 0..RX {
            for j in 0..RW {
                flat[i * RW + j] = acc[i][j];
            }
        }
        reduce16(flat)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::bf16_dot_available`] is false off x86-64.
    pub(super) unsafe fn block(
        _: &[u16],
        _: &[u16],
        _: usize,
        _: usize,
        _: usize,
        _: std::ops::Range<usize>,
        _: *mut f32,
    ) {
        unreachable!("AVX512-BF16 kernel called off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 dot products of the bf16-rounded inputs: the kernel's exact math up to f32 summation order.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let r = |v: f32| bf16::from_f32(v).to_f64();
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| r(x[i * k + t]) * r(w[j * k + t])).sum::<f64>() as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_reference_over_tile_edges() {
        if !bf16_dot_available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        // Dot tiles: row counts for every tile shape and its padding; K with and without a tail; N tails.
        for &(m, n, k) in &[
            (1, 37, 64),
            (2, 21, 33),
            (3, 5, 1),
            (4, 16, 96),
            (7, 70, 250),
            (8, 64, 576),
            (33, 130, 47),
            // Packed panels (even k, m >= PANEL_MIN_ROWS): row and column tails, one pair block.
            (33, 130, 48),
            (41, 48, 2),
            (64, 100, 70),
            (167, 97, 576),
        ] {
            let (xv, wv) = (values(m * k, m as u32), values(n * k, 7 + n as u32));
            let x = Tensor::from_vec(xv.clone(), &[m, k]).unwrap();
            let w = Tensor::from_f32(&wv, &[n, k], DType::BF16).unwrap();
            let got = matmul_bf16_t(&x, &w).unwrap().to_f32_vec().unwrap();
            let want = reference(&xv, &wv, m, n, k);
            for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (k as f32).sqrt().max(1.0);
                assert!((g - e).abs() <= tol, "m={m} n={n} k={k} at {idx}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn keeps_leading_dims_and_rejects_bad_inputs() {
        if !bf16_dot_available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        let x = Tensor::from_vec(values(2 * 3 * 8, 1), &[2, 3, 8]).unwrap();
        let w = Tensor::from_f32(&values(5 * 8, 2), &[5, 8], DType::BF16).unwrap();
        assert_eq!(matmul_bf16_t(&x, &w).unwrap().shape(), &[2, 3, 5]);
        let wf = Tensor::from_vec(values(5 * 8, 2), &[5, 8]).unwrap();
        assert!(matmul_bf16_t(&x, &wf).unwrap_err().to_string().contains("bf16"));
        let wk = Tensor::from_f32(&values(5 * 7, 2), &[5, 7], DType::BF16).unwrap();
        assert!(matches!(matmul_bf16_t(&x, &wk), Err(TensorError::Shape { .. })));
    }
}
