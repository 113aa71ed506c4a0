//! # mllm-kernel
//!
//! CUDA kernels for mllm-rs and the machinery that builds them: NVRTC → cubin
//! and nvcc → shared object into a hashed, verified cache
//! (`~/.cache/mllm_kernel`), or ahead of time with the `aot` feature.
//!
//! * [`ops`]: the stable op API (validate, then launch on a [`Gpu`]'s stream).
//! * [`reference`](mod@reference): CPU references, the oracle of every kernel test.
//! * [`jit`]: cache keys, locking, compilation, cache inspection.
//!
//! Building this crate needs no CUDA: the driver and NVRTC are loaded at run
//! time, and [`Gpu::new`] returns [`Error::NoCudaDevice`] where none exists.

pub mod bench;
pub mod cli;
pub mod device;
pub mod dtype;
pub mod env;
mod error;
pub mod ffi;
pub mod graph;
pub mod jit;
pub mod kernel_timeline;
pub mod loader;
pub mod ops;
pub mod profile;
pub mod readback;
pub mod reference;
pub mod registry;
pub mod staging;
pub mod tensor;

pub use device::Gpu;
pub use dtype::DType;
pub use env::KernelEnv;
pub use error::{Error, Result};
pub use tensor::DeviceTensor;

/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
