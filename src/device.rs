//! Finding a GPU, and the per-device state ops run with: context, stream,
//! target arch and the kernels loaded so far.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream};

use crate::env::KernelEnv;
use crate::jit::Arch;
use crate::loader::{load_kernel, LoadedKernel};
use crate::ops::Blas;
use crate::registry::KernelBuild;
use crate::{Error, Result};

/// Oldest compute capability CUDA 13 compiles for.
pub const MIN_COMPUTE_CAPABILITY: (u32, u32) = (7, 5);

/// What the driver reports about one device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (u32, u32),
    pub total_memory: usize,
    pub multiprocessors: u32,
    pub driver_version: String,
}

/// Checks that a driver and at least one device exist; the number of devices.
/// Never panics: cudarc's dynamic loader is probed before any call.
pub fn cuda_device_count() -> Result<usize> {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoCudaDevice {
            reason: "the NVIDIA driver library libcuda.so was not found (no driver installed on this machine)".into(),
        });
    }
    cudarc::driver::result::init().map_err(|e| Error::NoCudaDevice {
        reason: format!("cuInit failed: {e}"),
    })?;
    let n = cudarc::driver::result::device::get_count().map_err(|e| Error::NoCudaDevice {
        reason: format!("cuDeviceGetCount failed: {e}"),
    })?;
    if n <= 0 {
        return Err(Error::NoCudaDevice {
            reason: "the driver sees no GPU (check CUDA_VISIBLE_DEVICES)".into(),
        });
    }
    Ok(n as usize)
}

/// Driver version as `13.0`.
pub fn driver_version() -> Result<String> {
    cuda_device_count()?;
    let mut v = 0i32;
    // SAFETY: the driver is loaded and initialized above; `v` is valid.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(Error::driver("cuDriverGetVersion"))?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// Describes every visible device.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let n = cuda_device_count()?;
    let driver = driver_version()?;
    (0..n)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal).map_err(Error::driver("create context"))?;
            let (major, minor) = ctx.compute_capability().map_err(Error::driver("compute capability"))?;
            Ok(DeviceInfo {
                ordinal,
                name: ctx.name().map_err(Error::driver("device name"))?,
                compute_capability: (major as u32, minor as u32),
                total_memory: ctx.total_mem().map_err(Error::driver("total memory"))?,
                multiprocessors: ctx
                    .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                    .map_err(Error::driver("multiprocessor count"))? as u32,
                driver_version: driver.clone(),
            })
        })
        .collect()
}

/// One GPU with the stream every op of this handle is ordered on.
///
/// ```no_run
/// let gpu = mllm_kernel::Gpu::new(0)?;
/// println!("{} ({})", gpu.info().name, gpu.arch());
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub struct Gpu {
    // First so the cuBLAS handle goes before the stream it is bound to.
    blas: Mutex<Option<Blas>>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    info: DeviceInfo,
    env: KernelEnv,
    kernels: Mutex<HashMap<KernelBuild, Arc<LoadedKernel>>>,
}

impl Gpu {
    /// Opens device `ordinal` with configuration from the environment.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_env(ordinal, KernelEnv::from_process()?)
    }

    /// Opens device `ordinal` with an explicit configuration.
    pub fn with_env(ordinal: usize, env: KernelEnv) -> Result<Self> {
        let count = cuda_device_count()?;
        if ordinal >= count {
            return Err(Error::NoCudaDevice {
                reason: format!("device {ordinal} requested but only {count} visible"),
            });
        }
        let info = list_devices()?.swap_remove(ordinal);
        let (major, minor) = info.compute_capability;
        if (major, minor) < MIN_COMPUTE_CAPABILITY {
            return Err(Error::NoCudaDevice {
                reason: format!(
                    "{} is sm_{major}{minor}; mllm-kernel (CUDA 13) supports sm_75 and newer",
                    info.name
                ),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("create context"))?;
        // All ops of a Gpu run on its one stream, so cudarc's cross-stream
        // event tracking only adds launch latency (and breaks graph capture).
        // SAFETY: no other stream of this context is in use yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(Error::driver("create stream"))?;
        Ok(Self {
            blas: Mutex::new(None),
            ctx,
            stream,
            arch: Arch::for_device(major, minor),
            info,
            env,
            kernels: Mutex::new(HashMap::new()),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The arch kernels are built for on this device (`sm_90a` on H100).
    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn env(&self) -> &KernelEnv {
        &self.env
    }

    /// `(free, total)` bytes of device memory now.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(Error::driver("bind context"))?;
        cudarc::driver::result::mem_get_info().map_err(Error::driver("query device memory"))
    }

    /// Waits for all work on this handle's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(Error::driver("stream synchronize"))
    }

    /// Runs `f` with this device's cuBLAS handle (created on first use, bound
    /// to this handle's stream).
    pub(crate) fn with_blas<R>(&self, f: impl FnOnce(&mut Blas) -> Result<R>) -> Result<R> {
        let mut guard = self.blas.lock().unwrap();
        if guard.is_none() {
            *guard = Some(Blas::new(self)?);
        }
        f(guard.as_mut().expect("set above"))
    }

    /// The kernel build, loaded once per device (AOT if linked in, else the JIT cache).
    pub fn kernel(&self, build: KernelBuild) -> Result<Arc<LoadedKernel>> {
        if let Some(k) = self.kernels.lock().unwrap().get(&build) {
            return Ok(k.clone());
        }
        let loaded = Arc::new(load_kernel(self, build)?);
        Ok(self.kernels.lock().unwrap().entry(build).or_insert(loaded).clone())
    }
}
