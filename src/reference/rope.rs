use crate::dtype::FloatElem;
use crate::ops::QkHeads;

/// In place on `qk` (rows of `row_stride` elements): each q head (and k
/// head) is optionally RMS-normed with `q_w` (`k_w`) as HF's Qwen3 q_norm,
/// `T(T(x * rsqrt(mean(x²) + eps)) * w)` (sum of squares in f64), then
/// rotated NeoX style in f64 and rounded once:
/// `x_i' = x_i c_i - x_{i+D/2} s_i`, `x_{i+D/2}' = x_{i+D/2} c_i + x_i s_i`,
/// with `(c, s)` from row `clamp(pos[t], 0, max_pos - 1)` of `cos_sin`
/// (`[max_pos, D]`: D/2 cosines then D/2 sines).
///
/// ```
/// use mllm_kernel::{ops::QkHeads, reference};
/// // One token, one q head of dim 2 at angle pi/2: (1, 0) -> (0, 1).
/// let mut qk = vec![1.0f32, 0.0];
/// let cos_sin = [1.0, 0.0, 0.0, 1.0]; // positions 0 and 1
/// let heads = QkHeads { q_col: 0, q_heads: 1, k_col: 2, k_heads: 0, head_dim: 2 };
/// reference::qk_norm_rope(&mut qk, 2, heads, &[1], &cos_sin, None, None, 0.0);
/// assert_eq!(qk, vec![0.0, 1.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope<T: FloatElem>(
    qk: &mut [T],
    row_stride: usize,
    heads: QkHeads,
    pos: &[i32],
    cos_sin: &[f32],
    q_w: Option<&[T]>,
    k_w: Option<&[T]>,
    eps: f32,
) {
    let d = heads.head_dim;
    let half = d / 2;
    assert!(d >= 2 && d.is_multiple_of(2) && !cos_sin.is_empty() && cos_sin.len().is_multiple_of(d));
    let max_pos = cos_sin.len() / d;
    for (t, &p) in pos.iter().enumerate() {
        let p = (p.max(0) as usize).min(max_pos - 1);
        let cs = &cos_sin[p * d..(p + 1) * d];
        let row = &mut qk[t * row_stride..(t + 1) * row_stride];
        let q = (0..heads.q_heads).map(|h| (heads.q_col + h * d, q_w));
        let k = (0..heads.k_heads).map(|h| (heads.k_col + h * d, k_w));
        for (start, w) in q.chain(k) {
            let x = &mut row[start..start + d];
            if let Some(w) = w {
                let ss: f64 = x.iter().map(|v| (v.to_f32() as f64).powi(2)).sum();
                let inv = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
                for (v, wv) in x.iter_mut().zip(w) {
                    let n = T::from_f32(v.to_f32() * inv);
                    *v = T::from_f32(n.to_f32() * wv.to_f32());
                }
            }
            for i in 0..half {
                let (a, b) = (x[i].to_f32() as f64, x[i + half].to_f32() as f64);
                let (c, s) = (cs[i] as f64, cs[half + i] as f64);
                x[i] = T::from_f32((a * c - b * s) as f32);
                x[i + half] = T::from_f32((b * c + a * s) as f32);
            }
        }
    }
}
