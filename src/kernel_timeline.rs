//! Every kernel the GPU ran, with its start and end: CUPTI's activity API, CUDA-graph
//! replays included (one record per graph node). It shows what a replayed decode step is
//! made of, which neither Nsight Compute (one kernel at a time, no overlap) nor
//! [`crate::profile::OpProfiler`] (eager only) can: kernels overlapping under programmatic
//! dependent launch, and the idle gaps between them. Nsight Systems does the same, but
//! is not on every machine; CUPTI ships with the CUDA toolkit (`libcupti.so`).
//!
//! One recording per process at a time. Concurrent-kernel records keep kernels
//! concurrent (unlike CUPTI's serializing kernel records), at the cost of a timestamp
//! per kernel.
//!
//! ```no_run
//! use mllm_kernel::kernel_timeline::{write_csv, KernelTimeline};
//! let timeline = KernelTimeline::start()?;
//! // ... replay the decode graph ...
//! let kernels = timeline.finish()?;
//! write_csv(&kernels, std::io::stdout().lock()).unwrap();
//! # Ok::<(), mllm_kernel::Error>(())
//! ```

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::cupti::result::{activity, CuptiError};
use cudarc::cupti::sys::{self, CUpti_ActivityKind};

use crate::{Error, Result};

/// One kernel execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// The kernel's (mangled) name.
    pub name: String,
    /// GPU timestamps, nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub stream_id: u32,
    /// The CUDA graph and node it ran from (0 when launched outside a graph).
    pub graph_id: u32,
    pub graph_node_id: u64,
}

// CUPTI hands records over in its own callbacks, on its own thread.
static RECORDS: Mutex<Vec<KernelRecord>> = Mutex::new(Vec::new());
static RECORDING: AtomicBool = AtomicBool::new(false);

const BUFFER_BYTES: usize = 8 << 20;
const BUFFER_ALIGN: usize = 8;

fn buffer_layout() -> Layout {
    Layout::from_size_align(BUFFER_BYTES, BUFFER_ALIGN).expect("constant layout")
}

extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    // SAFETY: CUPTI passes valid out-pointers; the buffer is freed in buffer_completed,
    // which CUPTI calls for every buffer it was given. A null buffer (allocation failure)
    // makes CUPTI drop records, which `finish` reports.
    unsafe {
        *buffer = alloc(buffer_layout());
        *size = if (*buffer).is_null() { 0 } else { BUFFER_BYTES };
        *max_records = 0; // as many as fit
    }
}

extern "C" fn buffer_completed(
    _ctx: cudarc::driver::sys::CUcontext,
    _stream: u32,
    buffer: *mut u8,
    _size: usize,
    valid: usize,
) {
    if buffer.is_null() {
        return;
    }
    let mut parsed = Vec::new();
    let mut record: *mut sys::CUpti_Activity = std::ptr::null_mut();
    // SAFETY: `buffer` holds `valid` bytes of records written by CUPTI; each record
    // pointer it returns is valid until the buffer is freed below.
    while unsafe { activity::get_next_record(buffer, valid, &mut record) }.is_ok() {
        if let Some(k) = unsafe { kernel_record(record) } {
            parsed.push(k);
        }
    }
    if let Ok(mut records) = RECORDS.lock() {
        records.extend(parsed);
    }
    // SAFETY: allocated in buffer_requested with the same layout.
    unsafe { dealloc(buffer, buffer_layout()) };
}

/// A concurrent-kernel record as a [`KernelRecord`]; other kinds are skipped.
///
/// # Safety
/// `record` points to a live CUPTI activity record.
unsafe fn kernel_record(record: *const sys::CUpti_Activity) -> Option<KernelRecord> {
    // SAFETY: every record starts with its kind.
    if unsafe { (*record).kind } != CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL {
        return None;
    }
    // CUPTI 13's kernel record; later versions only append fields.
    // SAFETY: a concurrent-kernel record is (at least) this struct; it is packed, so
    // fields are read unaligned.
    let k = unsafe { std::ptr::read_unaligned(record.cast::<sys::CUpti_ActivityKernel10>()) };
    let name = if k.name.is_null() {
        String::from("?")
    } else {
        // SAFETY: CUPTI's name string lives at least as long as the record.
        unsafe { CStr::from_ptr(k.name) }.to_string_lossy().into_owned()
    };
    Some(KernelRecord {
        name,
        start_ns: k.start,
        end_ns: k.end,
        stream_id: k.streamId,
        graph_id: k.graphId,
        graph_node_id: k.graphNodeId,
    })
}

fn cupti_error(what: &str) -> impl FnOnce(CuptiError) -> Error + '_ {
    move |e| Error::Timeline {
        reason: format!("{what}: {e:?}"),
    }
}

/// A recording in progress; [`KernelTimeline::finish`] ends it (dropped unfinished, it
/// stops recording and its records are discarded).
#[derive(Debug)]
pub struct KernelTimeline {
    stopped: bool,
}

impl Drop for KernelTimeline {
    fn drop(&mut self) {
        // `finish` has stopped it and taken the records already.
        if !self.stopped && self.stop().is_ok() {
            discard_records();
        }
    }
}

fn discard_records() {
    if let Ok(mut records) = RECORDS.lock() {
        records.clear();
    }
}

impl KernelTimeline {
    /// Whether CUPTI's library can be loaded (else [`KernelTimeline::start`] fails).
    pub fn available() -> bool {
        // SAFETY: only probes whether the library can be loaded.
        unsafe { sys::is_culib_present() }
    }

    /// Starts recording every kernel launched from now on, in this process.
    pub fn start() -> Result<Self> {
        if !Self::available() {
            return Err(Error::Timeline {
                reason: "CUPTI (libcupti.so) not found; add the CUDA toolkit's lib64 (or extras/CUPTI/lib64) \
                         to LD_LIBRARY_PATH"
                    .into(),
            });
        }
        if RECORDING.swap(true, Ordering::SeqCst) {
            return Err(Error::Timeline {
                reason: "a recording is already in progress in this process".into(),
            });
        }
        let started = activity::register_callbacks(Some(buffer_requested), Some(buffer_completed))
            .map_err(cupti_error("registering CUPTI buffer callbacks"))
            .and_then(|()| {
                activity::enable(CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)
                    .map_err(cupti_error("enabling concurrent-kernel records"))
            });
        if let Err(e) = started {
            RECORDING.store(false, Ordering::SeqCst);
            return Err(e);
        }
        discard_records();
        Ok(Self { stopped: false })
    }

    /// Stops recording and returns the kernels in start order. Call it after the work
    /// has finished on the GPU (records of kernels still running may be missing).
    pub fn finish(mut self) -> Result<Vec<KernelRecord>> {
        self.stop()?;
        let mut records = std::mem::take(&mut *RECORDS.lock().map_err(|_| Error::Timeline {
            reason: "a CUPTI callback panicked".into(),
        })?);
        records.sort_by_key(|k| (k.start_ns, k.end_ns));
        Ok(records)
    }

    /// Flushes and disables the records (once).
    fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let flushed = activity::flush_all(sys::CUpti_ActivityFlag::CUPTI_ACTIVITY_FLAG_FLUSH_FORCED as u32)
            .map_err(cupti_error("flushing CUPTI records"));
        let disabled = activity::disable(CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL)
            .map_err(cupti_error("disabling concurrent-kernel records"));
        RECORDING.store(false, Ordering::SeqCst);
        flushed.and(disabled)
    }
}

/// Writes `records` as CSV: `start_ns,end_ns,duration_ns,stream,graph,graph_node,name`.
pub fn write_csv(records: &[KernelRecord], mut out: impl std::io::Write) -> std::io::Result<()> {
    writeln!(out, "start_ns,end_ns,duration_ns,stream,graph,graph_node,name")?;
    for k in records {
        // Mangled names have no commas or quotes; demangled template names do, so quote.
        writeln!(
            out,
            "{},{},{},{},{},{},\"{}\"",
            k.start_ns,
            k.end_ns,
            k.end_ns.saturating_sub(k.start_ns),
            k.stream_id,
            k.graph_id,
            k.graph_node_id,
            k.name.replace('"', "\"\"")
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_without_cupti_is_a_clear_error() {
        if KernelTimeline::available() {
            println!("skipped start_without_cupti_is_a_clear_error: CUPTI is installed here");
            return;
        }
        let e = KernelTimeline::start().unwrap_err().to_string();
        assert!(e.contains("libcupti.so") && e.contains("LD_LIBRARY_PATH"), "{e}");
        // A failed start leaves no recording behind.
        assert!(!RECORDING.load(Ordering::SeqCst));
    }

    #[test]
    fn csv_has_a_header_and_one_quoted_row_per_kernel() {
        let records = vec![KernelRecord {
            name: "void f<int, \"x\">(int)".into(),
            start_ns: 100,
            end_ns: 350,
            stream_id: 7,
            graph_id: 2,
            graph_node_id: 11,
        }];
        let mut out = Vec::new();
        write_csv(&records, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "start_ns,end_ns,duration_ns,stream,graph,graph_node,name");
        assert_eq!(lines[1], "100,350,250,7,2,11,\"void f<int, \"\"x\"\">(int)\"");
        assert_eq!(lines.len(), 2);
    }
}
