//! Uploads that never wait for the GPU: host data is copied into a page-locked buffer and the
//! stream copies from there. A copy from pageable memory may make the driver synchronize
//! with the stream to stage it; under overlap scheduling that would wait for the step still
//! running. The buffer is reused once its last copies have executed (an event), so two
//! stagings used in turn never wait while at most one step is ahead of the host.

use cudarc::driver::{CudaEvent, PinnedHostSlice};

use crate::device::Gpu;
use crate::dtype::{as_bytes, HostElem};
use crate::tensor::{check_shape_holds, DeviceTensor};
use crate::{Error, Result};

/// Copies start at multiples of this many bytes in the buffer.
const ALIGN: usize = 256;

/// A page-locked upload buffer and the event of its last copies.
///
/// ```no_run
/// use mllm_kernel::{staging::Staging, DType, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let mut ids = DeviceTensor::zeros(&gpu, &[4], DType::I32)?;
/// let mut pos = DeviceTensor::zeros(&gpu, &[4], DType::I32)?;
/// let mut stage = Staging::new(&gpu)?;
/// let mut up = stage.begin(&gpu, 64)?;
/// up.write(&mut ids, &[1i32, 2, 3, 4])?;
/// up.write(&mut pos, &[0i32, 1, 2, 3])?;
/// up.finish()?;
/// assert_eq!(ids.to_host::<i32>(&gpu)?, vec![1, 2, 3, 4]);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
#[derive(Debug)]
pub struct Staging {
    buf: Option<PinnedHostSlice<u8>>,
    /// Recorded after the last upload's copies; the buffer is free once it has passed.
    done: CudaEvent,
}

/// One upload through a [`Staging`] buffer: [`Upload::write`] each destination, then
/// [`Upload::finish`].
pub struct Upload<'a> {
    stage: &'a mut Staging,
    gpu: &'a Gpu,
    used: usize,
    /// The bytes [`Staging::begin`] was asked for.
    limit: usize,
    finished: bool,
}

impl Staging {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let done = gpu
            .context()
            .new_event(None)
            .map_err(Error::driver("create a staging event"))?;
        Ok(Self { buf: None, done })
    }

    /// Starts an upload of at most `bytes` bytes (each write starting at a multiple of 256;
    /// [`Staging::bytes_for`] sizes it): waits until the
    /// buffer's previous copies have executed, growing it if it is too small.
    pub fn begin<'a>(&'a mut self, gpu: &'a Gpu, bytes: usize) -> Result<Upload<'a>> {
        self.done
            .synchronize()
            .map_err(Error::driver("wait for a staging buffer"))?;
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            let capacity = bytes.next_power_of_two().max(4096);
            // SAFETY: bytes, every pattern valid; only written before a copy reads them.
            // Flags 0: the host writes and the GPU reads this memory, no write-combining needed.
            let buf = unsafe { gpu.context().alloc_pinned_with_flags::<u8>(capacity, 0) }
                .map_err(Error::driver("allocate a page-locked staging buffer"))?;
            self.buf = Some(buf);
        }
        Ok(Upload {
            stage: self,
            gpu,
            used: 0,
            limit: bytes,
            finished: false,
        })
    }
}

impl Staging {
    /// The bytes an upload of writes of these byte sizes takes.
    ///
    /// ```
    /// assert_eq!(mllm_kernel::staging::Staging::bytes_for(&[4, 300, 0]), 256 + 512);
    /// ```
    pub fn bytes_for(sizes: &[usize]) -> usize {
        sizes.iter().map(|&n| n.next_multiple_of(ALIGN)).sum()
    }
}

impl Upload<'_> {
    /// Queues `dst[..data.len()] = data` (dtype and length checked, as
    /// [`DeviceTensor::write_from_host`]).
    pub fn write<T: HostElem>(&mut self, dst: &mut DeviceTensor, data: &[T]) -> Result<()> {
        if T::DTYPE != dst.dtype() || data.len() > dst.numel() {
            return Err(Error::InvalidArgument {
                op: "staging",
                arg: "data",
                reason: format!(
                    "{} {} elements do not fit a {} tensor of {} elements",
                    data.len(),
                    T::DTYPE,
                    dst.dtype(),
                    dst.numel()
                ),
            });
        }
        let bytes = as_bytes(data);
        let buf = self.stage.buf.as_mut().expect("begin allocated it");
        let at = self.used.next_multiple_of(ALIGN);
        if at + bytes.len() > self.limit {
            return Err(Error::InvalidArgument {
                op: "staging",
                arg: "data",
                reason: format!(
                    "{} bytes (each write from a 256-byte boundary) past the {} this upload was begun with",
                    at + bytes.len(),
                    self.limit
                ),
            });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let host = buf.as_mut_slice().map_err(Error::driver("staging buffer"))?;
        host[at..at + bytes.len()].copy_from_slice(bytes);
        self.used = at + bytes.len();
        let src = &host[at..at + bytes.len()];
        let mut view = dst.buffer_mut().slice_mut(0..bytes.len());
        // The source is page-locked, so the copy is asynchronous; the buffer is not written
        // again before `done` has passed.
        self.gpu
            .stream()
            .memcpy_htod(src, &mut view)
            .map_err(Error::driver("queue a staged upload"))
    }

    /// A new `shape` tensor holding `data`: allocated on the stream, filled by this upload.
    pub fn tensor<T: HostElem>(&mut self, data: &[T], shape: &[usize]) -> Result<DeviceTensor> {
        check_shape_holds("staging", shape, data.len())?;
        let mut t = DeviceTensor::empty(self.gpu, shape, T::DTYPE)?;
        self.write(&mut t, data)?;
        Ok(t)
    }

    /// Marks the end of this upload's copies (the buffer is reused after them). Dropping an
    /// upload does the same, so copies queued before an error still guard the buffer.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.record()
    }

    fn record(&self) -> Result<()> {
        self.stage
            .done
            .record(self.gpu.stream())
            .map_err(Error::driver("record a staging event"))
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing to report to: a failed record leaves the event at the last upload, and
            // the driver error comes back from the stream's next call.
            let _ = self.record();
        }
    }
}

/// Two [`Staging`] buffers used in turn, one per step: the host fills one while the copies
/// of the step before still read the other, so with at most one step ahead of the host
/// [`StagingPair::begin`] never waits.
///
/// ```no_run
/// use mllm_kernel::{staging::{Staging, StagingPair}, Gpu};
/// let gpu = Gpu::new(0)?;
/// let mut steps = StagingPair::new(&gpu)?;
/// for step in 0..3i32 {
///     let ids = [step, step + 1];
///     let mut up = steps.begin(&gpu, Staging::bytes_for(&[8]))?;
///     let ids = up.tensor(&ids, &[2])?;
///     up.finish()?;
///     assert_eq!(ids.to_host::<i32>(&gpu)?, vec![step, step + 1]);
/// }
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
#[derive(Debug)]
pub struct StagingPair {
    stages: [Staging; 2],
    turn: usize,
}

impl StagingPair {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            stages: [Staging::new(gpu)?, Staging::new(gpu)?],
            turn: 0,
        })
    }

    /// Starts an upload of at most `bytes` bytes in the buffer the last upload did not use
    /// (see [`Staging::begin`]).
    pub fn begin<'a>(&'a mut self, gpu: &'a Gpu, bytes: usize) -> Result<Upload<'a>> {
        self.turn ^= 1;
        self.stages[self.turn].begin(gpu, bytes)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Copies may still read the buffer: free it only after them.
        let _ = self.done.synchronize();
    }
}
