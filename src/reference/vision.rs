//! References of the vision tower's ops: LayerNorm (with the residual add),
//! GELU and dense attention within row segments. f64 math on the stored
//! values, rounding only where the kernels round to the element type.

use crate::dtype::FloatElem;

/// Rows of `cols`: `out = T(((v - mean) / sqrt(var + eps)) * w + b)` with
/// `v = x`, or with `residual`, `v = residual = T(residual + x)`.
///
/// ```
/// let out = mllm_kernel::reference::layer_norm(&[1.0f32, 3.0], None, &[1.0, 1.0], &[0.5, 0.0], 2, 0.0);
/// assert_eq!(out, vec![-0.5, 1.0]);
/// ```
pub fn layer_norm<T: FloatElem>(
    x: &[T],
    residual: Option<&mut [T]>,
    w: &[T],
    b: &[T],
    cols: usize,
    eps: f32,
) -> Vec<T> {
    assert!(cols > 0 && x.len().is_multiple_of(cols) && w.len() == cols && b.len() == cols);
    let v: Vec<T> = match residual {
        Some(r) => {
            assert_eq!(r.len(), x.len());
            for (ri, xi) in r.iter_mut().zip(x) {
                *ri = T::from_f32(ri.to_f32() + xi.to_f32());
            }
            r.to_vec()
        }
        None => x.to_vec(),
    };
    let mut out = Vec::with_capacity(v.len());
    for row in v.chunks(cols) {
        let vals: Vec<f64> = row.iter().map(|e| f64::from(e.to_f32())).collect();
        let mean = vals.iter().sum::<f64>() / cols as f64;
        let var = vals.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for ((a, wv), bv) in vals.iter().zip(w).zip(b) {
            let y = (a - mean) * rstd * f64::from(wv.to_f32()) + f64::from(bv.to_f32());
            out.push(T::from_f32(y as f32));
        }
    }
    out
}

/// `T(gelu(x))`: tanh-approximated (`tanh: true`) or exact (erf).
///
/// ```
/// let y = mllm_kernel::reference::gelu(&[0.0f32, 1.0], true);
/// assert!(y[0] == 0.0 && (y[1] - 0.841_192).abs() < 1e-6);
/// ```
pub fn gelu<T: FloatElem>(x: &[T], tanh: bool) -> Vec<T> {
    x.iter()
        .map(|v| {
            let x = f64::from(v.to_f32());
            let y = if tanh {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh())
            } else {
                0.5 * x * erfc(-x / std::f64::consts::SQRT_2)
            };
            T::from_f32(y as f32)
        })
        .collect()
}

/// Complementary error function, relative error below 1.2e-7 everywhere
/// (the Chebyshev fit of Press et al., *Numerical Recipes*, `erfcc`;
/// Abramowitz–Stegun 7.1.26 is too coarse for f32 checks). The engine's CPU
/// GELU uses it too.
///
/// ```
/// use mllm_kernel::reference::erfc;
/// assert!((erfc(0.0) - 1.0).abs() < 1e-7);
/// assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
/// assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
/// ```
pub fn erfc(x: f64) -> f64 {
    const C: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = C.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Non-causal attention within row segments of `qkv: [n, 3·H·D]` (q, k, v
/// column blocks): `out: [n, H·D]`, f64 softmax of `scale · q·k`.
///
/// ```
/// // One row, one head of dim 1: softmax over one key is 1, so out = v.
/// let out = mllm_kernel::reference::segment_attention(&[2.0f32, 3.0, 5.0], 1, &[0, 1], 1.0);
/// assert_eq!(out, vec![5.0]);
/// ```
pub fn segment_attention<T: FloatElem>(qkv: &[T], heads: usize, bounds: &[usize], scale: f32) -> Vec<T> {
    let n = *bounds.last().unwrap_or(&0);
    assert!(heads > 0 && n > 0 && qkv.len().is_multiple_of(n * 3 * heads));
    let width = qkv.len() / n;
    let (hidden, d) = (width / 3, width / 3 / heads);
    let at = |r: usize, c: usize| f64::from(qkv[r * width + c].to_f32());
    let mut out = vec![T::from_f32(0.0); n * hidden];
    for seg in bounds.windows(2) {
        for h in 0..heads {
            for r in seg[0]..seg[1] {
                let s: Vec<f64> = (seg[0]..seg[1])
                    .map(|k| {
                        (0..d)
                            .map(|i| at(r, h * d + i) * at(k, hidden + h * d + i))
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let o: f64 = (seg[0]..seg[1])
                        .zip(&e)
                        .map(|(k, p)| p / z * at(k, 2 * hidden + h * d + i))
                        .sum();
                    out[r * hidden + h * d + i] = T::from_f32(o as f32);
                }
            }
        }
    }
    out
}
