//! RMSNorm, plain and fused with the residual add.

use crate::models::{ModelError, Result};
use crate::tensor::Tensor;

/// RMSNorm over the last dim with weight `[dim]` (HF numerics, f32 compute).
///
/// ```
/// use mllm_engine::layers::norm::RmsNorm;
/// use mllm_engine::tensor::Tensor;
/// let norm = RmsNorm::new(Tensor::from_vec(vec![1.0f32, 1.0], &[2]).unwrap(), 0.0).unwrap();
/// let y = norm.forward(&Tensor::from_vec(vec![3.0f32, 4.0], &[1, 2]).unwrap()).unwrap();
/// let v = y.to_f32_vec().unwrap();
/// assert!((v[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// A norm with `weight` `[dim]`.
    pub fn new(weight: Tensor, eps: f32) -> Result<Self> {
        if weight.rank() != 1 {
            return Err(ModelError::Invalid(format!(
                "RMSNorm weight must be 1-D, got shape {:?}",
                weight.shape()
            )));
        }
        Ok(Self { weight, eps })
    }

    /// The scale weight `[dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Epsilon added to the mean square.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Width of the normalized dim.
    pub fn dim(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `rms_norm(x) * weight` over the last dim; f32 output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.rms_norm(&self.weight, self.eps)?)
    }

    /// Fused residual variant (SGLang's `forward(x, residual)`): `residual' = x + residual`,
    /// returns `(rms_norm(residual'), residual')`. Without a residual, `residual' = x`.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let r = match residual {
            Some(r) => x.add(r)?,
            None => x.clone(),
        };
        Ok((self.forward(&r)?, r))
    }

    /// Normalizes each `head_dim` slice of `x` `[tokens, heads * head_dim]` (Qwen3 q/k norm).
    pub fn forward_per_head(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.dim();
        let shape = x.shape().to_vec();
        let y = self.forward(&x.reshape(&[x.numel() / d.max(1), d])?)?;
        Ok(y.reshape(&shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_variant_adds_then_norms() {
        let n = RmsNorm::new(Tensor::from_vec(vec![2.0f32, 2.0], &[2]).unwrap(), 1e-6).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2]).unwrap();
        let r = Tensor::from_vec(vec![1.0f32, -3.0], &[1, 2]).unwrap();
        let (y, r2) = n.forward_residual(&x, Some(&r)).unwrap();
        assert_eq!(r2.to_f32_vec().unwrap(), vec![2.0, -2.0]);
        let y = y.to_f32_vec().unwrap();
        assert!((y[0] - 2.0).abs() < 1e-5 && (y[1] + 2.0).abs() < 1e-5, "{y:?}");
        assert!(RmsNorm::new(Tensor::zeros(&[2, 2], crate::tensor::DType::F32), 1e-6).is_err());
    }

    #[test]
    fn per_head_normalizes_each_head() {
        let n = RmsNorm::new(Tensor::from_vec(vec![1.0f32, 1.0], &[2]).unwrap(), 0.0).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 1.0, 10.0, 10.0], &[1, 4]).unwrap();
        let y = n.forward_per_head(&x).unwrap();
        assert_eq!(y.shape(), &[1, 4]);
        for v in y.to_f32_vec().unwrap() {
            assert!((v - 1.0).abs() < 1e-6);
        }
    }
}
