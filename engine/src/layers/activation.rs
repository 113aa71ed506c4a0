//! Gated activations.

use rayon::prelude::*;

use crate::models::{ModelError, Result};
use crate::tensor::{DType, Tensor};

/// `silu(gate) * up` for `x = [gate | up]` of shape `[rows, 2 * inter]`; returns `[rows, inter]`.
///
/// ```
/// use mllm_engine::layers::activation::silu_and_mul;
/// use mllm_engine::tensor::Tensor;
/// let x = Tensor::from_vec(vec![0.0f32, 2.0], &[1, 2]).unwrap();
/// assert_eq!(silu_and_mul(&x).unwrap().to_f32_vec().unwrap(), vec![0.0]);
/// ```
pub fn silu_and_mul(x: &Tensor) -> Result<Tensor> {
    let two = x.shape().last().copied().unwrap_or(0);
    if two == 0 || !two.is_multiple_of(2) {
        return Err(ModelError::Invalid(format!(
            "silu_and_mul needs an even, non-empty last dim, got shape {:?}",
            x.shape()
        )));
    }
    let inter = two / 2;
    let xbuf;
    let xv: &[f32] = if x.dtype() == DType::F32 {
        x.as_slice::<f32>()?
    } else {
        xbuf = x.to_f32_vec()?;
        &xbuf
    };
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = inter;
    Ok(Tensor::f32_filled(&shape, |out| {
        out.par_chunks_mut(inter).zip(xv.par_chunks(two)).for_each(|(o, r)| {
            let (g, u) = r.split_at(inter);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_definition_and_rejects_odd() {
        let x = Tensor::from_vec(vec![1.0f32, -1.0, 3.0, 0.5], &[1, 4]).unwrap();
        let y = silu_and_mul(&x).unwrap().to_f32_vec().unwrap();
        let s = |v: f32| v / (1.0 + (-v).exp());
        assert!((y[0] - s(1.0) * 3.0).abs() < 1e-6 && (y[1] - s(-1.0) * 0.5).abs() < 1e-6);
        assert!(silu_and_mul(&Tensor::from_vec(vec![1.0f32; 3], &[1, 3]).unwrap()).is_err());
    }
}
