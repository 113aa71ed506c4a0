//! AVX-512 building blocks shared by the CPU kernels (x86-64 only; callers check the CPU).

use std::arch::x86_64::*;

/// The 32 bf16 lanes of `v` as the type `vdpbf16ps` takes.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
pub(crate) fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: same size; both are 32 lanes of 16 bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Lane `r` of the result = the sum of the 16 lanes of `a[r]`: 45 shuffles/adds for 16 sums
/// instead of 16 separate horizontal reductions. Every input goes through the same tree, so a
/// sum does not depend on its position.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn reduce16(a: [__m512; 16]) -> __m512 {
    // Fold 128-bit lanes pairwise: s1[p] lanes 0-1 hold a[2p], lanes 2-3 hold a[2p + 1].
    let mut s1 = [_mm512_setzero_ps(); 8];
    for p in 0..8 {
        let (u, v) = (a[2 * p], a[2 * p + 1]);
        s1[p] = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(u, v), _mm512_shuffle_f32x4::<0xEE>(u, v));
    }
    // s2[q] 128-bit lane l holds four partial sums of a[4q + l].
    let mut s2 = [_mm512_setzero_ps(); 4];
    for q in 0..4 {
        let (u, v) = (s1[2 * q], s1[2 * q + 1]);
        s2[q] = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(u, v), _mm512_shuffle_f32x4::<0xDD>(u, v));
    }
    // Transpose-add inside each 128-bit lane: element 4l + q = sum of a[4q + l].
    let s01 = _mm512_add_ps(_mm512_unpacklo_ps(s2[0], s2[1]), _mm512_unpackhi_ps(s2[0], s2[1]));
    let s23 = _mm512_add_ps(_mm512_unpacklo_ps(s2[2], s2[3]), _mm512_unpackhi_ps(s2[2], s2[3]));
    let t = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(s01, s23), _mm512_shuffle_ps::<0xEE>(s01, s23));
    let natural = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(natural, t)
}

/// `e^x` per lane within 2 ulp for results in the normal range; 0 far below, +inf above ~88.7,
/// NaN stays NaN. Range reduction `x = n·ln2 + r` (|r| ≤ ln2/2), a degree-7 polynomial for
/// `e^r` (the Cephes `expf` coefficients) and `2^n` applied with `vscalefps`, which cannot
/// overflow the exponent field.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn exp(x: __m512) -> __m512 {
    // NaN in the second operand passes through min/max.
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), _mm512_min_ps(_mm512_set1_ps(88.8), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(p, n)
}

/// Whether the CPU runs the AVX-512 kernels built on this module (detected once).
pub(crate) fn has_avx512() -> bool {
    static HAS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| is_x86_feature_detected!("avx512f"));
    *HAS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_over_the_range() {
        if !has_avx512() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let xs: Vec<f32> = (0..=200_000).map(|i| -100.0 + i as f32 * 188.0 / 200_000.0).collect();
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; 16 floats in and out.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = (x as f64).exp();
                let rel = ((g as f64 - want) / want.max(f32::MIN_POSITIVE as f64)).abs();
                assert!(rel < 3e-7, "exp({x}) = {g}, want {want} (rel {rel:e})");
            }
        }
        let mut edge = [0f32; 16];
        let inputs = [
            f32::NAN,
            f32::NEG_INFINITY,
            -1000.0,
            1000.0,
            0.0,
            -0.0,
            1.0,
            -1.0,
            88.0,
            -87.0,
            2.0,
            3.0,
            4.0,
            5.0,
            6.0,
            7.0,
        ];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(edge.as_mut_ptr(), exp(_mm512_loadu_ps(inputs.as_ptr()))) };
        assert!(edge[0].is_nan());
        assert_eq!(&edge[1..3], &[0.0, 0.0]);
        assert_eq!(edge[3], f32::INFINITY);
        assert_eq!(&edge[4..6], &[1.0, 1.0]);
    }

    #[test]
    fn reduce16_sums_each_input_into_its_lane() {
        if !has_avx512() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let rows: Vec<[f32; 16]> = (0..16)
            .map(|r| std::array::from_fn(|l| (r * 100 + l * l) as f32))
            .collect();
        // SAFETY: AVX-512F checked above.
        let got = unsafe {
            let mut a = [_mm512_setzero_ps(); 16];
            for (v, r) in a.iter_mut().zip(&rows) {
                *v = _mm512_loadu_ps(r.as_ptr());
            }
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), reduce16(a));
            out
        };
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(got[r], row.iter().sum::<f32>(), "lane {r}");
        }
    }
}
