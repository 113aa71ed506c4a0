//! CUDA graphs over a [`Gpu`]'s stream: capture a sequence of launches once, replay it with
//! one launch.

use cudarc::driver::sys::{self, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::sys::{CUgraph, CUgraphDependencyType, CUgraphEdgeData, CUgraphNode, CUgraphNodeType};
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

    /// How the captured kernels depend on what precedes them.
    ///
    /// ```no_run
    /// use mllm_kernel::{graph::Graph, ops, DeviceTensor, Gpu};
    /// let gpu = Gpu::new(0)?;
    /// let x = DeviceTensor::zeros(&gpu, &[2, 4], mllm_kernel::DType::F32)?;
    /// let mut y = DeviceTensor::zeros(&gpu, &[2, 2], mllm_kernel::DType::F32)?;
    /// ops::silu_and_mul_into(&gpu, &x, &mut y)?;
    /// let g = Graph::capture(&gpu, || Ok(ops::silu_and_mul_into(&gpu, &x, &mut y)?))?;
    /// let edges = g.edges()?;
    /// assert_eq!((edges.kernels, edges.behind_other_nodes), (1, 0));
    /// # Ok::<(), mllm_kernel::Error>(())
    /// ```
    pub fn edges(&self) -> Result<GraphEdges> {
        let mut edges = GraphEdges::default();
        for node in graph_nodes(self.inner.cu_graph())? {
            if node_type(node)? != CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
                continue;
            }
            edges.kernels += 1;
            let (deps, data) = dependencies(node)?;
            for dep in deps {
                if node_type(dep)? != CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
                    edges.behind_other_nodes += 1;
                    break;
                }
            }
            let programmatic = CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8;
            edges.programmatic += usize::from(data.iter().any(|d| d.type_ == programmatic));
        }
        Ok(edges)
    }
}

/// The kernel nodes of a captured [`Graph`] and their incoming edges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphEdges {
    /// Kernel nodes.
    pub kernels: usize,
    /// Kernel nodes with a programmatic edge (launched with programmatic dependent launch
    /// behind a kernel: they may start while it still runs).
    pub programmatic: usize,
    /// Kernel nodes that also wait for a node that is not a kernel, e.g. a stream-ordered
    /// allocation or free captured as a memory node, or a copy: they start only once it has
    /// completed, so programmatic dependent launch cannot start them early.
    pub behind_other_nodes: usize,
}

fn graph_nodes(graph: CUgraph) -> Result<Vec<CUgraphNode>> {
    let mut n = 0usize;
    // SAFETY: a live graph; the first call only counts.
    unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) }
        .result()
        .map_err(Error::driver("count graph nodes"))?;
    let mut nodes = vec![std::ptr::null_mut(); n];
    // SAFETY: room for the `n` nodes just counted.
    unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut n) }
        .result()
        .map_err(Error::driver("list graph nodes"))?;
    nodes.truncate(n);
    Ok(nodes)
}

fn node_type(node: CUgraphNode) -> Result<CUgraphNodeType> {
    let mut t = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
    // SAFETY: a node of a live graph.
    unsafe { sys::cuGraphNodeGetType(node, &mut t) }
        .result()
        .map_err(Error::driver("read graph node type"))?;
    Ok(t)
}

/// A node's dependencies and the data (type) of each edge.
fn dependencies(node: CUgraphNode) -> Result<(Vec<CUgraphNode>, Vec<CUgraphEdgeData>)> {
    let mut n = 0usize;
    // SAFETY: a node of a live graph; the first call only counts.
    unsafe { sys::cuGraphNodeGetDependencies_v2(node, std::ptr::null_mut(), std::ptr::null_mut(), &mut n) }
        .result()
        .map_err(Error::driver("count graph node dependencies"))?;
    let mut deps = vec![std::ptr::null_mut(); n];
    // SAFETY: plain-byte C struct.
    let mut data = vec![unsafe { std::mem::zeroed::<CUgraphEdgeData>() }; n];
    // SAFETY: room for the `n` dependencies just counted.
    unsafe { sys::cuGraphNodeGetDependencies_v2(node, deps.as_mut_ptr(), data.as_mut_ptr(), &mut n) }
        .result()
        .map_err(Error::driver("list graph node dependencies"))?;
    deps.truncate(n);
    data.truncate(n);
    Ok((deps, data))
}

/// GPU time of repeated work on a [`Gpu`]'s stream (events around each run), read without a
/// synchronization of its own: runs still in flight (overlap scheduling queues the next step
/// before the last one ends) keep their events until they complete; a run's time is
/// collected once its end event has passed, or at [`GpuTimer::take`], which waits.
///
/// ```no_run
/// use mllm_kernel::{graph::GpuTimer, ops, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let x = DeviceTensor::zeros(&gpu, &[2, 4], mllm_kernel::DType::F32)?;
/// let mut y = DeviceTensor::zeros(&gpu, &[2, 2], mllm_kernel::DType::F32)?;
/// let mut timer = GpuTimer::new(&gpu)?;
/// timer.time(&gpu, || ops::silu_and_mul_into(&gpu, &x, &mut y))?;
/// timer.time(&gpu, || ops::silu_and_mul_into(&gpu, &x, &mut y))?;
/// assert_eq!(timer.take()?.len(), 2);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub struct GpuTimer {
    /// (start, end) events around runs not read yet, oldest first.
    pending: std::collections::VecDeque<(CudaEvent, CudaEvent)>,
    /// Event pairs whose runs were read, for reuse.
    idle: Vec<(CudaEvent, CudaEvent)>,
    seconds: Vec<f64>,
}

impl GpuTimer {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            pending: Default::default(),
            idle: vec![Self::pair(gpu)?],
            seconds: Vec::new(),
        })
    }

    fn pair(gpu: &Gpu) -> Result<(CudaEvent, CudaEvent)> {
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(Error::driver("create timer event"))
        };
        Ok((event()?, event()?))
    }

    /// Enqueues `work` between a pair of events (collecting the runs that have ended first).
    pub fn time<E: From<Error>>(
        &mut self,
        gpu: &Gpu,
        work: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.collect(false)?;
        let (start, end) = match self.idle.pop() {
            Some(p) => p,
            None => Self::pair(gpu)?,
        };
        // A run that fails to enqueue is not timed; its pair is reused.
        let record = |e: &CudaEvent| {
            e.record(gpu.stream())
                .map_err(|d| E::from(Error::driver("record timer")(d)))
        };
        let recorded = record(&start).and_then(|()| work()).and_then(|()| record(&end));
        match recorded {
            Ok(()) => self.pending.push_back((start, end)),
            Err(_) => self.idle.push((start, end)),
        }
        recorded
    }

    /// Seconds of every run since the last call (waits for the last run to finish).
    pub fn take(&mut self) -> Result<Vec<f64>> {
        self.collect(true)?;
        Ok(std::mem::take(&mut self.seconds))
    }

    /// Reads the runs that have ended, oldest first; `wait`: all of them, waiting.
    fn collect(&mut self, wait: bool) -> Result<()> {
        while let Some((_, end)) = self.pending.front() {
            if wait {
                end.synchronize().map_err(Error::driver("wait for timer"))?;
            } else if !end.try_is_complete().map_err(Error::driver("query timer"))? {
                break;
            }
            let (start, end) = self.pending.pop_front().expect("checked above");
            let ms = start.elapsed_ms(&end).map_err(Error::driver("read timer"));
            self.idle.push((start, end));
            self.seconds.push(f64::from(ms?) / 1e3);
        }
        Ok(())
    }
}
