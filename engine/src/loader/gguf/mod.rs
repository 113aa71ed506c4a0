//! GGUF v2/v3 reader and dequantization.
//!
//! [`GgufFile`] memory-maps a `.gguf` file, parses its header, metadata
//! key/values and tensor infos (validating every length and offset against
//! the file size, so malformed input yields a [`GgufError`] rather than a
//! panic or a huge allocation), and hands out raw tensor bytes or tensors
//! dequantized to `f32` (see [`GgmlType::can_dequantize`] for the supported
//! types).
//!
//! Layout reminder: GGUF lists tensor dimensions innermost-first (`ne[0]` is
//! the row length); [`GgufTensorInfo::ne`] exposes that raw order and
//! [`GgufTensorInfo::shape`] the row-major (reversed) shape.

pub mod config;
mod dequant;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use dequant::dequantize;

/// The four magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment used when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Maximum number of tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const GGUF_MAX_DIMS: usize = 4;
/// Maximum nesting depth accepted for metadata arrays.
const MAX_ARRAY_DEPTH: usize = 64;

/// Errors from reading a GGUF file or dequantizing its tensors.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, stat'ed or memory-mapped.
    #[error("cannot read GGUF file `{}`: {source}", path.display())]
    Io {
        /// The path that was being opened.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: bad magic {found:02x?} (expected \"GGUF\" = [47, 47, 55, 46])")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The GGUF version is not 2 or 3.
    #[error("unsupported GGUF version {version}{}; mllm reads GGUF versions 2 and 3", if *version == 1 { " (GGUF v1 is obsolete; re-convert the model with a current llama.cpp)" } else { "" })]
    UnsupportedVersion {
        /// The version number found in the header.
        version: u32,
    },
    /// A read ran past the end of the file.
    #[error("truncated GGUF file: reading {what} at byte {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes needed (may be absurdly large for corrupt lengths).
        needed: u128,
        /// Bytes left in the file at `offset`.
        available: u64,
    },
    /// A metadata value type id is not one GGUF defines.
    #[error("metadata key `{key}` has invalid GGUF value type {type_id}")]
    InvalidValueType {
        /// The key whose value (or array element) has the bad type.
        key: String,
        /// The raw type id.
        type_id: u32,
    },
    /// A bool metadata value is neither 0 nor 1.
    #[error("metadata key `{key}` has invalid bool byte {byte}")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte found.
        byte: u8,
    },
    /// A key or tensor name is not valid UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// What was being read.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },
    /// Metadata arrays nested deeper than mllm accepts.
    #[error("metadata key `{key}`: arrays nested more than {} levels deep", MAX_ARRAY_DEPTH)]
    ArrayTooDeep {
        /// The key.
        key: String,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),
    /// The same tensor name appears twice.
    #[error("duplicate tensor name `{0}`")]
    DuplicateTensor(String),
    /// `general.alignment` is not a non-zero power of two integer.
    #[error("invalid `general.alignment` {0}: must be a non-zero power-of-two integer")]
    InvalidAlignment(String),
    /// A tensor has more than [`GGUF_MAX_DIMS`] dimensions.
    #[error("tensor `{tensor}` has {n_dims} dimensions; at most {} are supported", GGUF_MAX_DIMS)]
    TooManyDims {
        /// Tensor name.
        tensor: String,
        /// Number of dimensions declared.
        n_dims: u32,
    },
    /// A tensor's element count or byte size overflows.
    #[error("tensor `{tensor}` has dimensions {ne:?} whose size overflows")]
    ShapeOverflow {
        /// Tensor name.
        tensor: String,
        /// Raw GGUF dims (innermost first).
        ne: Vec<u64>,
    },
    /// A tensor's ggml type id is not known at all, so its size is unknown.
    #[error("tensor `{tensor}` has unknown GGUF type id {type_id}")]
    UnknownType {
        /// Tensor name.
        tensor: String,
        /// Raw type id.
        type_id: u32,
    },
    /// A tensor's ggml type is known but cannot be dequantized by mllm.
    #[error(
        "tensor `{tensor}` has GGUF type {ggml_type} ({}), which mllm cannot dequantize; supported: {}",
        ggml_type.id(),
        GgmlType::SUPPORTED_NAMES
    )]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// The tensor's type.
        ggml_type: GgmlType,
    },
    /// A tensor's row length (`ne[0]`) is not a multiple of its type's block size.
    #[error(
        "tensor `{tensor}` of type {ggml_type} has row length {row_len}, not a multiple of the block size {block_size}"
    )]
    BadRowLength {
        /// Tensor name.
        tensor: String,
        /// The tensor's type.
        ggml_type: GgmlType,
        /// `ne[0]`.
        row_len: u64,
        /// Elements per block of `ggml_type`.
        block_size: usize,
    },
    /// A tensor offset is not a multiple of the file's alignment.
    #[error("tensor `{tensor}` has offset {offset}, not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// Tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data extends past the end of the file.
    #[error("tensor `{tensor}` data spans bytes {start}..{end} but the file is only {file_len} bytes long")]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Absolute start offset.
        start: u128,
        /// Absolute end offset (exclusive).
        end: u128,
        /// File length.
        file_len: u64,
    },
    /// No tensor with the requested name exists.
    #[error("no tensor named `{0}` in the GGUF file")]
    TensorNotFound(String),
    /// A buffer handed to [`dequantize`] has the wrong size.
    #[error("{ggml_type} data of {n_elements} elements needs {expected} bytes, got {actual}")]
    DataSize {
        /// The type being dequantized.
        ggml_type: GgmlType,
        /// Number of output elements.
        n_elements: usize,
        /// Bytes required.
        expected: usize,
        /// Bytes provided.
        actual: usize,
    },
}

/// Result alias for this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $size:literal; )*) => {
        /// A ggml tensor data type as stored in GGUF tensor infos.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// The type for a raw GGUF type id, or `None` if the id is unknown.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// The raw GGUF type id.
            pub fn id(self) -> u32 {
                match self {
                    $( Self::$variant => $id, )*
                }
            }

            /// ggml's name for the type, e.g. `"Q4_K"`.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )*
                }
            }

            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> usize {
                match self {
                    $( Self::$variant => $block, )*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $( Self::$variant => $size, )*
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit float.
    F32 = 0, "F32", 1, 4;
    /// IEEE half.
    F16 = 1, "F16", 1, 2;
    /// 32-element blocks: f16 scale + 4-bit quants.
    Q4_0 = 2, "Q4_0", 32, 18;
    /// 32-element blocks: f16 scale, f16 min + 4-bit quants.
    Q4_1 = 3, "Q4_1", 32, 20;
    /// 32-element blocks, 5-bit quants.
    Q5_0 = 6, "Q5_0", 32, 22;
    /// 32-element blocks, 5-bit quants with min.
    Q5_1 = 7, "Q5_1", 32, 24;
    /// 32-element blocks: f16 scale + 8-bit quants.
    Q8_0 = 8, "Q8_0", 32, 34;
    /// 32-element blocks, 8-bit quants with sum.
    Q8_1 = 9, "Q8_1", 32, 36;
    /// 256-element k-quant, 2 bits.
    Q2_K = 10, "Q2_K", 256, 84;
    /// 256-element k-quant, 3 bits.
    Q3_K = 11, "Q3_K", 256, 110;
    /// 256-element k-quant, 4 bits.
    Q4_K = 12, "Q4_K", 256, 144;
    /// 256-element k-quant, 5 bits.
    Q5_K = 13, "Q5_K", 256, 176;
    /// 256-element k-quant, 6 bits.
    Q6_K = 14, "Q6_K", 256, 210;
    /// 256-element k-quant, 8 bits (intermediate type).
    Q8_K = 15, "Q8_K", 256, 292;
    /// i-quant, ~2.06 bpw.
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    /// i-quant, ~2.31 bpw.
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    /// i-quant, ~3.06 bpw.
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    /// i-quant, ~1.56 bpw.
    IQ1_S = 19, "IQ1_S", 256, 50;
    /// Non-linear 4-bit, 32-element blocks.
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    /// i-quant, ~3.44 bpw.
    IQ3_S = 21, "IQ3_S", 256, 110;
    /// i-quant, ~2.5 bpw.
    IQ2_S = 22, "IQ2_S", 256, 82;
    /// Non-linear 4-bit, 256-element super-blocks.
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    /// 8-bit integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit integer.
    I64 = 27, "I64", 1, 8;
    /// 64-bit float.
    F64 = 28, "F64", 1, 8;
    /// i-quant, ~1.75 bpw.
    IQ1_M = 29, "IQ1_M", 256, 56;
    /// bfloat16.
    BF16 = 30, "BF16", 1, 2;
    /// Ternary, ~1.69 bpw.
    TQ1_0 = 34, "TQ1_0", 256, 54;
    /// Ternary, 2.06 bpw.
    TQ2_0 = 35, "TQ2_0", 256, 66;
    /// Microscaling FP4, 32-element blocks.
    MXFP4 = 39, "MXFP4", 32, 17;
}

impl GgmlType {
    /// The types [`dequantize`] and [`GgufFile::dequantize_f32`] handle.
    pub const SUPPORTED: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    const SUPPORTED_NAMES: &'static str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";

    /// Whether mllm can dequantize this type to `f32`.
    pub fn can_dequantize(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// Bytes needed for `n_elements` values, or `None` if `n_elements` is not
    /// a multiple of the block size or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type tag of a GGUF metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// `u8` (id 0).
    U8,
    /// `i8` (id 1).
    I8,
    /// `u16` (id 2).
    U16,
    /// `i16` (id 3).
    I16,
    /// `u32` (id 4).
    U32,
    /// `i32` (id 5).
    I32,
    /// `f32` (id 6).
    F32,
    /// `bool` (id 7).
    Bool,
    /// UTF-8 string (id 8).
    String,
    /// Array (id 9).
    Array,
    /// `u64` (id 10).
    U64,
    /// `i64` (id 11).
    I64,
    /// `f64` (id 12).
    F64,
}

impl GgufValueType {
    /// The type for a raw GGUF value type id.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The raw GGUF value type id.
    pub fn id(self) -> u32 {
        use GgufValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The smallest encoded size of one value of this type, used to bound
    /// array lengths before allocating.
    fn min_encoded_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A string. Invalid UTF-8 in values is replaced (lossily) rather than
    /// rejected, since some tokenizer vocabularies contain raw bytes.
    String(String),
    /// An array of values, all of `elem_type` (possibly nested arrays).
    Array {
        /// The declared element type.
        elem_type: GgufValueType,
        /// The elements.
        values: Vec<GgufValue>,
    },
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array { .. } => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// Any integer value that fits in `u64` (negative signed values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_u64().and_then(|v| usize::try_from(v).ok())
    }

    /// A float value (`f32`, or `f64` narrowed); integers are not converted.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A float value (`f64`, or `f32` widened); integers are not converted.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array's elements.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array { values, .. } => Some(values),
            _ => None,
        }
    }

    /// An array of strings as `&str`s (`None` if not an array or any
    /// element is not a string).
    pub fn as_str_array(&self) -> Option<Vec<&str>> {
        self.as_array()?.iter().map(GgufValue::as_str).collect()
    }
}

/// One tensor's info from the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    name: String,
    ne: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: usize,
}

impl GgufTensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw GGUF dimensions, innermost first (`ne[0]` is the row length).
    pub fn ne(&self) -> &[u64] {
        &self.ne
    }

    /// Row-major shape (the reverse of [`ne`](Self::ne)); e.g. a weight with
    /// `ne = [4096, 11008]` has shape `[11008, 4096]`.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim is bounded by the (in-memory) byte size, validated at open.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// The tensor's data type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the tensor's data relative to the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }
}

/// Backing storage: a memory map or an owned buffer.
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file over a memory map (or an in-memory buffer).
pub struct GgufFile {
    data: Storage,
    parsed: Parsed,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.parsed.version)
            .field("len", &self.data.len())
            .field("metadata_keys", &self.parsed.metadata.len())
            .field("tensors", &self.parsed.tensors.len())
            .field("alignment", &self.parsed.alignment)
            .field("data_offset", &self.parsed.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`.
    ///
    /// ```no_run
    /// use mllm_engine::loader::gguf::GgufFile;
    ///
    /// let gguf = GgufFile::open("model.gguf")?;
    /// println!("arch = {:?}", gguf.architecture());
    /// for t in gguf.tensors() {
    ///     println!("{} {:?} {}", t.name(), t.shape(), t.ggml_type());
    /// }
    /// let embd: Vec<f32> = gguf.dequantize_f32("token_embd.weight")?;
    /// # let _ = embd;
    /// # Ok::<(), mllm_engine::loader::gguf::GgufError>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; report it as truncated.
            return Self::from_storage(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only; as with every mmap-based model loader,
        // the file must not be truncated or modified while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::from_storage(Storage::Mmap(mmap))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(data: Storage) -> Result<Self> {
        let parsed = parse(&data)?;
        Ok(GgufFile { data, parsed })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.parsed.alignment
    }

    /// Absolute byte offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.parsed.data_offset
    }

    /// All metadata key/values, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.parsed.metadata
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.parsed.key_index.get(key).map(|&i| &self.parsed.metadata[i].1)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer metadata value as `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer metadata value as `i64`.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// A float metadata value as `f32`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// A bool metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array metadata value's elements.
    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.get(key)?.as_array()
    }

    /// An array-of-strings metadata value (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_str_array()
    }

    /// `general.architecture` (e.g. `"llama"`, `"qwen2"`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped value: `get_arch("context_length")` reads
    /// `<general.architecture>.context_length`.
    pub fn get_arch(&self, suffix: &str) -> Option<&GgufValue> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{suffix}"))
    }

    /// Tensor infos, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &GgufTensorInfo> + '_ {
        self.parsed.tensors.iter()
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.parsed.tensors.len()
    }

    /// The info for tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.parsed.tensor_index.get(name).map(|&i| &self.parsed.tensors[i])
    }

    fn require(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound(name.to_string()))
    }

    /// The raw bytes of tensor `name` (bounds were validated at open).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require(name)?;
        Ok(self.bytes_of(info))
    }

    fn bytes_of(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = self.parsed.data_offset + info.offset as usize;
        &self.data[start..start + info.n_bytes]
    }

    /// Tensor `name` dequantized to `f32`, in row-major order (length
    /// [`GgufTensorInfo::n_elements`]).
    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require(name)?;
        let ty = info.ggml_type;
        if !ty.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                tensor: info.name.clone(),
                ggml_type: ty,
            });
        }
        let mut out = vec![0f32; info.n_elements as usize];
        dequant::dequantize_into(ty, self.bytes_of(info), &mut out)?;
        Ok(out)
    }
}

/// What parsing the header, metadata and tensor infos yields.
struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, what: impl FnOnce() -> String, needed: u128) -> GgufError {
        GgufError::Truncated {
            what: what(),
            offset: self.pos as u64,
            needed,
            available: self.remaining() as u64,
        }
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.truncated(what, n.into()));
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: impl FnOnce() -> String) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string's raw bytes.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<(&'a [u8], u64)> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let at = self.pos as u64;
        Ok((self.take(len, what)?, at))
    }

    /// A length-prefixed string that must be valid UTF-8 (keys, tensor names).
    fn strict_string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let (bytes, offset) = self.string_bytes(what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 { what: what(), offset })
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: usize) -> Result<GgufValue> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.u8(what)?),
            GgufValueType::I8 => GgufValue::I8(self.u8(what)? as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(self.u32(what)?),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::U64 => GgufValue::U64(self.u64(what)?),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => match self.u8(what)? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                byte => {
                    return Err(GgufError::InvalidBool {
                        key: key.to_string(),
                        byte,
                    })
                }
            },
            GgufValueType::String => {
                let (bytes, _) = self.string_bytes(&what)?;
                GgufValue::String(String::from_utf8_lossy(bytes).into_owned())
            }
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep { key: key.to_string() });
                }
                let type_id = self.u32(|| format!("array element type of metadata key `{key}`"))?;
                let elem_type = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::InvalidValueType {
                    key: key.to_string(),
                    type_id,
                })?;
                let count = self.u64(|| format!("array length of metadata key `{key}`"))?;
                // Bound the count by the bytes left before allocating anything.
                let min_bytes = u128::from(count) * u128::from(elem_type.min_encoded_size());
                if min_bytes > self.remaining() as u128 {
                    return Err(self.truncated(|| format!("{count} array elements of metadata key `{key}`"), min_bytes));
                }
                let mut values = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array { elem_type, values }
            }
        })
    }
}

fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut r = Reader { buf, pos: 0 };
    let magic: [u8; 4] = r.array(|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32(|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64(|| "tensor count".into())?;
    let n_kv = r.u64(|| "metadata key/value count".into())?;

    // Each key/value needs at least 8 (key len) + 4 (type) + 1 bytes.
    let min_kv = u128::from(n_kv) * 13;
    if min_kv > r.remaining() as u128 {
        return Err(r.truncated(|| format!("{n_kv} metadata key/values"), min_kv));
    }
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut key_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = r.strict_string(&|| format!("metadata key #{i}"))?;
        let type_id = r.u32(|| format!("value type of metadata key `{key}`"))?;
        let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::InvalidValueType {
            key: key.clone(),
            type_id,
        })?;
        let value = r.value(ty, &key, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 30 => a,
                _ => return Err(GgufError::InvalidAlignment(format!("{v:?}"))),
            }
        }
    };

    // Each tensor info needs at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    let min_ti = u128::from(n_tensors) * 24;
    if min_ti > r.remaining() as u128 {
        return Err(r.truncated(|| format!("{n_tensors} tensor infos"), min_ti));
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.strict_string(&|| format!("name of tensor #{i}"))?;
        let n_dims = r.u32(|| format!("dimension count of tensor `{name}`"))?;
        if n_dims as usize > GGUF_MAX_DIMS {
            return Err(GgufError::TooManyDims { tensor: name, n_dims });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            ne.push(r.u64(|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let type_id = r.u32(|| format!("type of tensor `{name}`"))?;
        let offset = r.u64(|| format!("data offset of tensor `{name}`"))?;
        raw.push((name, ne, type_id, offset));
    }

    let data_offset = (r.pos as u64).next_multiple_of(alignment);
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut tensor_index = HashMap::with_capacity(raw.len());
    for (name, ne, type_id, offset) in raw {
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownType { tensor: name, type_id });
        };
        let n_elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(n_elements) = n_elements else {
            return Err(GgufError::ShapeOverflow { tensor: name, ne });
        };
        let row_len = ne.first().copied().unwrap_or(1);
        let block_size = ggml_type.block_size();
        if !row_len.is_multiple_of(block_size as u64) {
            return Err(GgufError::BadRowLength {
                tensor: name,
                ggml_type,
                row_len,
                block_size,
            });
        }
        let Some(n_bytes) = ggml_type.bytes_for(n_elements) else {
            return Err(GgufError::ShapeOverflow { tensor: name, ne });
        };
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset {
                tensor: name,
                offset,
                alignment,
            });
        }
        let start = u128::from(data_offset) + u128::from(offset);
        let end = start + u128::from(n_bytes);
        if end > u128::from(file_len) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: name,
                start,
                end,
                file_len,
            });
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor(name));
        }
        tensors.push(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            n_elements,
            n_bytes: n_bytes as usize,
        });
    }

    Ok(Parsed {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        // When there are no tensors the padded data start may lie past EOF; clamp it.
        data_offset: data_offset.min(file_len) as usize,
    })
}
