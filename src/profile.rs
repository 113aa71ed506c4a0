//! Where GPU time goes, op by op: an event is recorded on the [`Gpu`]'s stream after each op,
//! and the time between consecutive events is charged to the op that ended there. Meant for
//! eager runs (events cannot be recorded inside a graph capture); off, every call is a no-op.
//!
//! ```no_run
//! use mllm_kernel::{profile::OpProfiler, Gpu};
//! let gpu = Gpu::new(0)?;
//! let prof = OpProfiler::new(true);
//! prof.begin(&gpu)?;
//! // ... launch the qkv GEMM ...
//! prof.mark(&gpu, "qkv")?;
//! prof.end()?;
//! println!("{}", prof.report());
//! # Ok::<(), mllm_kernel::Error>(())
//! ```

use std::cell::RefCell;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use crate::device::Gpu;
use crate::{Error, Result};

/// Per-op GPU time, accumulated over steps.
#[derive(Default)]
pub struct OpProfiler {
    enabled: bool,
    /// Events of the step in flight: the start, then one per op.
    pending: RefCell<Vec<(&'static str, CudaEvent)>>,
    /// `(op, total ms, calls)` in first-seen order.
    totals: RefCell<Vec<(&'static str, f64, u64)>>,
    steps: RefCell<u64>,
}

impl OpProfiler {
    /// A profiler that records only when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// On when the environment variable `MLLM_CUDA_PROFILE` is `1`.
    pub fn from_env() -> Self {
        Self::new(std::env::var("MLLM_CUDA_PROFILE").is_ok_and(|v| v == "1"))
    }

    /// Whether events are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn record(&self, gpu: &Gpu, op: &'static str) -> Result<()> {
        let event = gpu
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(Error::driver("record event"))?;
        self.pending.borrow_mut().push((op, event));
        Ok(())
    }

    /// Starts a step (drops events of an unfinished one).
    pub fn begin(&self, gpu: &Gpu) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.pending.borrow_mut().clear();
        self.record(gpu, "")
    }

    /// Charges the GPU time since the previous mark to `op`.
    pub fn mark(&self, gpu: &Gpu, op: &'static str) -> Result<()> {
        if !self.enabled || self.pending.borrow().is_empty() {
            return Ok(());
        }
        self.record(gpu, op)
    }

    /// Waits for the step's last event and adds its op times to the totals.
    pub fn end(&self) -> Result<()> {
        let events = std::mem::take(&mut *self.pending.borrow_mut());
        let Some((_, last)) = events.last() else {
            return Ok(());
        };
        last.synchronize().map_err(Error::driver("event synchronize"))?;
        let mut totals = self.totals.borrow_mut();
        for pair in events.windows(2) {
            let (op, end) = (&pair[1].0, &pair[1].1);
            let ms = pair[0].1.elapsed_ms(end).map_err(Error::driver("event elapsed"))? as f64;
            match totals.iter_mut().find(|(name, _, _)| name == op) {
                Some(t) => {
                    t.1 += ms;
                    t.2 += 1;
                }
                None => totals.push((op, ms, 1)),
            }
        }
        *self.steps.borrow_mut() += 1;
        Ok(())
    }

    /// One line per op: time per step, share of the total and calls per step; then the total.
    pub fn report(&self) -> String {
        let totals = self.totals.borrow();
        let steps = (*self.steps.borrow()).max(1) as f64;
        let sum: f64 = totals.iter().map(|t| t.1).sum();
        let mut out = format!("GPU time per step over {steps} steps (eager, one event per op):\n");
        for (op, ms, calls) in totals.iter() {
            out.push_str(&format!(
                "  {op:<14} {:>9.1} us  {:>5.1}%  {:>5.0} calls\n",
                ms * 1e3 / steps,
                100.0 * ms / sum.max(f64::MIN_POSITIVE),
                *calls as f64 / steps
            ));
        }
        out.push_str(&format!("  {:<14} {:>9.1} us\n", "total", sum * 1e3 / steps));
        out
    }

    /// Forgets all totals.
    pub fn reset(&self) {
        self.totals.borrow_mut().clear();
        *self.steps.borrow_mut() = 0;
    }
}
