//! Weight quantization (at load time and offline): symmetric per-output-channel int8 with
//! absmax scales, and the default list of layers that stay float.

use super::ignore::PatternList;
use crate::models::Result;
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

/// The vision towers' layers (Qwen3-VL `model.visual.*`, mergers included): never quantized,
/// and written as this one pattern into a checkpoint's `ignore`.
pub const VISION_SKIP: &str = "re:.*(vision|visual|image_encoder|mm_projector)";

/// Layers never quantized by `--quantization w8a8` / `mllm quantize` unless asked: embeddings,
/// norms, the LM head and vision towers. Matched against prefixed module names.
pub const DEFAULT_SKIP: [&str; 4] = ["re:(.*\\.)?lm_head$", "re:.*embed", "re:.*norm$", VISION_SKIP];

/// [`DEFAULT_SKIP`] parsed.
///
/// ```
/// let skip = mllm_engine::quantization::quantize::default_skip();
/// assert!(skip.matches("lm_head") && skip.matches("model.embed_tokens"));
/// assert!(skip.matches("model.layers.0.input_layernorm"));
/// assert!(skip.matches("model.visual.blocks.0.attn.qkv"));
/// assert!(!skip.matches("model.layers.0.mlp.down_proj"));
/// ```
pub fn default_skip() -> PatternList {
    PatternList::parse(DEFAULT_SKIP).expect("default skip patterns are valid")
}

/// Quantizes a float weight `[n, k]` per output channel: `scale[j] = max(absmax_j, 1e-10) / 127`,
/// `q = round(w / scale)`, as `mllm_kernel::reference::per_token_quant_int8` does per row.
/// Returns int8 `[n, k]` and f32 scales `[n]`.
///
/// ```
/// use mllm_engine::quantization::quantize::quantize_per_channel;
/// use mllm_engine::tensor::Tensor;
/// let w = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 1.0], &[2, 2]).unwrap();
/// let (q, s) = quantize_per_channel(&w).unwrap();
/// assert_eq!(q.as_slice::<i8>().unwrap(), &[64, -127, 127, 64]);
/// assert_eq!(s.to_f32_vec().unwrap(), vec![1.0 / 127.0, 2.0 / 127.0]);
/// ```
pub fn quantize_per_channel(w: &Tensor) -> Result<(Tensor, Tensor)> {
    let &[n, k] = w.shape() else {
        return Err(crate::models::ModelError::Invalid(format!(
            "per-channel quantization needs a 2-D weight, got shape {:?}",
            w.shape()
        )));
    };
    if !w.dtype().is_float() {
        return Err(crate::models::ModelError::Invalid(format!(
            "per-channel quantization needs a float weight, got {}",
            w.dtype()
        )));
    }
    let (mut q, mut scales) = (vec![0i8; n * k], vec![1.0f32; n]);
    if k > 0 {
        match w.dtype() {
            DType::BF16 => quantize_rows(w.as_slice::<half::bf16>()?, k, &mut q, &mut scales),
            DType::F16 => quantize_rows(w.as_slice::<half::f16>()?, k, &mut q, &mut scales),
            _ => quantize_rows(&w.to_f32_vec()?, k, &mut q, &mut scales),
        }
    }
    Ok((Tensor::from_vec(q, &[n, k])?, Tensor::from_vec(scales, &[n])?))
}

/// Rows of 64 at a time, in parallel, each written in place: a checkpoint's weights pass
/// through no whole-tensor f32 copy and no serial concatenation.
fn quantize_rows<T: mllm_kernel::dtype::FloatElem>(w: &[T], k: usize, q: &mut [i8], scales: &mut [f32]) {
    const ROWS: usize = 64;
    q.par_chunks_mut(k * ROWS)
        .zip(scales.par_chunks_mut(ROWS))
        .zip(w.par_chunks(k * ROWS))
        .for_each(|((q, scales), rows)| {
            let (pq, ps) = mllm_kernel::reference::per_token_quant_int8(rows, k);
            q.copy_from_slice(&pq);
            scales.copy_from_slice(&ps);
        });
}

/// The float weight `q · scale` of an int8 weight `[n, k]` with per-channel scales `[n]` (f32).
///
/// ```
/// use mllm_engine::quantization::quantize::{dequantize_per_channel, quantize_per_channel};
/// use mllm_engine::tensor::Tensor;
/// let w = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 1.0], &[2, 2]).unwrap();
/// let (q, s) = quantize_per_channel(&w).unwrap();
/// let back = dequantize_per_channel(&q, &s).unwrap().to_f32_vec().unwrap();
/// assert!((back[0] - 0.5).abs() < 1.0 / 254.0 && back[1] == -1.0);
/// ```
pub fn dequantize_per_channel(q: &Tensor, scales: &Tensor) -> Result<Tensor> {
    let k = q.shape().last().copied().unwrap_or(1).max(1);
    let s = scales.to_f32_vec()?;
    let v: Vec<f32> = q
        .as_slice::<i8>()?
        .chunks(k)
        .zip(&s)
        .flat_map(|(row, &sc)| row.iter().map(move |&x| x as f32 * sc))
        .collect();
    Ok(Tensor::from_f32(&v, q.shape(), DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn per_channel_quantization_is_the_same_from_every_float_dtype() {
        // 130 rows: two whole parallel blocks of 64 and a partial one.
        let (n, k) = (130, 96);
        let w: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(((i * 7919 % 1000) as f32 - 500.0) / 37.0))
            .collect();
        let (want_q, want_s) = mllm_kernel::reference::per_token_quant_int8(&w, k);
        // bf16 values are exact in f16 (this range) and f32.
        let as_f16: Vec<f16> = w.iter().map(|v| f16::from_f32(v.to_f32())).collect();
        let as_f32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        for t in [
            Tensor::from_vec(w.clone(), &[n, k]).unwrap(),
            Tensor::from_vec(as_f16, &[n, k]).unwrap(),
            Tensor::from_vec(as_f32, &[n, k]).unwrap(),
        ] {
            let (q, s) = quantize_per_channel(&t).unwrap();
            assert_eq!(q.shape(), [n, k]);
            assert_eq!(q.as_slice::<i8>().unwrap(), want_q, "{}", t.dtype());
            assert_eq!(s.as_slice::<f32>().unwrap(), want_s, "{}", t.dtype());
        }
    }
}
