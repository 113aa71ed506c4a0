//! The stable op API the engine calls. Each op validates shapes, dtypes and
//! limits before any allocation or launch, then launches on the GPU's stream.

mod activation;
mod attention;
mod decode_mlp;
mod dependent_launch;
mod embedding;
mod feed_tokens;
mod gelu;
mod int8_mm;
mod kv_store;
mod launch;
mod layer_norm;
mod linear;
mod norm;
mod prefetch;
mod quant;
mod rope;
mod rope_store;
mod sample;
mod sampling;
mod segment_attention;
mod stream_linear;

pub use activation::{silu_and_mul, silu_and_mul_into, silu_and_mul_quant_into, validate_silu_and_mul};
pub use attention::{
    paged_attention, paged_attention_into, plan_attention, validate_attention_batch, validate_paged_attention,
    AttentionBatch, AttentionHeads, AttentionKernel, AttentionPlan, AttentionWorkspace, DecodeKernel, WorkspaceConfig,
    ATTENTION_HEAD_DIMS,
};
pub use decode_mlp::{decode_mlp_w8a8_into, decode_mlp_w8a8_unsupported, DecodeMlpScratch, DecodeMlpWeights};
pub use embedding::{
    embedding, embedding_into, scatter_rows_into, validate_embedding, validate_scatter_rows, validate_token_ids,
    Scatter,
};
pub use feed_tokens::{feed_tokens_into, validate_feed_tokens};
pub use gelu::{gelu_inplace, gelu_into, Gelu};
pub use int8_mm::{
    int8_scaled_mm, int8_scaled_mm_dynamic, int8_scaled_mm_dynamic_into, int8_scaled_mm_into, resolve_int8_mm_config,
    select_int8_mm_config, validate_int8_scaled_mm, Int8MmConfig, Int8MmPath, Int8MmProblem,
};
pub use kv_store::{kv_store, validate_kv_store, RowSpan};
pub use layer_norm::{layer_norm_into, validate_layer_norm};
pub(crate) use linear::Blas;
pub use linear::{linear, linear_into, validate_linear};
pub use norm::{fused_add_rms_norm, fused_add_rms_norm_quant, rms_norm, rms_norm_into, validate_rms_norm};
pub use prefetch::{prefetch_l2, validate_prefetch_l2, MAX_PREFETCH_RANGES};
pub use quant::{per_token_quant_int8, per_token_quant_int8_into, validate_per_token_quant_int8};
pub use rope::{qk_norm_rope, rope_cos_sin_cache, validate_qk_norm_rope, QkHeads, QkNormRope, MAX_ROPE_HEAD_DIM};
pub use rope_store::{qk_norm_rope_store, validate_qk_norm_rope_store, RopeStoreOut};
pub use sample::{sample, sample_into, validate_sample, SampleParams};
pub use sampling::{
    argmax, argmax_into, token_logprobs, token_logprobs_into, top_logprobs, top_logprobs_into, validate_logits,
    validate_top_logprobs, MAX_TOP_LOGPROBS,
};
pub use segment_attention::{segment_attention_into, validate_segment_attention};
pub use stream_linear::{stream_linear_into, stream_linear_unsupported, STREAM_LINEAR_AUTO_MAX_M, STREAM_LINEAR_MAX_M};

use crate::dtype::DType;
use crate::registry::{KernelBuild, KernelId};
use crate::{Error, Result};

/// Every symbol a kernel build must export (checked by tests).
pub fn kernel_symbols(build: KernelBuild) -> Vec<String> {
    match build.id {
        KernelId::RmsNorm => norm::symbols(build.variant),
        KernelId::PerTokenQuantInt8 => vec!["mllm_per_token_quant_int8".to_string()],
        KernelId::StreamLinear => vec!["mllm_stream_linear".to_string()],
        KernelId::DecodeMlp => vec!["mllm_decode_mlp".to_string()],
        KernelId::PrefetchL2 => prefetch::symbols(),
        KernelId::SiluAndMul => activation::symbols(build.variant),
        KernelId::QkNormRope => rope::symbols(build.variant),
        KernelId::Embedding => embedding::symbols(build.variant),
        KernelId::KvStore => kv_store::symbols(build.variant),
        KernelId::Argmax => sampling::symbols(build.variant),
        KernelId::Sample => sample::symbols(build.variant),
        KernelId::FeedTokens => feed_tokens::symbols(),
        KernelId::Attention => attention::symbols(),
        KernelId::LayerNorm => layer_norm::symbols(build.variant),
        KernelId::Gelu => gelu::symbols(build.variant),
        KernelId::Softmax => segment_attention::softmax_symbols(build.variant),
        KernelId::Int8ScaledMm => match build.variant {
            Some("sm90") => vec![
                "mllm_int8_scaled_mm_sm90".to_string(),
                "mllm_int8_scaled_mm_dynamic_sm90".to_string(),
            ],
            _ => vec![
                "mllm_int8_scaled_mm_sm80".to_string(),
                "mllm_int8_scaled_mm_dynamic_sm80".to_string(),
            ],
        },
    }
}

/// Shape and dtype of an argument, for validation without a device.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub shape: &'a [usize],
    pub dtype: DType,
}

impl<'a> Meta<'a> {
    pub fn new(shape: &'a [usize], dtype: DType) -> Self {
        Self { shape, dtype }
    }
}

impl<'a> From<&'a crate::DeviceTensor> for Meta<'a> {
    fn from(t: &'a crate::DeviceTensor) -> Self {
        Self::new(t.shape(), t.dtype())
    }
}

/// Splits `[.., cols]` into `(rows, cols)`, requiring rank ≥ 1 and cols > 0.
pub(crate) fn rows_cols(op: &'static str, arg: &'static str, m: Meta) -> Result<(usize, usize)> {
    let Some(&cols) = m.shape.last() else {
        return Err(Error::ShapeMismatch {
            op,
            arg,
            expected: "rank >= 1 ([..., hidden])".into(),
            got: m.shape.to_vec(),
        });
    };
    if cols == 0 {
        return Err(Error::ShapeMismatch {
            op,
            arg,
            expected: "a non-empty last dimension".into(),
            got: m.shape.to_vec(),
        });
    }
    let rows = m.shape[..m.shape.len() - 1].iter().product();
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return Err(Error::InvalidArgument {
            op,
            arg,
            reason: format!("{rows} rows x {cols} columns exceeds the 2^31-1 launch limit"),
        });
    }
    Ok((rows, cols))
}

pub(crate) fn expect_float(op: &'static str, arg: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        return Ok(());
    }
    Err(Error::DTypeMismatch {
        op,
        arg,
        expected: "f32, f16 or bf16".into(),
        got: dtype,
    })
}

pub(crate) fn expect_dtype(op: &'static str, arg: &'static str, want: DType, got: DType) -> Result<()> {
    if want == got {
        return Ok(());
    }
    Err(Error::DTypeMismatch {
        op,
        arg,
        expected: want.to_string(),
        got,
    })
}

pub(crate) fn expect_shape(op: &'static str, arg: &'static str, want: &[usize], got: &[usize]) -> Result<()> {
    if want == got {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        op,
        arg,
        expected: format!("{want:?}"),
        got: got.to_vec(),
    })
}

/// Turns a C-ABI launcher's result into `Ok` or a launch error naming `op`.
pub(crate) fn ffi_result(op: &'static str, result: crate::ffi::dynamic::mllm_result_t) -> Result<()> {
    use crate::ffi::dynamic::mllm_status_t;
    if result.status == mllm_status_t::MLLM_STATUS_OK {
        return Ok(());
    }
    let message = if result.message.is_null() {
        String::from("(no message)")
    } else {
        // SAFETY: the ABI promises a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(result.message) }
            .to_string_lossy()
            .into_owned()
    };
    Err(Error::KernelLaunch {
        kernel: op.to_string(),
        reason: format!(
            "status {} (cuda error {}): {message}",
            result.status.0, result.cuda_error
        ),
    })
}
