//! CUDA graphs over a [`Gpu`]'s stream: capture a sequence of launches once, replay it with
//! one launch.

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph};

use crate::device::Gpu;
use crate::{Error, Result};

/// A captured, instantiated graph; replays on the stream it was captured from.
pub struct Graph {
    inner: CudaGraph,
}

// SAFETY: a CUDA graph may be used from any thread as long as calls on it are serialized;
// `Graph` is not `Sync`, so only its one owner can call into it.
unsafe impl Send for Graph {}

impl Graph {
    /// Records everything `work` enqueues on `gpu`'s stream without running it. Work must not
    /// synchronize or read back (a capture error says so); allocations made inside are
    /// freed by the graph. Kernels should be loaded by an eager run first (loading a module
    /// while capturing is not allowed).
    ///
    /// ```no_run
    /// use mllm_kernel::{graph::Graph, ops, DeviceTensor, Gpu};
    /// let gpu = Gpu::new(0)?;
    /// let x = DeviceTensor::zeros(&gpu, &[2, 4], mllm_kernel::DType::F32)?;
    /// let mut y = DeviceTensor::zeros(&gpu, &[2, 2], mllm_kernel::DType::F32)?;
    /// ops::silu_and_mul_into(&gpu, &x, &mut y)?; // eager run: loads the kernel
    /// let g = Graph::capture(&gpu, || Ok(ops::silu_and_mul_into(&gpu, &x, &mut y)?))?;
    /// g.launch()?;
    /// # Ok::<(), mllm_kernel::Error>(())
    /// ```
    pub fn capture<E: From<Error>>(
        gpu: &Gpu,
        work: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        let stream = gpu.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(Error::driver("begin graph capture"))?;
        let recorded = work();
        // End the capture whatever happened, so the stream is usable again.
        let graph = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        recorded?;
        let inner = graph
            .map_err(Error::driver("instantiate graph"))?
            .ok_or_else(|| Error::KernelLaunch {
                kernel: "graph".into(),
                reason: "the capture recorded no work".into(),
            })?;
        inner.upload().map_err(Error::driver("upload graph"))?;
        Ok(Self { inner })
    }

    /// Replays the graph on its stream.
    pub fn launch(&self) -> Result<()> {
        self.inner.launch().map_err(Error::driver("launch graph"))
    }
}

/// GPU time of repeated work on a [`Gpu`]'s stream (events around each run), read without a
/// synchronization of its own: a run's time is collected at the next run or at
/// [`GpuTimer::take`], by when the caller has usually synchronized (e.g. downloaded results).
///
/// ```no_run
/// use mllm_kernel::{graph::GpuTimer, ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::zeros(&gpu, &[2, 4], mllm_kernel::DType::F32)?;
/// let mut y = DeviceTensor::zeros(&gpu, &[2, 2], mllm_kernel::DType::F32)?;
/// let mut timer = GpuTimer::new(&gpu)?;
/// timer.time(&gpu, || ops::silu_and_mul_into(&gpu, &x, &mut y))?;
/// assert_eq!(timer.take()?.len(), 1);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub struct GpuTimer {
    start: CudaEvent,
    end: CudaEvent,
    pending: bool,
    seconds: Vec<f64>,
}

impl GpuTimer {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(Error::driver("create timer event"))
        };
        Ok(Self {
            start: event()?,
            end: event()?,
            pending: false,
            seconds: Vec::new(),
        })
    }

    /// Enqueues `work` between the timer's events (collecting the previous run first).
    pub fn time<E: From<Error>>(
        &mut self,
        gpu: &Gpu,
        work: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.collect()?;
        self.start.record(gpu.stream()).map_err(Error::driver("record timer"))?;
        work()?;
        self.end.record(gpu.stream()).map_err(Error::driver("record timer"))?;
        self.pending = true;
        Ok(())
    }

    /// Seconds of every run since the last call (waits for the last run to finish).
    pub fn take(&mut self) -> Result<Vec<f64>> {
        self.collect()?;
        Ok(std::mem::take(&mut self.seconds))
    }

    fn collect(&mut self) -> Result<()> {
        if std::mem::take(&mut self.pending) {
            let ms = self.start.elapsed_ms(&self.end).map_err(Error::driver("read timer"))?;
            self.seconds.push(f64::from(ms) / 1e3);
        }
        Ok(())
    }
}
