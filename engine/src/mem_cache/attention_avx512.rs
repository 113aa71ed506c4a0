//! AVX-512 attention rows for head dims 64 and 128 (`16 · DC`): the query head lives in `DC`
//! registers, scores come 16 keys at a time through one shuffle-tree reduction, the softmax
//! uses a vector `exp`, and V is accumulated in registers with the normalization applied once
//! at the end. Same contract as [`super::attention`]'s scalar rows.

use std::arch::x86_64::*;

use super::attention::{KvRows, Shape};
use crate::tensor::simd::{exp, reduce16};

/// Attention of query tokens `i0..` (`q`: `[n, num_heads, 16·DC]`) into `out` (same shape).
///
/// # Safety
/// The CPU must have AVX-512F; `s.head_dim == 16 * DC`; `kv` rows hold `s.head_dim` floats per
/// KV head for every visible token.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows<const DC: usize>(q: &[f32], i0: usize, kv: &impl KvRows, s: &Shape, out: &mut [f32]) {
    let d = 16 * DC;
    debug_assert_eq!(s.head_dim, d);
    let qrow = s.num_heads * d;
    let n = q.len() / qrow;
    let mut scores = vec![0f32; (s.prefix_len + i0 + n).next_multiple_of(16)];
    for ii in 0..n {
        let visible = s.prefix_len + i0 + ii + 1;
        for h in 0..s.num_heads {
            let at = (ii * s.num_heads + h) * d;
            let (qh, oh) = (&q[at..at + d], &mut out[at..at + d]);
            head::<DC>(qh, kv, h / s.group * d, visible, s.scale, &mut scores, oh);
        }
    }
}

/// One query head over keys `0..visible`, reading each key's floats `off..off + 16·DC`.
#[target_feature(enable = "avx512f")]
unsafe fn head<const DC: usize>(
    q: &[f32],
    kv: &impl KvRows,
    off: usize,
    visible: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = 16 * DC;
    let mut qv = [_mm512_setzero_ps(); DC];
    for (c, v) in qv.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(q.as_ptr().add(16 * c));
    }
    let mask_for = |j0: usize| -> __mmask16 {
        let cnt = (visible - j0).min(16);
        (((1u32 << cnt) - 1) & 0xFFFF) as __mmask16
    };

    // Scores, 16 keys per reduction.
    let mut maxv = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut j0 = 0;
    while j0 < visible {
        let mut part = [_mm512_setzero_ps(); 16];
        for (t, p) in part.iter_mut().enumerate().take(visible - j0) {
            let k = kv.k(j0 + t)[off..off + d].as_ptr();
            let mut acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
            for (c, qc) in qv.iter().enumerate().skip(1) {
                acc = _mm512_fmadd_ps(*qc, _mm512_loadu_ps(k.add(16 * c)), acc);
            }
            *p = acc;
        }
        let mask = mask_for(j0);
        let sc = _mm512_mul_ps(reduce16(part), _mm512_set1_ps(scale));
        _mm512_mask_storeu_ps(scores.as_mut_ptr().add(j0), mask, sc);
        maxv = _mm512_mask_max_ps(maxv, mask, maxv, sc);
        j0 += 16;
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv));

    // Unnormalized probabilities in place, and their sum.
    let mut sumv = _mm512_setzero_ps();
    let mut j0 = 0;
    while j0 < visible {
        let mask = mask_for(j0);
        let p = scores.as_mut_ptr().add(j0);
        let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), max));
        _mm512_mask_storeu_ps(p, mask, e);
        sumv = _mm512_mask_add_ps(sumv, mask, sumv, e);
        j0 += 16;
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sumv));

    let mut acc = [_mm512_setzero_ps(); DC];
    for (j, &p) in scores[..visible].iter().enumerate() {
        let v = kv.v(j)[off..off + d].as_ptr();
        let p = _mm512_set1_ps(p);
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(p, _mm512_loadu_ps(v.add(16 * c)), *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, inv));
    }
}
