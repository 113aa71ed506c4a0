//! Element types and their host representations.

use std::fmt;

use half::{bf16, f16};

use crate::ffi::dynamic::mllm_dtype_t;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 => 1,
        }
    }

    /// True for the floating types kernels take as activations.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Suffix of NVRTC kernel symbols (`rms_norm_bf16`).
    pub fn symbol_suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I32 => "i32",
        }
    }

    /// The C ABI code, for float types.
    pub(crate) fn to_ffi(self) -> Option<mllm_dtype_t> {
        match self {
            DType::F32 => Some(mllm_dtype_t::MLLM_DTYPE_F32),
            DType::F16 => Some(mllm_dtype_t::MLLM_DTYPE_F16),
            DType::BF16 => Some(mllm_dtype_t::MLLM_DTYPE_BF16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol_suffix())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "i8" | "int8" => Ok(DType::I8),
            "i32" | "int32" => Ok(DType::I32),
            _ => Err(format!("unknown dtype `{s}` (expected f32, f16, bf16, i8 or i32)")),
        }
    }
}

/// A host element type with a matching [`DType`]. Plain old data.
pub trait HostElem: Copy + Default + Send + Sync + 'static {
    const DTYPE: DType;
}

impl HostElem for f32 {
    const DTYPE: DType = DType::F32;
}
impl HostElem for f16 {
    const DTYPE: DType = DType::F16;
}
impl HostElem for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl HostElem for i8 {
    const DTYPE: DType = DType::I8;
}
impl HostElem for i32 {
    const DTYPE: DType = DType::I32;
}

/// Floating element types the CPU reference computes with (through f32).
pub trait FloatElem: HostElem {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl FloatElem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl FloatElem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl FloatElem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Views a slice of plain-old-data elements as bytes.
pub(crate) fn as_bytes<T: HostElem>(data: &[T]) -> &[u8] {
    // SAFETY: HostElem types are POD without padding; the byte view covers
    // exactly the slice's memory and borrows it.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

/// Copies bytes into a vector of `T` (length must be a multiple of its size).
pub(crate) fn from_bytes<T: HostElem>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = vec![T::default(); n];
    // SAFETY: `out` has room for n elements = n * size_of::<T>() bytes, and
    // every bit pattern is a valid value of the POD element types.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<T>(),
        )
    };
    out
}
