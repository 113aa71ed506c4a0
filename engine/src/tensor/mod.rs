//! A small tensor type over CPU (and later CUDA) memory; no autograd.
//!
//! A [`Tensor`] is a shape, a [`DType`] and a contiguous row-major [`Storage`]. CPU storage is a
//! reference-counted byte source (an owned 8-byte-aligned buffer or a memory map) plus an offset,
//! so views of mmapped weights and row slices along dim 0 are zero-copy and clones are cheap.
//!
//! Compute ops ([`matmul_t`], [`Tensor::add`], [`Tensor::rms_norm`], ...) run on the CPU in f32;
//! their inputs may be any float dtype (weights can stay bf16/f16 in memory) and their outputs
//! are f32.

mod bf16_dot;
mod bf16_panel;
mod gemv;
mod ops;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

use std::fmt;
use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use thiserror::Error;

pub use bf16_dot::{bf16_dot_available, matmul_bf16_t};
pub use gemv::gemv_t;
pub use ops::{cat, matmul_t};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// bfloat16.
    BF16,
    /// 16-bit IEEE float.
    F16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I8 => 1,
            DType::I64 => 8,
        }
    }

    /// Lower-case name (`"f32"`, `"bf16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }

    /// The float dtype a checkpoint's `torch_dtype` (`"bfloat16"`, `"float16"`, `"float32"`, or
    /// our own short names) stands for; `None` for anything else.
    ///
    /// ```
    /// use mllm_engine::tensor::DType;
    /// assert_eq!(DType::from_torch_name("bfloat16"), Some(DType::BF16));
    /// assert_eq!(DType::from_torch_name("float8_e4m3fn"), None);
    /// ```
    pub fn from_torch_name(name: &str) -> Option<DType> {
        match name.strip_prefix("torch.").unwrap_or(name) {
            "bfloat16" | "bf16" => Some(DType::BF16),
            "float16" | "half" | "f16" => Some(DType::F16),
            "float32" | "float" | "f32" => Some(DType::F32),
            _ => None,
        }
    }

    /// Whether this is a floating-point dtype.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of tensor construction and ops. Each names the op and the offending argument.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    /// An argument has the wrong shape.
    #[error("{op}: argument `{arg}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The op (e.g. `"matmul_t"`).
        op: &'static str,
        /// The argument name.
        arg: &'static str,
        /// Description of the expected shape.
        expected: String,
        /// The actual shape.
        got: Vec<usize>,
    },
    /// An argument has the wrong dtype.
    #[error("{op}: argument `{arg}` has dtype {got}, expected {expected}")]
    DType {
        /// The op.
        op: &'static str,
        /// The argument name.
        arg: &'static str,
        /// Description of the expected dtype(s).
        expected: String,
        /// The actual dtype.
        got: DType,
    },
    /// Any other invalid argument (out-of-range index, misaligned data, ...).
    #[error("{op}: {msg}")]
    Invalid {
        /// The op.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
}

/// Result type of tensor operations.
pub type Result<T> = std::result::Result<T, TensorError>;

/// Rust element types that a tensor can hold.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype corresponding to `Self`.
    const DTYPE: DType;
    /// Lossy conversion to f64 (exact for all but very large i64).
    fn to_f64(self) -> f64;
    /// Conversion from f64 (rounding for floats, saturating `as` cast for integers).
    fn from_f64(v: f64) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! impl_element {
    ($t:ty, $dt:expr, $to:expr, $from:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $dt;
            #[inline]
            fn to_f64(self) -> f64 {
                ($to)(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                ($from)(v)
            }
        }
    };
}

impl_element!(f32, DType::F32, |x: f32| x as f64, |v: f64| v as f32);
impl_element!(bf16, DType::BF16, |x: bf16| x.to_f64(), bf16::from_f64);
impl_element!(f16, DType::F16, |x: f16| x.to_f64(), f16::from_f64);
impl_element!(i8, DType::I8, |x: i8| x as f64, |v: f64| v as i8);
impl_element!(i32, DType::I32, |x: i32| x as f64, |v: f64| v as i32);
impl_element!(i64, DType::I64, |x: i64| x as f64, |v: f64| v as i64);

/// The bytes behind CPU storage.
pub enum ByteSource {
    /// An owned buffer; `Vec<u64>` guarantees 8-byte alignment. The second field is the length in bytes.
    Owned(Vec<u64>, usize),
    /// An owned `Vec` of one element type, kept as it was allocated: [`Tensor::from_vec`] moves
    /// its data here instead of copying it (aligned for that type, which is all a tensor of
    /// that dtype needs).
    Elements(Box<dyn ElementBytes>),
    /// A read-only memory map (e.g. a safetensors file).
    Mapped(memmap2::Mmap),
}

/// A buffer of [`Element`]s seen as bytes (for [`ByteSource::Elements`]).
pub trait ElementBytes: Send + Sync {
    /// The elements' bytes.
    fn bytes(&self) -> &[u8];
}

impl<T: Element> ElementBytes for Vec<T> {
    fn bytes(&self) -> &[u8] {
        as_bytes(self)
    }
}

impl ByteSource {
    /// All bytes of the source.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ByteSource::Owned(v, len) => {
                // SAFETY: the Vec<u64> holds at least `len` initialized bytes.
                unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, *len) }
            }
            ByteSource::Elements(v) => v.bytes(),
            ByteSource::Mapped(m) => m,
        }
    }

    /// Copies `bytes` into a new 8-byte-aligned owned buffer.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `v` has at least `bytes.len()` bytes of capacity, both are valid and disjoint.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len()) };
        ByteSource::Owned(v, bytes.len())
    }
}

impl fmt::Debug for ByteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteSource::Owned(_, len) => write!(f, "Owned({len} bytes)"),
            ByteSource::Elements(v) => write!(f, "Elements({} bytes)", v.bytes().len()),
            ByteSource::Mapped(m) => write!(f, "Mapped({} bytes)", m.len()),
        }
    }
}

/// A contiguous byte range of a shared [`ByteSource`].
#[derive(Clone, Debug)]
pub struct CpuStorage {
    source: Arc<ByteSource>,
    offset: usize,
    len: usize,
}

impl CpuStorage {
    /// A view of `len` bytes at `offset` of `source`; errors if out of bounds.
    pub fn new(source: Arc<ByteSource>, offset: usize, len: usize) -> Result<Self> {
        let total = source.bytes().len();
        if offset.checked_add(len).is_none_or(|end| end > total) {
            return Err(TensorError::Invalid {
                op: "CpuStorage::new",
                msg: format!(
                    "byte range {offset}..{} out of bounds for a source of {total} bytes",
                    offset + len
                ),
            });
        }
        Ok(Self { source, offset, len })
    }

    /// The bytes of this storage.
    pub fn bytes(&self) -> &[u8] {
        &self.source.bytes()[self.offset..self.offset + self.len]
    }

    /// Whether this storage borrows a memory map (rather than owning its bytes).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.source, ByteSource::Mapped(_))
    }
}

/// Where a tensor's data lives. Only CPU for now; CUDA storage will be added as another variant.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
}

/// Device of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host CPU.
    Cpu,
}

/// An n-dimensional, contiguous, row-major tensor. Cloning is cheap (the storage is shared).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?})", self.shape, self.dtype, self.device())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Reinterprets a typed slice as bytes.
fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: every Element is plain old data without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl Tensor {
    /// Wraps a storage; checks that it holds exactly `numel(shape) * dtype.size()` bytes.
    pub fn from_storage(storage: Storage, shape: &[usize], dtype: DType) -> Result<Self> {
        let Storage::Cpu(cpu) = &storage;
        let want = numel(shape) * dtype.size();
        if cpu.len != want {
            return Err(TensorError::Invalid {
                op: "from_storage",
                msg: format!("storage has {} bytes, shape {shape:?} of {dtype} needs {want}", cpu.len),
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            dtype,
            storage,
        })
    }

    /// A tensor over `len = numel(shape) * dtype.size()` bytes at `offset` of a shared memory map,
    /// without copying. If the data is not aligned for `dtype`, it is copied into an owned buffer.
    pub fn from_mapped(source: Arc<ByteSource>, offset: usize, shape: &[usize], dtype: DType) -> Result<Self> {
        let len = numel(shape) * dtype.size();
        let storage = CpuStorage::new(source, offset, len)?;
        if !(storage.bytes().as_ptr() as usize).is_multiple_of(dtype.size()) {
            return Self::from_bytes(storage.bytes(), shape, dtype);
        }
        Self::from_storage(Storage::Cpu(storage), shape, dtype)
    }

    /// Copies raw little-endian bytes into a new owned tensor.
    pub fn from_bytes(bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Self> {
        let src = Arc::new(ByteSource::from_bytes(bytes));
        Self::from_storage(Storage::Cpu(CpuStorage::new(src, 0, bytes.len())?), shape, dtype)
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        let len = numel(shape) * dtype.size();
        let src = Arc::new(ByteSource::Owned(vec![0u64; len.div_ceil(8)], len));
        Self {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Cpu(CpuStorage {
                source: src,
                offset: 0,
                len,
            }),
        }
    }

    /// An f32 tensor of `shape` whose zero-initialized values `fill` writes in place (no
    /// intermediate `Vec`).
    pub(crate) fn f32_filled(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> Tensor {
        Self::bytes_filled(shape, DType::F32, |bytes| {
            // SAFETY: the buffer is 8-byte aligned (enough for f32) and holds `numel * 4`
            // initialized bytes.
            fill(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut f32, bytes.len() / 4) })
        })
    }

    /// A `dtype` tensor of `shape` whose zero-initialized bytes `fill` writes in place, in an
    /// 8-byte-aligned buffer.
    fn bytes_filled(shape: &[usize], dtype: DType, fill: impl FnOnce(&mut [u8])) -> Tensor {
        let len = numel(shape) * dtype.size();
        let mut buf = vec![0u64; len.div_ceil(8)];
        // SAFETY: `buf` holds at least `len` initialized (zero) bytes.
        fill(unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, len) });
        Self {
            shape: shape.to_vec(),
            dtype,
            storage: Storage::Cpu(CpuStorage {
                source: Arc::new(ByteSource::Owned(buf, len)),
                offset: 0,
                len,
            }),
        }
    }

    /// A tensor holding `data` (dtype from `T`); `data.len()` must equal the element count of `shape`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        if data.len() != numel(shape) {
            return Err(TensorError::Shape {
                op: "from_vec",
                arg: "shape",
                expected: format!("{} elements (data length)", data.len()),
                got: shape.to_vec(),
            });
        }
        // The Vec becomes the storage: weights of several GB are not copied (serially, into
        // freshly faulted pages) on their way in.
        let len = std::mem::size_of_val(data.as_slice());
        let src = Arc::new(ByteSource::Elements(Box::new(data)));
        Self::from_storage(Storage::Cpu(CpuStorage::new(src, 0, len)?), shape, T::DTYPE)
    }

    /// A tensor of `dtype` from f32 values (rounded / cast as needed).
    pub fn from_f32(data: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        if data.len() != numel(shape) {
            return Err(TensorError::Shape {
                op: "from_f32",
                arg: "shape",
                expected: format!("{} elements (data length)", data.len()),
                got: shape.to_vec(),
            });
        }
        match dtype {
            DType::F32 => Self::from_vec(data.to_vec(), shape),
            DType::BF16 => {
                let mut v = vec![bf16::ZERO; data.len()];
                v.convert_from_f32_slice(data);
                Self::from_vec(v, shape)
            }
            DType::F16 => {
                let mut v = vec![f16::ZERO; data.len()];
                v.convert_from_f32_slice(data);
                Self::from_vec(v, shape)
            }
            DType::I8 => Self::from_vec(data.iter().map(|&x| x as i8).collect(), shape),
            DType::I32 => Self::from_vec(data.iter().map(|&x| x as i32).collect(), shape),
            DType::I64 => Self::from_vec(data.iter().map(|&x| x as i64).collect(), shape),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the data lives on.
    pub fn device(&self) -> Device {
        match self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The raw little-endian bytes of the data.
    pub fn as_bytes(&self) -> &[u8] {
        let Storage::Cpu(cpu) = &self.storage;
        cpu.bytes()
    }

    /// The data as a typed slice; errors if `T` does not match the dtype (or the data is misaligned).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::DType {
                op: "as_slice",
                arg: "T",
                expected: self.dtype.to_string(),
                got: T::DTYPE,
            });
        }
        let bytes = self.as_bytes();
        if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(TensorError::Invalid {
                op: "as_slice",
                msg: format!("{} data is misaligned", self.dtype),
            });
        }
        // SAFETY: dtype matches T, pointer aligned, length is numel * size_of::<T>().
        Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, self.numel()) })
    }

    /// The data converted to f32 (any dtype).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        self.write_f32(&mut out)?;
        Ok(out)
    }

    /// The data as f32: borrowed when it already is f32, else converted.
    pub(crate) fn to_f32_cow(&self) -> Result<std::borrow::Cow<'_, [f32]>> {
        Ok(match self.dtype {
            DType::F32 => std::borrow::Cow::Borrowed(self.as_slice::<f32>()?),
            _ => std::borrow::Cow::Owned(self.to_f32_vec()?),
        })
    }

    /// Converts the data into `out` (length must be `numel`).
    pub(crate) fn write_f32(&self, out: &mut [f32]) -> Result<()> {
        debug_assert_eq!(out.len(), self.numel());
        match self.dtype {
            DType::F32 => out.copy_from_slice(self.as_slice::<f32>()?),
            DType::BF16 => self.as_slice::<bf16>()?.convert_to_f32_slice(out),
            DType::F16 => self.as_slice::<f16>()?.convert_to_f32_slice(out),
            DType::I8 => out
                .iter_mut()
                .zip(self.as_slice::<i8>()?)
                .for_each(|(o, &x)| *o = x as f32),
            DType::I32 => out
                .iter_mut()
                .zip(self.as_slice::<i32>()?)
                .for_each(|(o, &x)| *o = x as f32),
            DType::I64 => out
                .iter_mut()
                .zip(self.as_slice::<i64>()?)
                .for_each(|(o, &x)| *o = x as f32),
        }
        Ok(())
    }

    fn to_vec_as<T: Element>(&self) -> Result<Vec<T>> {
        fn conv<S: Element, T: Element>(s: &[S]) -> Vec<T> {
            s.iter().map(|&x| T::from_f64(x.to_f64())).collect()
        }
        Ok(match self.dtype {
            DType::F32 => conv(self.as_slice::<f32>()?),
            DType::BF16 => conv(self.as_slice::<bf16>()?),
            DType::F16 => conv(self.as_slice::<f16>()?),
            DType::I8 => conv(self.as_slice::<i8>()?),
            DType::I32 => conv(self.as_slice::<i32>()?),
            DType::I64 => conv(self.as_slice::<i64>()?),
        })
    }

    /// Converts to another dtype (a cheap clone when it already has it). Floats are rounded to
    /// nearest; float → integer is a saturating truncating cast.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        if self.dtype.is_float() && dtype.is_float() {
            return Tensor::from_f32(&self.to_f32_vec()?, &self.shape, dtype);
        }
        match dtype {
            DType::F32 => Tensor::from_vec(self.to_vec_as::<f32>()?, &self.shape),
            DType::BF16 => Tensor::from_vec(self.to_vec_as::<bf16>()?, &self.shape),
            DType::F16 => Tensor::from_vec(self.to_vec_as::<f16>()?, &self.shape),
            DType::I8 => Tensor::from_vec(self.to_vec_as::<i8>()?, &self.shape),
            DType::I32 => Tensor::from_vec(self.to_vec_as::<i32>()?, &self.shape),
            DType::I64 => Tensor::from_vec(self.to_vec_as::<i64>()?, &self.shape),
        }
    }

    /// Same data with a new shape of the same element count (zero-copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(TensorError::Shape {
                op: "reshape",
                arg: "shape",
                expected: format!("{} elements (from {:?})", self.numel(), self.shape),
                got: shape.to_vec(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype: self.dtype,
            storage: self.storage.clone(),
        })
    }

    /// `len` entries starting at `start` along dimension `dim`. Zero-copy for `dim == 0`, a copy otherwise.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() {
            return Err(TensorError::Invalid {
                op: "narrow",
                msg: format!("dim {dim} out of range for shape {:?}", self.shape),
            });
        }
        let size = self.shape[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(TensorError::Invalid {
                op: "narrow",
                msg: format!(
                    "range {start}..{} out of bounds for dim {dim} of size {size}",
                    start.saturating_add(len)
                ),
            });
        }
        let mut shape = self.shape.clone();
        shape[dim] = len;
        let inner: usize = self.shape[dim + 1..].iter().product::<usize>() * self.dtype.size();
        if dim == 0 {
            let Storage::Cpu(cpu) = &self.storage;
            let storage = CpuStorage {
                source: cpu.source.clone(),
                offset: cpu.offset + start * inner,
                len: len * inner,
            };
            return Ok(Tensor {
                shape,
                dtype: self.dtype,
                storage: Storage::Cpu(storage),
            });
        }
        // Copies each outer row's slice straight into the new tensor's buffer.
        let bytes = self.as_bytes();
        Ok(Tensor::bytes_filled(&shape, self.dtype, |out| {
            for (o, dst) in out.chunks_exact_mut((len * inner).max(1)).enumerate() {
                let base = (o * size + start) * inner;
                dst.copy_from_slice(&bytes[base..base + len * inner]);
            }
        }))
    }

    /// Rows `start..start + len` along dim 0 (zero-copy).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        self.narrow(0, start, len)
    }
}

#[cfg(test)]
mod tests;
