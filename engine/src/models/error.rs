//! The error type of layers, models and weight loading.

use thiserror::Error;

use crate::loader::gguf::GgufError;
use crate::loader::safetensors::SafetensorsError;
use crate::mem_cache::MemCacheError;
use crate::tensor::TensorError;

/// Errors of building, loading and running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A tensor op failed (shape, dtype, ...).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The KV cache rejected a write or read.
    #[error(transparent)]
    MemCache(#[from] MemCacheError),
    /// Reading a safetensors checkpoint failed.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// Reading a GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The config names an architecture without an implementation.
    #[error("unknown architecture `{arch}` (supported: {})", supported.join(", "))]
    UnknownArchitecture {
        /// The architecture string found.
        arch: String,
        /// All supported architecture strings.
        supported: Vec<&'static str>,
    },
    /// A parameter the model needs is absent from the checkpoint.
    #[error("missing weight `{name}`{}", near_names(.near))]
    MissingWeight {
        /// The (checkpoint) name of the parameter.
        name: String,
        /// Checkpoint names that look similar.
        near: Vec<String>,
    },
    /// The checkpoint holds tensors the model does not use.
    #[error("unexpected weight(s) in checkpoint: {}", .names.join(", "))]
    UnexpectedWeights {
        /// The unused names (at most 10 shown).
        names: Vec<String>,
    },
    /// A tensor has the wrong shape.
    #[error("weight `{name}` has shape {got:?}, expected {expected:?}")]
    WeightShape {
        /// The parameter name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        got: Vec<usize>,
    },
    /// A GPU op failed (no device, kernel build, launch, bad argument).
    #[error("CUDA: {0}")]
    Cuda(Box<mllm_kernel::Error>),
    /// A weight or input is invalid in another way.
    #[error("{0}")]
    Invalid(String),
}

impl From<mllm_kernel::Error> for ModelError {
    fn from(e: mllm_kernel::Error) -> Self {
        ModelError::Cuda(Box::new(e))
    }
}

fn near_names(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!("; similar names in the checkpoint: {}", near.join(", "))
    }
}

/// Result type of layers and models.
pub type Result<T> = std::result::Result<T, ModelError>;
