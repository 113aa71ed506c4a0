//! Rotary position embedding, NeoX style (`rotate_half`: the two halves of each head form the
//! complex pairs), with HF's `linear` and `llama3` frequency scaling and a cos/sin cache.

use crate::loader::config::RopeScaling;
use crate::models::{ModelError, Result};

/// Positions cached at most (beyond, cos/sin are computed on the fly).
const MAX_CACHED: usize = 32 * 1024;

/// RoPE for heads of `head_dim` (the full head is rotated).
///
/// ```
/// use mllm_engine::layers::rotary::RotaryEmbedding;
/// let rope = RotaryEmbedding::new(2, 10000.0, None, 16).unwrap();
/// let mut q = vec![1.0f32, 0.0];
/// let mut k = vec![0.0f32, 1.0];
/// rope.apply(&[0], &mut q, 1, &mut k, 1).unwrap(); // position 0: identity
/// assert_eq!((q, k), (vec![1.0, 0.0], vec![0.0, 1.0]));
/// ```
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    head_dim: usize,
    inv_freq: Vec<f32>,
    /// `[cached, head_dim / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// `inv_freq[i] = theta^(-2i/d)` in f32 as HF computes it, then scaled.
fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let half = head_dim / 2;
    let base: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(&RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = original_max_position_embeddings as f32;
            let (factor, low, high) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32);
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl RotaryEmbedding {
    /// RoPE with base `theta`, optional scaling, caching `max_positions` positions.
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>, max_positions: usize) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Invalid(format!(
                "RoPE head_dim must be even and > 0, got {head_dim}"
            )));
        }
        let inv_freq = inv_freq(head_dim, theta, scaling);
        let n = max_positions.min(MAX_CACHED);
        let mut cos = Vec::with_capacity(n * head_dim / 2);
        let mut sin = Vec::with_capacity(n * head_dim / 2);
        for p in 0..n {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            head_dim,
            inv_freq,
            cos,
            sin,
        })
    }

    /// The `[max_pos, head_dim]` f32 table GPU kernels read: per position the `head_dim / 2`
    /// cosines, then the sines, with the same (scaled) frequencies and f32 rounding as
    /// [`RotaryEmbedding::apply`].
    ///
    /// ```
    /// use mllm_engine::layers::rotary::RotaryEmbedding;
    /// let rope = RotaryEmbedding::new(4, 10000.0, None, 8).unwrap();
    /// let t = rope.cos_sin_table(2);
    /// assert_eq!(&t[..4], &[1.0, 1.0, 0.0, 0.0]); // position 0
    /// assert_eq!(t[4], 1f32.cos());
    /// ```
    pub fn cos_sin_table(&self, max_pos: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(max_pos * self.head_dim);
        for p in 0..max_pos {
            out.extend(self.inv_freq.iter().map(|&f| (p as f32 * f).cos()));
            out.extend(self.inv_freq.iter().map(|&f| (p as f32 * f).sin()));
        }
        out
    }

    /// Rotates `x` `[heads, head_dim]` (one token) at position `pos` in place.
    fn rotate(&self, pos: usize, x: &mut [f32]) {
        let half = self.head_dim / 2;
        let mut tmp_c = Vec::new();
        let mut tmp_s = Vec::new();
        let (c, s): (&[f32], &[f32]) = if (pos + 1) * half <= self.cos.len() {
            (&self.cos[pos * half..][..half], &self.sin[pos * half..][..half])
        } else {
            tmp_c.extend(self.inv_freq.iter().map(|&f| (pos as f32 * f).cos()));
            tmp_s.extend(self.inv_freq.iter().map(|&f| (pos as f32 * f).sin()));
            (&tmp_c, &tmp_s)
        };
        for head in x.chunks_exact_mut(self.head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }

    /// Applies RoPE in place to `q` `[tokens, q_heads * head_dim]` and `k`
    /// `[tokens, k_heads * head_dim]`, token `t` at `positions[t]`.
    pub fn apply(
        &self,
        positions: &[usize],
        q: &mut [f32],
        q_heads: usize,
        k: &mut [f32],
        k_heads: usize,
    ) -> Result<()> {
        let (qr, kr) = (q_heads * self.head_dim, k_heads * self.head_dim);
        if q.len() != positions.len() * qr || k.len() != positions.len() * kr {
            return Err(ModelError::Invalid(format!(
                "RoPE: q has {} and k {} values, expected {} and {} for {} tokens",
                q.len(),
                k.len(),
                positions.len() * qr,
                positions.len() * kr,
                positions.len()
            )));
        }
        for ((&p, qt), kt) in positions.iter().zip(q.chunks_exact_mut(qr)).zip(k.chunks_exact_mut(kr)) {
            self.rotate(p, qt);
            self.rotate(p, kt);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_matches_formula_cached_or_not() {
        let rope = RotaryEmbedding::new(4, 10000.0, None, 4).unwrap();
        for pos in [3usize, 9] {
            let mut q = vec![1.0f32, 2.0, 3.0, 4.0];
            let mut k = q.clone();
            rope.apply(&[pos], &mut q, 1, &mut k, 1).unwrap();
            let f = [1.0f32, 0.01];
            let a = [pos as f32 * f[0], pos as f32 * f[1]];
            let want = [
                1.0 * a[0].cos() - 3.0 * a[0].sin(),
                2.0 * a[1].cos() - 4.0 * a[1].sin(),
                3.0 * a[0].cos() + 1.0 * a[0].sin(),
                4.0 * a[1].cos() + 2.0 * a[1].sin(),
            ];
            for (g, w) in q.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{q:?} vs {want:?}");
            }
            assert_eq!(q, k);
        }
    }

    #[test]
    fn scaling_variants() {
        let lin = inv_freq(8, 10000.0, Some(&RopeScaling::Linear { factor: 2.0 }));
        let base = inv_freq(8, 10000.0, None);
        assert!(lin.iter().zip(&base).all(|(l, b)| (l * 2.0 - b).abs() < 1e-9));
        let l3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let l3 = inv_freq(8, 10000.0, Some(&l3));
        assert_eq!(l3[0], base[0]); // high frequency kept
        assert!((l3[3] - base[3] / 8.0).abs() < 1e-9); // wavelen 6283 > 64: scaled
        assert!(RotaryEmbedding::new(3, 1e4, None, 1).is_err());
        let rope = RotaryEmbedding::new(2, 1e4, None, 1).unwrap();
        assert!(rope.apply(&[0], &mut [0.0; 3], 1, &mut [0.0; 2], 1).is_err());
    }
}
