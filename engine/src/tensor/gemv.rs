//! `x · wᵀ` for a few rows of `x` (decode): weights are streamed once, row by row, and every
//! row of `x` is dotted against each weight row while it is in L1. Memory-bound, so weights may
//! stay bf16/f16 (half the bytes of f32); rows are converted on the fly. Parallel over weight
//! rows with rayon; AVX-512 (four weight rows × up to four x rows per pass, software prefetch) or AVX2+FMA dot
//! products when the CPU has them (checked at run time).

// The SIMD kernels here are `unsafe fn`s whose safety contract (target features, slice
// lengths) is the function's own `# Safety`, and whose bodies are raw-pointer intrinsics
// throughout: an `unsafe {}` around each call would wrap every line (edition 2024 lint).
#![allow(unsafe_op_in_unsafe_fn)]

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::ops::{bf16_bits, nt_dims, NtDims};
use super::{DType, Result, Tensor};

/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 32;

/// Whether the AVX-512 kernels can run (detected once).
#[cfg(target_arch = "x86_64")]
static HAS_AVX512: std::sync::LazyLock<bool> = std::sync::LazyLock::new(avx512::available);

/// Lanes of independent accumulators (vectorized by LLVM).
const LANES: usize = 16;

#[inline(always)]
fn dot<const FMA: bool>(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = x.len() / LANES * LANES;
    for (xs, ws) in x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = if FMA {
                xs[l].mul_add(ws[l], acc[l])
            } else {
                acc[l] + xs[l] * ws[l]
            };
        }
    }
    let tail: f32 = x[n..].iter().zip(&w[n..]).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_bf16<const FMA: bool>(x: &[f32], w: &[u16]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = x.len() / LANES * LANES;
    for (xs, ws) in x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)) {
        for l in 0..LANES {
            let wv = f32::from_bits((ws[l] as u32) << 16);
            acc[l] = if FMA {
                xs[l].mul_add(wv, acc[l])
            } else {
                acc[l] + xs[l] * wv
            };
        }
    }
    let tail: f32 = x[n..]
        .iter()
        .zip(&w[n..])
        .map(|(a, &b)| a * f32::from_bits((b as u32) << 16))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The weight matrix as a typed slice.
#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [f16]),
}

/// Rows of `x` per pass over a task's weight rows in [`rows`]: a block stays in L1/L2 while the
/// weight rows stream past, so a prefill-sized `x` is read once per block, not per weight row.
const X_BLOCK: usize = 8;

/// Computes `out_t[j * m + i] = x_i · w_j` for weight rows `j0..j0 + out_t.len() / m`.
#[inline(always)]
fn rows<const FMA: bool>(xs: &[f32], m: usize, k: usize, w: Weights<'_>, j0: usize, out_t: &mut [f32]) {
    let nrows = out_t.len() / m;
    let mut buf = Vec::new();
    for i0 in (0..m).step_by(X_BLOCK) {
        let block = i0..(i0 + X_BLOCK).min(m);
        for jj in 0..nrows {
            let r = (j0 + jj) * k..(j0 + jj + 1) * k;
            let o = &mut out_t[jj * m..(jj + 1) * m];
            let wrow: &[f32] = match w {
                Weights::F32(s) => &s[r],
                Weights::BF16(s) if m == 1 => {
                    o[0] = dot_bf16::<FMA>(xs, &s[r]);
                    continue;
                }
                Weights::BF16(s) => {
                    buf.resize(k, 0f32);
                    for (b, &v) in buf.iter_mut().zip(&s[r]) {
                        *b = f32::from_bits((v as u32) << 16);
                    }
                    &buf
                }
                Weights::F16(s) => {
                    buf.resize(k, 0f32);
                    s[r].convert_to_f32_slice(&mut buf);
                    &buf
                }
            };
            for i in block.clone() {
                o[i] = dot::<FMA>(&xs[i * k..(i + 1) * k], wrow);
            }
        }
    }
}

/// AVX-512 kernels: four weight rows per pass (one x load feeds four FMAs), bf16/f16 widened in
/// registers, masked loads for the `K % 16` tail.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Weights;

    /// Loads 16 weights (fewer under `mask`, zero-filled) from `p` as f32.
    trait Load16 {
        unsafe fn load16(p: *const Self, mask: __mmask16) -> __m512;
    }

    impl Load16 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32, mask: __mmask16) -> __m512 {
            _mm512_maskz_loadu_ps(mask, p)
        }
    }

    impl Load16 for u16 {
        /// bf16 bits: widen to u32 and shift into the high half.
        #[inline(always)]
        unsafe fn load16(p: *const u16, mask: __mmask16) -> __m512 {
            let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    impl Load16 for half::f16 {
        #[inline(always)]
        unsafe fn load16(p: *const half::f16, mask: __mmask16) -> __m512 {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
        }
    }

    /// Weight rows ahead of the current ones that [`dot4xr`] prefetches (four groups of four).
    const PREFETCH_ROWS: usize = 16;

    /// `x_r · w[c]` for `R` rows of `x` (`k` apart from `x`) and four weight rows: each weight
    /// vector is loaded and widened once for all `R` rows, each x vector feeds four FMAs
    /// (`4·R` accumulators, at most 16 of the 32 registers).
    #[inline(always)]
    unsafe fn dot4xr<W: Load16, const R: usize>(x: *const f32, k: usize, w: [*const W; 4]) -> [[f32; 4]; R] {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut i = 0;
        while i < k {
            let mask: __mmask16 = if k - i >= 16 { !0 } else { (1u16 << (k - i)) - 1 };
            for p in w {
                // A hint only (never faults), hence `wrapping_add` past the end of the weights.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + PREFETCH_ROWS * k) as *const i8);
            }
            // Plain loops, not closures: a closure would not inherit the caller's target
            // features, and the intrinsics in it would become calls.
            let mut wv = [_mm512_setzero_ps(); 4];
            for c in 0..4 {
                wv[c] = W::load16(w[c].add(i), mask);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(r * k + i));
                for c in 0..4 {
                    acc_r[c] = _mm512_fmadd_ps(xv, wv[c], acc_r[c]);
                }
            }
            i += 16;
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            for c in 0..4 {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
        out
    }

    /// Like [`super::rows`]: `out_t[j * m + i] = x_i · w_j` for rows `j0..j0 + out_t.len() / m`.
    #[inline(always)]
    unsafe fn rows_t<W: Load16>(xs: &[f32], m: usize, k: usize, w: &[W], j0: usize, out_t: &mut [f32]) {
        let nrows = out_t.len() / m;
        assert!((j0 + nrows) * k <= w.len() && m * k <= xs.len());
        let base = w.as_ptr();
        let mut j = 0;
        while j < nrows {
            let valid = (nrows - j).min(4);
            let ptrs: [*const W; 4] = std::array::from_fn(|r| base.add((j0 + j + r.min(valid - 1)) * k));
            let mut store = |i: usize, d: &[f32; 4]| {
                for (r, &v) in d.iter().enumerate().take(valid) {
                    out_t[(j + r) * m + i] = v;
                }
            };
            // Up to four x rows per pass over the (L1-resident) weight rows. Every row takes the
            // same path whatever the batch, so a sequence's logits do not depend on its batch.
            let mut i = 0;
            while i < m {
                let x = xs.as_ptr().add(i * k);
                match m - i {
                    1 => store(i, &dot4xr::<W, 1>(x, k, ptrs)[0]),
                    2 => dot4xr::<W, 2>(x, k, ptrs)
                        .iter()
                        .enumerate()
                        .for_each(|(r, d)| store(i + r, d)),
                    3 => dot4xr::<W, 3>(x, k, ptrs)
                        .iter()
                        .enumerate()
                        .for_each(|(r, d)| store(i + r, d)),
                    _ => dot4xr::<W, 4>(x, k, ptrs)
                        .iter()
                        .enumerate()
                        .for_each(|(r, d)| store(i + r, d)),
                }
                i += 4;
            }
            j += 4;
        }
    }

    /// Whether the CPU has the features [`rows`] needs.
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }

    /// # Safety
    /// The CPU must support avx512f, avx512bw and avx512vl ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows(xs: &[f32], m: usize, k: usize, w: Weights<'_>, j0: usize, out_t: &mut [f32]) {
        match w {
            Weights::F32(s) => rows_t(xs, m, k, s, j0, out_t),
            Weights::BF16(s) => rows_t(xs, m, k, s, j0, out_t),
            Weights::F16(s) => rows_t(xs, m, k, s, j0, out_t),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(xs: &[f32], m: usize, k: usize, w: Weights<'_>, j0: usize, out_t: &mut [f32]) {
    rows::<true>(xs, m, k, w, j0, out_t)
}

fn rows_dispatch(xs: &[f32], m: usize, k: usize, w: Weights<'_>, j0: usize, out_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512 {
        // SAFETY: the CPU supports avx512f/bw/vl (checked once at first use).
        return unsafe { avx512::rows(xs, m, k, w, j0, out_t) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the enabled target features (checked just above).
        return unsafe { rows_avx2(xs, m, k, w, j0, out_t) };
    }
    rows::<false>(xs, m, k, w, j0, out_t)
}

/// `x · wᵀ` like [`matmul_t`](super::matmul_t), tuned for few rows of `x` (decode batches):
/// `x` is `[..., K]` (any float dtype), `w` is `[N, K]` (f32, bf16 or f16, read in place).
/// Returns f32 `[..., N]`. Slower than `matmul_t` for many rows (no register tiling).
///
/// ```
/// use mllm_engine::tensor::{gemv_t, DType, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap();
/// let w = Tensor::from_f32(&[1.0, 0.0, 3.0, 4.0, 0.5, 0.5], &[3, 2], DType::BF16).unwrap();
/// assert_eq!(gemv_t(&x, &w).unwrap().to_f32_vec().unwrap(), vec![1.0, 11.0, 1.5]);
/// ```
pub fn gemv_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let NtDims { m, n, k, out_shape } = nt_dims("gemv_t", x, w)?;
    if m == 0 || n == 0 || k == 0 {
        return Tensor::from_vec(vec![0f32; out_shape.iter().product()], &out_shape);
    }
    let xbuf;
    let xv: &[f32] = if x.dtype() == DType::F32 {
        x.as_slice::<f32>()?
    } else {
        xbuf = x.to_f32_vec()?;
        &xbuf
    };
    let wv = match w.dtype() {
        DType::F32 => Weights::F32(w.as_slice::<f32>()?),
        DType::BF16 => Weights::BF16(bf16_bits(w.as_slice::<bf16>()?)),
        _ => Weights::F16(w.as_slice::<f16>()?),
    };
    let run = |out_t: &mut [f32]| {
        out_t
            .par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(t, o)| rows_dispatch(xv, m, k, wv, t * ROWS_PER_TASK, o));
    };
    if m == 1 {
        return Ok(Tensor::f32_filled(&out_shape, run));
    }
    let mut out_t = vec![0f32; n * m];
    run(&mut out_t);
    let out = {
        let mut out = vec![0f32; m * n];
        for (j, col) in out_t.chunks(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * n + j] = v;
            }
        }
        out
    };
    Tensor::from_vec(out, &out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{matmul_t, TensorError};

    #[test]
    fn matches_matmul_t_all_dtypes() {
        for (m, n, k) in [
            (1, 37, 19),
            (3, 70, 33),
            (5, 64, 128),
            (1, 1, 1),
            (2, 9, 17),
            (4, 13, 48),
            (6, 21, 100),
            (8, 40, 576),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
            let x = Tensor::from_vec(x, &[m, k]).unwrap();
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let w = Tensor::from_f32(&w, &[n, k], dt).unwrap();
                let a = gemv_t(&x, &w).unwrap().to_f32_vec().unwrap();
                let b = matmul_t(&x, &w).unwrap().to_f32_vec().unwrap();
                let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(d < 1e-4, "{m}x{n}x{k} {dt}: {d}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let x = Tensor::from_vec(vec![1.0f32; 4], &[2, 2]).unwrap();
        let w = Tensor::from_vec(vec![1.0f32; 6], &[2, 3]).unwrap();
        assert!(matches!(gemv_t(&x, &w), Err(TensorError::Shape { arg: "w", .. })));
        let wi = Tensor::from_vec(vec![1i32; 4], &[2, 2]).unwrap();
        assert!(matches!(gemv_t(&x, &wi), Err(TensorError::DType { arg: "w", .. })));
    }
}
