//! Downloads that do not block the host: a reusable page-locked buffer the
//! GPU's stream copies into, read only once that copy is done. Overlap
//! scheduling queues step k + 1 before it reads step k's tokens; a plain
//! download there would wait for step k + 1 as well.

use cudarc::driver::{CudaEvent, PinnedHostSlice};

use crate::device::Gpu;
use crate::dtype::{from_bytes, HostElem};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

/// A page-locked host buffer and what its last download holds.
///
/// ```no_run
/// use mllm_kernel::{readback::Readback, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let ids = DeviceTensor::from_host(&gpu, &[7i32, 9], &[2])?;
/// let mut rb = Readback::new(&gpu, 1024)?;
/// rb.start(&gpu, &ids)?; // queued; the host goes on
/// assert_eq!(rb.wait::<i32>()?, vec![7, 9]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
#[derive(Debug)]
pub struct Readback {
    buf: PinnedHostSlice<u8>,
    /// Recorded after the last download's copy.
    done: CudaEvent,
    /// Dtype and element count of the download in flight or done.
    pending: Option<(crate::DType, usize)>,
}

impl Readback {
    /// A buffer of `capacity` bytes (at least one).
    pub fn new(gpu: &Gpu, capacity: usize) -> Result<Self> {
        // SAFETY: bytes, every pattern valid; nothing reads the buffer before a
        // download fills it (`wait` reads only what `start` copied). Flags 0, not
        // write-combined: the host reads this memory.
        let buf = unsafe { gpu.context().alloc_pinned_with_flags::<u8>(capacity.max(1), 0) }
            .map_err(Error::driver("allocate a page-locked readback buffer"))?;
        let done = gpu
            .context()
            .new_event(None)
            .map_err(Error::driver("create a readback event"))?;
        Ok(Self {
            buf,
            done,
            pending: None,
        })
    }

    /// Bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Queues a copy of `src` on the GPU's stream (after the work queued before
    /// it) and returns at once.
    pub fn start(&mut self, gpu: &Gpu, src: &DeviceTensor) -> Result<()> {
        let bytes = src.nbytes();
        if bytes > self.capacity() {
            return Err(Error::InvalidArgument {
                op: "readback",
                arg: "src",
                reason: format!("{bytes} bytes do not fit a {}-byte readback buffer", self.capacity()),
            });
        }
        self.pending = None;
        // The previous download into the buffer must be done before it is overwritten.
        self.done.synchronize().map_err(Error::driver("wait for a readback"))?;
        if bytes > 0 {
            // Exactly `bytes` of the buffer: a copy is as long as its host side.
            let host = self.buf.as_mut_slice().map_err(Error::driver("readback buffer"))?;
            gpu.stream()
                .memcpy_dtoh(&src.buffer().slice(0..bytes), &mut host[..bytes])
                .map_err(Error::driver("queue a readback"))?;
        }
        self.done
            .record(gpu.stream())
            .map_err(Error::driver("record a readback"))?;
        self.pending = Some((src.dtype(), src.numel()));
        Ok(())
    }

    /// Waits for the last [`Readback::start`]'s copy (only that copy, not work
    /// queued after it) and returns its elements.
    pub fn wait<T: HostElem>(&self) -> Result<Vec<T>> {
        let Some((dtype, numel)) = self.pending else {
            return Err(Error::InvalidArgument {
                op: "readback",
                arg: "wait",
                reason: "no download was started".into(),
            });
        };
        if T::DTYPE != dtype {
            return Err(Error::DTypeMismatch {
                op: "readback",
                arg: "T",
                expected: dtype.to_string(),
                got: T::DTYPE,
            });
        }
        self.done.synchronize().map_err(Error::driver("wait for a readback"))?;
        let bytes = self.buf.as_slice().map_err(Error::driver("readback buffer"))?;
        Ok(from_bytes(&bytes[..numel * dtype.size()]))
    }
}

impl Drop for Readback {
    fn drop(&mut self) {
        // A copy may still write the buffer: free it only after it.
        let _ = self.done.synchronize();
    }
}
