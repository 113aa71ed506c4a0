//! Multimodal rotary embedding (M-RoPE) of the Qwen3-VL text decoder: every token has three
//! positions (temporal, height, width) and each rotary frequency reads one of them.
//!
//! With the interleaved layout (HF `Qwen3VLTextRotaryEmbedding`, `mrope_interleaved: true`)
//! frequency `j` of the `head_dim / 2` reads the height position when `j % 3 == 1` and
//! `j < 3·section[1]`, the width position when `j % 3 == 2` and `j < 3·section[2]`, else the
//! temporal one. The chunked layout (Qwen2-VL) gives the first `section[0]` frequencies to t,
//! the next `section[1]` to h, the rest to w. The rotation itself is NeoX style (`rotate_half`).

use crate::models::{ModelError, Result};

/// A token's M-RoPE position: `[temporal, height, width]`.
pub type MropePos = [u32; 3];

/// How the three axes share the rotary frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MropeLayout {
    /// Qwen3-VL: t, h, w, t, h, w, … over the first `3·min(section)` frequencies, then t.
    Interleaved,
    /// Qwen2-VL: contiguous runs of `section[0]`, `section[1]`, `section[2]` frequencies.
    Chunked,
}

/// M-RoPE for heads of `head_dim` (the full head is rotated).
///
/// ```
/// use mllm_engine::models::qwen3_vl::{MRotaryEmbedding, MropeLayout};
///
/// let rope = MRotaryEmbedding::new(8, 100.0, [2, 1, 1], MropeLayout::Interleaved)?;
/// assert_eq!(rope.axes(), &[0, 1, 2, 0]); // frequency → axis (t = 0, h = 1, w = 2)
/// let (mut q, mut k) = (vec![1.0f32; 8], vec![1.0f32; 8]);
/// rope.apply(&[[0, 0, 0]], &mut q, 1, &mut k, 1)?; // position 0: identity
/// assert_eq!(q, vec![1.0; 8]);
/// # Ok::<(), mllm_engine::models::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MRotaryEmbedding {
    head_dim: usize,
    inv_freq: Vec<f32>,
    /// The axis (0 = t, 1 = h, 2 = w) each frequency reads.
    axes: Vec<u8>,
}

impl MRotaryEmbedding {
    /// M-RoPE with base `theta`; `section` (t, h, w frequency counts) must sum to `head_dim / 2`.
    pub fn new(head_dim: usize, theta: f64, section: [usize; 3], layout: MropeLayout) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Invalid(format!(
                "M-RoPE head_dim must be even and > 0, got {head_dim}"
            )));
        }
        let half = head_dim / 2;
        if section.iter().sum::<usize>() != half {
            return Err(ModelError::Invalid(format!(
                "mrope_section {section:?} must sum to head_dim / 2 = {half}"
            )));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(ModelError::Invalid(format!("M-RoPE theta must be > 0, got {theta}")));
        }
        let inv_freq = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let axes = (0..half)
            .map(|j| match layout {
                MropeLayout::Interleaved if j % 3 == 1 && j < 3 * section[1] => 1,
                MropeLayout::Interleaved if j % 3 == 2 && j < 3 * section[2] => 2,
                MropeLayout::Interleaved => 0,
                MropeLayout::Chunked if j < section[0] => 0,
                MropeLayout::Chunked if j < section[0] + section[1] => 1,
                MropeLayout::Chunked => 2,
            })
            .collect();
        Ok(Self {
            head_dim,
            inv_freq,
            axes,
        })
    }

    /// The axis each of the `head_dim / 2` frequencies reads (0 = t, 1 = h, 2 = w).
    pub fn axes(&self) -> &[u8] {
        &self.axes
    }

    /// The rotated head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Each token's rotary angles as a `[positions.len(), head_dim]` f32 table: row `t` holds
    /// `cos` of the `head_dim / 2` frequencies at `positions[t]` (each frequency reading its
    /// axis), then their `sin` — the layout of the GPU RoPE kernel's table, so a step with
    /// image tokens rotates through these rows at positions `0..T`.
    ///
    /// ```
    /// use mllm_engine::models::qwen3_vl::{MRotaryEmbedding, MropeLayout};
    /// let m = MRotaryEmbedding::new(8, 1e4, [2, 1, 1], MropeLayout::Interleaved).unwrap();
    /// let rows = m.cos_sin_rows(&[[0, 0, 0], [5, 2, 3]]);
    /// assert_eq!(rows.len(), 2 * 8);
    /// assert_eq!(&rows[..4], &[1.0; 4]); // cos(0)
    /// ```
    pub fn cos_sin_rows(&self, positions: &[MropePos]) -> Vec<f32> {
        let mut out = Vec::with_capacity(positions.len() * self.head_dim);
        for pos in positions {
            let angle = |j: usize| pos[usize::from(self.axes[j])] as f32 * self.inv_freq[j];
            out.extend((0..self.inv_freq.len()).map(|j| angle(j).cos()));
            out.extend((0..self.inv_freq.len()).map(|j| angle(j).sin()));
        }
        out
    }

    /// Applies M-RoPE in place to `q` `[tokens, q_heads · head_dim]` and `k`
    /// `[tokens, k_heads · head_dim]`, token `i` at `positions[i]`.
    pub fn apply(
        &self,
        positions: &[MropePos],
        q: &mut [f32],
        q_heads: usize,
        k: &mut [f32],
        k_heads: usize,
    ) -> Result<()> {
        let (qr, kr) = (q_heads * self.head_dim, k_heads * self.head_dim);
        if q.len() != positions.len() * qr || k.len() != positions.len() * kr {
            return Err(ModelError::Invalid(format!(
                "M-RoPE: q has {} and k {} values, expected {} and {} for {} tokens",
                q.len(),
                k.len(),
                positions.len() * qr,
                positions.len() * kr,
                positions.len()
            )));
        }
        let half = self.head_dim / 2;
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        for ((pos, qt), kt) in positions.iter().zip(q.chunks_exact_mut(qr)).zip(k.chunks_exact_mut(kr)) {
            for j in 0..half {
                let a = pos[usize::from(self.axes[j])] as f32 * self.inv_freq[j];
                cos[j] = a.cos();
                sin[j] = a.sin();
            }
            for head in qt
                .chunks_exact_mut(self.head_dim)
                .chain(kt.chunks_exact_mut(self.head_dim))
            {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    x1[j] = a * cos[j] - b * sin[j];
                    x2[j] = b * cos[j] + a * sin[j];
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rotary::RotaryEmbedding;

    #[test]
    fn interleaved_axes_follow_hf() {
        // HF: h at slice(1, 3·5, 3), w at slice(2, 3·5, 3), the rest t.
        let r = MRotaryEmbedding::new(32, 1e4, [6, 5, 5], MropeLayout::Interleaved).unwrap();
        let want: Vec<u8> = (0..16)
            .map(|j| match j {
                1 | 4 | 7 | 10 | 13 => 1,
                2 | 5 | 8 | 11 | 14 => 2,
                _ => 0,
            })
            .collect();
        assert_eq!(r.axes(), want.as_slice());
        // Qwen3-VL's real section: 24 + 20 + 20 = 64 frequencies.
        let r = MRotaryEmbedding::new(128, 5e6, [24, 20, 20], MropeLayout::Interleaved).unwrap();
        let count = |a| r.axes().iter().filter(|&&x| x == a).count();
        assert_eq!((count(0), count(1), count(2)), (24, 20, 20));
        let c = MRotaryEmbedding::new(8, 1e4, [2, 1, 1], MropeLayout::Chunked).unwrap();
        assert_eq!(c.axes(), &[0, 0, 1, 2]);
    }

    #[test]
    fn equal_axes_reduce_to_plain_rope() {
        let m = MRotaryEmbedding::new(16, 100.0, [4, 2, 2], MropeLayout::Interleaved).unwrap();
        let plain = RotaryEmbedding::new(16, 100.0, None, 64).unwrap();
        let q0: Vec<f32> = (0..2 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
        let k0: Vec<f32> = (0..2 * 16).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut q1, mut k1, mut q2, mut k2) = (q0.clone(), k0.clone(), q0.clone(), k0.clone());
        m.apply(&[[3, 3, 3], [17, 17, 17]], &mut q1, 2, &mut k1, 1).unwrap();
        plain.apply(&[3, 17], &mut q2, 2, &mut k2, 1).unwrap();
        assert_eq!((q1, k1), (q2, k2));
    }

    #[test]
    fn each_frequency_reads_its_axis() {
        // Only the h position is non-zero: frequencies on t and w stay unrotated.
        let m = MRotaryEmbedding::new(8, 10.0, [2, 1, 1], MropeLayout::Interleaved).unwrap();
        let (mut q, mut k) = (vec![1.0f32; 8], vec![1.0f32; 8]);
        m.apply(&[[0, 5, 0]], &mut q, 1, &mut k, 1).unwrap();
        for j in [0, 2, 3] {
            assert_eq!((q[j], q[j + 4]), (1.0, 1.0), "frequency {j}");
        }
        let a = 5.0 * (1.0 / 10f32.powf(0.25));
        assert!((q[1] - (a.cos() - a.sin())).abs() < 1e-6);
        assert!((q[5] - (a.cos() + a.sin())).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(MRotaryEmbedding::new(16, 1e4, [4, 2, 1], MropeLayout::Interleaved).is_err());
        assert!(MRotaryEmbedding::new(7, 1e4, [2, 1, 1], MropeLayout::Interleaved).is_err());
        let m = MRotaryEmbedding::new(8, 1e4, [2, 1, 1], MropeLayout::Interleaved).unwrap();
        let err = m.apply(&[[0; 3]], &mut [0.0; 7], 1, &mut [0.0; 8], 1).unwrap_err();
        assert!(err.to_string().contains("M-RoPE"), "{err}");
    }

    #[test]
    fn cos_sin_rows_rotate_as_apply_does() {
        // The GPU path rotates by these rows with NeoX pairs (j, j + half).
        let m = MRotaryEmbedding::new(16, 100.0, [4, 2, 2], MropeLayout::Interleaved).unwrap();
        let pos = [[3, 1, 4], [7, 7, 7], [0, 9, 2]];
        let rows = m.cos_sin_rows(&pos);
        let q0: Vec<f32> = (0..3 * 16).map(|i| (i as f32 * 0.29).sin()).collect();
        let (mut q, mut k) = (q0.clone(), vec![0f32; 3 * 16]);
        m.apply(&pos, &mut q, 1, &mut k, 1).unwrap();
        for t in 0..3 {
            let (row, x) = (&rows[t * 16..(t + 1) * 16], &q0[t * 16..(t + 1) * 16]);
            for j in 0..8 {
                let (c, s) = (row[j], row[8 + j]);
                assert!((q[t * 16 + j] - (x[j] * c - x[8 + j] * s)).abs() < 1e-6);
                assert!((q[t * 16 + 8 + j] - (x[8 + j] * c + x[j] * s)).abs() < 1e-6);
            }
        }
    }
}
