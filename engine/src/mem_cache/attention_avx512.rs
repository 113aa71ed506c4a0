//! AVX-512 attention rows for head dims 64 and 128 (`16 · DC`). The query heads that share a KV
//! head (GQA) run together, up to four at a time, so each cached K/V row is loaded once for all
//! of them; scores come 16 keys at a time through one shuffle-tree reduction per head, the
//! softmax uses a vector `exp`, and V is accumulated in registers with the normalization
//! applied once at the end. Same contract as [`super::attention`]'s scalar rows.

// The SIMD kernels here are `unsafe fn`s whose safety contract (target features, slice
// lengths) is the function's own `# Safety`, and whose bodies are raw-pointer intrinsics
// throughout: an `unsafe {}` around each call would wrap every line (edition 2024 lint).
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::attention::{KvRows, Shape};
use crate::tensor::simd::{exp, reduce16};

/// A KV element type the rows read 16 at a time as f32.
pub(super) trait Load16: Copy {
    /// Sixteen values from `p` widened to f32.
    ///
    /// # Safety
    /// AVX-512F; `p` valid for 16 reads.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Load16 for half::bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::bf16) -> __m512 {
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
    }
}

/// Keys ahead of the current one whose K (score pass) or V (weighted sum) row is prefetched.
const PREFETCH_KEYS: usize = 16;

/// Prefetches the cache lines of `len` elements at `p` (a hint: never faults).
#[inline(always)]
fn prefetch_row<const HINT: i32, E>(p: *const E, len: usize) {
    let bytes = len * std::mem::size_of::<E>();
    for line in (0..bytes).step_by(64) {
        // SAFETY: prefetch is a hint and does not access memory architecturally.
        unsafe { _mm_prefetch::<HINT>((p as *const i8).wrapping_add(line)) };
    }
}

/// Attention of query tokens `i0..` (`q`: `[n, num_heads, 16·DC]`) into `out` (same shape).
///
/// # Safety
/// The CPU must have AVX-512F; `s.head_dim == 16 * DC`; `kv` rows hold `s.head_dim` floats per
/// KV head for every visible token.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows<const DC: usize, R: KvRows>(q: &[f32], i0: usize, kv: &R, s: &Shape, out: &mut [f32])
where
    R::Elem: Load16,
{
    let d = 16 * DC;
    debug_assert_eq!(s.head_dim, d);
    let qrow = s.num_heads * d;
    let n = q.len() / qrow;
    let stride = (s.prefix_len + i0 + n).next_multiple_of(16);
    let mut scores = vec![0f32; 4 * stride];
    for ii in 0..n {
        let visible = s.prefix_len + i0 + ii + 1;
        let mut h = 0;
        while h < s.num_heads {
            // Heads h.. up to the end of their GQA group, at most four per pass.
            let count = (s.group - h % s.group).min(4);
            let at = (ii * s.num_heads + h) * d;
            let (qh, oh) = (&q[at..at + count * d], &mut out[at..at + count * d]);
            let args = (kv, h / s.group * d, visible, s.scale, &mut scores[..], stride);
            match count {
                1 => heads::<DC, 1, R>(qh, oh, args),
                2 => heads::<DC, 2, R>(qh, oh, args),
                3 => heads::<DC, 3, R>(qh, oh, args),
                _ => heads::<DC, 4, R>(qh, oh, args),
            }
            h += count;
        }
    }
}

/// `H` consecutive query heads (`q`, `out`: `[H, 16·DC]`) over keys `0..visible`, reading each
/// key's floats `off..off + 16·DC`; `scores` holds `H` rows of `stride` floats.
#[target_feature(enable = "avx512f")]
unsafe fn heads<const DC: usize, const H: usize, R: KvRows>(
    q: &[f32],
    out: &mut [f32],
    (kv, off, visible, scale, scores, stride): (&R, usize, usize, f32, &mut [f32], usize),
) where
    R::Elem: Load16,
{
    let d = 16 * DC;
    let mask_for = |j0: usize| -> __mmask16 {
        let cnt = (visible - j0).min(16);
        (((1u32 << cnt) - 1) & 0xFFFF) as __mmask16
    };

    // Scores, 16 keys per reduction; each K row is loaded once for the H heads.
    let mut maxv = [_mm512_set1_ps(f32::NEG_INFINITY); H];
    let mut j0 = 0;
    while j0 < visible {
        let mut part = [[_mm512_setzero_ps(); 16]; H];
        for t in 0..(visible - j0).min(16) {
            let j = j0 + t;
            // Slots are scattered through the pool, so the hardware prefetcher cannot follow
            // them: fetch the K row a block ahead into L1 and this token's V row into L2 for the
            // weighted sum below.
            if j + PREFETCH_KEYS < visible {
                prefetch_row::<_MM_HINT_T0, _>(kv.k(j + PREFETCH_KEYS)[off..off + d].as_ptr(), d);
            }
            prefetch_row::<_MM_HINT_T1, _>(kv.v(j)[off..off + d].as_ptr(), d);
            let k = kv.k(j)[off..off + d].as_ptr();
            let mut kv_c = [_mm512_setzero_ps(); DC];
            for (c, v) in kv_c.iter_mut().enumerate() {
                *v = R::Elem::load16(k.add(16 * c));
            }
            for (hh, ph) in part.iter_mut().enumerate() {
                let qp = q.as_ptr().add(hh * d);
                let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qp), kv_c[0]);
                for (c, kc) in kv_c.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(16 * c)), *kc, acc);
                }
                ph[t] = acc;
            }
        }
        let mask = mask_for(j0);
        for hh in 0..H {
            let sc = _mm512_mul_ps(reduce16(part[hh]), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(hh * stride + j0), mask, sc);
            maxv[hh] = _mm512_mask_max_ps(maxv[hh], mask, maxv[hh], sc);
        }
        j0 += 16;
    }

    // Unnormalized probabilities in place, and each head's 1 / sum.
    let mut inv = [0f32; H];
    for hh in 0..H {
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv[hh]));
        let mut sumv = _mm512_setzero_ps();
        let mut j0 = 0;
        while j0 < visible {
            let mask = mask_for(j0);
            let p = scores.as_mut_ptr().add(hh * stride + j0);
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), max));
            _mm512_mask_storeu_ps(p, mask, e);
            sumv = _mm512_mask_add_ps(sumv, mask, sumv, e);
            j0 += 16;
        }
        inv[hh] = 1.0 / _mm512_reduce_add_ps(sumv);
    }

    // Weighted V; each V row is loaded once for the H heads.
    let mut acc = [[_mm512_setzero_ps(); DC]; H];
    for j in 0..visible {
        if j + PREFETCH_KEYS < visible {
            prefetch_row::<_MM_HINT_T0, _>(kv.v(j + PREFETCH_KEYS)[off..off + d].as_ptr(), d);
        }
        let v = kv.v(j)[off..off + d].as_ptr();
        let mut v_c = [_mm512_setzero_ps(); DC];
        for (c, x) in v_c.iter_mut().enumerate() {
            *x = R::Elem::load16(v.add(16 * c));
        }
        for (hh, ah) in acc.iter_mut().enumerate() {
            let p = _mm512_set1_ps(*scores.get_unchecked(hh * stride + j));
            for (a, x) in ah.iter_mut().zip(&v_c) {
                *a = _mm512_fmadd_ps(p, *x, *a);
            }
        }
    }
    for (hh, ah) in acc.iter().enumerate() {
        let scale = _mm512_set1_ps(inv[hh]);
        for (c, a) in ah.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(hh * d + 16 * c), _mm512_mul_ps(*a, scale));
        }
    }
}
