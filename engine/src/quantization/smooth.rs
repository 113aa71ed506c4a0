//! SmoothQuant (Xiao et al. 2023): moves activation outliers into the weights before W8A8
//! quantization, so per-token int8 activations lose less.
//!
//! For a group of linear layers fed by one producer, each input channel `j` gets
//! `s_j = max|X_j|^α / max|W_j|^(1-α)` (`max|W_j|` over the group's rows); the producer's output
//! channel `j` is divided by `s_j` and the group's weight columns `j` multiplied by it. In float
//! this is exact; it only changes what int8 rounds. Producers, per decoder layer (all exact):
//! - `input_layernorm` → `q_proj, k_proj, v_proj` (RMSNorm is `x̂ · w`: divide `w`);
//! - `post_attention_layernorm` → `gate_proj, up_proj`;
//! - `v_proj` rows → `o_proj` columns: attention mixes tokens, never channels, so head `h`'s
//!   output channel `c` is linear in value channel `c` of its KV head; with GQA the factor is
//!   shared by the query heads of a KV head;
//! - `up_proj` rows → `down_proj` columns: `silu(gate) · up` is linear in `up`.
//!
//! The result is a [`SmoothedWeights`] source: a float checkpoint that loads, quantizes
//! (`--quantization w8a8`) and writes (`mllm quantize`) like any other.

use std::collections::HashMap;

use super::observe::calibrate;
use crate::loader::config::ModelConfig;
use crate::models::weights::WeightSource;
use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// Migration strength used when none is given: the SmoothQuant paper's default for most
/// models; `mllm quantize --smoothquant-alpha` overrides it.
pub const DEFAULT_ALPHA: f32 = 0.5;

/// Activation / weight maxima below this are treated as this (dead channels).
const TINY: f32 = 1e-5;

/// The per-channel factors `s_j = a_j^α / w_j^(1-α)`, with maxima clamped to ≥ 1e-5; a
/// channel that never saw an activation keeps `s = 1`. Always positive and finite.
///
/// ```
/// use mllm_engine::quantization::smooth::smoothing_factors;
/// let s = smoothing_factors(&[16.0, 1.0, 0.0], &[1.0, 4.0, 2.0], 0.5);
/// assert_eq!(s, vec![4.0, 0.5, 1.0]);
/// ```
pub fn smoothing_factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| {
            if a <= 0.0 {
                return 1.0;
            }
            let s = a.max(TINY).powf(alpha) / w.max(TINY).powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// A float checkpoint with SmoothQuant folded into some of its tensors (f32); every other
/// tensor comes from the base unchanged.
pub struct SmoothedWeights<'a> {
    base: &'a dyn WeightSource,
    smoothed: HashMap<String, Tensor>,
}

impl SmoothedWeights<'_> {
    /// Whether `name` was rewritten.
    pub fn is_smoothed(&self, name: &str) -> bool {
        self.smoothed.contains_key(name)
    }
}

impl std::fmt::Debug for SmoothedWeights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmoothedWeights")
            .field("smoothed", &self.smoothed.len())
            .finish()
    }
}

impl WeightSource for SmoothedWeights<'_> {
    fn names(&self) -> Vec<String> {
        self.base.names()
    }
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        match self.smoothed.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.base.get(name),
        }
    }
}

/// Calibrates the float model in `src` on `ids` and returns it smoothed with strength `alpha`
/// (in `[0, 1]`).
pub fn smooth<'a>(
    config: &ModelConfig,
    src: &'a dyn WeightSource,
    ids: &[u32],
    alpha: f32,
) -> Result<SmoothedWeights<'a>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(ModelError::Invalid(format!(
            "SmoothQuant alpha must be in [0, 1], got {alpha}"
        )));
    }
    let stats = calibrate(config.clone(), src, ids)?;
    let mut w = Rewriter {
        src,
        smoothed: HashMap::new(),
    };
    let group = config.num_attention_heads / config.num_key_value_heads.max(1);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let act = |layer: &str| -> Result<Vec<f32>> {
            stats
                .get(&format!("{p}.{layer}"))
                .ok_or_else(|| ModelError::Invalid(format!("calibration did not reach {p}.{layer}")))
        };
        let qkv = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map(|l| format!("{p}.{l}"));
        w.norm_into(&format!("{p}.input_layernorm"), &qkv, &act("self_attn.q_proj")?, alpha)?;
        let gate_up = ["mlp.gate_proj", "mlp.up_proj"].map(|l| format!("{p}.{l}"));
        w.norm_into(
            &format!("{p}.post_attention_layernorm"),
            &gate_up,
            &act("mlp.gate_proj")?,
            alpha,
        )?;
        let o = format!("{p}.self_attn.o_proj");
        let heads = (config.head_dim, group);
        w.rows_into(
            &format!("{p}.self_attn.v_proj"),
            &o,
            &act("self_attn.o_proj")?,
            heads,
            alpha,
        )?;
        let down = format!("{p}.mlp.down_proj");
        let inter = config.intermediate_size;
        w.rows_into(
            &format!("{p}.mlp.up_proj"),
            &down,
            &act("mlp.down_proj")?,
            (inter, 1),
            alpha,
        )?;
    }
    Ok(SmoothedWeights {
        base: src,
        smoothed: w.smoothed,
    })
}

/// Smoothed tensors as f32 `(data, shape)`, read from the base on first touch.
struct Rewriter<'a> {
    src: &'a dyn WeightSource,
    smoothed: HashMap<String, Tensor>,
}

impl Rewriter<'_> {
    fn get(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = match self.smoothed.get(name) {
            Some(t) => t.clone(),
            None => self.src.get(name)?.ok_or_else(|| ModelError::MissingWeight {
                name: name.to_string(),
                near: vec![],
            })?,
        };
        Ok((t.to_f32_vec()?, t.shape().to_vec()))
    }

    fn put(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<()> {
        self.smoothed.insert(name.to_string(), Tensor::from_vec(data, shape)?);
        Ok(())
    }

    /// Max |w| per column over the rows of `linears` (`<name>.weight`, `[n, k]`).
    fn column_max(&self, linears: &[String], k: usize) -> Result<Vec<f32>> {
        let mut m = vec![0f32; k];
        for l in linears {
            let (w, _) = self.get(&format!("{l}.weight"))?;
            for row in w.chunks(k) {
                for (a, &x) in m.iter_mut().zip(row) {
                    *a = a.max(x.abs());
                }
            }
        }
        Ok(m)
    }

    /// Multiplies column `j` of every `<linear>.weight` by `s[j]`.
    fn scale_columns(&mut self, linears: &[String], s: &[f32]) -> Result<()> {
        for l in linears {
            let name = format!("{l}.weight");
            let (mut w, shape) = self.get(&name)?;
            for row in w.chunks_mut(s.len()) {
                row.iter_mut().zip(s).for_each(|(x, f)| *x *= f);
            }
            self.put(&name, w, &shape)?;
        }
        Ok(())
    }

    /// RMSNorm `norm` feeds `linears`: `norm.weight / s`, columns `· s`.
    fn norm_into(&mut self, norm: &str, linears: &[String], act: &[f32], alpha: f32) -> Result<()> {
        let s = smoothing_factors(act, &self.column_max(linears, act.len())?, alpha);
        let name = format!("{norm}.weight");
        let (w, shape) = self.get(&name)?;
        self.put(&name, w.iter().zip(&s).map(|(x, f)| x / f).collect(), &shape)?;
        self.scale_columns(linears, &s)
    }

    /// The rows (and bias) of `producer` feed the columns of `consumer` in blocks of `block`:
    /// consumer block `h` reads producer block `h / repeat` (GQA: `repeat` query heads per KV
    /// head, `block` = head_dim). A producer row's factor is computed over every column it feeds.
    fn rows_into(
        &mut self,
        producer: &str,
        consumer: &str,
        act: &[f32],
        (block, repeat): (usize, usize),
        alpha: f32,
    ) -> Result<()> {
        let (pw, pshape) = self.get(&format!("{producer}.weight"))?;
        let rows = pshape[0];
        let k = act.len();
        if rows * repeat != k || block == 0 || rows % block != 0 {
            return Err(ModelError::Invalid(format!(
                "cannot smooth {producer} → {consumer}: {rows} rows x {repeat} do not match {k} input channels"
            )));
        }
        let row_of = |col: usize| (col / block / repeat) * block + col % block;
        let wmax = self.column_max(&[consumer.to_string()], k)?;
        let (mut a, mut w) = (vec![0f32; rows], vec![0f32; rows]);
        for col in 0..k {
            let r = row_of(col);
            a[r] = a[r].max(act[col]);
            w[r] = w[r].max(wmax[col]);
        }
        let s = smoothing_factors(&a, &w, alpha);
        let cols = pw.len() / rows.max(1);
        let pw: Vec<f32> = pw
            .chunks(cols)
            .zip(&s)
            .flat_map(|(row, f)| row.iter().map(move |x| x / f))
            .collect();
        self.put(&format!("{producer}.weight"), pw, &pshape)?;
        if let Some(b) = self.src.get(&format!("{producer}.bias"))? {
            let b: Vec<f32> = b.to_f32_vec()?.iter().zip(&s).map(|(x, f)| x / f).collect();
            self.put(&format!("{producer}.bias"), b, &[rows])?;
        }
        let per_col: Vec<f32> = (0..k).map(|c| s[row_of(c)]).collect();
        self.scale_columns(&[consumer.to_string()], &per_col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_are_positive_and_finite_at_the_extremes() {
        let act = [0.0, 1e-30, 1e-5, 1.0, 3e4, f32::MAX, 5.0];
        let wmax = [1.0, 1e-30, 0.0, 1.0, 1e-30, 1e-30, f32::MAX];
        for alpha in [0.0, 0.3, 0.5, 0.8, 1.0] {
            let s = smoothing_factors(&act, &wmax, alpha);
            assert!(s.iter().all(|v| v.is_finite() && *v > 0.0), "alpha {alpha}: {s:?}");
            assert_eq!(s[0], 1.0, "a dead channel is left alone");
        }
        // α = 1 moves everything into the weights: s = max|X|.
        assert_eq!(smoothing_factors(&[8.0], &[2.0], 1.0), vec![8.0]);
        // α = 0 moves everything into the activations: s = 1 / max|W|.
        assert_eq!(smoothing_factors(&[8.0], &[2.0], 0.0), vec![0.5]);
    }
}
