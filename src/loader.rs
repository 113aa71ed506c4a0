//! Loading a kernel onto a device: from the AOT build when linked in, else
//! through the JIT cache (cubin → driver module, shared object → libloading).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::device::Gpu;
use crate::ffi::dynamic::{
    mllm_attention_plan_args_t, mllm_attention_plan_t, mllm_attention_run_args_t, mllm_decode_mlp_args_t, mllm_dtype_t,
    mllm_int8_mm_args_t, mllm_result_t, mllm_stream_linear_args_t, mllm_stream_t, MllmKernelLib,
};
use crate::jit::{Compiler, JitCache, KernelSpec};
use crate::registry::{KernelBuild, KernelId};
use crate::{Error, Result};

/// A kernel ready to launch on one device.
pub enum LoadedKernel {
    /// A cubin loaded as a driver module (NVRTC kernels).
    Module {
        module: Arc<CudaModule>,
        functions: Mutex<HashMap<String, CudaFunction>>,
        max_threads: Mutex<HashMap<String, u32>>,
        origin: String,
    },
    /// A JIT-built shared object exporting the C ABI (nvcc kernels).
    Library { lib: MllmKernelLib, origin: String },
    /// The AOT static library linked into this binary.
    #[cfg(feature = "aot")]
    Linked,
}

/// `mllm_per_token_quant_int8` of `mllm_kernel.h`.
pub type PerTokenQuantInt8Fn = unsafe extern "C" fn(
    *const std::ffi::c_void,
    *mut i8,
    *mut f32,
    i64,
    i64,
    mllm_dtype_t,
    mllm_stream_t,
) -> mllm_result_t;

/// `mllm_int8_scaled_mm_sm80` / `_sm90` of `mllm_kernel.h`.
pub type Int8ScaledMmFn = unsafe extern "C" fn(*const mllm_int8_mm_args_t, i32, mllm_stream_t) -> mllm_result_t;

/// `mllm_int8_scaled_mm_dynamic_sm80` / `_sm90` of `mllm_kernel.h`.
pub type Int8ScaledMmDynamicFn = unsafe extern "C" fn(
    *const std::ffi::c_void,
    mllm_dtype_t,
    *mut i8,
    *mut f32,
    *const mllm_int8_mm_args_t,
    i32,
    mllm_stream_t,
) -> mllm_result_t;

/// `mllm_stream_linear` of `mllm_kernel.h`.
pub type StreamLinearFn = unsafe extern "C" fn(*const mllm_stream_linear_args_t, mllm_stream_t) -> mllm_result_t;

/// `mllm_decode_mlp` of `mllm_kernel.h`.
pub type DecodeMlpFn = unsafe extern "C" fn(*const mllm_decode_mlp_args_t, mllm_stream_t) -> mllm_result_t;

/// `mllm_attention_plan` of `mllm_kernel.h`.
pub type AttentionPlanFn =
    unsafe extern "C" fn(*const mllm_attention_plan_args_t, *mut mllm_attention_plan_t, mllm_stream_t) -> mllm_result_t;

/// `mllm_attention_run` of `mllm_kernel.h`.
pub type AttentionRunFn = unsafe extern "C" fn(
    *const mllm_attention_run_args_t,
    *const mllm_attention_plan_t,
    mllm_stream_t,
) -> mllm_result_t;

/// A C-ABI launcher of an nvcc kernel: from the shared object, or linked in.
macro_rules! c_launcher {
    ($(#[$doc:meta])* $method:ident, $symbol:ident, $ty:ty, $kernel:expr_2021) => {
        $(#[$doc])*
        pub fn $method(&self) -> Result<$ty> {
            let symbol = stringify!($symbol);
            match self {
                LoadedKernel::Library { lib, .. } => lib
                    .$symbol
                    .as_ref()
                    .copied()
                    .map_err(|e| missing($kernel, symbol, &e.to_string())),
                #[cfg(feature = "aot")]
                LoadedKernel::Linked => Ok(crate::ffi::linked::$symbol),
                LoadedKernel::Module { .. } => Err(missing($kernel, symbol, "not a shared-object kernel")),
            }
        }
    };
}

impl LoadedKernel {
    /// Where it came from: `aot` or the cache path.
    pub fn origin(&self) -> &str {
        match self {
            LoadedKernel::Module { origin, .. } | LoadedKernel::Library { origin, .. } => origin,
            #[cfg(feature = "aot")]
            LoadedKernel::Linked => "aot (static)",
        }
    }

    /// A `__global__` function of a module kernel, looked up once.
    pub fn function(&self, kernel: KernelId, symbol: &str) -> Result<CudaFunction> {
        let LoadedKernel::Module { module, functions, .. } = self else {
            return Err(missing(kernel, symbol, "not a cubin kernel"));
        };
        let mut table = functions.lock().unwrap();
        if let Some(f) = table.get(symbol) {
            return Ok(f.clone());
        }
        let f = module
            .load_function(symbol)
            .map_err(|e| missing(kernel, symbol, &e.to_string()))?;
        table.insert(symbol.to_string(), f.clone());
        Ok(f)
    }

    /// Most threads per block a module function allows (registers can make
    /// it < 1024), queried from the driver once per symbol.
    pub fn max_threads(&self, kernel: KernelId, symbol: &str) -> Result<u32> {
        let LoadedKernel::Module { max_threads, .. } = self else {
            return Err(missing(kernel, symbol, "not a cubin kernel"));
        };
        if let Some(&n) = max_threads.lock().unwrap().get(symbol) {
            return Ok(n);
        }
        let n = self
            .function(kernel, symbol)?
            .max_threads_per_block()
            .map_err(Error::driver(format!("max threads of {symbol}")))? as u32;
        max_threads.lock().unwrap().insert(symbol.to_string(), n);
        Ok(n)
    }

    c_launcher!(
        /// The launcher of `per_token_quant_int8`.
        per_token_quant_int8,
        mllm_per_token_quant_int8,
        PerTokenQuantInt8Fn,
        KernelId::PerTokenQuantInt8
    );
    c_launcher!(
        /// The skinny + CUTLASS 2.x launcher of `int8_scaled_mm[sm80]`.
        int8_scaled_mm_sm80,
        mllm_int8_scaled_mm_sm80,
        Int8ScaledMmFn,
        KernelId::Int8ScaledMm
    );
    c_launcher!(
        /// Quantize-then-GEMM launcher of `int8_scaled_mm[sm80]`.
        int8_scaled_mm_dynamic_sm80,
        mllm_int8_scaled_mm_dynamic_sm80,
        Int8ScaledMmDynamicFn,
        KernelId::Int8ScaledMm
    );
    c_launcher!(
        /// Quantize-then-GEMM launcher of `int8_scaled_mm[sm90]`.
        int8_scaled_mm_dynamic_sm90,
        mllm_int8_scaled_mm_dynamic_sm90,
        Int8ScaledMmDynamicFn,
        KernelId::Int8ScaledMm
    );
    c_launcher!(
        /// The CUTLASS 3.x launcher of `int8_scaled_mm[sm90]`.
        int8_scaled_mm_sm90,
        mllm_int8_scaled_mm_sm90,
        Int8ScaledMmFn,
        KernelId::Int8ScaledMm
    );
    c_launcher!(
        /// The launcher of `stream_linear`.
        stream_linear,
        mllm_stream_linear,
        StreamLinearFn,
        KernelId::StreamLinear
    );
    c_launcher!(
        /// The launcher of `decode_mlp`.
        decode_mlp,
        mllm_decode_mlp,
        DecodeMlpFn,
        KernelId::DecodeMlp
    );
    c_launcher!(
        /// The host-side scheduler of `attention[<variant>]`.
        attention_plan,
        mllm_attention_plan,
        AttentionPlanFn,
        KernelId::Attention
    );
    c_launcher!(
        /// The per-layer launcher of `attention[<variant>]`.
        attention_run,
        mllm_attention_run,
        AttentionRunFn,
        KernelId::Attention
    );
}

fn missing(kernel: KernelId, symbol: &str, why: &str) -> Error {
    Error::KernelLaunch {
        kernel: kernel.name().to_string(),
        reason: format!("symbol `{symbol}` unavailable: {why}"),
    }
}

/// Loads `build` for `gpu`: AOT first (which holds every variant), then the JIT cache.
pub(crate) fn load_kernel(gpu: &Gpu, build: KernelBuild) -> Result<LoadedKernel> {
    let id = build.id;
    if let Some(k) = load_aot(gpu, id)? {
        return Ok(k);
    }
    let jit = JitCache::new(gpu.env().clone())?;
    let artifact = jit.get(&KernelSpec::for_build(build), gpu.arch())?;
    let origin = artifact.path.display().to_string();
    let bad = |reason: String| Error::BadArtifact {
        kernel: id.name().to_string(),
        path: artifact.path.clone(),
        reason,
    };
    match id.compiler() {
        Compiler::Nvrtc => {
            let bytes = std::fs::read(&artifact.path).map_err(Error::io(&artifact.path))?;
            Ok(LoadedKernel::Module {
                module: load_cubin(gpu, bytes).map_err(|e| bad(e.to_string()))?,
                functions: Mutex::new(HashMap::new()),
                max_threads: Mutex::new(HashMap::new()),
                origin,
            })
        }
        Compiler::Nvcc => {
            // SAFETY: a shared object we built from our own sources; its
            // initializers only set up the static CUDA runtime.
            let lib = unsafe { MllmKernelLib::new(&artifact.path) }.map_err(|e| bad(e.to_string()))?;
            Ok(LoadedKernel::Library { lib, origin })
        }
    }
}

fn load_cubin(gpu: &Gpu, bytes: Vec<u8>) -> std::result::Result<Arc<CudaModule>, cudarc::driver::DriverError> {
    gpu.context().load_module(Ptx::from_binary(bytes))
}

#[cfg(feature = "aot")]
fn load_aot(gpu: &Gpu, id: KernelId) -> Result<Option<LoadedKernel>> {
    use crate::registry::{AOT_ARCHS, AOT_CUBINS, AOT_LINKED};
    let arch = gpu.arch().to_string();
    if let Some((_, _, cubin)) = AOT_CUBINS.iter().find(|(k, a, _)| *k == id && *a == arch) {
        let module =
            load_cubin(gpu, cubin.to_vec()).map_err(Error::driver(format!("load AOT cubin of {}", id.name())))?;
        return Ok(Some(LoadedKernel::Module {
            module,
            functions: Mutex::new(HashMap::new()),
            max_threads: Mutex::new(HashMap::new()),
            origin: format!("aot ({arch})"),
        }));
    }
    if AOT_LINKED.contains(&id) && AOT_ARCHS.contains(&arch.as_str()) {
        return Ok(Some(LoadedKernel::Linked));
    }
    Ok(None)
}

#[cfg(not(feature = "aot"))]
fn load_aot(_gpu: &Gpu, _id: KernelId) -> Result<Option<LoadedKernel>> {
    Ok(None)
}
