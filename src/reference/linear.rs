use crate::dtype::FloatElem;

/// Dense linear layer, the oracle of `ops::linear` / `ops::stream_linear_into`:
/// `out[i, j] = Σ_k x[i, k] w[j, k] + bias[j]`, accumulated in f64 and rounded
/// once to `O` (the kernels accumulate in f32, which differs far below one
/// bf16/f16 rounding step at the sizes tested).
///
/// `x`: `[m, k]`; `w`: `[n, k]`; `bias`: `[n]`. Returns `[m, n]`.
///
/// ```
/// use half::bf16;
/// let x = [bf16::ONE, bf16::from_f32(2.0)]; // [1, 2]
/// let w = [bf16::ONE, bf16::ONE, bf16::ZERO, bf16::from_f32(-1.0)]; // [2, 2]
/// let out: Vec<f32> = mllm_kernel::reference::linear(&x, &w, Some(&[bf16::ZERO, bf16::ONE]), 1, 2, 2);
/// assert_eq!(out, vec![3.0, -1.0]);
/// ```
pub fn linear<T: FloatElem, O: FloatElem>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<O> {
    assert!(x.len() == m * k && w.len() == n * k, "linear reference: bad sizes");
    let w64: Vec<f64> = w.iter().map(|v| v.to_f32() as f64).collect();
    let mut out = Vec::with_capacity(m * n);
    for row in x.chunks_exact(k) {
        let x64: Vec<f64> = row.iter().map(|v| v.to_f32() as f64).collect();
        for (j, col) in w64.chunks_exact(k).enumerate() {
            let acc: f64 = x64.iter().zip(col).map(|(a, b)| a * b).sum();
            let b = bias.map_or(0.0, |b| b[j].to_f32() as f64);
            out.push(O::from_f32((acc + b) as f32));
        }
    }
    out
}
