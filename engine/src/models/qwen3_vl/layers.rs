//! The vision tower's building blocks on the CPU, all f32 compute: biased linear, LayerNorm,
//! the GELUs, the 2-D rotary embedding and non-causal multi-head attention over row segments.

use rayon::prelude::*;

use super::config::VisionAct;
use crate::models::Result;
use crate::tensor::{matmul_t, Tensor};

/// `x · wᵀ + b` with `w` `[out, in]` (any float dtype, kept as loaded) and `b` `[out]`.
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(matmul_t(x, &self.weight)?.add(&self.bias)?)
    }
}

/// LayerNorm over the last dim with weight and bias, `eps` 1e-6 (as HF's vision tower).
pub(crate) struct LayerNorm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

const LN_EPS: f32 = 1e-6;

impl LayerNorm {
    /// Normalises each row of `x` (`[rows, weight.len()]`, f32 values).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.len();
        let xv = x.to_f32_vec()?;
        let mut out = vec![0f32; xv.len()];
        out.par_chunks_mut(d).zip(xv.par_chunks(d)).for_each(|(o, r)| {
            let mean = r.iter().sum::<f32>() / d as f32;
            let var = r.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + LN_EPS).sqrt();
            for (i, o) in o.iter_mut().enumerate() {
                *o = (r[i] - mean) * inv * self.weight[i] + self.bias[i];
            }
        });
        Ok(Tensor::from_vec(out, x.shape())?)
    }
}

/// Applies `act` elementwise.
pub(crate) fn activate(x: &Tensor, act: VisionAct) -> Result<Tensor> {
    let mut v = x.to_f32_vec()?;
    let f: fn(f32) -> f32 = match act {
        VisionAct::GeluTanh => gelu_tanh,
        VisionAct::GeluErf => gelu_erf,
    };
    v.par_iter_mut().for_each(|x| *x = f(*x));
    Ok(Tensor::from_vec(v, x.shape())?)
}

/// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (K * (x + 0.044_715 * x * x * x)).tanh())
}

/// Exact GELU, `0.5 x erfc(−x / √2)`, in f64.
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * mllm_kernel::reference::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)) as f32
}

/// Per-row cos and sin tables `[rows, head_dim]` of the axial 2-D rotary embedding: frequencies
/// `θ^(−4j/head_dim)`, `j < head_dim/4`, times the row id then the column id, the pair repeated
/// twice (HF `Qwen3VLVisionRotaryEmbedding`).
pub(crate) struct Rotary {
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    pub(crate) head_dim: usize,
}

impl Rotary {
    pub(crate) fn new(coords: &[(usize, usize)], head_dim: usize, theta: f64) -> Self {
        let spatial = head_dim / 2;
        let inv_freq: Vec<f32> = (0..spatial / 2)
            .map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / spatial as f32))
            .collect();
        // Each angle's cos/sin once, written to both halves; patches in parallel.
        let half = head_dim / 2;
        let mut cos = vec![0f32; coords.len() * head_dim];
        let mut sin = vec![0f32; coords.len() * head_dim];
        cos.par_chunks_mut(head_dim)
            .zip(sin.par_chunks_mut(head_dim))
            .zip(coords.par_iter())
            .for_each(|((c, s), &(row, col))| {
                let angles = [row, col]
                    .into_iter()
                    .flat_map(|p| inv_freq.iter().map(move |&f| p as f32 * f));
                for (j, a) in angles.enumerate() {
                    let (cv, sv) = (a.cos(), a.sin());
                    (c[j], c[j + half], s[j], s[j + half]) = (cv, cv, sv, sv);
                }
            });
        Self { cos, sin, head_dim }
    }

    /// `[patches, head_dim]` rows of the GPU RoPE kernel's table: the `head_dim / 2` cosines,
    /// then the sines (each half of `cos`/`sin` repeats the angles).
    pub(crate) fn kernel_table(&self) -> Vec<f32> {
        let (d, half) = (self.head_dim, self.head_dim / 2);
        let mut out = vec![0f32; self.cos.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            row[..half].copy_from_slice(&self.cos[r * d..r * d + half]);
            row[half..].copy_from_slice(&self.sin[r * d..r * d + half]);
        });
        out
    }

    /// Rotates one head vector `x` of patch `row` in place: `x·cos + rotate_half(x)·sin`.
    fn apply(&self, row: usize, x: &mut [f32]) {
        let d = self.head_dim;
        let half = d / 2;
        let (cos, sin) = (&self.cos[row * d..(row + 1) * d], &self.sin[row * d..(row + 1) * d]);
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/// Query rows per attention task (bounds the `[rows, seq]` score buffer).
const Q_CHUNK: usize = 256;

/// Non-causal multi-head attention of fused `qkv` (`[n, 3·hidden]`, q | k | v, heads contiguous
/// inside each) within each segment `bounds[i]..bounds[i+1]`, after rotating q and k. Returns the
/// heads concatenated, `[n, hidden]`.
pub(crate) fn segment_attention(qkv: &Tensor, heads: usize, rope: &Rotary, bounds: &[usize]) -> Result<Tensor> {
    let n = qkv.shape()[0];
    let hidden = qkv.shape()[1] / 3;
    let hd = hidden / heads;
    let qkv = qkv.to_f32_vec()?;
    let mut out = vec![0f32; n * hidden];
    for seg in bounds.windows(2) {
        let (start, len) = (seg[0], seg[1] - seg[0]);
        let per_head: Vec<Vec<f32>> = (0..heads)
            .into_par_iter()
            .map(|h| head_attention(&qkv, hidden, h * hd, hd, start, len, rope))
            .collect::<Result<_>>()?;
        for (h, o) in per_head.iter().enumerate() {
            for r in 0..len {
                let dst = (start + r) * hidden + h * hd;
                out[dst..dst + hd].copy_from_slice(&o[r * hd..(r + 1) * hd]);
            }
        }
    }
    Ok(Tensor::from_vec(out, &[n, hidden])?)
}

/// One head over one segment: softmax(q kᵀ / √d) v, `[len, hd]` row-major.
fn head_attention(
    qkv: &[f32],
    hidden: usize,
    col: usize,
    hd: usize,
    start: usize,
    len: usize,
    rope: &Rotary,
) -> Result<Vec<f32>> {
    let gather = |part: usize, rotate: bool| -> Vec<f32> {
        let mut v = Vec::with_capacity(len * hd);
        for r in start..start + len {
            let off = r * 3 * hidden + part * hidden + col;
            let mut x = qkv[off..off + hd].to_vec();
            if rotate {
                rope.apply(r, &mut x);
            }
            v.extend_from_slice(&x);
        }
        v
    };
    let q = gather(0, true);
    let k = Tensor::from_vec(gather(1, true), &[len, hd])?;
    let v = gather(2, false);
    let mut vt = vec![0f32; hd * len];
    for r in 0..len {
        for c in 0..hd {
            vt[c * len + r] = v[r * hd + c];
        }
    }
    let vt = Tensor::from_vec(vt, &[hd, len])?;
    let scale = (hd as f32).powf(-0.5);
    let mut out = Vec::with_capacity(len * hd);
    for q0 in (0..len).step_by(Q_CHUNK) {
        let rows = Q_CHUNK.min(len - q0);
        let qc = Tensor::from_vec(q[q0 * hd..(q0 + rows) * hd].to_vec(), &[rows, hd])?;
        let mut scores = matmul_t(&qc, &k)?.to_f32_vec()?;
        scores.chunks_mut(len).for_each(|r| softmax_scaled(r, scale));
        let p = Tensor::from_vec(scores, &[rows, len])?;
        out.extend_from_slice(matmul_t(&p, &vt)?.as_slice::<f32>()?);
    }
    Ok(out)
}

/// `softmax(row · scale)` in place.
fn softmax_scaled(row: &mut [f32], scale: f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x * scale - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_gelu_matches_known_values() {
        // torch.nn.functional.gelu(torch.tensor([-3., -1., 0.5, 2.]))
        let want = [-0.004_049_7, -0.158_655_26, 0.345_731_14, 1.954_5];
        for (x, w) in [-3.0f32, -1.0, 0.5, 2.0].iter().zip(want) {
            assert!((gelu_erf(*x) - w).abs() < 1e-6 * w.abs().max(1.0), "{x}");
        }
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
    }

    #[test]
    fn rotary_ids_rotate_pairs() {
        let r = Rotary::new(&[(0, 0), (1, 2)], 8, 10_000.0);
        // Position (0, 0) is the identity.
        assert!(r.cos[..8].iter().all(|&c| c == 1.0) && r.sin[..8].iter().all(|&s| s == 0.0));
        // Row 1: [row·f0, row·f1, col·f0, col·f1] repeated; f0 = 1, f1 = 1e4^(-1/2).
        let want = [1.0f32, 0.01, 2.0, 0.02];
        for (i, w) in want.iter().chain(want.iter()).enumerate() {
            assert!((r.cos[8 + i] - w.cos()).abs() < 1e-6);
        }
    }
}
