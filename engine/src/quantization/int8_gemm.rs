//! A fast CPU int8 GEMM with the epilogue of `mllm_kernel::reference::int8_scaled_mm`: exact
//! i32 accumulation of i8 × i8 products, then `scale_a[i] * (scale_b[j] * acc) + bias[j]` in
//! f32. The result is bit-identical to the reference (same integer sum, same float ops), only
//! faster: AVX2 `madd` over 16 lanes when the CPU has it, rayon over column blocks.

use rayon::prelude::*;

/// Columns of `b` per parallel task (a `[64, k]` int8 block stays in L2 for every row of `a`).
const COLS_PER_TASK: usize = 64;

/// `i32` dot product of two equal-length int8 slices.
///
/// ```
/// use mllm_engine::quantization::int8_gemm::dot_i8;
/// let a: Vec<i8> = (0..37).map(|i| (i * 7 % 255 - 127) as i8).collect();
/// let b: Vec<i8> = (0..37).map(|i| (127 - i * 5 % 255) as i8).collect();
/// let want: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
/// assert_eq!(dot_i8(&a, &b), want);
/// ```
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len(), "dot_i8: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above); the slices have equal length.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| *x as i32 * *y as i32)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] as i32 * y[l] as i32;
        }
    }
    acc.iter().sum::<i32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len() / 16 * 16;
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= n <= len of both slices; unaligned loads are allowed.
        let (va, vb) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().add(i) as *const __m128i),
                _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i),
            )
        };
        // i8 → i16, then pairwise i16 products summed to i32 (|pair| ≤ 2·127², no overflow).
        let prod = _mm256_madd_epi16(_mm256_cvtepi8_epi16(va), _mm256_cvtepi8_epi16(vb));
        acc = _mm256_add_epi32(acc, prod);
        i += 16;
    }
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let sum64 = _mm_add_epi32(sum128, _mm_unpackhi_epi64(sum128, sum128));
    let sum32 = _mm_add_epi32(sum64, _mm_shuffle_epi32::<0b01>(sum64));
    let tail: i32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| *x as i32 * *y as i32).sum();
    _mm_cvtsi128_si32(sum32) + tail
}

/// `out[i, j] = scales_a[i] * (scales_b[j] * Σ_k a[i, k]·b[j, k]) + bias[j]`.
///
/// `a`: `[m, k]`; `b`: `[n, k]`; `scales_a`: `[m]` or `[1]`; `scales_b`: `[n]` or `[1]`;
/// `bias`: `[n]`. Returns f32 `[m, n]`, equal bit for bit to the reference.
///
/// ```
/// use mllm_engine::quantization::int8_gemm::int8_scaled_mm;
/// let a = [1i8, 2, 3, 4]; // [1, 4]
/// let b = [1i8, 1, 1, 1, -1, 0, 0, 1]; // [2, 4]
/// let out = int8_scaled_mm(&a, &b, 1, 2, 4, &[0.5], &[1.0, 2.0], Some(&[1.0, 0.0]));
/// assert_eq!(out, vec![6.0, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm(
    a: &[i8],
    b: &[i8],
    m: usize,
    n: usize,
    k: usize,
    scales_a: &[f32],
    scales_b: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(a.len() == m * k && b.len() == n * k, "int8_scaled_mm: bad sizes");
    assert!(
        (scales_a.len() == m || scales_a.len() == 1) && (scales_b.len() == n || scales_b.len() == 1),
        "int8_scaled_mm: bad scale sizes"
    );
    assert!(bias.is_none_or(|b| b.len() == n), "int8_scaled_mm: bad bias size");
    let sa = |i: usize| if scales_a.len() == 1 { scales_a[0] } else { scales_a[i] };
    let sb = |j: usize| if scales_b.len() == 1 { scales_b[0] } else { scales_b[j] };
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|blk| {
            let j0 = blk * COLS_PER_TASK;
            let j1 = (j0 + COLS_PER_TASK).min(n);
            let mut out = Vec::with_capacity(m * (j1 - j0));
            for i in 0..m {
                let row = &a[i * k..(i + 1) * k];
                for j in j0..j1 {
                    let acc = dot_i8(row, &b[j * k..(j + 1) * k]);
                    let bias = bias.map_or(0.0, |bb| bb[j]);
                    out.push(sa(i).mul_add(sb(j) * acc as f32, bias));
                }
            }
            (j0, out)
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (j0, block) in blocks {
        let w = block.len() / m.max(1);
        for i in 0..m {
            out[i * n + j0..i * n + j0 + w].copy_from_slice(&block[i * w..(i + 1) * w]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<i8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8 as i8)
            .map(|v| v.max(-127))
            .collect()
    }

    #[test]
    fn matches_reference_bit_for_bit_on_odd_shapes() {
        for (m, n, k) in [(1, 1, 1), (3, 70, 33), (17, 129, 97), (5, 64, 256)] {
            let (a, b) = (data(m * k, 1), data(n * k, 2));
            let sa: Vec<f32> = (0..m).map(|i| 0.01 + i as f32 * 1e-3).collect();
            let sb: Vec<f32> = (0..n).map(|j| 0.02 + j as f32 * 7e-4).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 3.0).collect();
            let want = mllm_kernel::reference::int8_scaled_mm::<f32>(&a, &b, m, n, k, &sa, &sb, Some(&bias));
            assert_eq!(
                int8_scaled_mm(&a, &b, m, n, k, &sa, &sb, Some(&bias)),
                want,
                "{m}x{n}x{k}"
            );
            let want = mllm_kernel::reference::int8_scaled_mm::<f32>(&a, &b, m, n, k, &[0.5], &[0.25], None);
            assert_eq!(int8_scaled_mm(&a, &b, m, n, k, &[0.5], &[0.25], None), want);
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let k = 4099;
        let a = vec![-127i8; k];
        let b = vec![-127i8; k];
        assert_eq!(dot_i8(&a, &b), 127 * 127 * k as i32);
        assert_eq!(dot_portable(&a, &b), 127 * 127 * k as i32);
    }
}
