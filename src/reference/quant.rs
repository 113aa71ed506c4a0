use crate::dtype::FloatElem;

/// Dynamic symmetric per-row int8 quantization, as pymllm's Triton kernel:
/// `absmax = max(max|x|, 1e-10)`, `scale = absmax / 127`,
/// `q = round_half_away_from_zero(x * (127 / absmax))`.
///
/// ```
/// let (q, s) = mllm_kernel::reference::per_token_quant_int8(&[0.5f32, -1.0, 0.0, 0.0], 2);
/// assert_eq!(q, vec![64, -127, 0, 0]); // 63.5 rounds away from zero
/// assert_eq!(s, vec![1.0 / 127.0, 1e-10 / 127.0]);
/// ```
pub fn per_token_quant_int8<T: FloatElem>(x: &[T], cols: usize) -> (Vec<i8>, Vec<f32>) {
    assert!(
        cols > 0 && x.len().is_multiple_of(cols),
        "per_token_quant_int8 reference: bad sizes"
    );
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / cols);
    for row in x.chunks(cols) {
        let absmax = row.iter().fold(0f32, |m, v| m.max(v.to_f32().abs())).max(1e-10);
        scales.push(absmax / 127.0);
        let mult = 127.0 / absmax;
        q.extend(
            row.iter()
                .map(|v| (v.to_f32() * mult).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}
