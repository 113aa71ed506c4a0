use crate::dtype::FloatElem;

/// Rows of `cols` elements: `out = T(T(x * rsqrt(mean(x²) + eps)) * w)`, as
/// HF's `Qwen3RMSNorm`. Accumulates in f64 so it is the more exact side.
///
/// ```
/// let out = mllm_kernel::reference::rms_norm(&[3.0f32, 4.0], &[1.0, 2.0], 2, 0.0);
/// let inv = 1.0 / (12.5f32).sqrt();
/// assert_eq!(out, vec![3.0 * inv, 8.0 * inv]);
/// ```
pub fn rms_norm<T: FloatElem>(x: &[T], w: &[T], cols: usize, eps: f32) -> Vec<T> {
    assert!(
        cols > 0 && x.len().is_multiple_of(cols) && w.len() == cols,
        "rms_norm reference: bad sizes"
    );
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let inv = inv_rms(row, eps);
        out.extend(row.iter().zip(w).map(|(v, wv)| normalize(*v, inv, *wv)));
    }
    out
}

/// In place: `residual = T(x + residual)`, then `x = rms_norm(residual) * w`.
pub fn fused_add_rms_norm<T: FloatElem>(x: &mut [T], residual: &mut [T], w: &[T], cols: usize, eps: f32) {
    assert!(cols > 0 && x.len().is_multiple_of(cols) && x.len() == residual.len() && w.len() == cols);
    for (xr, rr) in x.chunks_mut(cols).zip(residual.chunks_mut(cols)) {
        for (a, r) in xr.iter().zip(rr.iter_mut()) {
            *r = T::from_f32(a.to_f32() + r.to_f32());
        }
        let inv = inv_rms(rr, eps);
        for ((a, r), wv) in xr.iter_mut().zip(rr.iter()).zip(w) {
            *a = normalize(*r, inv, *wv);
        }
    }
}

fn inv_rms<T: FloatElem>(row: &[T], eps: f32) -> f32 {
    let sum: f64 = row.iter().map(|v| (v.to_f32() as f64).powi(2)).sum();
    1.0 / ((sum / row.len() as f64) as f32 + eps).sqrt()
}

fn normalize<T: FloatElem>(v: T, inv: f32, w: T) -> T {
    let n = T::from_f32(v.to_f32() * inv);
    T::from_f32(n.to_f32() * w.to_f32())
}
