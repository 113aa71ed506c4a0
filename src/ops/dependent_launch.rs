//! Launches of NVRTC kernels with programmatic dependent launch (SM90+).
//!
//! A kernel launched this way may start while the kernel before it on the
//! stream still runs, as soon as that one lets dependents launch; so it must
//! call `mllm::wait_for_producer()` (`csrc/include/mllm_pdl.cuh`) before it
//! reads anything earlier kernels write. Only kernels written that way (every
//! block waits before its first such read) may use [`DependentLaunch`].
//! cudarc's launch builder has no launch attributes, hence this one: the same
//! `arg` calls (it implements [`PushKernelArg`]), then `cuLaunchKernelEx`.
//! `MLLM_PDL=0` launches them plainly (as the nvcc kernels' entry points do),
//! to measure what PDL gives or to rule it out when chasing a race.

use std::ffi::c_void;
use std::sync::OnceLock;

use cudarc::driver::{sys, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError, LaunchConfig};
use cudarc::driver::{PushKernelArg, SyncOnDrop};

use crate::device::Gpu;

// Each argument sits in its own 8-byte slot and the driver reads the
// parameter's size from the slot's start: right for the 4-byte scalars only
// on a little-endian host.
const _: () = assert!(cfg!(target_endian = "little"));

/// Kernel arguments collected for one `cuLaunchKernelEx` (pushed with
/// `arg`, as on cudarc's builder).
pub(super) struct DependentLaunch<'a> {
    stream: &'a CudaStream,
    function: &'a CudaFunction,
    /// SM90+: programmatic stream serialization is allowed.
    programmatic: bool,
    params: Vec<u64>,
    /// Keep the buffers' stream ordering until the launch is enqueued.
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> DependentLaunch<'a> {
    pub(super) fn new(gpu: &'a Gpu, function: &'a CudaFunction) -> Self {
        Self {
            stream: gpu.stream(),
            function,
            programmatic: gpu.arch().major >= 9 && pdl_allowed(),
            params: Vec::with_capacity(16),
            guards: Vec::with_capacity(8),
        }
    }

    /// Enqueues the kernel on the GPU's stream.
    ///
    /// # Safety
    /// As cudarc's `LaunchArgs::launch`: the arguments must match the
    /// kernel's signature in order and type, the kernel must stay inside its
    /// buffers, and it must wait for its producer as the module doc says.
    pub(super) unsafe fn launch(self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut params = self.params;
        let mut pointers: Vec<*mut c_void> = params.iter_mut().map(|p| (p as *mut u64).cast()).collect();
        // SAFETY: an all-integer C struct; the id and value are set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.programmatic),
        };
        // SAFETY: `pointers` addresses one slot per argument, alive for the
        // call; the caller vouches for the arguments (above).
        let result = unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.function.cu_function(),
                pointers.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        drop(self.guards);
        result.result()
    }
}

/// `MLLM_PDL` is not `0` (read once per process).
fn pdl_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| !std::env::var("MLLM_PDL").is_ok_and(|v| v.starts_with('0')))
}

/// Scalars a kernel takes by value, as their bits in an 8-byte slot.
pub(super) trait ParamBits: Copy {
    fn bits(self) -> u64;
}

impl ParamBits for i32 {
    fn bits(self) -> u64 {
        u64::from(self as u32)
    }
}

impl ParamBits for i64 {
    fn bits(self) -> u64 {
        self as u64
    }
}

impl ParamBits for u64 {
    fn bits(self) -> u64 {
        self
    }
}

impl ParamBits for f32 {
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

// SAFETY (all three): each pushes exactly one kernel parameter, the
// buffer's device address or the scalar's bits.
unsafe impl<'a, T: ParamBits> PushKernelArg<&'a T> for DependentLaunch<'a> {
    fn arg(&mut self, arg: &'a T) -> &mut Self {
        self.params.push(arg.bits());
        self
    }
}

unsafe impl<'a> PushKernelArg<&'a CudaSlice<u8>> for DependentLaunch<'a> {
    fn arg(&mut self, arg: &'a CudaSlice<u8>) -> &mut Self {
        let (ptr, guard) = arg.device_ptr(self.stream);
        self.params.push(ptr);
        self.guards.push(guard);
        self
    }
}

unsafe impl<'a> PushKernelArg<&'a mut CudaSlice<u8>> for DependentLaunch<'a> {
    fn arg(&mut self, arg: &'a mut CudaSlice<u8>) -> &mut Self {
        let (ptr, guard) = arg.device_ptr_mut(self.stream);
        self.params.push(ptr);
        self.guards.push(guard);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_their_bits_in_the_low_bytes() {
        assert_eq!((-1i32).bits(), 0xffff_ffff);
        assert_eq!(1.5f32.bits(), u64::from(1.5f32.to_bits()));
        assert_eq!((-2i64).bits(), u64::MAX - 1);
        let slot = 7i32.bits();
        assert_eq!(i32::from_ne_bytes(slot.to_ne_bytes()[..4].try_into().unwrap()), 7);
    }
}
