//! Linear layers with a pluggable [`LinearMethod`] (unquantized here; quantized methods in
//! [`crate::quantization`]) and SGLang-style shard loading of stacked projections (q/k/v →
//! `qkv_proj`, gate/up → `gate_up_proj`).
//!
//! A method declares its parameters ([`LinearMethod::create_weights`]). Most are stored
//! `[rows, ...]` with rows along the output dim ([`Stacking::Rows`]), so a merged layer assembles
//! them by concatenating its shards' rows (a per-channel int8 scale `[out, 1]` stacks the same way
//! as a weight `[out, in]`); per-tensor values (a static activation scale `[1]`) come once per
//! shard ([`Stacking::PerShard`]) and are concatenated to `[shards]` for the method to reduce.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::models::{ModelError, Result};
use crate::tensor::{bf16_dot_available, cat, gemv_t, matmul_bf16_t, matmul_t, DType, Tensor};

/// Rows of `x` up to which the streaming GEMV beats the tiled GEMM.
const GEMV_MAX_ROWS: usize = 8;

/// Set by `--enable-deterministic-inference`; read by every CPU linear layer.
static BATCH_INVARIANT: AtomicBool = AtomicBool::new(false);

/// Makes every CPU linear layer compute each row of its input the same way whatever the row
/// count, so a sequence's logits (and its greedy output) do not depend on which requests share
/// its batch (SGLang's `--enable-deterministic-inference`, vLLM's batch-invariant mode).
///
/// The default kernels pick by row count: the streaming GEMV up to 8 rows, the tiled GEMM above
/// (or, with AVX512-BF16, dot tiles below 48 rows and packed panels above). Each sums `K` in its
/// own order, so a sequence decoding alone and the same sequence in a batch of 30 can differ in
/// the last bits, and a near-tie between two tokens can flip. Invariant mode runs the GEMV at
/// every row count: it sums each output the same way for any batch, at the cost of slower
/// prefill.
///
/// ```
/// use mllm_engine::layers::linear::{batch_invariant, set_batch_invariant};
/// set_batch_invariant(true);
/// assert!(batch_invariant());
/// set_batch_invariant(false);
/// ```
pub fn set_batch_invariant(on: bool) {
    BATCH_INVARIANT.store(on, Ordering::Relaxed);
}

/// Whether [`set_batch_invariant`] is on.
pub fn batch_invariant() -> bool {
    BATCH_INVARIANT.load(Ordering::Relaxed)
}

/// `x · wᵀ`: bf16 dot products where the CPU has them (activations rounded to bf16, as on a
/// GPU), else streaming GEMV for decode-sized inputs and tiled f32 GEMM otherwise. In
/// batch-invariant mode, the GEMV for every row count (see [`set_batch_invariant`]).
pub(crate) fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let rows = x.numel() / x.shape().last().copied().unwrap_or(1).max(1);
    Ok(if batch_invariant() {
        gemv_t(x, w)?
    } else if w.dtype() == DType::BF16 && bf16_dot_available() {
        matmul_bf16_t(x, w)?
    } else if rows <= GEMV_MAX_ROWS {
        gemv_t(x, w)?
    } else {
        matmul_t(x, w)?
    })
}

/// How the shards of a stacked layer make up one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stacking {
    /// Dim 0 runs over output rows; each shard holds its rows.
    Rows,
    /// Each shard holds the whole spec shape (e.g. a per-tensor scale `[1]`); stacked along dim 0.
    PerShard,
}

/// One parameter a [`LinearMethod`] needs: its name within the layer (`"weight"`, `"bias"`,
/// `"weight_scale"`, ...), its shape, dtype (`None`: any float) and how shards stack.
///
/// A checkpoint tensor may omit trailing unit dims of the shape (`[n]` for `[n, 1]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSpec {
    /// Name within the layer.
    pub name: &'static str,
    /// Full shape for [`Stacking::Rows`] (dim 0 runs over output features); one shard's shape
    /// for [`Stacking::PerShard`].
    pub shape: Vec<usize>,
    /// Required dtype, or `None` for any float dtype.
    pub dtype: Option<DType>,
    /// How stacked shards combine.
    pub stacking: Stacking,
}

impl WeightSpec {
    /// The optional `[out_features]` float bias every method registers the same way.
    pub fn bias(out_features: usize) -> Self {
        Self {
            name: "bias",
            shape: vec![out_features],
            dtype: None,
            stacking: Stacking::Rows,
        }
    }
}

/// The loaded parameters of one linear layer, by name.
pub type LinearWeights = BTreeMap<&'static str, Tensor>;

/// How a linear layer stores and applies its weights (one implementation per quantization scheme).
pub trait LinearMethod: Send + Sync + Debug {
    /// The parameters of a layer `in_features → out_features`.
    fn create_weights(&self, in_features: usize, out_features: usize, bias: bool) -> Vec<WeightSpec>;

    /// Repacks weights once they are all loaded (e.g. transposes, casts, quantization); the
    /// only layout conversion. `output_sizes` are the rows of each stacked shard. Default:
    /// nothing.
    fn process_weights_after_loading(&self, _output_sizes: &[usize], _weights: &mut LinearWeights) -> Result<()> {
        Ok(())
    }

    /// `y = x · Wᵀ (+ b)` for `x` `[..., in]`; returns f32 `[..., out]`.
    fn apply(&self, weights: &LinearWeights, x: &Tensor) -> Result<Tensor>;
}

/// Plain float weights `[out, in]` (f32, bf16 or f16) and an optional bias `[out]`.
///
/// `target` (if set) casts weights after loading, e.g. to bf16 to halve decode memory traffic.
#[derive(Debug, Clone, Default)]
pub struct UnquantizedLinearMethod {
    /// Storage dtype of the weight after loading; `None` keeps the checkpoint's dtype.
    pub target: Option<DType>,
}

impl LinearMethod for UnquantizedLinearMethod {
    fn create_weights(&self, in_features: usize, out_features: usize, bias: bool) -> Vec<WeightSpec> {
        let mut specs = vec![WeightSpec {
            name: "weight",
            shape: vec![out_features, in_features],
            dtype: None,
            stacking: Stacking::Rows,
        }];
        if bias {
            specs.push(WeightSpec::bias(out_features));
        }
        specs
    }

    fn process_weights_after_loading(&self, _output_sizes: &[usize], weights: &mut LinearWeights) -> Result<()> {
        if let (Some(dt), Some(w)) = (self.target, weights.get_mut("weight"))
            && w.dtype() != dt
        {
            *w = w.to_dtype(dt)?;
        }
        Ok(())
    }

    fn apply(&self, weights: &LinearWeights, x: &Tensor) -> Result<Tensor> {
        let w = weights
            .get("weight")
            .ok_or_else(|| ModelError::Invalid("linear layer used before its weight was loaded".into()))?;
        let y = dense(x, w)?;
        match weights.get("bias") {
            Some(b) => Ok(y.add(b)?),
            None => Ok(y),
        }
    }
}

/// Which part of a stacked projection a checkpoint tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shard {
    /// The whole (unstacked) parameter.
    Whole,
    /// Stacked part `i` (q=0, k=1, v=2; gate=0, up=1).
    Index(usize),
}

/// A linear layer whose output may be a stack of several projections (`output_sizes`).
///
/// ```
/// use std::sync::Arc;
/// use mllm_engine::layers::linear::{Linear, Shard, UnquantizedLinearMethod};
/// use mllm_engine::tensor::Tensor;
///
/// // gate_up: two 1-row projections of a 2-dim input.
/// let mut l = Linear::new(2, vec![1, 1], false, Arc::new(UnquantizedLinearMethod::default()));
/// l.weight_loader("weight", Shard::Index(1), Tensor::from_vec(vec![0.0f32, 1.0], &[1, 2]).unwrap()).unwrap();
/// l.weight_loader("weight", Shard::Index(0), Tensor::from_vec(vec![1.0f32, 0.0], &[1, 2]).unwrap()).unwrap();
/// l.finish("mlp.gate_up_proj").unwrap();
/// let y = l.forward(&Tensor::from_vec(vec![3.0f32, 4.0], &[1, 2]).unwrap()).unwrap();
/// assert_eq!(y.to_f32_vec().unwrap(), vec![3.0, 4.0]);
/// ```
#[derive(Debug)]
pub struct Linear {
    in_features: usize,
    output_sizes: Vec<usize>,
    specs: Vec<WeightSpec>,
    method: Arc<dyn LinearMethod>,
    /// Per parameter, one slot per shard until [`Linear::finish`] stacks them.
    pending: BTreeMap<&'static str, Vec<Option<Tensor>>>,
    weights: LinearWeights,
}

impl Linear {
    /// A layer `in_features → sum(output_sizes)`; `output_sizes` has one entry per stacked shard.
    pub fn new(in_features: usize, output_sizes: Vec<usize>, bias: bool, method: Arc<dyn LinearMethod>) -> Self {
        let out: usize = output_sizes.iter().sum();
        let specs = method.create_weights(in_features, out, bias);
        Self {
            in_features,
            output_sizes,
            specs,
            method,
            pending: BTreeMap::new(),
            weights: LinearWeights::new(),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features of each stacked shard.
    pub fn output_sizes(&self) -> &[usize] {
        &self.output_sizes
    }

    /// The parameter names this layer expects (e.g. `["weight", "bias"]`).
    pub fn param_names(&self) -> Vec<&'static str> {
        self.specs.iter().map(|s| s.name).collect()
    }

    /// Loads `tensor` into parameter `param` (`"weight"`, `"bias"`, ...) at `shard`. Checks the
    /// shape against the method's spec, scaled to the shard's rows.
    pub fn weight_loader(&mut self, param: &str, shard: Shard, tensor: Tensor) -> Result<()> {
        let spec = self
            .specs
            .iter()
            .find(|s| s.name == param)
            .ok_or_else(|| ModelError::Invalid(format!("linear layer has no parameter `{param}`")))?;
        let total: usize = self.output_sizes.iter().sum();
        let (idx, rows) = match shard {
            Shard::Whole => (None, total),
            Shard::Index(i) => match self.output_sizes.get(i) {
                Some(&r) => (Some(i), r),
                None => {
                    return Err(ModelError::Invalid(format!(
                        "shard {i} out of range for a layer of {} stacked projections",
                        self.output_sizes.len()
                    )))
                }
            },
        };
        let mut expected = spec.shape.clone();
        match (spec.stacking, idx) {
            (Stacking::Rows, _) => expected[0] = expected[0] / total.max(1) * rows,
            (Stacking::PerShard, None) => expected[0] *= self.output_sizes.len(),
            (Stacking::PerShard, Some(_)) => {}
        }
        let tensor = if tensor.shape() == expected.as_slice() {
            tensor
        } else if without_trailing_ones(tensor.shape()) == without_trailing_ones(&expected) {
            tensor.reshape(&expected)?
        } else {
            return Err(ModelError::WeightShape {
                name: param.to_string(),
                expected,
                got: tensor.shape().to_vec(),
            });
        };
        let dtype_ok = match spec.dtype {
            Some(dt) => tensor.dtype() == dt,
            None => tensor.dtype().is_float(),
        };
        if !dtype_ok {
            let want = spec
                .dtype
                .map_or_else(|| "a float dtype".to_string(), |d| d.to_string());
            return Err(ModelError::Invalid(format!(
                "parameter `{param}` has dtype {}, expected {want}",
                tensor.dtype()
            )));
        }
        let name = spec.name;
        match idx {
            None => {
                self.weights.insert(name, tensor);
            }
            Some(i) => {
                let n = self.output_sizes.len();
                self.pending.entry(name).or_insert_with(|| vec![None; n])[i] = Some(tensor);
            }
        }
        Ok(())
    }

    /// Stacks loaded shards, checks that every parameter is present (`prefix` names the layer in
    /// the error) and runs the method's post-processing.
    pub fn finish(&mut self, prefix: &str) -> Result<()> {
        for (name, parts) in std::mem::take(&mut self.pending) {
            let mut loaded = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                loaded.push(p.as_ref().ok_or_else(|| ModelError::MissingWeight {
                    name: format!("{prefix}.{name} (stacked shard {i})"),
                    near: vec![],
                })?);
            }
            let dtype = loaded[0].dtype();
            let same: Vec<Tensor> = loaded
                .iter()
                .map(|t| {
                    if t.dtype() == dtype {
                        Ok((*t).clone())
                    } else {
                        t.to_dtype(dtype)
                    }
                })
                .collect::<std::result::Result<_, _>>()?;
            self.weights.insert(name, cat(&same.iter().collect::<Vec<_>>())?);
        }
        for spec in &self.specs {
            if !self.weights.contains_key(spec.name) {
                return Err(ModelError::MissingWeight {
                    name: format!("{prefix}.{}", spec.name),
                    near: vec![],
                });
            }
        }
        self.method
            .process_weights_after_loading(&self.output_sizes, &mut self.weights)
    }

    /// `x · Wᵀ (+ b)`: `x` `[..., in]` → f32 `[..., sum(output_sizes)]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.method.apply(&self.weights, x)
    }

    /// Like [`Linear::forward`], split into one `[rows, size]` tensor per stacked shard.
    pub fn forward_split(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = self.forward(x)?;
        let rows = y.numel() / y.shape().last().copied().unwrap_or(1).max(1);
        let y = y.reshape(&[rows, self.output_sizes.iter().sum()])?;
        let mut start = 0;
        let mut out = Vec::with_capacity(self.output_sizes.len());
        for &s in &self.output_sizes {
            out.push(y.narrow(1, start, s)?);
            start += s;
        }
        Ok(out)
    }

    /// The loaded parameters.
    pub fn weights(&self) -> &LinearWeights {
        &self.weights
    }
}

fn without_trailing_ones(shape: &[usize]) -> &[usize] {
    let keep = shape.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &shape[..keep]
}

/// The fused q/k/v projection: shards `q` (`heads × head_dim`), `k` and `v` (`kv_heads × head_dim`).
pub fn qkv_linear(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    bias: bool,
    method: Arc<dyn LinearMethod>,
) -> Linear {
    Linear::new(
        hidden,
        vec![heads * head_dim, kv_heads * head_dim, kv_heads * head_dim],
        bias,
        method,
    )
}

/// The fused gate/up projection of a gated MLP: shards `gate` and `up`, `intermediate` rows each.
pub fn merged_gate_up(hidden: usize, intermediate: usize, method: Arc<dyn LinearMethod>) -> Linear {
    Linear::new(hidden, vec![intermediate, intermediate], false, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape).unwrap()
    }

    #[test]
    fn qkv_shards_stack_in_order_with_bias() {
        let m: Arc<dyn LinearMethod> = Arc::new(UnquantizedLinearMethod::default());
        let mut l = qkv_linear(1, 2, 1, 1, true, m);
        for (i, w) in [[1.0f32, 2.0].as_slice(), &[3.0], &[4.0]].iter().enumerate() {
            l.weight_loader("weight", Shard::Index(i), t(w, &[w.len(), 1])).unwrap();
            l.weight_loader("bias", Shard::Index(i), t(&vec![0.5; w.len()], &[w.len()]))
                .unwrap();
        }
        l.finish("qkv").unwrap();
        let parts = l.forward_split(&t(&[2.0], &[1, 1])).unwrap();
        let got: Vec<Vec<f32>> = parts.iter().map(|p| p.to_f32_vec().unwrap()).collect();
        assert_eq!(got, vec![vec![2.5, 4.5], vec![6.5], vec![8.5]]);
    }

    #[test]
    fn errors_name_the_problem() {
        let m: Arc<dyn LinearMethod> = Arc::new(UnquantizedLinearMethod::default());
        let mut l = merged_gate_up(2, 3, m);
        let err = l
            .weight_loader("weight", Shard::Index(0), t(&[0.0; 4], &[2, 2]))
            .unwrap_err();
        assert!(err.to_string().contains("expected [3, 2]"), "{err}");
        l.weight_loader("weight", Shard::Index(0), t(&[0.0; 6], &[3, 2]))
            .unwrap();
        let err = l.finish("mlp.gate_up_proj").unwrap_err();
        assert!(
            err.to_string().contains("mlp.gate_up_proj.weight (stacked shard 1)"),
            "{err}"
        );
        assert!(l.weight_loader("scale", Shard::Whole, t(&[0.0], &[1])).is_err());
        assert!(l
            .weight_loader("weight", Shard::Index(2), t(&[0.0; 6], &[3, 2]))
            .is_err());
    }

    #[test]
    fn bf16_target_matches_f32() {
        let w: Vec<f32> = (0..20 * 8).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
        // Inputs exact in bf16 too: bf16 weights may round activations to bf16 (AVX512-BF16 path).
        let x = t(&(0..16).map(|i| i as f32 * 0.125 - 1.0).collect::<Vec<_>>(), &[2, 8]);
        let mut outs = vec![];
        for target in [None, Some(DType::BF16)] {
            let mut l = Linear::new(8, vec![20], false, Arc::new(UnquantizedLinearMethod { target }));
            l.weight_loader("weight", Shard::Whole, t(&w, &[20, 8])).unwrap();
            l.finish("l").unwrap();
            outs.push(l.forward(&x).unwrap().to_f32_vec().unwrap());
        }
        assert_eq!(outs[0], outs[1]); // these weights are exact in bf16
    }
}
