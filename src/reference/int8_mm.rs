use crate::dtype::FloatElem;

/// W8A8 scaled matmul, the oracle of `ops::int8_scaled_mm`: exact int32
/// accumulation, then `scale_a * (scale_b * acc) + bias` in f32, rounded once
/// to `T` (the kernels' epilogue order).
///
/// `a`: `[m, k]`; `b`: `[n, k]` (B column-major); `scales_a`: `[m]` or `[1]`;
/// `scales_b`: `[n]` or `[1]`; `bias`: `[n]`. Returns `[m, n]`.
///
/// ```
/// use half::bf16;
/// let a = [1i8, 2, 3, 4]; // [1, 4]
/// let b = [1i8, 1, 1, 1, -1, 0, 0, 1]; // [2, 4]
/// let out = mllm_kernel::reference::int8_scaled_mm::<bf16>(
///     &a, &b, 1, 2, 4, &[0.5], &[1.0, 2.0], Some(&[bf16::ONE, bf16::ZERO]));
/// assert_eq!(out, vec![bf16::from_f32(6.0), bf16::from_f32(3.0)]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn int8_scaled_mm<T: FloatElem>(
    a: &[i8],
    b: &[i8],
    m: usize,
    n: usize,
    k: usize,
    scales_a: &[f32],
    scales_b: &[f32],
    bias: Option<&[T]>,
) -> Vec<T> {
    assert!(
        a.len() == m * k && b.len() == n * k,
        "int8_scaled_mm reference: bad sizes"
    );
    let sa = |i: usize| if scales_a.len() == 1 { scales_a[0] } else { scales_a[i] };
    let sb = |j: usize| if scales_b.len() == 1 { scales_b[0] } else { scales_b[j] };
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let col = &b[j * k..(j + 1) * k];
            let acc: i32 = row.iter().zip(col).map(|(x, y)| *x as i32 * *y as i32).sum();
            let bias = bias.map_or(0.0, |bb| bb[j].to_f32());
            out.push(T::from_f32(sa(i).mul_add(sb(j) * acc as f32, bias)));
        }
    }
    out
}
