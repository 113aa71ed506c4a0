//! A minimal device tensor: contiguous bytes on one GPU, a shape and a dtype.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::device::Gpu;
use crate::dtype::{as_bytes, from_bytes, DType, HostElem};
use crate::{Error, Result};

/// A contiguous, row-major tensor in device memory.
///
/// ```no_run
/// use mllm_kernel::{Gpu, DeviceTensor};
/// let gpu = Gpu::new(0)?;
/// let t = DeviceTensor::from_host(&gpu, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// assert_eq!(t.to_host::<f32>(&gpu)?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub struct DeviceTensor {
    // At least one byte: zero-sized device allocations are not portable.
    buf: CudaSlice<u8>,
    shape: Vec<usize>,
    dtype: DType,
}

/// An error unless `shape` holds exactly `len` elements (data given for a new tensor of `op`).
pub(crate) fn check_shape_holds(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel == len {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        op,
        arg: "shape",
        reason: format!("shape {shape:?} holds {numel} elements but data has {len}"),
    })
}

impl DeviceTensor {
    /// Uploads `data` with `shape`.
    pub fn from_host<T: HostElem>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Self> {
        check_shape_holds("from_host", shape, data.len())?;
        Self::from_bytes(gpu, as_bytes(data), shape, T::DTYPE)
    }

    /// Uploads raw little-endian `bytes` holding `shape` elements of `dtype`
    /// (a host tensor's storage).
    pub fn from_bytes(gpu: &Gpu, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Self> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if bytes.len() != want {
            return Err(Error::InvalidArgument {
                op: "from_bytes",
                arg: "bytes",
                reason: format!("{dtype} shape {shape:?} needs {want} bytes, got {}", bytes.len()),
            });
        }
        let buf = if bytes.is_empty() {
            gpu.stream().alloc_zeros::<u8>(1)
        } else {
            gpu.stream().clone_htod(bytes)
        }
        .map_err(Error::driver("upload tensor"))?;
        Ok(Self {
            buf,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Overwrites the first `data.len()` elements with `data` (stream-ordered; `data` may be
    /// reused on return). For fixed input buffers of a captured CUDA graph.
    pub fn write_from_host<T: HostElem>(&mut self, gpu: &Gpu, data: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype || data.len() > self.numel() {
            return Err(Error::InvalidArgument {
                op: "write_from_host",
                arg: "data",
                reason: format!(
                    "{} {} elements do not fit a {} tensor of {} elements",
                    data.len(),
                    T::DTYPE,
                    self.dtype,
                    self.numel()
                ),
            });
        }
        let bytes = as_bytes(data);
        if bytes.is_empty() {
            return Ok(());
        }
        let mut dst = self.buf.slice_mut(0..bytes.len());
        gpu.stream()
            .memcpy_htod(bytes, &mut dst)
            .map_err(Error::driver("upload into tensor"))
    }

    /// The same data viewed with another shape of equal element count.
    ///
    /// ```no_run
    /// use mllm_kernel::{DeviceTensor, DType, Gpu};
    /// let gpu = Gpu::new(0)?;
    /// let t = DeviceTensor::zeros(&gpu, &[2, 6], DType::BF16)?.reshape(&[2, 3, 2])?;
    /// assert_eq!(t.shape(), &[2, 3, 2]);
    /// # Ok::<(), mllm_kernel::Error>(())
    /// ```
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        self.reshape_in_place(shape)?;
        Ok(self)
    }

    /// [`DeviceTensor::reshape`] through a reference, for a buffer that stays where it is
    /// (e.g. in a struct of reused activations).
    ///
    /// ```no_run
    /// use mllm_kernel::{DeviceTensor, DType, Gpu};
    /// let gpu = Gpu::new(0)?;
    /// let mut t = DeviceTensor::zeros(&gpu, &[2, 6], DType::BF16)?;
    /// t.reshape_in_place(&[2, 3, 2])?;
    /// assert_eq!(t.shape(), &[2, 3, 2]);
    /// assert!(t.reshape_in_place(&[5]).is_err());
    /// # Ok::<(), mllm_kernel::Error>(())
    /// ```
    pub fn reshape_in_place(&mut self, shape: &[usize]) -> Result<()> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                arg: "shape",
                expected: format!("{} elements (from {:?})", self.numel(), self.shape),
                got: shape.to_vec(),
            });
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// Copies columns `col .. col + out.cols` of every row of `self`
    /// (`[rows, W]`) into `out` (`[rows, ..]`, contiguous), e.g. the q heads
    /// out of a fused qkv projection. One strided device copy.
    pub fn copy_cols_into(&self, gpu: &Gpu, col: usize, out: &mut DeviceTensor) -> Result<()> {
        const OP: &str = "copy_cols_into";
        if out.dtype != self.dtype {
            return Err(Error::DTypeMismatch {
                op: OP,
                arg: "out",
                expected: self.dtype.to_string(),
                got: out.dtype,
            });
        }
        let rows = self.shape.first().copied().unwrap_or(0);
        let width = self.numel().checked_div(rows).unwrap_or(0);
        let out_rows = out.shape.first().copied().unwrap_or(0);
        let take = out.numel().checked_div(out_rows).unwrap_or(0);
        if out_rows != rows || col + take > width {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg: "out",
                expected: format!(
                    "{rows} rows of at most {} elements (columns {col}.. of {width})",
                    width.saturating_sub(col)
                ),
                got: out.shape.clone(),
            });
        }
        if rows == 0 || take == 0 {
            return Ok(());
        }
        let es = self.dtype.size();
        let stream = gpu.stream();
        let (src, _gs) = self.raw_ptr(stream);
        let (dst, _gd) = out.raw_ptr_mut(stream);
        use cudarc::driver::sys::{cuMemcpy2DAsync_v2, CUmemorytype, CUDA_MEMCPY2D};
        let copy = CUDA_MEMCPY2D {
            srcXInBytes: col * es,
            srcY: 0,
            srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: src,
            srcArray: std::ptr::null_mut(),
            srcPitch: width * es,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst,
            dstArray: std::ptr::null_mut(),
            dstPitch: take * es,
            WidthInBytes: take * es,
            Height: rows,
        };
        // SAFETY: both regions were bounds-checked above and are live
        // device buffers ordered on `stream`.
        unsafe { cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }
            .result()
            .map_err(Error::driver("strided column copy"))
    }

    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let buf = gpu
            .stream()
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(Error::driver("allocate tensor"))?;
        Ok(Self {
            buf,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A tensor whose contents are unspecified until a kernel writes them
    /// (skips the memset of [`DeviceTensor::zeros`] for outputs).
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        // SAFETY: device memory is plain bytes to the host; every reader of
        // an `empty` tensor is a kernel that writes it first.
        let buf = unsafe { gpu.stream().alloc::<u8>(bytes.max(1)) }.map_err(Error::driver("allocate tensor"))?;
        Ok(Self {
            buf,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Downloads the contents (waits for the stream).
    pub fn to_host<T: HostElem>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                op: "to_host",
                arg: "T",
                expected: self.dtype.to_string(),
                got: T::DTYPE,
            });
        }
        let bytes = gpu
            .stream()
            .clone_dtoh(&self.buf)
            .map_err(Error::driver("download tensor"))?;
        Ok(from_bytes(&bytes[..self.nbytes()]))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// The raw buffer, for kernel launches.
    pub fn buffer(&self) -> &CudaSlice<u8> {
        &self.buf
    }

    /// The raw buffer, mutably, for kernel launches.
    pub fn buffer_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.buf
    }

    /// Device address for foreign launchers, ordered on `stream`. The guard
    /// must live until the launch is enqueued.
    pub(crate) fn raw_ptr<'a>(&'a self, stream: &'a CudaStream) -> (u64, impl Drop + 'a) {
        let (ptr, guard) = self.buf.device_ptr(stream);
        (ptr, guard)
    }

    /// Mutable device address for foreign launchers.
    pub(crate) fn raw_ptr_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, impl Drop + 'a) {
        let (ptr, guard) = self.buf.device_ptr_mut(stream);
        (ptr, guard)
    }
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({}, {:?})", self.dtype, self.shape)
    }
}
