//! The `mllm-kernel` command line: environment report, cache management,
//! compile check and GPU benchmarks.

mod bench_cmd;
mod cache_cmd;
mod check;
mod env_cmd;
mod sass_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::jit::Arch;

#[derive(Debug, Parser)]
#[command(
    name = "mllm-kernel",
    version,
    about = "mllm-rs kernel library: JIT cache, checks and benchmarks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the resolved toolchain, headers, cache root and GPUs.
    Env,
    /// Inspect and manage the kernel cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Compile every kernel for the given archs (into a fresh temp cache
    /// unless --use-cache), printing the time of each.
    Check {
        /// Target archs, e.g. --arch sm_80 --arch sm_90a (default: MLLM_CUDA_ARCHS or the GPU's).
        #[arg(long = "arch", value_name = "sm_XY")]
        archs: Vec<Arch>,
        /// Build into the real cache instead of a temp dir.
        #[arg(long)]
        use_cache: bool,
        /// Only these kernels or builds (`rms_norm`, `'rms_norm[bf16]'`); default all.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
    },
    /// Time an op on the GPU with CUDA events.
    Bench(bench_cmd::BenchArgs),
    /// Print the SASS of a kernel build (compiled into the cache if missing), e.g.
    /// `sass stream_linear --arch sm_90a --function stream_linear_kernel`.
    Sass {
        /// A kernel or one build (`int8_scaled_mm`, `'rms_norm[bf16]'`).
        kernel: String,
        /// Target archs (default: MLLM_CUDA_ARCHS or the GPU's).
        #[arg(long = "arch", value_name = "sm_XY")]
        archs: Vec<Arch>,
        /// Only functions whose (mangled) name contains this text.
        #[arg(long)]
        function: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Print the cache root.
    Path,
    /// List entries: kernel, arch, hash, size, created, status.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete all entries, or those of one kernel.
    Clear { kernel: Option<String> },
    /// Recompile entries (all kernels, or one) for the given archs.
    Rebuild {
        kernel: Option<String>,
        #[arg(long = "arch", value_name = "sm_XY")]
        archs: Vec<Arch>,
    },
    /// Drop entries unused for DAYS, then least recently used ones above SIZE.
    Prune {
        #[arg(long, value_name = "SIZE", value_parser = crate::jit::manage::parse_size)]
        max_size: Option<u64>,
        #[arg(long, value_name = "DAYS")]
        older_than: Option<f64>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let env = crate::KernelEnv::from_process()?;
    match cli.command {
        Command::Env => env_cmd::run(&env),
        Command::Cache { action } => cache_cmd::run(&env, action),
        Command::Check {
            archs,
            use_cache,
            kernels,
        } => check::run(&env, archs, use_cache, &kernels),
        Command::Bench(args) => bench_cmd::run(&env, args),
        Command::Sass {
            kernel,
            archs,
            function,
        } => sass_cmd::run(&env, &kernel, archs, function.as_deref()),
    }
}

/// Archs from the flag, else `MLLM_CUDA_ARCHS`, else the first GPU's.
fn target_archs(env: &crate::KernelEnv, given: Vec<Arch>) -> anyhow::Result<Vec<Arch>> {
    if !given.is_empty() {
        return Ok(given);
    }
    if !env.cuda_archs.is_empty() {
        return Ok(env.cuda_archs.clone());
    }
    match crate::device::list_devices() {
        Ok(devs) => {
            let (ma, mi) = devs[0].compute_capability;
            Ok(vec![Arch::for_device(ma, mi)])
        }
        Err(e) => anyhow::bail!("{e}; pass --arch (e.g. --arch sm_80 --arch sm_90a) to build without a GPU"),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn display(p: &std::path::Path) -> String {
    PathBuf::from(p).display().to_string()
}
