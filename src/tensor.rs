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

impl DeviceTensor {
    /// Uploads `data` with `shape`.
    pub fn from_host<T: HostElem>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::InvalidArgument {
                op: "from_host",
                arg: "shape",
                reason: format!("shape {shape:?} holds {numel} elements but data has {}", data.len()),
            });
        }
        let bytes = as_bytes(data);
        let buf = if bytes.is_empty() {
            gpu.stream().alloc_zeros::<u8>(1)
        } else {
            gpu.stream().clone_htod(bytes)
        }
        .map_err(Error::driver("upload tensor"))?;
        Ok(Self {
            buf,
            shape: shape.to_vec(),
            dtype: T::DTYPE,
        })
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
