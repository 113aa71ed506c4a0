//! The prefill-sized half of [`super::matmul_bf16_t`]: `x · wᵀ` with output columns in vector
//! lanes, for many rows of `x`.
//!
//! The dot-product tiles of `bf16_dot` keep `k` in the lanes and must fold 16 accumulators into one
//! vector per tile; at SmolLM2's `k` = 576 that fold costs about a fifth of the tile's
//! multiply-adds. Here each task first packs a panel of [`NR`] weight rows into pairs-of-`k` order
//! (`panel[kp][j]` = `w[j][2kp..2kp + 2]`, the layout `vdpbf16ps` multiplies against a broadcast
//! pair of `x`), then runs every [`MR`]-row tile of `x` over it: 24 accumulators, each written
//! once. Packing reads the weights at about half the speed the dot tiles stream them, which
//! fewer than ~48 rows of `x` do not pay back (`PANEL_MIN_ROWS`, measured), so the dot tiles
//! keep decode.

// The SIMD kernels here are `unsafe fn`s whose safety contract (target features, slice
// lengths) is the function's own `# Safety`, and whose bodies are raw-pointer intrinsics
// throughout: an `unsafe {}` around each call would wrap every line (edition 2024 lint).
#![allow(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::ops::Range;

/// Output columns per packed panel: three 16-lane vectors.
pub(super) const NR: usize = 48;

/// Rows of `x` per register tile: 8 rows × 3 vectors = 24 accumulators, plus 3 weight vectors
/// and a broadcast, in the 32 vector registers.
const MR: usize = 8;

thread_local! {
    /// Each worker's panel buffer, reused across calls (a panel of `k` = 1536 is 144 KiB).
    static PANEL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `x` `[m, k]` (bf16 bits, `k` even) regrouped for the register tiles: tile `t`, pair `p`, row
/// `i` at `(t * k / 2 + p) * MR + i`, so a tile's broadcasts walk one pointer. Rows past `m` in
/// the last tile repeat row `m - 1`; their results are never stored.
pub(super) fn pack_rows(x: &[u16], m: usize, k: usize) -> Vec<u32> {
    let pairs = k / 2;
    let mut packed = vec![0u32; m.div_ceil(MR) * pairs * MR];
    for (t, tile) in packed.chunks_exact_mut(pairs * MR).enumerate() {
        for i in 0..MR {
            let row = &x[(t * MR + i).min(m - 1) * k..][..k];
            for (p, pair) in row.chunks_exact(2).enumerate() {
                tile[p * MR + i] = pair[0] as u32 | (pair[1] as u32) << 16;
            }
        }
    }
    packed
}

/// [`pack_rows`] straight from f32 `x`, rounding to bf16 (nearest-even) on the way: one pass of
/// `vcvtne2ps2bf16` and the 16 × 16 transpose per tile and 16 pairs. That instruction flushes
/// f32 subnormals (below ~1.2e-38) to zero, which the dot tiles' scalar rounding keeps.
///
/// # Safety
/// The CPU must have AVX512F/BW/BF16.
pub(super) unsafe fn pack_rows_f32(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let mut packed = vec![0u32; m.div_ceil(MR) * k / 2 * MR];
    kernel::pack_rows_f32(x, m, k, &mut packed);
    packed
}

/// Writes columns `cols` (a multiple of [`NR`] wide, or ending at `n`) of `out[m, n] = x · wᵀ`,
/// one panel at a time; `xp` is `x` through [`pack_rows`] and `k` is even.
///
/// # Safety
/// The CPU must have AVX512F/BW/BF16; `xp` is packed from `m` rows of length `k`, `w` holds
/// `n * k` bf16 bits; `out` holds `m * n` f32 and no other thread writes columns `cols`.
pub(super) unsafe fn columns(xp: &[u32], w: &[u16], m: usize, n: usize, k: usize, cols: Range<usize>, out: *mut f32) {
    debug_assert!(k.is_multiple_of(2) && cols.end <= n && xp.len() == m.div_ceil(MR) * k / 2 * MR);
    PANEL.with_borrow_mut(|panel| {
        panel.resize(k / 2 * NR, 0);
        for n0 in cols.clone().step_by(NR) {
            kernel::pack_panel(w, n, k, n0, panel);
            // The next panel's weight rows are one contiguous range: pull it into L2 while this
            // panel computes, so its packing does not wait on memory.
            let next = (n0 + NR).min(cols.end)..(n0 + 2 * NR).min(cols.end);
            let ahead = &w[next.start * k..next.end * k];
            kernel::panel_rows(xp, m, k, panel, n, n0, ahead, out);
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};
    use crate::tensor::simd::as_bh;

    /// Packs weight rows `n0..n0 + NR` of `w` `[n, k]` into `panel` as `k / 2` groups of `NR`
    /// bf16 pairs; rows past `n` pack as zeros. Sixteen rows by sixteen pairs at a time, through
    /// an in-register 16 × 16 transpose of 32-bit lanes.
    ///
    /// # Safety
    /// AVX512F/BW; `k` even, `w` holds `n * k` values, `panel` holds `k / 2 * NR`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_panel(w: &[u16], n: usize, k: usize, n0: usize, panel: &mut [u32]) {
        let pairs = k / 2;
        for g in 0..NR / 16 {
            for p0 in (0..pairs).step_by(16) {
                let width = (pairs - p0).min(16);
                let mask = mask16(width);
                let mut r = [_mm512_setzero_si512(); 16];
                for (j, v) in r.iter_mut().enumerate() {
                    let row = n0 + g * 16 + j;
                    if row < n {
                        let src = w.as_ptr().add(row * k + 2 * p0) as *const i32;
                        *v = _mm512_maskz_loadu_epi32(mask, src);
                    }
                }
                let t = transpose16(r);
                for (p, v) in t.iter().take(width).enumerate() {
                    _mm512_storeu_si512(panel.as_mut_ptr().add((p0 + p) * NR + g * 16) as *mut _, *v);
                }
            }
        }
    }

    /// See [`super::pack_rows_f32`]; `packed` is zeroed and sized for `m` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_rows_f32(x: &[f32], m: usize, k: usize, packed: &mut [u32]) {
        let pairs = k / 2;
        for t in 0..m.div_ceil(MR) {
            for p0 in (0..pairs).step_by(16) {
                let width = (pairs - p0).min(16);
                let left = 2 * width;
                let (lo, hi) = (mask16(left.min(16)), mask16(left.saturating_sub(16)));
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, v) in r.iter_mut().take(MR).enumerate() {
                    let src = x.as_ptr().add((t * MR + i).min(m - 1) * k + 2 * p0);
                    let (a, b) = (_mm512_maskz_loadu_ps(lo, src), _mm512_maskz_loadu_ps(hi, src.add(16)));
                    // Lanes 0-15 from `a`, 16-31 from `b`: 32-bit lane j holds the pair 2j, 2j + 1.
                    *v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
                }
                let cols = transpose16(r);
                let dst = packed.as_mut_ptr().add((t * pairs + p0) * MR);
                for (p, v) in cols.iter().take(width).enumerate() {
                    _mm256_storeu_si256(dst.add(p * MR) as *mut __m256i, _mm512_castsi512_si256(*v));
                }
            }
        }
    }

    fn mask16(bits: usize) -> __mmask16 {
        ((1u32 << bits) - 1) as __mmask16
    }

    /// 16 × 16 transpose of 32-bit lanes: swap the off-diagonal halves at distance 8, 4, 2 and 1
    /// (lane blocks of 8, 4, 2 and 1), which transposes every block of the level below.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn transpose16(mut r: [__m512i; 16]) -> [__m512i; 16] {
        // 64-bit lane indices picking 128-bit blocks 0, 2 of `a` and `b` interleaved (and 1, 3).
        let lo4 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
        let hi4 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
        // 32-bit lane indices interleaving the even (odd) lanes of `a` and `b`.
        let lo1 = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
        let hi1 = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
        for d in [8, 4, 2, 1] {
            for i in (0..16).filter(|i| i & d == 0) {
                let (a, b) = (r[i], r[i + d]);
                (r[i], r[i + d]) = match d {
                    8 => (
                        _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
                        _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
                    ),
                    4 => (
                        _mm512_permutex2var_epi64(a, lo4, b),
                        _mm512_permutex2var_epi64(a, hi4, b),
                    ),
                    2 => (_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b)),
                    _ => (
                        _mm512_permutex2var_epi32(a, lo1, b),
                        _mm512_permutex2var_epi32(a, hi1, b),
                    ),
                };
            }
        }
        r
    }

    /// Every tile of packed rows `xp` against one packed panel: output columns `n0..n0 + NR`
    /// (those below `n`), rows below `m`. Spreads prefetches of `ahead` over the tiles.
    ///
    /// # Safety
    /// AVX512F/BW/BF16; `xp` from [`super::pack_rows`] (`m` rows, `k` even), `panel` from
    /// [`pack_panel`], `out` holds `m * n` f32 and no other thread writes these columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn panel_rows(
        xp: &[u32],
        m: usize,
        k: usize,
        panel: &[u32],
        n: usize,
        n0: usize,
        ahead: &[u16],
        out: *mut f32,
    ) {
        let pairs = k / 2;
        let lines = (ahead.len() * 2).div_ceil(64);
        let per_tile = lines.div_ceil(m.div_ceil(MR));
        let valid = (n - n0).min(NR);
        let masks: [__mmask16; 3] = std::array::from_fn(|v| mask16(valid.saturating_sub(16 * v).min(16)));
        for (t, i0) in (0..m).step_by(MR).enumerate() {
            let first = (t * per_tile).min(lines);
            let fetch =
                (first..(first + per_tile).min(lines)).map(|l| (ahead.as_ptr() as *const i8).wrapping_add(l * 64));
            let acc = tile(xp.as_ptr().add(t * pairs * MR), panel.as_ptr(), pairs, fetch);
            for (i, vecs) in acc.iter().enumerate().take(m - i0) {
                let dst = out.add((i0 + i) * n + n0);
                for (v, (&a, &mask)) in vecs.iter().zip(&masks).enumerate() {
                    _mm512_mask_storeu_ps(dst.add(16 * v), mask, a);
                }
            }
        }
    }

    /// One packed tile of `MR` rows against a packed panel of `pairs` groups; issues the
    /// `fetch` prefetches (to L2) evenly over the steps.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn tile(
        xp: *const u32,
        panel: *const u32,
        pairs: usize,
        mut fetch: impl ExactSizeIterator<Item = *const i8>,
    ) -> [[__m512; 3]; MR] {
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let every = (pairs / fetch.len().max(1)).max(1);
        let mut countdown = 0;
        for p in 0..pairs {
            if countdown == 0 {
                if let Some(line) = fetch.next() {
                    _mm_prefetch::<_MM_HINT_T1>(line);
                }
                countdown = every;
            }
            countdown -= 1;
            let (wp, xs) = (panel.add(p * NR), xp.add(p * MR));
            let wv: [__m512bh; 3] = std::array::from_fn(|v| as_bh(_mm512_loadu_si512(wp.add(16 * v) as *const _)));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = as_bh(_mm512_set1_epi32(*xs.add(i) as i32));
                for (av, &w) in a.iter_mut().zip(&wv) {
                    *av = _mm512_dpbf16_ps(*av, xv, w);
                }
            }
        }
        acc
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: the AVX512-BF16 path is x86-64 only.
    pub(super) unsafe fn pack_rows_f32(_: &[f32], _: usize, _: usize, _: &mut [u32]) {
        unreachable!("AVX512-BF16 kernel called off x86-64")
    }
    /// Never called: the AVX512-BF16 path is x86-64 only.
    pub(super) unsafe fn pack_panel(_: &[u16], _: usize, _: usize, _: usize, _: &mut [u32]) {
        unreachable!("AVX512-BF16 kernel called off x86-64")
    }
    /// Never called: the AVX512-BF16 path is x86-64 only.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel_rows(
        _: &[u32],
        _: usize,
        _: usize,
        _: &[u32],
        _: usize,
        _: usize,
        _: &[u16],
        _: *mut f32,
    ) {
        unreachable!("AVX512-BF16 kernel called off x86-64")
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn packs_rows_from_f32_as_from_rounded_bf16() {
        if !super::super::bf16_dot_available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        use half::bf16;
        // m = 11 leaves a partial tile; k = 70 a partial block of pairs; values need rounding.
        let (m, k) = (11, 70);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.731).sin() * 3.0 + 1e-3).collect();
        let bits: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        // SAFETY: features checked above.
        let got = unsafe { pack_rows_f32(&x, m, k) };
        assert_eq!(got, pack_rows(&bits, m, k));
    }

    #[test]
    fn packs_pairs_of_k_per_column_with_zero_padding() {
        if !super::super::bf16_dot_available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        // n = 37 leaves a partial third vector and rows past n; k = 70 leaves a partial pair block.
        let (n, k) = (37, 70);
        let w: Vec<u16> = (0..n * k).map(|i| i as u16).collect();
        let mut panel = vec![u32::MAX; k / 2 * NR];
        // SAFETY: features checked above; sizes as documented.
        unsafe { kernel::pack_panel(&w, n, k, 0, &mut panel) };
        for p in 0..k / 2 {
            for j in 0..NR {
                let want = if j < n {
                    w[j * k + 2 * p] as u32 | (w[j * k + 2 * p + 1] as u32) << 16
                } else {
                    0
                };
                assert_eq!(panel[p * NR + j], want, "pair {p} column {j}");
            }
        }
    }
}
